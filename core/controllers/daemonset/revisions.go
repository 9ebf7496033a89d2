package daemonset

import (
	"bytes"
	"context"
	"fmt"
	"maps"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/core/controllers/history"
)

// hashLabel labels DaemonSet pods and revisions with the template hash.
const hashLabel = appsv1.DefaultDaemonSetUniqueLabelKey // controller-revision-hash

// constructHistory returns the revision storing the DaemonSet's template (created, or
// renumbered as the newest after a rollback) and the others.
func (c *Controller) constructHistory(ctx context.Context, ds *appsv1.DaemonSet, revs []*appsv1.ControllerRevision) (cur *appsv1.ControllerRevision, old []*appsv1.ControllerRevision, err error) {
	patch, err := history.TemplatePatch(ds)
	if err != nil {
		return nil, nil, fmt.Errorf("revision of daemonset %s/%s: %w", ds.Namespace, ds.Name, err)
	}
	var matching []*appsv1.ControllerRevision
	for _, r := range revs {
		if _, ok := r.Labels[hashLabel]; !ok {
			// Older revisions may lack the label; the name is as unique as a hash.
			r = r.DeepCopy()
			if r.Labels == nil {
				r.Labels = map[string]string{}
			}
			r.Labels[hashLabel] = r.Name
			if r, err = c.kube.AppsV1().ControllerRevisions(r.Namespace).Update(ctx, r, metav1.UpdateOptions{}); err != nil {
				return nil, nil, fmt.Errorf("label revision %s/%s: %w", ds.Namespace, r.Name, err)
			}
		}
		if bytes.Equal(r.Data.Raw, patch) {
			matching = append(matching, r)
		} else {
			old = append(old, r)
		}
	}
	next := history.Next(old)
	if len(matching) == 0 {
		cur, err = c.snapshot(ctx, ds, patch, next)
		return cur, old, err
	}
	// Duplicates of the current template (Kubernetes relabels their pods; berth keeps the
	// newest and lets the others age out as old history).
	cur = matching[len(matching)-1]
	old = append(old, matching[:len(matching)-1]...)
	history.Sort(old)
	if cur.Revision < next {
		if cur, err = history.SetRevision(ctx, c.kube, cur, next); err != nil {
			return nil, nil, err
		}
	}
	return cur, old, nil
}

// snapshot creates the revision of the DaemonSet's template, named with the template hash.
// A revision of another template under that name is a hash collision: the collision count
// goes up in the status and the next pass tries the next name.
func (c *Controller) snapshot(ctx context.Context, ds *appsv1.DaemonSet, patch []byte, number int64) (*appsv1.ControllerRevision, error) {
	hash := history.TemplateHash(&ds.Spec.Template, ds.Status.CollisionCount)
	rev := history.New(ds, kind, ds.Spec.Template.Labels, patch, number, nil)
	rev.Name = history.Name(ds.Name, hash)
	delete(rev.Labels, history.HashLabel)
	rev.Labels[hashLabel] = hash
	rev.Annotations = maps.Clone(ds.Annotations)
	created, err := c.kube.AppsV1().ControllerRevisions(ds.Namespace).Create(ctx, rev, metav1.CreateOptions{})
	if err == nil {
		return created, nil
	}
	if !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create revision %s/%s: %w", ds.Namespace, rev.Name, err)
	}
	existing, err := c.kube.AppsV1().ControllerRevisions(ds.Namespace).Get(ctx, rev.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get revision %s/%s: %w", ds.Namespace, rev.Name, err)
	}
	if bytes.Equal(existing.Data.Raw, patch) {
		return existing, nil
	}
	fresh, err := c.kube.AppsV1().DaemonSets(ds.Namespace).Get(ctx, ds.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("re-read daemonset %s/%s: %w", ds.Namespace, ds.Name, err)
	}
	var count int32
	if fresh.Status.CollisionCount != nil {
		count = *fresh.Status.CollisionCount
	}
	count++
	fresh.Status.CollisionCount = &count
	if _, err := c.kube.AppsV1().DaemonSets(ds.Namespace).UpdateStatus(ctx, fresh, metav1.UpdateOptions{}); err != nil {
		return nil, fmt.Errorf("bump collision count of daemonset %s/%s: %w", ds.Namespace, ds.Name, err)
	}
	return nil, fmt.Errorf("revision %s/%s collides with another template; collision count now %d", ds.Namespace, rev.Name, count)
}

// cleanupHistory deletes the oldest revisions beyond spec.revisionHistoryLimit that no pod
// runs.
func (c *Controller) cleanupHistory(ctx context.Context, ds *appsv1.DaemonSet, pods []*corev1.Pod, old []*appsv1.ControllerRevision, cur *appsv1.ControllerRevision) error {
	limit := 10
	if ds.Spec.RevisionHistoryLimit != nil {
		limit = int(*ds.Spec.RevisionHistoryLimit)
	}
	if len(old) <= limit {
		return nil
	}
	liveHashes := map[string]bool{}
	for _, p := range pods {
		if h := p.Labels[hashLabel]; h != "" {
			liveHashes[h] = true
		}
	}
	live := map[string]bool{cur.Name: true}
	for _, r := range old {
		if liveHashes[r.Labels[hashLabel]] {
			live[r.Name] = true
		}
	}
	return history.Truncate(ctx, c.kube, old, live, limit)
}
