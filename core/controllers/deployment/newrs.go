package deployment

import (
	"context"
	"fmt"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// newAndOld splits the deployment's ReplicaSets into the new one (nil if none runs the
// current template and create is false) and the old ones. On the way it brings the new
// ReplicaSet's revision and annotations up to date, creates it if asked, and copies its
// revision onto the deployment.
func (c *Controller) newAndOld(ctx context.Context, d *appsv1.Deployment, rsList []*appsv1.ReplicaSet, create bool) (*appsv1.ReplicaSet, []*appsv1.ReplicaSet, error) {
	old := findOldReplicaSets(d, rsList)
	newRS, err := c.newReplicaSet(ctx, d, rsList, old, create)
	if err != nil {
		return nil, nil, err
	}
	return newRS, old, nil
}

// newReplicaSet returns the ReplicaSet of the deployment's current template. An existing
// one (a rollback re-uses an old one) gets revision max(old)+1; a missing one is created
// when create is set, sized by the strategy.
func (c *Controller) newReplicaSet(ctx context.Context, d *appsv1.Deployment, rsList, old []*appsv1.ReplicaSet, create bool) (*appsv1.ReplicaSet, error) {
	existing := findNewReplicaSet(d, rsList)
	newRevision := maxRevision(old) + 1

	if existing != nil {
		rs := existing.DeepCopy()
		annotated := setNewReplicaSetAnnotations(d, rs, newRevision, true)
		if annotated || rs.Spec.MinReadySeconds != d.Spec.MinReadySeconds {
			rs.Spec.MinReadySeconds = d.Spec.MinReadySeconds
			updated, err := c.kube.AppsV1().ReplicaSets(rs.Namespace).Update(ctx, rs, metav1.UpdateOptions{})
			if err != nil {
				return nil, fmt.Errorf("update annotations of replica set %s/%s: %w", rs.Namespace, rs.Name, err)
			}
			// Later steps of this pass search rsList again: let them see the update rather
			// than write over it from the stale copy.
			for i := range rsList {
				if rsList[i].UID == updated.UID {
					rsList[i] = updated
				}
			}
			// The deployment's revision follows on the next pass, prompted by this update.
			return updated, nil
		}
		changed := setDeploymentRevision(d, rs.Annotations[revisionAnnotation])
		// A deployment that never had a Progressing condition (its deadline was just set)
		// starts counting from the first time its new ReplicaSet is seen.
		if hasProgressDeadline(d) && getCondition(d.Status, appsv1.DeploymentProgressing) == nil {
			setCondition(&d.Status, c.condition(appsv1.DeploymentProgressing, corev1.ConditionTrue,
				reasonFoundNewRS, fmt.Sprintf("Found new replica set %q", rs.Name)))
			changed = true
		}
		if changed {
			if err := c.updateStatus(ctx, d); err != nil {
				return nil, err
			}
		}
		return rs, nil
	}
	if !create {
		return nil, nil
	}

	template := d.Spec.Template.DeepCopy()
	hash := templateHash(template, d.Status.CollisionCount)
	template.Labels = withLabel(d.Spec.Template.Labels, hashLabel, hash)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{
			// A name derived from the template makes creation idempotent.
			Name:            d.Name + "-" + hash,
			Namespace:       d.Namespace,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(d, kind)},
			Labels:          template.Labels,
		},
		Spec: appsv1.ReplicaSetSpec{
			Replicas:        new(int32),
			MinReadySeconds: d.Spec.MinReadySeconds,
			Selector:        selectorWithLabel(d.Spec.Selector, hashLabel, hash),
			Template:        *template,
		},
	}
	replicas, err := newRSReplicas(d, append(old, rs), rs)
	if err != nil {
		return nil, err
	}
	*rs.Spec.Replicas = replicas
	setNewReplicaSetAnnotations(d, rs, newRevision, false)

	created, err := c.kube.AppsV1().ReplicaSets(d.Namespace).Create(ctx, rs, metav1.CreateOptions{})
	alreadyExists := false
	switch {
	case apierrors.IsAlreadyExists(err):
		alreadyExists = true
		// Our own from an earlier pass the cache has not shown yet, or a hash collision.
		found, gerr := c.replicaSets.ReplicaSets(rs.Namespace).Get(rs.Name)
		if gerr != nil {
			return nil, fmt.Errorf("get existing replica set %s/%s: %w", rs.Namespace, rs.Name, gerr)
		}
		if ref := metav1.GetControllerOf(found); ref != nil && ref.UID == d.UID && equalIgnoreHash(&d.Spec.Template, &found.Spec.Template) {
			created, err = found, nil
			break
		}
		// A collision: the next pass hashes with a higher collision count.
		if d.Status.CollisionCount == nil {
			d.Status.CollisionCount = new(int32)
		}
		*d.Status.CollisionCount++
		if uerr := c.updateStatus(ctx, d); uerr == nil {
			c.log.Info("hash collision, bumped collisionCount", "deployment", d.Namespace+"/"+d.Name, "collisionCount", *d.Status.CollisionCount)
		}
		return nil, fmt.Errorf("create replica set %s/%s: %w", rs.Namespace, rs.Name, err)
	case apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause):
		return nil, fmt.Errorf("create replica set %s/%s: %w", rs.Namespace, rs.Name, err)
	case err != nil:
		msg := fmt.Sprintf("Failed to create new replica set %q: %v", rs.Name, err)
		if hasProgressDeadline(d) {
			setCondition(&d.Status, c.condition(appsv1.DeploymentProgressing, corev1.ConditionFalse, reasonFailedRSCreate, msg))
			// The create error is the one to report; this status is a courtesy.
			_ = c.updateStatus(ctx, d)
		}
		c.recorder.Eventf(d, corev1.EventTypeWarning, reasonFailedRSCreate, msg)
		return nil, fmt.Errorf("create replica set %s/%s: %w", rs.Namespace, rs.Name, err)
	}
	if !alreadyExists && replicas > 0 {
		c.recorder.Eventf(d, corev1.EventTypeNormal, "ScalingReplicaSet", "Scaled up replica set %s from 0 to %d", created.Name, replicas)
	}
	changed := setDeploymentRevision(d, strconv.FormatInt(newRevision, 10))
	if !alreadyExists && hasProgressDeadline(d) {
		setCondition(&d.Status, c.condition(appsv1.DeploymentProgressing, corev1.ConditionTrue,
			reasonNewRSCreated, fmt.Sprintf("Created new replica set %q", created.Name)))
		changed = true
	}
	if changed {
		if err := c.updateStatus(ctx, d); err != nil {
			return created, err
		}
	}
	return created, nil
}

// updateStatus writes d through the status subresource (which also keeps its annotation
// changes) and takes the server's answer into d, so that a later write in the same pass
// does not conflict with this one.
func (c *Controller) updateStatus(ctx context.Context, d *appsv1.Deployment) error {
	updated, err := c.kube.AppsV1().Deployments(d.Namespace).UpdateStatus(ctx, d, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("update status of deployment %s/%s: %w", d.Namespace, d.Name, err)
	}
	*d = *updated
	return nil
}
