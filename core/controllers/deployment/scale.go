package deployment

import (
	"context"
	"fmt"
	"math"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// scale resizes the ReplicaSets after spec.replicas changed (or while paused) without
// moving the rollout on: a lone active ReplicaSet takes the whole size; otherwise, during a
// rolling update, the change is shared among the active ReplicaSets in proportion to their
// sizes, so that neither the new nor the old template gains ground by it.
func (c *Controller) scale(ctx context.Context, d *appsv1.Deployment, newRS *appsv1.ReplicaSet, old []*appsv1.ReplicaSet) error {
	if target := activeOrLatest(newRS, old); target != nil {
		if *target.Spec.Replicas == *d.Spec.Replicas {
			return nil
		}
		_, _, err := c.scaleReplicaSet(ctx, d, target, *d.Spec.Replicas)
		return err
	}
	// A saturated new ReplicaSet (say, after adopting old ones) leaves nothing for the old.
	if isSaturated(d, newRS) {
		for _, rs := range active(old) {
			if _, _, err := c.scaleReplicaSet(ctx, d, rs, 0); err != nil {
				return err
			}
		}
		return nil
	}
	if d.Spec.Strategy.Type != appsv1.RollingUpdateDeploymentStrategyType {
		return nil
	}
	all := active(append(old, newRS))
	sizes := proportionalSizes(d, all)
	for _, rs := range all {
		if _, _, err := c.scaleReplicaSet(ctx, d, rs, sizes[rs.Name]); err != nil {
			return err
		}
	}
	return nil
}

// proportionalSizes computes the new sizes of the active ReplicaSets all (which it sorts)
// when the deployment's replicas+maxSurge changed: each gets its share of the difference by
// its size against the max-replicas it was last sized for, and the rounding leftover goes
// to the largest (the first after sorting).
func proportionalSizes(d *appsv1.Deployment, all []*appsv1.ReplicaSet) map[string]int32 {
	allowed := int32(0)
	if *d.Spec.Replicas > 0 {
		allowed = *d.Spec.Replicas + maxSurge(d)
	}
	toAdd := allowed - specReplicas(all)
	// Ties: scaling up favours newer ReplicaSets, scaling down takes from older ones.
	switch {
	case toAdd > 0:
		sort.Sort(bySizeNewerFirst(all))
	case toAdd < 0:
		sort.Sort(bySizeOlderFirst(all))
	}
	sizes := make(map[string]int32, len(all))
	added := int32(0)
	for _, rs := range all {
		sizes[rs.Name] = *rs.Spec.Replicas
		if toAdd != 0 {
			p := proportion(d, rs, toAdd, added)
			sizes[rs.Name] += p
			added += p
		}
	}
	if toAdd != 0 && len(all) > 0 {
		first := all[0].Name
		sizes[first] = max(sizes[first]+toAdd-added, 0)
	}
	return sizes
}

// proportion is how many replicas rs gains (or loses, when negative) of toAdd, of which
// added are already handed out.
func proportion(d *appsv1.Deployment, rs *appsv1.ReplicaSet, toAdd, added int32) int32 {
	if *rs.Spec.Replicas == 0 || toAdd == 0 || toAdd == added {
		return 0
	}
	share := fraction(d, rs)
	left := toAdd - added
	if toAdd > 0 {
		return min(share, left)
	}
	return max(share, left)
}

// fraction is rs's size scaled from the deployment's former maximum (its max-replicas
// annotation, else status.replicas) to the current one, minus its size.
func fraction(d *appsv1.Deployment, rs *appsv1.ReplicaSet) int32 {
	if *d.Spec.Replicas == 0 {
		return -*rs.Spec.Replicas
	}
	maxNow := *d.Spec.Replicas + maxSurge(d)
	maxBefore, ok := int32Annotation(rs, maxReplicasAnnotation)
	if !ok || maxBefore == 0 {
		maxBefore = d.Status.Replicas
		if maxBefore == 0 {
			return 0
		}
	}
	scaled := float64(*rs.Spec.Replicas*maxNow) / float64(maxBefore)
	return roundHalfAway(scaled) - *rs.Spec.Replicas
}

// roundHalfAway rounds to the nearest integer, halves away from zero.
func roundHalfAway(f float64) int32 { return int32(math.Round(f)) }

// activeOrLatest returns the one ReplicaSet that should carry the whole size: the only
// active one, or the newest when none is active. It returns nil when several are active.
// It sorts old.
func activeOrLatest(newRS *appsv1.ReplicaSet, old []*appsv1.ReplicaSet) *appsv1.ReplicaSet {
	if newRS == nil && len(old) == 0 {
		return nil
	}
	sort.Sort(sort.Reverse(byCreation(old)))
	all := active(append(old, newRS))
	switch len(all) {
	case 0:
		if newRS != nil {
			return newRS
		}
		return old[0]
	case 1:
		return all[0]
	}
	return nil
}

// isSaturated reports whether rs has, and was sized for, all the deployment's replicas,
// and all of them are available.
func isSaturated(d *appsv1.Deployment, rs *appsv1.ReplicaSet) bool {
	if rs == nil {
		return false
	}
	desired, ok := int32Annotation(rs, desiredReplicasAnnotation)
	return ok && *rs.Spec.Replicas == *d.Spec.Replicas && desired == *d.Spec.Replicas &&
		rs.Status.AvailableReplicas == *d.Spec.Replicas
}

// scaleReplicaSet sets rs's size, and its replicas annotations to the deployment's current
// ones, and records a ScalingReplicaSet event when the size changed. It returns whether it
// scaled and the ReplicaSet as written.
func (c *Controller) scaleReplicaSet(ctx context.Context, d *appsv1.Deployment, rs *appsv1.ReplicaSet, size int32) (bool, *appsv1.ReplicaSet, error) {
	resize := *rs.Spec.Replicas != size
	maxReplicas := *d.Spec.Replicas + maxSurge(d)
	if !resize && !replicasAnnotationsNeedUpdate(rs, *d.Spec.Replicas, maxReplicas) {
		return false, rs, nil
	}
	from := *rs.Spec.Replicas
	next := rs.DeepCopy()
	*next.Spec.Replicas = size
	setReplicasAnnotations(next, *d.Spec.Replicas, maxReplicas)
	updated, err := c.kube.AppsV1().ReplicaSets(next.Namespace).Update(ctx, next, metav1.UpdateOptions{})
	if err != nil {
		return false, rs, fmt.Errorf("scale replica set %s/%s from %d to %d: %w", rs.Namespace, rs.Name, from, size, err)
	}
	if !resize {
		return false, updated, nil
	}
	direction := "up"
	if size < from {
		direction = "down"
	}
	c.recorder.Eventf(d, corev1.EventTypeNormal, "ScalingReplicaSet", "Scaled %s replica set %s from %d to %d", direction, updated.Name, from, size)
	return true, updated, nil
}

// scaleIfNeeded is scaleReplicaSet for the rollout steps, which leave a ReplicaSet of the
// right size alone even if its replicas annotations are stale (they mark scaling events).
func (c *Controller) scaleIfNeeded(ctx context.Context, d *appsv1.Deployment, rs *appsv1.ReplicaSet, size int32) (bool, *appsv1.ReplicaSet, error) {
	if *rs.Spec.Replicas == size {
		return false, rs, nil
	}
	return c.scaleReplicaSet(ctx, d, rs, size)
}
