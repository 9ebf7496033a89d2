package deployment

import (
	"context"
	"fmt"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"berth.dev/berth/core/controllers/reconcile"
)

// rolloutRolling moves a RollingUpdate one step: scale the new ReplicaSet up within
// replicas+maxSurge, else scale old ones down within replicas-maxUnavailable available,
// and once complete trim the history. Each write is one step; the ReplicaSet updates it
// causes bring the deployment back for the next.
func (c *Controller) rolloutRolling(ctx context.Context, d *appsv1.Deployment, rsList []*appsv1.ReplicaSet) (reconcile.Result, error) {
	newRS, old, err := c.newAndOld(ctx, d, rsList, true)
	if err != nil {
		return reconcile.Result{}, err
	}
	all := append(old, newRS)

	scaledUp, err := c.reconcileNewReplicaSet(ctx, d, all, newRS)
	if err != nil {
		return reconcile.Result{}, err
	}
	if scaledUp {
		return c.syncRolloutStatus(ctx, d, all, newRS)
	}
	scaledDown, err := c.reconcileOldReplicaSets(ctx, d, all, active(old), newRS)
	if err != nil {
		return reconcile.Result{}, err
	}
	if scaledDown {
		return c.syncRolloutStatus(ctx, d, all, newRS)
	}
	if deploymentComplete(d, &d.Status) {
		if err := c.cleanupHistory(ctx, d, old); err != nil {
			return reconcile.Result{}, err
		}
	}
	return c.syncRolloutStatus(ctx, d, all, newRS)
}

// reconcileNewReplicaSet sizes the new ReplicaSet towards spec.replicas as far as the
// surge allows; it reports whether it scaled.
func (c *Controller) reconcileNewReplicaSet(ctx context.Context, d *appsv1.Deployment, all []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) (bool, error) {
	if *newRS.Spec.Replicas == *d.Spec.Replicas {
		return false, nil
	}
	if *newRS.Spec.Replicas > *d.Spec.Replicas {
		scaled, _, err := c.scaleIfNeeded(ctx, d, newRS, *d.Spec.Replicas)
		return scaled, err
	}
	size, err := newRSReplicas(d, all, newRS)
	if err != nil {
		return false, err
	}
	scaled, _, err := c.scaleIfNeeded(ctx, d, newRS, size)
	return scaled, err
}

// reconcileOldReplicaSets scales old ReplicaSets down as far as availability allows; it
// reports whether it scaled.
func (c *Controller) reconcileOldReplicaSets(ctx context.Context, d *appsv1.Deployment, all, old []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) (bool, error) {
	if specReplicas(old) == 0 {
		return false, nil
	}
	budget := scaleDownBudget(d, specReplicas(all), newRS)
	if budget <= 0 {
		return false, nil
	}
	// Unhealthy old replicas go first: removing them costs no availability, and left alone
	// they could block the rollout until it times out.
	old, cleaned, err := c.cleanupUnhealthyReplicas(ctx, d, old, budget)
	if err != nil {
		return false, err
	}
	scaledDown, err := c.scaleDownOldForRollingUpdate(ctx, d, append(old, newRS), old)
	if err != nil {
		return false, err
	}
	return cleaned+scaledDown > 0, nil
}

// scaleDownBudget is how many old replicas may go in this step: all pods beyond the
// minimum available, less the new ReplicaSet's unavailable ones (which may never become
// available, so they cannot stand in for old ones).
func scaleDownBudget(d *appsv1.Deployment, allPods int32, newRS *appsv1.ReplicaSet) int32 {
	minAvailable := *d.Spec.Replicas - maxUnavailable(d)
	newUnavailable := *newRS.Spec.Replicas - newRS.Status.AvailableReplicas
	return allPods - minAvailable - newUnavailable
}

// cleanupUnhealthyReplicas removes up to budget unavailable replicas from the old
// ReplicaSets, oldest first. It returns old with the scaled ReplicaSets replaced.
func (c *Controller) cleanupUnhealthyReplicas(ctx context.Context, d *appsv1.Deployment, old []*appsv1.ReplicaSet, budget int32) ([]*appsv1.ReplicaSet, int32, error) {
	sort.Sort(byCreation(old))
	var done int32
	for i, rs := range old {
		if done >= budget {
			break
		}
		// A status that lags a scale-down can show more available replicas than the spec
		// asks for: then nothing is unhealthy. (Kubernetes errors out of the step here.)
		if *rs.Spec.Replicas == 0 || *rs.Spec.Replicas <= rs.Status.AvailableReplicas {
			continue
		}
		n := min(budget-done, *rs.Spec.Replicas-rs.Status.AvailableReplicas)
		_, updated, err := c.scaleIfNeeded(ctx, d, rs, *rs.Spec.Replicas-n)
		if err != nil {
			return nil, done, err
		}
		done += n
		old[i] = updated
	}
	return old, done, nil
}

