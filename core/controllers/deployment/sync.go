package deployment

import (
	"context"
	"fmt"
	"reflect"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"berth.dev/berth/core/controllers/ownership"
	"berth.dev/berth/core/controllers/reconcile"
)

// Reconcile brings one deployment ("namespace/name") a step closer to its spec: it claims
// its ReplicaSets, then scales (on a scaling event or while paused) or rolls out by its
// strategy, and writes the status. It asks to be called again at the progress deadline.
func (c *Controller) Reconcile(ctx context.Context, key string) (reconcile.Result, error) {
	namespace, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(fmt.Errorf("deployment key %q: %w", key, err))
	}
	cached, err := c.deployments.Deployments(namespace).Get(name)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("get deployment %s: %w", key, err)
	}
	d := cached.DeepCopy()

	if reflect.DeepEqual(d.Spec.Selector, &metav1.LabelSelector{}) {
		// Selecting every pod of the namespace would adopt what is not ours: refuse, but
		// say that the spec was seen.
		c.recorder.Eventf(d, corev1.EventTypeWarning, "SelectingAll", "This deployment is selecting all pods. A non-empty selector is required.")
		if d.Status.ObservedGeneration < d.Generation {
			d.Status.ObservedGeneration = d.Generation
			if err := c.updateStatus(ctx, d); err != nil {
				return reconcile.Result{}, err
			}
		}
		return reconcile.Result{}, nil
	}

	rsList, err := c.claimReplicaSets(ctx, d)
	if err != nil {
		return reconcile.Result{}, err
	}
	pods, err := c.podsByReplicaSet(d, rsList)
	if err != nil {
		return reconcile.Result{}, err
	}
	if d.DeletionTimestamp != nil {
		return reconcile.Result{}, c.syncStatusOnly(ctx, d, rsList)
	}
	if err := c.checkPausedConditions(ctx, d); err != nil {
		return reconcile.Result{}, err
	}
	if d.Spec.Paused {
		return reconcile.Result{}, c.syncScale(ctx, d, rsList)
	}
	scaling, err := c.isScalingEvent(ctx, d, rsList)
	if err != nil {
		return reconcile.Result{}, err
	}
	if scaling {
		return reconcile.Result{}, c.syncScale(ctx, d, rsList)
	}
	switch d.Spec.Strategy.Type {
	case appsv1.RecreateDeploymentStrategyType:
		return c.rolloutRecreate(ctx, d, rsList, pods)
	case appsv1.RollingUpdateDeploymentStrategyType:
		return c.rolloutRolling(ctx, d, rsList)
	}
	return reconcile.Result{}, reconcile.Terminal(fmt.Errorf("deployment %s: unexpected strategy type %q", key, d.Spec.Strategy.Type))
}

// claimReplicaSets returns the ReplicaSets the deployment controls after adopting the
// orphans its selector matches and releasing its own that no longer match.
func (c *Controller) claimReplicaSets(ctx context.Context, d *appsv1.Deployment) ([]*appsv1.ReplicaSet, error) {
	all, err := c.replicaSets.ReplicaSets(d.Namespace).List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list replica sets of %s/%s: %w", d.Namespace, d.Name, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return nil, reconcile.Terminal(fmt.Errorf("deployment %s/%s has an invalid selector: %w", d.Namespace, d.Name, err))
	}
	owner := ownership.Owner{
		Object:   d,
		Kind:     kind,
		Selector: sel,
		CanAdopt: ownership.Recheck(d, "Deployment", func(ctx context.Context) (*appsv1.Deployment, error) {
			return c.kube.AppsV1().Deployments(d.Namespace).Get(ctx, d.Name, metav1.GetOptions{})
		}),
	}
	patch := func(ctx context.Context, name string, data []byte) error {
		_, err := c.kube.AppsV1().ReplicaSets(d.Namespace).Patch(ctx, name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
		return err
	}
	claimed, err := ownership.Claim(ctx, owner, all, patch)
	if err != nil {
		return nil, fmt.Errorf("claim replica sets: %w", err)
	}
	return claimed, nil
}

