// Package storageclass holds the default-StorageClass rules that the API server's
// DefaultStorageClass admission and the PersistentVolume controller's retroactive default
// share, so that both always agree on which class a claim gets.
package storageclass

import (
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
)

// The annotations that mark the default StorageClass (the beta one is still honoured, as in
// Kubernetes).
const (
	IsDefaultAnnotation     = "storageclass.kubernetes.io/is-default-class"
	BetaIsDefaultAnnotation = "storageclass.beta.kubernetes.io/is-default-class"
)

// Default is Kubernetes' GetDefaultClass: of the classes annotated as default, the newest,
// then the first by name; nil when none is.
func Default(classes []*storagev1.StorageClass) *storagev1.StorageClass {
	var best *storagev1.StorageClass
	for _, sc := range classes {
		if sc.Annotations[IsDefaultAnnotation] != "true" && sc.Annotations[BetaIsDefaultAnnotation] != "true" {
			continue
		}
		if best == nil {
			best = sc
			continue
		}
		a, b := sc.CreationTimestamp.UnixNano(), best.CreationTimestamp.UnixNano()
		if a > b || (a == b && sc.Name < best.Name) {
			best = sc
		}
	}
	return best
}

// TakesDefault tells whether a claim gets the default class: it names none
// (storageClassName unset, not ""), and, where berth differs from Kubernetes (ADR 0013),
// it asks for no particular pre-made volume: a claim with a label selector or a
// volumeName wants an existing PersistentVolume, which no provisioner can make for it
// (Kubernetes gives it the default class all the same, and it then never binds the
// classless volume it was written for, as in the seeds' app-pv walkthrough).
func TakesDefault(claim *corev1.PersistentVolumeClaim) bool {
	if claim.Spec.StorageClassName != nil {
		return false
	}
	if _, ok := claim.Annotations[corev1.BetaStorageClassAnnotation]; ok {
		return false
	}
	sel := claim.Spec.Selector
	hasSelector := sel != nil && (len(sel.MatchLabels) > 0 || len(sel.MatchExpressions) > 0)
	return !hasSelector && claim.Spec.VolumeName == ""
}
