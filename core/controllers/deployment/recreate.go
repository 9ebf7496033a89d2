package deployment

import (
	"context"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"berth.dev/berth/core/controllers/reconcile"
)

// rolloutRecreate moves a Recreate rollout one step: scale every old ReplicaSet to 0, wait
// until none of their pods runs, and only then create (or scale up) the new ReplicaSet, so
// that old and new pods never run side by side.
func (c *Controller) rolloutRecreate(ctx context.Context, d *appsv1.Deployment, rsList []*appsv1.ReplicaSet, pods map[types.UID][]*corev1.Pod) (reconcile.Result, error) {
	// Not created yet: creating it now would start new pods before the old are gone.
	newRS, old, err := c.newAndOld(ctx, d, rsList, false)
	if err != nil {
		return reconcile.Result{}, err
	}
	all := append(old, newRS)

	scaled := false
	for _, rs := range active(old) {
		ok, _, err := c.scaleIfNeeded(ctx, d, rs, 0)
		if err != nil {
			return reconcile.Result{}, err
		}
		scaled = scaled || ok
	}
	if scaled || oldPodsRunning(newRS, old, pods) {
		return c.syncRolloutStatus(ctx, d, all, newRS)
	}
	if newRS == nil {
		if newRS, old, err = c.newAndOld(ctx, d, rsList, true); err != nil {
			return reconcile.Result{}, err
		}
		all = append(old, newRS)
	}
	if _, _, err := c.scaleIfNeeded(ctx, d, newRS, *d.Spec.Replicas); err != nil {
		return reconcile.Result{}, err
	}
	if deploymentComplete(d, &d.Status) {
		if err := c.cleanupHistory(ctx, d, old); err != nil {
			return reconcile.Result{}, err
		}
	}
	return c.syncRolloutStatus(ctx, d, all, newRS)
}

// oldPodsRunning reports whether an old ReplicaSet still counts pods, or a pod of one is
// not finished (a pod in phase Unknown may still run, so it counts).
func oldPodsRunning(newRS *appsv1.ReplicaSet, old []*appsv1.ReplicaSet, pods map[types.UID][]*corev1.Pod) bool {
	if statusReplicas(old) > 0 {
		return true
	}
	for uid, list := range pods {
		if newRS != nil && uid == newRS.UID {
			continue
		}
		for _, pod := range list {
			if pod.Status.Phase != corev1.PodFailed && pod.Status.Phase != corev1.PodSucceeded {
				return true
			}
		}
	}
	return false
}
