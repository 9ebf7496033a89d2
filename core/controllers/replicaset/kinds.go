package replicaset

import (
	"context"
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
)

// Kind names, as they appear in keys and in the ownerReferences of the pods.
const (
	KindReplicaSet            = "ReplicaSet"
	KindReplicationController = "ReplicationController"
)

// owner is a ReplicaSet or a ReplicationController seen in ReplicaSet terms: Kubernetes
// treats the ReplicationController as an older version of the ReplicaSet, and so does this
// controller, so that one sync handles both.
type owner struct {
	rs *appsv1.ReplicaSet // for a ReplicationController a converted copy
	// stored is the object as the API serves it; events are recorded against it.
	stored runtime.Object
}

// kindAPI is what the controller needs of one kind: reads from the informer's cache and
// from the server, and status writes.
type kindAPI interface {
	gvk() schema.GroupVersionKind
	// cached reads the object from the informer's cache.
	cached(namespace, name string) (*owner, error)
	// inNamespace lists the namespace's objects from the informer's cache.
	inNamespace(namespace string) ([]*owner, error)
	// fresh reads the object from the API server.
	fresh(ctx context.Context, namespace, name string) (*owner, error)
	// updateStatus writes status to the object through the status subresource.
	updateStatus(ctx context.Context, o *owner, status appsv1.ReplicaSetStatus) (*owner, error)
}

// replicaSets is the kindAPI of apps/v1 ReplicaSets.
type replicaSets struct {
	kube   kubernetes.Interface
	lister appslisters.ReplicaSetLister
}

func (replicaSets) gvk() schema.GroupVersionKind {
	return appsv1.SchemeGroupVersion.WithKind(KindReplicaSet)
}

func (k replicaSets) cached(namespace, name string) (*owner, error) {
	rs, err := k.lister.ReplicaSets(namespace).Get(name)
	if err != nil {
		return nil, err
	}
	return &owner{rs: rs, stored: rs}, nil
}

func (k replicaSets) inNamespace(namespace string) ([]*owner, error) {
	list, err := k.lister.ReplicaSets(namespace).List(labels.Everything())
	if err != nil {
		return nil, err
	}
	out := make([]*owner, 0, len(list))
	for _, rs := range list {
		out = append(out, &owner{rs: rs, stored: rs})
	}
	return out, nil
}

func (k replicaSets) fresh(ctx context.Context, namespace, name string) (*owner, error) {
	rs, err := k.kube.AppsV1().ReplicaSets(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return &owner{rs: rs, stored: rs}, nil
}

func (k replicaSets) updateStatus(ctx context.Context, o *owner, status appsv1.ReplicaSetStatus) (*owner, error) {
	rs := o.rs.DeepCopy()
	rs.Status = status
	rs, err := k.kube.AppsV1().ReplicaSets(rs.Namespace).UpdateStatus(ctx, rs, metav1.UpdateOptions{})
	if err != nil {
		return nil, err
	}
	return &owner{rs: rs, stored: rs}, nil
}

// replicationControllers is the kindAPI of v1 ReplicationControllers.
type replicationControllers struct {
	kube   kubernetes.Interface
	lister corelisters.ReplicationControllerLister
}

func (replicationControllers) gvk() schema.GroupVersionKind {
	return corev1.SchemeGroupVersion.WithKind(KindReplicationController)
}

func (k replicationControllers) cached(namespace, name string) (*owner, error) {
	rc, err := k.lister.ReplicationControllers(namespace).Get(name)
	if err != nil {
		return nil, err
	}
	return fromRC(rc), nil
}

func (k replicationControllers) inNamespace(namespace string) ([]*owner, error) {
	list, err := k.lister.ReplicationControllers(namespace).List(labels.Everything())
	if err != nil {
		return nil, err
	}
	out := make([]*owner, 0, len(list))
	for _, rc := range list {
		out = append(out, fromRC(rc))
	}
	return out, nil
}

func (k replicationControllers) fresh(ctx context.Context, namespace, name string) (*owner, error) {
	rc, err := k.kube.CoreV1().ReplicationControllers(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	return fromRC(rc), nil
}

func (k replicationControllers) updateStatus(ctx context.Context, o *owner, status appsv1.ReplicaSetStatus) (*owner, error) {
	stored, ok := o.stored.(*corev1.ReplicationController)
	if !ok {
		return nil, fmt.Errorf("update status: %T is not a ReplicationController", o.stored)
	}
	rc := stored.DeepCopy()
	rc.Status = toRCStatus(status)
	rc, err := k.kube.CoreV1().ReplicationControllers(rc.Namespace).UpdateStatus(ctx, rc, metav1.UpdateOptions{})
	if err != nil {
		return nil, err
	}
	return fromRC(rc), nil
}

// fromRC converts a ReplicationController to the ReplicaSet it is equivalent to.
func fromRC(rc *corev1.ReplicationController) *owner {
	rs := &appsv1.ReplicaSet{
		ObjectMeta: *rc.ObjectMeta.DeepCopy(),
		Spec: appsv1.ReplicaSetSpec{
			Replicas:        rc.Spec.Replicas,
			MinReadySeconds: rc.Spec.MinReadySeconds,
		},
		Status: appsv1.ReplicaSetStatus{
			Replicas:             rc.Status.Replicas,
			FullyLabeledReplicas: rc.Status.FullyLabeledReplicas,
			ReadyReplicas:        rc.Status.ReadyReplicas,
			AvailableReplicas:    rc.Status.AvailableReplicas,
			ObservedGeneration:   rc.Status.ObservedGeneration,
		},
	}
	// A nil selector stays nil, which selects nothing; the API server defaults it to the
	// template's labels, so that only happens to objects that never went through it.
	if rc.Spec.Selector != nil {
		rs.Spec.Selector = &metav1.LabelSelector{MatchLabels: rc.Spec.Selector}
	}
	if rc.Spec.Template != nil {
		rs.Spec.Template = *rc.Spec.Template
	}
	for _, c := range rc.Status.Conditions {
		rs.Status.Conditions = append(rs.Status.Conditions, appsv1.ReplicaSetCondition{
			Type:               appsv1.ReplicaSetConditionType(c.Type),
			Status:             c.Status,
			LastTransitionTime: c.LastTransitionTime,
			Reason:             c.Reason,
			Message:            c.Message,
		})
	}
	return &owner{rs: rs, stored: rc}
}

// toRCStatus converts a ReplicaSet's status back to a ReplicationController's.
func toRCStatus(s appsv1.ReplicaSetStatus) corev1.ReplicationControllerStatus {
	out := corev1.ReplicationControllerStatus{
		Replicas:             s.Replicas,
		FullyLabeledReplicas: s.FullyLabeledReplicas,
		ReadyReplicas:        s.ReadyReplicas,
		AvailableReplicas:    s.AvailableReplicas,
		ObservedGeneration:   s.ObservedGeneration,
	}
	for _, c := range s.Conditions {
		out.Conditions = append(out.Conditions, corev1.ReplicationControllerCondition{
			Type:               corev1.ReplicationControllerConditionType(c.Type),
			Status:             c.Status,
			LastTransitionTime: c.LastTransitionTime,
			Reason:             c.Reason,
			Message:            c.Message,
		})
	}
	return out
}
