package job

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"berth.dev/berth/core/controllers/ownership"
)

// maxPodChangesPerSync caps the pods one sync creates or deletes, as Kubernetes does, so
// that a huge Job does not starve the others.
const maxPodChangesPerSync = 500

// selector is the Job's pod selector. The API server generates controller-uid=<uid> for a Job
// without spec.manualSelector; a Job that reached us without one gets the same here.
func selector(job *batchv1.Job) (labels.Selector, error) {
	if job.Spec.Selector == nil {
		return labels.SelectorFromSet(labels.Set{batchv1.ControllerUidLabel: string(job.UID)}), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(job.Spec.Selector)
	if err != nil {
		return nil, fmt.Errorf("selector of job %s/%s: %w", job.Namespace, job.Name, err)
	}
	return sel, nil
}

// podsFor lists the Job's pods from the API server and claims them (adopting orphans that
// match, releasing ours that no longer do). Reading the server rather than the informer's
// cache costs one list per sync, and spares the expectations bookkeeping Kubernetes needs so
// as not to create twice, or count twice, what its cache has not seen yet.
func (c *Controller) podsFor(ctx context.Context, job *batchv1.Job) ([]*corev1.Pod, error) {
	sel, err := selector(job)
	if err != nil {
		return nil, err
	}
	list, err := c.kube.CoreV1().Pods(job.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, fmt.Errorf("list pods of job %s/%s: %w", job.Namespace, job.Name, err)
	}
	candidates := make([]*corev1.Pod, len(list.Items))
	for i := range list.Items {
		candidates[i] = &list.Items[i]
	}
	owner := ownership.Owner{
		Object:   job,
		Kind:     kind,
		Selector: sel,
		CanAdopt: ownership.Recheck(job, "Job", func(ctx context.Context) (*batchv1.Job, error) {
			return c.kube.BatchV1().Jobs(job.Namespace).Get(ctx, job.Name, metav1.GetOptions{})
		}),
	}
	orphans := map[types.UID]bool{}
	for _, p := range candidates {
		if metav1.GetControllerOf(p) == nil {
			orphans[p.UID] = true
		}
	}
	claimed, err := ownership.Claim(ctx, owner, candidates, c.patchPod(job.Namespace))
	if err != nil {
		return nil, err
	}
	// An adopted pod must be counted when it finishes: it gets the tracking finalizer, as
	// Kubernetes adds it in the adoption patch.
	for _, p := range claimed {
		if !orphans[p.UID] || hasTrackingFinalizer(p) || finishedPhase(p) {
			continue
		}
		patch := []byte(fmt.Sprintf(`{"metadata":{"finalizers":[%q]}}`, batchv1.JobTrackingFinalizer))
		if err := c.patchPod(job.Namespace)(ctx, p.Name, patch); err != nil && !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("add tracking finalizer to adopted pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		p.Finalizers = append(p.Finalizers, batchv1.JobTrackingFinalizer)
	}
	return claimed, nil
}

func (c *Controller) patchPod(namespace string) ownership.Patch {
	return func(ctx context.Context, name string, data []byte) error {
		_, err := c.kube.CoreV1().Pods(namespace).Patch(ctx, name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
		return err
	}
}

// newPod builds a pod from the Job's template: labels that tie it to the Job (prefixed and
// legacy), the controller reference, and the tracking finalizer. index is the completion
// index of an Indexed Job, or -1.
func newPod(job *batchv1.Job, index int) *corev1.Pod {
	tmpl := job.Spec.Template.DeepCopy()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName:    job.Name + "-",
			Namespace:       job.Namespace,
			Labels:          tmpl.Labels,
			Annotations:     tmpl.Annotations,
			Finalizers:      tmpl.Finalizers,
			OwnerReferences: []metav1.OwnerReference{ownership.ControllerRef(job, kind)},
		},
		Spec: tmpl.Spec,
	}
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	for k, v := range map[string]string{
		batchv1.ControllerUidLabel: string(job.UID), legacyControllerUIDLabel: string(job.UID),
		batchv1.JobNameLabel: job.Name, legacyJobNameLabel: job.Name,
	} {
		if _, ok := pod.Labels[k]; !ok {
			pod.Labels[k] = v
		}
	}
	if !hasTrackingFinalizer(pod) {
		pod.Finalizers = append(pod.Finalizers, batchv1.JobTrackingFinalizer)
	}
	if index >= 0 {
		setCompletionIndex(job, pod, index)
	}
	return pod
}

// createPods creates pods for the given completion indexes (-1 for a NonIndexed Job) and
// returns how many it created; it stops at the first failure.
func (c *Controller) createPods(ctx context.Context, job *batchv1.Job, indexes []int) (int32, error) {
	var created int32
	for _, ix := range indexes {
		pod, err := c.kube.CoreV1().Pods(job.Namespace).Create(ctx, newPod(job, ix), metav1.CreateOptions{})
		if apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
			return created, nil // everything goes with the namespace anyway
		}
		if err != nil {
			c.recorder.Eventf(job, corev1.EventTypeWarning, "FailedCreate", "Error creating: %v", err)
			return created, fmt.Errorf("create pod for job %s/%s: %w", job.Namespace, job.Name, err)
		}
		created++
		c.recorder.Eventf(job, corev1.EventTypeNormal, "SuccessfulCreate", "Created pod: %v", pod.Name)
	}
	return created, nil
}

