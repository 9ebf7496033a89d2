package deployment

import (
	"context"
	"fmt"
	"math"
	"reflect"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/core/controllers/reconcile"
)

// The condition reasons of Kubernetes' deployment controller, which kubectl and users match.
const (
	reasonRSUpdated      = "ReplicaSetUpdated"
	reasonFailedRSCreate = "ReplicaSetCreateError"
	reasonNewRSCreated   = "NewReplicaSetCreated"
	reasonFoundNewRS     = "FoundNewReplicaSet"
	reasonNewRSAvailable = "NewReplicaSetAvailable"
	reasonTimedOut       = "ProgressDeadlineExceeded"
	reasonPaused         = "DeploymentPaused"
	reasonResumed        = "DeploymentResumed"
	reasonMinAvailable   = "MinimumReplicasAvailable"
	reasonMinUnavailable = "MinimumReplicasUnavailable"
)

// syncStatus writes the status computed from the ReplicaSets if it changed, leaving the
// Progressing condition as it is (scaling and pauses are not progress).
func (c *Controller) syncStatus(ctx context.Context, d *appsv1.Deployment, all []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) error {
	status := c.calculateStatus(d, all, newRS)
	if reflect.DeepEqual(d.Status, status) {
		return nil
	}
	d.Status = status
	return c.updateStatus(ctx, d)
}

// syncRolloutStatus writes the status during a rollout, Progressing included: complete
// (NewReplicaSetAvailable), progressing (ReplicaSetUpdated, its lastUpdateTime renewed on
// every sign of progress) or timed out (ProgressDeadlineExceeded). While nothing changes
// it asks to be called back when the progress deadline would pass.
func (c *Controller) syncRolloutStatus(ctx context.Context, d *appsv1.Deployment, all []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) (reconcile.Result, error) {
	status := c.calculateStatus(d, all, newRS)
	if !hasProgressDeadline(d) {
		removeCondition(&status, appsv1.DeploymentProgressing)
	}
	current := getCondition(d.Status, appsv1.DeploymentProgressing)
	// Complete and still complete: a resync, nothing to estimate.
	complete := status.Replicas == status.UpdatedReplicas && current != nil && current.Reason == reasonNewRSAvailable
	if hasProgressDeadline(d) && !complete {
		subject := fmt.Sprintf("Deployment %q", d.Name)
		if newRS != nil {
			subject = fmt.Sprintf("ReplicaSet %q", newRS.Name)
		}
		switch {
		case deploymentComplete(d, &status):
			setCondition(&status, c.condition(appsv1.DeploymentProgressing, corev1.ConditionTrue,
				reasonNewRSAvailable, subject+" has successfully progressed."))
		case deploymentProgressing(d, &status):
			cond := c.condition(appsv1.DeploymentProgressing, corev1.ConditionTrue, reasonRSUpdated, subject+" is progressing.")
			// Unlike setCondition, renew lastUpdateTime even when the reason stays: the
			// deadline counts from the last progress.
			if current != nil {
				if current.Status == corev1.ConditionTrue {
					cond.LastTransitionTime = current.LastTransitionTime
				}
				removeCondition(&status, appsv1.DeploymentProgressing)
			}
			setCondition(&status, cond)
		case c.timedOut(d, &status):
			setCondition(&status, c.condition(appsv1.DeploymentProgressing, corev1.ConditionFalse,
				reasonTimedOut, subject+" has timed out progressing."))
		}
	}
	if failures := replicaFailures(all, newRS); len(failures) > 0 {
		setCondition(&status, failures[0])
	} else {
		removeCondition(&status, appsv1.DeploymentReplicaFailure)
	}
	if reflect.DeepEqual(d.Status, status) {
		return c.requeueStuck(d, status), nil
	}
	d.Status = status
	// The status update brings the deployment back through the informer; that pass, with
	// nothing new to write, schedules the deadline check.
	return reconcile.Result{}, c.updateStatus(ctx, d)
}

// requeueStuck asks for a pass when the progress deadline of an unfinished rollout passes,
// since no event would otherwise come to notice it.
func (c *Controller) requeueStuck(d *appsv1.Deployment, status appsv1.DeploymentStatus) reconcile.Result {
	current := getCondition(d.Status, appsv1.DeploymentProgressing)
	if !hasProgressDeadline(d) || current == nil {
		return reconcile.Result{}
	}
	if deploymentComplete(d, &status) || current.Reason == reasonTimedOut {
		return reconcile.Result{}
	}
	after := current.LastUpdateTime.Add(time.Duration(*d.Spec.ProgressDeadlineSeconds) * time.Second).Sub(c.now())
	if after < time.Second {
		return reconcile.Result{Requeue: true}
	}
	// The extra second keeps the check from landing just before the deadline.
	return reconcile.Result{RequeueAfter: after + time.Second}
}

