package persistentvolume

import (
	"context"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/component-helpers/storage/ephemeral"
)

// unprotectClaim removes the kubernetes.io/pvc-protection finalizer of a claim being deleted
// once no pod uses it. It reports whether it did (the claim is then gone or going).
//
// The pod informer may lag behind a pod just created, so, as Kubernetes' pvc-protection
// controller, it confirms with a live list of the namespace's pods before letting go.
func (c *Controller) unprotectClaim(ctx context.Context, claim *corev1.PersistentVolumeClaim) (bool, error) {
	objs, err := c.podIndex.ByIndex(claimIndex, claim.Namespace+"/"+claim.Name)
	if err != nil {
		return false, fmt.Errorf("pods of claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	for _, o := range objs {
		if podUsesClaim(o.(*corev1.Pod), claim) {
			return false, nil
		}
	}
	pods, err := c.kube.CoreV1().Pods(claim.Namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, fmt.Errorf("list pods in %s: %w", claim.Namespace, err)
	}
	for i := range pods.Items {
		if podUsesClaim(&pods.Items[i], claim) {
			return false, nil
		}
	}
	clone := claim.DeepCopy()
	clone.Finalizers = slices.DeleteFunc(clone.Finalizers, func(f string) bool { return f == PVCProtectionFinalizer })
	if _, err := c.kube.CoreV1().PersistentVolumeClaims(claim.Namespace).Update(ctx, clone, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return false, fmt.Errorf("remove %s from claim %s/%s: %w", PVCProtectionFinalizer, claim.Namespace, claim.Name, err)
	}
	c.opts.Log.Debug("claim no longer used, protection removed", "claim", claim.Namespace+"/"+claim.Name)
	return true, nil
}

// podUsesClaim reports whether a pod that still runs, or may run, uses the claim: through a
// persistentVolumeClaim volume, or as the claim of one of its ephemeral volumes. A pod that
// finished (Succeeded, Failed) or was force-deleted does not hold it.
func podUsesClaim(pod *corev1.Pod, claim *corev1.PersistentVolumeClaim) bool {
	if pod.Namespace != claim.Namespace || podTerminated(pod) {
		return false
	}
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim.Name {
			return true
		}
		if v.Ephemeral != nil && ephemeral.VolumeClaimName(pod, v) == claim.Name && ephemeral.VolumeIsForPod(pod, claim) == nil {
			return true
		}
	}
	return false
}

// podTerminated: finished, or deleted with no grace left (the agent is done with it or it
// was force-deleted), which also breaks a cycle of a pod finalizer waiting for the claim.
func podTerminated(pod *corev1.Pod) bool {
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return true
	}
	return pod.DeletionTimestamp != nil && pod.DeletionGracePeriodSeconds != nil && *pod.DeletionGracePeriodSeconds == 0
}