// deletePods deletes pods and returns how many went and how many of those were ready. With
// release, the tracking finalizer goes first: the pod is not counted (too many were
// running, or the Job is suspended). Without, the finalizer stays until the pod is counted
// as failed (the Job is failing).
func (c *Controller) deletePods(ctx context.Context, job *batchv1.Job, pods []*corev1.Pod, release bool) (deleted, ready int32, err error) {
	var errs []error
	for _, p := range pods {
		if release && hasTrackingFinalizer(p) {
			if err := c.removeFinalizer(ctx, p); err != nil {
				errs = append(errs, err)
				continue
			}
		}
		err := c.kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &p.UID}})
		if err != nil && !apierrors.IsNotFound(err) {
			c.recorder.Eventf(job, corev1.EventTypeWarning, "FailedDelete", "Error deleting: %v", err)
			errs = append(errs, fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err))
			continue
		}
		if err == nil {
			c.recorder.Eventf(job, corev1.EventTypeNormal, "SuccessfulDelete", "Deleted pod: %v", p.Name)
		}
		deleted++
		if podReady(p) {
			ready++
		}
	}
	return deleted, ready, errors.Join(errs...)
}

// removeFinalizer takes the tracking finalizer off a pod; a pod already gone is fine.
func (c *Controller) removeFinalizer(ctx context.Context, p *corev1.Pod) error {
	patch, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{"$deleteFromPrimitiveList/finalizers": []string{batchv1.JobTrackingFinalizer}},
	})
	_, err := c.kube.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove tracking finalizer from pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// releaseStrays removes the tracking finalizer from pods labelled with the Job's name that
// no Job will count any more: with keep empty (the Job is deleted or finished) all of them,
// orphans included; otherwise those controlled by another Job, an earlier one of the same
// name. It reads the informer's cache: a stale entry only costs a patch that changes nothing.
func (c *Controller) releaseStrays(ctx context.Context, namespace, name string, keep types.UID) error {
	pods, err := c.pods.Pods(namespace).List(labels.SelectorFromSet(labels.Set{batchv1.JobNameLabel: name}))
	if err != nil {
		return fmt.Errorf("list pods of job %s/%s: %w", namespace, name, err)
	}
	var errs []error
	for _, p := range pods {
		ref := metav1.GetControllerOf(p)
		switch {
		case !hasTrackingFinalizer(p):
			continue
		case ref == nil && keep != "", ref != nil && (ref.Kind != kind.Kind || ref.UID == keep):
			continue
		}
		errs = append(errs, c.removeFinalizer(ctx, p))
	}
	return errors.Join(errs...)
}

// forRemoval picks n active pods to delete, the least advanced first: unscheduled before
// scheduled, pending before running, not ready before ready, newer before older.
func forRemoval(pods []*corev1.Pod, n int) []*corev1.Pod {
	if n <= 0 {
		return nil
	}
	sorted := append([]*corev1.Pod(nil), pods...)
	rank := func(p *corev1.Pod) [3]bool {
		return [3]bool{p.Spec.NodeName != "", p.Status.Phase == corev1.PodRunning, podReady(p)}
	}
	sort.SliceStable(sorted, func(i, j int) bool {
		ri, rj := rank(sorted[i]), rank(sorted[j])
		for k := range ri {
			if ri[k] != rj[k] {
				return !ri[k]
			}
		}
		return sorted[i].CreationTimestamp.After(sorted[j].CreationTimestamp.Time)
	})
	return sorted[:min(n, len(sorted))]
}

func hasTrackingFinalizer(p *corev1.Pod) bool {
	for _, f := range p.Finalizers {
		if f == batchv1.JobTrackingFinalizer {
			return true
		}
	}
	return false
}

func finishedPhase(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// isActive: the pod runs, or will, and nobody is deleting it.
func isActive(p *corev1.Pod) bool { return !finishedPhase(p) && p.DeletionTimestamp == nil }

// isTerminating: being deleted but not finished yet.
func isTerminating(p *corev1.Pod) bool { return !finishedPhase(p) && p.DeletionTimestamp != nil }

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