// calculateStatus computes the deployment's status from its ReplicaSets, carrying its
// conditions over and setting Available.
func (c *Controller) calculateStatus(d *appsv1.Deployment, all []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) appsv1.DeploymentStatus {
	available := availableReplicas(all)
	status := appsv1.DeploymentStatus{
		ObservedGeneration:  d.Generation,
		Replicas:            statusReplicas(all),
		UpdatedReplicas:     statusReplicas([]*appsv1.ReplicaSet{newRS}),
		ReadyReplicas:       readyReplicas(all),
		AvailableReplicas:   available,
		UnavailableReplicas: max(specReplicas(all)-available, 0), // negative while scaling down
		CollisionCount:      d.Status.CollisionCount,
	}
	status.Conditions = append(status.Conditions, d.Status.Conditions...)
	if available >= *d.Spec.Replicas-maxUnavailable(d) {
		setCondition(&status, c.condition(appsv1.DeploymentAvailable, corev1.ConditionTrue, reasonMinAvailable, "Deployment has minimum availability."))
	} else {
		setCondition(&status, c.condition(appsv1.DeploymentAvailable, corev1.ConditionFalse, reasonMinUnavailable, "Deployment does not have minimum availability."))
	}
	return status
}

// deploymentComplete reports whether every replica runs the new template and is available,
// for the current generation.
func deploymentComplete(d *appsv1.Deployment, s *appsv1.DeploymentStatus) bool {
	return s.UpdatedReplicas == *d.Spec.Replicas && s.Replicas == *d.Spec.Replicas &&
		s.AvailableReplicas == *d.Spec.Replicas && s.ObservedGeneration >= d.Generation
}

// deploymentProgressing reports whether s shows progress over the deployment's last status:
// more updated, ready or available replicas, or fewer old ones.
func deploymentProgressing(d *appsv1.Deployment, s *appsv1.DeploymentStatus) bool {
	old := d.Status
	return s.UpdatedReplicas > old.UpdatedReplicas ||
		s.Replicas-s.UpdatedReplicas < old.Replicas-old.UpdatedReplicas ||
		s.ReadyReplicas > old.ReadyReplicas ||
		s.AvailableReplicas > old.AvailableReplicas
}

// timedOut reports whether the progress deadline passed since Progressing was last updated.
func (c *Controller) timedOut(d *appsv1.Deployment, s *appsv1.DeploymentStatus) bool {
	if !hasProgressDeadline(d) {
		return false
	}
	cond := getCondition(*s, appsv1.DeploymentProgressing)
	switch {
	case cond == nil, cond.Reason == reasonNewRSAvailable:
		return false
	case cond.Reason == reasonTimedOut:
		return true
	}
	return cond.LastUpdateTime.Add(time.Duration(*d.Spec.ProgressDeadlineSeconds) * time.Second).Before(c.now())
}

// replicaFailures lifts ReplicaFailure conditions from the ReplicaSets, the new one's first.
func replicaFailures(all []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) []appsv1.DeploymentCondition {
	collect := func(rsList []*appsv1.ReplicaSet) []appsv1.DeploymentCondition {
		var out []appsv1.DeploymentCondition
		for _, rs := range rsList {
			if rs == nil {
				continue
			}
			for _, cond := range rs.Status.Conditions {
				if cond.Type == appsv1.ReplicaSetReplicaFailure {
					out = append(out, appsv1.DeploymentCondition{
						Type: appsv1.DeploymentReplicaFailure, Status: cond.Status, Reason: cond.Reason, Message: cond.Message,
						LastUpdateTime: cond.LastTransitionTime, LastTransitionTime: cond.LastTransitionTime,
					})
				}
			}
		}
		return out
	}
	if failures := collect([]*appsv1.ReplicaSet{newRS}); len(failures) > 0 {
		return failures
	}
	return collect(all)
}

// hasProgressDeadline reports whether progressDeadlineSeconds is set (MaxInt32 means never).
func hasProgressDeadline(d *appsv1.Deployment) bool {
	return d.Spec.ProgressDeadlineSeconds != nil && *d.Spec.ProgressDeadlineSeconds != math.MaxInt32
}

// condition builds a condition stamped with the controller's clock.
func (c *Controller) condition(t appsv1.DeploymentConditionType, status corev1.ConditionStatus, reason, message string) appsv1.DeploymentCondition {
	now := metav1.NewTime(c.now())
	return appsv1.DeploymentCondition{Type: t, Status: status, Reason: reason, Message: message, LastUpdateTime: now, LastTransitionTime: now}
}

// getCondition returns a copy of the condition of type t, or nil.
func getCondition(s appsv1.DeploymentStatus, t appsv1.DeploymentConditionType) *appsv1.DeploymentCondition {
	for i := range s.Conditions {
		if s.Conditions[i].Type == t {
			cond := s.Conditions[i]
			return &cond
		}
	}
	return nil
}

// setCondition sets a condition unless one of the same status and reason is there already
// (so its times stay); it keeps lastTransitionTime while the status does not change.
func setCondition(s *appsv1.DeploymentStatus, cond appsv1.DeploymentCondition) {
	current := getCondition(*s, cond.Type)
	if current != nil && current.Status == cond.Status && current.Reason == cond.Reason {
		return
	}
	if current != nil && current.Status == cond.Status {
		cond.LastTransitionTime = current.LastTransitionTime
	}
	removeCondition(s, cond.Type)
	s.Conditions = append(s.Conditions, cond)
}

// removeCondition drops the condition of type t.
func removeCondition(s *appsv1.DeploymentStatus, t appsv1.DeploymentConditionType) {
	var kept []appsv1.DeploymentCondition
	for _, cond := range s.Conditions {
		if cond.Type != t {
			kept = append(kept, cond)
		}
	}
	s.Conditions = kept
}
