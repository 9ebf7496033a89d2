package statefulset

import (
	"context"
	"fmt"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// computeStatus counts the pods as Kubernetes does: replicas are all pods that exist,
// current and updated ones those not terminating at each revision; a finished rolling
// update makes the update revision current.
func computeStatus(set *appsv1.StatefulSet, pods []*corev1.Pod, current, update string, collisionCount int32, now time.Time) appsv1.StatefulSetStatus {
	status := appsv1.StatefulSetStatus{
		ObservedGeneration: set.Generation,
		CurrentRevision:    current,
		UpdateRevision:     update,
		CollisionCount:     &collisionCount,
		Conditions:         set.Status.Conditions,
	}
	for _, pod := range pods {
		status.Replicas++
		if runningAndReady(pod) {
			status.ReadyReplicas++
			if available(pod, set.Spec.MinReadySeconds, now) {
				status.AvailableReplicas++
			}
		}
		if terminating(pod) {
			continue
		}
		switch pod.Labels[revisionLabel] {
		case current:
			status.CurrentReplicas++
			if current == update {
				status.UpdatedReplicas++
			}
		case update:
			status.UpdatedReplicas++
		}
	}
	rolling := set.Spec.UpdateStrategy.Type != appsv1.OnDeleteStatefulSetStrategyType
	if rolling && status.UpdatedReplicas == status.Replicas && status.ReadyReplicas == status.Replicas {
		status.CurrentReplicas = status.UpdatedReplicas
		status.CurrentRevision = status.UpdateRevision
	}
	return status
}

// writeStatus updates the set's status when it changed.
func (c *Controller) writeStatus(ctx context.Context, set *appsv1.StatefulSet, status appsv1.StatefulSetStatus) error {
	if apiequality.Semantic.DeepEqual(set.Status, status) {
		return nil
	}
	s := set.DeepCopy()
	s.Status = status
	if _, err := c.kube.AppsV1().StatefulSets(s.Namespace).UpdateStatus(ctx, s, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of statefulset %s/%s: %w", s.Namespace, s.Name, err)
	}
	return nil
}