// scaleDownOldForRollingUpdate scales old ReplicaSets down, oldest first, by as many
// replicas as are available beyond replicas-maxUnavailable.
func (c *Controller) scaleDownOldForRollingUpdate(ctx context.Context, d *appsv1.Deployment, all, old []*appsv1.ReplicaSet) (int32, error) {
	minAvailable := *d.Spec.Replicas - maxUnavailable(d)
	// A ReplicaSet counts no more available replicas than its spec asks for: a status that
	// lags a scale-down (say this controller's own, a pass ago) still counts pods that are
	// going away, and scaling down on them would break minAvailable. (Kubernetes sums
	// status.availableReplicas as is.)
	available := sum(all, func(rs *appsv1.ReplicaSet) int32 { return min(*rs.Spec.Replicas, rs.Status.AvailableReplicas) })
	if available <= minAvailable {
		return 0, nil
	}
	sort.Sort(byCreation(old))
	want := available - minAvailable
	var done int32
	for _, rs := range old {
		if done >= want {
			break
		}
		if *rs.Spec.Replicas == 0 {
			continue
		}
		n := min(*rs.Spec.Replicas, want-done)
		if _, _, err := c.scaleIfNeeded(ctx, d, rs, *rs.Spec.Replicas-n); err != nil {
			return done, err
		}
		done += n
	}
	return done, nil
}

// newRSReplicas is the size the new ReplicaSet may grow to now: for RollingUpdate, up to
// spec.replicas while all ReplicaSets together stay within replicas+maxSurge; for
// Recreate, spec.replicas at once.
func newRSReplicas(d *appsv1.Deployment, all []*appsv1.ReplicaSet, newRS *appsv1.ReplicaSet) (int32, error) {
	switch d.Spec.Strategy.Type {
	case appsv1.RollingUpdateDeploymentStrategyType:
		surge, err := intstr.GetScaledValueFromIntOrPercent(d.Spec.Strategy.RollingUpdate.MaxSurge, int(*d.Spec.Replicas), true)
		if err != nil {
			return 0, fmt.Errorf("deployment %s/%s maxSurge: %w", d.Namespace, d.Name, err)
		}
		current := specReplicas(all)
		maxTotal := *d.Spec.Replicas + int32(surge)
		if current >= maxTotal {
			return *newRS.Spec.Replicas, nil
		}
		up := min(maxTotal-current, *d.Spec.Replicas-*newRS.Spec.Replicas)
		return *newRS.Spec.Replicas + up, nil
	case appsv1.RecreateDeploymentStrategyType:
		return *d.Spec.Replicas, nil
	}
	return 0, fmt.Errorf("deployment %s/%s: strategy type %q is not supported", d.Namespace, d.Name, d.Spec.Strategy.Type)
}

// resolveFenceposts turns maxSurge and maxUnavailable (absent means 0) into numbers of
// replicas: surge rounds up, unavailable rounds down, and when both come to 0 one replica
// may be unavailable, or the rollout could never start.
func resolveFenceposts(surge, unavailable *intstr.IntOrString, desired int32) (int32, int32, error) {
	zero := intstr.FromInt32(0)
	s, err := intstr.GetScaledValueFromIntOrPercent(intstr.ValueOrDefault(surge, zero), int(desired), true)
	if err != nil {
		return 0, 0, fmt.Errorf("maxSurge: %w", err)
	}
	u, err := intstr.GetScaledValueFromIntOrPercent(intstr.ValueOrDefault(unavailable, zero), int(desired), false)
	if err != nil {
		return 0, 0, fmt.Errorf("maxUnavailable: %w", err)
	}
	if s == 0 && u == 0 {
		u = 1
	}
	return int32(s), int32(u), nil
}

// maxSurge is the deployment's resolved maxSurge (0 unless RollingUpdate).
func maxSurge(d *appsv1.Deployment) int32 {
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || d.Spec.Strategy.RollingUpdate == nil {
		return 0
	}
	// Validation rejects values that do not resolve; such a deployment gets no surge.
	s, _, _ := resolveFenceposts(d.Spec.Strategy.RollingUpdate.MaxSurge, d.Spec.Strategy.RollingUpdate.MaxUnavailable, *d.Spec.Replicas)
	return s
}

// maxUnavailable is the deployment's resolved maxUnavailable, at most spec.replicas (0
// unless RollingUpdate, or with no replicas).
func maxUnavailable(d *appsv1.Deployment) int32 {
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType || d.Spec.Strategy.RollingUpdate == nil || *d.Spec.Replicas == 0 {
		return 0
	}
	_, u, _ := resolveFenceposts(d.Spec.Strategy.RollingUpdate.MaxSurge, d.Spec.Strategy.RollingUpdate.MaxUnavailable, *d.Spec.Replicas)
	return min(u, *d.Spec.Replicas)
}