// ownedReplicaSets lists, without claiming, the ReplicaSets the deployment controls.
func (c *Controller) ownedReplicaSets(d *appsv1.Deployment) ([]*appsv1.ReplicaSet, error) {
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return nil, err
	}
	all, err := c.replicaSets.ReplicaSets(d.Namespace).List(sel)
	if err != nil {
		return nil, err
	}
	var owned []*appsv1.ReplicaSet
	for _, rs := range all {
		if metav1.IsControlledBy(rs, d) {
			owned = append(owned, rs)
		}
	}
	return owned, nil
}

// podsByReplicaSet groups the deployment's pods by the ReplicaSet (of rsList) controlling
// them; every ReplicaSet has an entry, empty if it has no pods.
func (c *Controller) podsByReplicaSet(d *appsv1.Deployment, rsList []*appsv1.ReplicaSet) (map[types.UID][]*corev1.Pod, error) {
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return nil, err
	}
	pods, err := c.pods.Pods(d.Namespace).List(sel)
	if err != nil {
		return nil, fmt.Errorf("list pods of %s/%s: %w", d.Namespace, d.Name, err)
	}
	byRS := make(map[types.UID][]*corev1.Pod, len(rsList))
	for _, rs := range rsList {
		byRS[rs.UID] = []*corev1.Pod{}
	}
	for _, pod := range pods {
		ref := metav1.GetControllerOf(pod)
		if ref == nil {
			continue
		}
		if list, ok := byRS[ref.UID]; ok {
			byRS[ref.UID] = append(list, pod)
		}
	}
	return byRS, nil
}

// syncStatusOnly writes the status of a deployment that is being deleted, and nothing else.
func (c *Controller) syncStatusOnly(ctx context.Context, d *appsv1.Deployment, rsList []*appsv1.ReplicaSet) error {
	newRS, old, err := c.newAndOld(ctx, d, rsList, false)
	if err != nil {
		return err
	}
	return c.syncStatus(ctx, d, append(old, newRS), newRS)
}

// syncScale handles a scaling event, and every pass of a paused deployment: it resizes the
// ReplicaSets without moving the rollout on.
func (c *Controller) syncScale(ctx context.Context, d *appsv1.Deployment, rsList []*appsv1.ReplicaSet) error {
	newRS, old, err := c.newAndOld(ctx, d, rsList, false)
	if err != nil {
		return err
	}
	if err := c.scale(ctx, d, newRS, old); err != nil {
		return err
	}
	if d.Spec.Paused {
		if err := c.cleanupHistory(ctx, d, old); err != nil {
			return err
		}
	}
	return c.syncStatus(ctx, d, append(old, newRS), newRS)
}

// checkPausedConditions sets Progressing to DeploymentPaused or DeploymentResumed when
// spec.paused changes, so that time spent paused never counts against the progress deadline.
func (c *Controller) checkPausedConditions(ctx context.Context, d *appsv1.Deployment) error {
	if !hasProgressDeadline(d) {
		return nil
	}
	cond := getCondition(d.Status, appsv1.DeploymentProgressing)
	if cond != nil && cond.Reason == reasonTimedOut {
		return nil // a reported failure stays until the rollout moves again
	}
	pausedCond := cond != nil && cond.Reason == reasonPaused
	switch {
	case d.Spec.Paused && !pausedCond:
		setCondition(&d.Status, c.condition(appsv1.DeploymentProgressing, corev1.ConditionUnknown, reasonPaused, "Deployment is paused"))
	case !d.Spec.Paused && pausedCond:
		setCondition(&d.Status, c.condition(appsv1.DeploymentProgressing, corev1.ConditionUnknown, reasonResumed, "Deployment is resumed"))
	default:
		return nil
	}
	return c.updateStatus(ctx, d)
}

// isScalingEvent reports whether spec.replicas changed since the active ReplicaSets were
// last sized (their desired-replicas annotation differs).
func (c *Controller) isScalingEvent(ctx context.Context, d *appsv1.Deployment, rsList []*appsv1.ReplicaSet) (bool, error) {
	newRS, old, err := c.newAndOld(ctx, d, rsList, false)
	if err != nil {
		return false, err
	}
	for _, rs := range active(append(old, newRS)) {
		if desired, ok := int32Annotation(rs, desiredReplicasAnnotation); ok && desired != *d.Spec.Replicas {
			return true, nil
		}
	}
	return false, nil
}
