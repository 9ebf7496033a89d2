package statefulset

import (
	"context"
	"fmt"
	"maps"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	"berth.dev/berth/core/controllers/history"
)

// defaultHistoryLimit is spec.revisionHistoryLimit when unset (the API defaults it to 10).
const defaultHistoryLimit = 10

// newRevision builds the revision that stores the set's current template.
func newRevision(set *appsv1.StatefulSet, number int64, collisionCount *int32) (*appsv1.ControllerRevision, error) {
	patch, err := history.TemplatePatch(set)
	if err != nil {
		return nil, fmt.Errorf("revision of statefulset %s/%s: %w", set.Namespace, set.Name, err)
	}
	rev := history.New(set, kind, set.Spec.Template.Labels, patch, number, collisionCount)
	if len(set.Annotations) > 0 {
		// As Kubernetes: the set's annotations travel with the revision (kubectl keeps the
		// change-cause there).
		if rev.Annotations == nil {
			rev.Annotations = map[string]string{}
		}
		maps.Copy(rev.Annotations, set.Annotations)
	}
	return rev, nil
}

// chooseRevisions picks the current revision (status.currentRevision, or the update revision when
// there is none) and the update revision (the one storing the present template: reused,
// and renumbered when it is an older one come back by rollback, or created). revs must be
// sorted oldest first; the returned slice includes a created revision.
func (c *Controller) chooseRevisions(ctx context.Context, set *appsv1.StatefulSet, revs []*appsv1.ControllerRevision) (current, update *appsv1.ControllerRevision, all []*appsv1.ControllerRevision, collisionCount int32, err error) {
	if set.Status.CollisionCount != nil {
		collisionCount = *set.Status.CollisionCount
	}
	update, err = newRevision(set, history.Next(revs), &collisionCount)
	if err != nil {
		return nil, nil, nil, 0, err
	}
	all = revs
	equal := history.FindEqual(revs, update)
	switch {
	case len(equal) > 0 && equal[len(equal)-1] == revs[len(revs)-1]:
		update = revs[len(revs)-1] // the newest already stores this template
	case len(equal) > 0:
		// A rollback: the older revision becomes the newest.
		old := equal[len(equal)-1]
		update, err = history.SetRevision(ctx, c.kube, old, update.Revision)
		if err != nil {
			return nil, nil, nil, 0, err
		}
		for i := range all {
			if all[i].Name == update.Name {
				all[i] = update
			}
		}
		history.Sort(all)
	default:
		update, err = history.Create(ctx, c.kube, set, update, &collisionCount)
		if err != nil {
			return nil, nil, nil, 0, err
		}
		all = append(all, update)
	}
	for _, r := range all {
		if r.Name == set.Status.CurrentRevision {
			current = r
		}
	}
	if current == nil {
		current = update
	}
	return current, update, all, collisionCount, nil
}

// truncateHistory deletes the oldest revisions beyond spec.revisionHistoryLimit that no pod
// runs and that are neither current nor update.
func (c *Controller) truncateHistory(ctx context.Context, set *appsv1.StatefulSet, pods []*corev1.Pod, revs []*appsv1.ControllerRevision, current, update *appsv1.ControllerRevision) error {
	live := map[string]bool{current.Name: true, update.Name: true}
	for _, p := range pods {
		live[p.Labels[revisionLabel]] = true
	}
	limit := defaultHistoryLimit
	if set.Spec.RevisionHistoryLimit != nil {
		limit = int(*set.Spec.RevisionHistoryLimit)
	}
	return history.Truncate(ctx, c.kube, revs, live, limit)
}
