package replicaset

import (
	"context"
	"reflect"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Reasons of the ReplicaFailure condition and of the controller's events, as Kubernetes
// words them.
const (
	reasonFailedCreate     = "FailedCreate"
	reasonSuccessfulCreate = "SuccessfulCreate"
	reasonFailedDelete     = "FailedDelete"
	reasonSuccessfulDelete = "SuccessfulDelete"
)

// availabilityMargin is how long after a pod's minReadySeconds have passed the controller
// looks again to count it available.
const availabilityMargin = 100 * time.Millisecond

// calculateStatus counts the owner's active pods into a new status and sets or clears the
// ReplicaFailure condition after manageErr. It also returns how long until the next ready
// pod becomes available (0 if none is waiting for minReadySeconds).
func calculateStatus(rs *appsv1.ReplicaSet, active []*corev1.Pod, manageErr error, now time.Time) (appsv1.ReplicaSetStatus, time.Duration) {
	status := *rs.Status.DeepCopy()
	// The template's labels include the selector's, so only selected pods can match them.
	template := labels.SelectorFromSet(rs.Spec.Template.Labels)
	var fullyLabeled, ready, available int32
	var availableIn time.Duration
	minReady := time.Duration(rs.Spec.MinReadySeconds) * time.Second
	for _, pod := range active {
		if template.Matches(labels.Set(pod.Labels)) {
			fullyLabeled++
		}
		cond := readyCondition(pod)
		if cond == nil {
			continue
		}
		ready++
		switch wait := cond.LastTransitionTime.Add(minReady).Sub(now); {
		case minReady == 0 || (!cond.LastTransitionTime.IsZero() && wait < 0):
			available++
		case !cond.LastTransitionTime.IsZero():
			// Available means ready for strictly longer than minReadySeconds: look a little
			// after the moment, not at it.
			if next := wait + availabilityMargin; availableIn == 0 || next < availableIn {
				availableIn = next
			}
		}
	}

	failure := condition(rs.Status, appsv1.ReplicaSetReplicaFailure)
	switch {
	case manageErr != nil && failure == nil:
		reason := ""
		if diff := len(active) - int(desiredReplicas(rs)); diff < 0 {
			reason = reasonFailedCreate
		} else if diff > 0 {
			reason = reasonFailedDelete
		}
		status.Conditions = append(status.Conditions, appsv1.ReplicaSetCondition{
			Type:               appsv1.ReplicaSetReplicaFailure,
			Status:             corev1.ConditionTrue,
			LastTransitionTime: metav1.NewTime(now),
			Reason:             reason,
			Message:            manageErr.Error(),
		})
	case manageErr == nil && failure != nil:
		status.Conditions = withoutCondition(status.Conditions, appsv1.ReplicaSetReplicaFailure)
	}

	status.Replicas = int32(len(active))
	status.FullyLabeledReplicas = fullyLabeled
	status.ReadyReplicas = ready
	status.AvailableReplicas = available
	// terminatingReplicas belongs to the alpha DeploymentReplicaSetTerminatingReplicas
	// feature, off in 1.33: the field stays unset.
	status.TerminatingReplicas = nil
	return status, availableIn
}

// writeStatus updates the owner's status unless nothing changed, retrying once on a fresh
// copy if the first write fails (as Kubernetes does; a second failure requeues the owner).
func (c *Controller) writeStatus(ctx context.Context, api kindAPI, o *owner, status appsv1.ReplicaSetStatus) (*appsv1.ReplicaSet, error) {
	rs := o.rs
	if rs.Status.Replicas == status.Replicas &&
		rs.Status.FullyLabeledReplicas == status.FullyLabeledReplicas &&
		rs.Status.ReadyReplicas == status.ReadyReplicas &&
		rs.Status.AvailableReplicas == status.AvailableReplicas &&
		rs.Status.TerminatingReplicas == nil &&
		rs.Generation == rs.Status.ObservedGeneration &&
		reflect.DeepEqual(rs.Status.Conditions, status.Conditions) {
		return rs, nil
	}
	// The generation acted on, not the fresh copy's: a spec change since the read has not
	// been seen yet.
	status.ObservedGeneration = rs.Generation
	updated, err := api.updateStatus(ctx, o, status)
	if err == nil {
		return updated.rs, nil
	}
	fresh, getErr := api.fresh(ctx, rs.Namespace, rs.Name)
	if getErr != nil {
		return nil, getErr
	}
	updated, err = api.updateStatus(ctx, fresh, status)
	if err != nil {
		return nil, err
	}
	return updated.rs, nil
}

// readyCondition returns the pod's Ready condition if it is true, nil otherwise.
func readyCondition(pod *corev1.Pod) *corev1.PodCondition {
	for i := range pod.Status.Conditions {
		c := &pod.Status.Conditions[i]
		if c.Type == corev1.PodReady {
			if c.Status == corev1.ConditionTrue {
				return c
			}
			return nil
		}
	}
	return nil
}

func isReady(pod *corev1.Pod) bool { return readyCondition(pod) != nil }

func condition(status appsv1.ReplicaSetStatus, t appsv1.ReplicaSetConditionType) *appsv1.ReplicaSetCondition {
	for i := range status.Conditions {
		if status.Conditions[i].Type == t {
			return &status.Conditions[i]
		}
	}
	return nil
}

func withoutCondition(conds []appsv1.ReplicaSetCondition, t appsv1.ReplicaSetConditionType) []appsv1.ReplicaSetCondition {
	var out []appsv1.ReplicaSetCondition
	for _, c := range conds {
		if c.Type != t {
			out = append(out, c)
		}
	}
	return out
}
