package job

import (
	"context"
	"errors"
	"fmt"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
)

// maxUncounted bounds status.uncountedTerminatedPods (Kubernetes' MaxUncountedPods), which
// keeps the status small and one sync short; the rest waits for the next sync.
const maxUncounted = 500

// track counts finished pods into the status without ever counting one twice or losing one:
//  1. the pods that finished go into status.uncountedTerminatedPods (for an Indexed Job,
//     succeeded ones go straight into completedIndexes), and the status is written;
//  2. their tracking finalizers are removed, so the pods may now be deleted;
//  3. the uncounted pods without a finalizer move into succeeded and failed;
//  4. once nothing is uncounted or terminating, the Job gets Complete or Failed.
//
// A crash between the steps repeats a step but never counts twice: a pod is in the uncounted
// list until its finalizer is gone, and is not looked at again afterwards.
func (c *Controller) track(ctx context.Context, s *syncState, needsFlush bool) error {
	job := s.job
	withFinalizer := sets.New[types.UID]()
	for _, p := range s.pods {
		if hasTrackingFinalizer(p) {
			withFinalizer.Insert(p.UID)
		}
	}
	if countUncounted(&job.Status, withFinalizer) {
		needsFlush = true
	}
	uncounted := job.Status.UncountedTerminatedPods
	var release []*corev1.Pod
	var newIndexes []int
	full := false
	for _, p := range s.pods {
		if !hasTrackingFinalizer(p) {
			continue
		}
		failed := isFailed(p, job)
		if job.DeletionTimestamp == nil && s.finished == nil && p.Status.Phase != corev1.PodSucceeded && !failed {
			continue // still running and needed
		}
		release = append(release, p)
		ix := completionIndex(p)
		switch {
		case p.Status.Phase == corev1.PodSucceeded && !s.uncountedFailed.Has(p.UID):
			if s.indexes != nil {
				if validIndex(job, ix) && !s.indexes.recorded[ix] {
					newIndexes = append(newIndexes, ix)
					needsFlush = true
				}
			} else if !s.uncountedSucceeded.Has(p.UID) {
				uncounted.Succeeded = append(uncounted.Succeeded, p.UID)
				needsFlush = true
			}
		case failed || (s.finished != nil && s.finished.Type != batchv1.JobSuccessCriteriaMet):
			// A failing Job counts every pod that did not succeed as failed.
			if s.uncountedFailed.Has(p.UID) || (s.indexes != nil && !validIndex(job, ix)) {
				break
			}
			if matchFailurePolicy(job.Spec.PodFailurePolicy, p).count {
				uncounted.Failed = append(uncounted.Failed, p.UID)
				needsFlush = true
			}
		}
		if len(newIndexes)+len(uncounted.Succeeded)+len(uncounted.Failed) >= maxUncounted {
			full = true
			break
		}
	}
	if s.indexes != nil {
		done := s.indexes.record(newIndexes)
		if done != job.Status.CompletedIndexes {
			needsFlush = true
		}
		job.Status.CompletedIndexes = done
		job.Status.Succeeded = s.indexes.total()
	}
	// The interim conditions are written before any finalizer goes, so that the decision
	// survives the pods that justified it.
	if s.finished != nil && s.finished.Type == batchv1.JobFailureTarget {
		job.Status.Conditions = append(job.Status.Conditions, *s.finished)
		needsFlush = true
		s.finished = newCondition(batchv1.JobFailed, s.finished.Reason, s.finished.Message, s.now)
	}
	if s.finished != nil && s.finished.Type == batchv1.JobSuccessCriteriaMet {
		if findCondition(job, batchv1.JobSuccessCriteriaMet) == nil {
			job.Status.Conditions = append(job.Status.Conditions, *s.finished)
			needsFlush = true
		}
		s.finished = newCondition(batchv1.JobComplete, s.finished.Reason, s.finished.Message, s.now)
	}

	if needsFlush {
		if err := c.writeStatus(ctx, s); err != nil {
			return fmt.Errorf("add uncounted pods to status: %w", err)
		}
		c.backoff.save(s.key, s.backoff)
		needsFlush = false
	}
	var errs []error
	for _, p := range release {
		if err := c.removeFinalizer(ctx, p); err != nil {
			errs = append(errs, err)
			continue
		}
		withFinalizer.Delete(p.UID)
	}
	if countUncounted(&s.job.Status, withFinalizer) {
		needsFlush = true
	}
	if len(errs) > 0 {
		if needsFlush {
			if err := c.writeStatus(ctx, s); err != nil {
				errs = append(errs, fmt.Errorf("count pods in status: %w", err))
			}
		}
		return errors.Join(errs...)
	}
	done := !full && s.enactFinished()
	if done || needsFlush {
		if err := c.writeStatus(ctx, s); err != nil {
			return fmt.Errorf("count pods in status: %w", err)
		}
	}
	if done {
		c.recordFinished(s.job, s.finished)
	}
	return nil
}

// writeStatus writes s.job's status and carries on with what the server returned.
func (c *Controller) writeStatus(ctx context.Context, s *syncState) error {
	updated, err := c.kube.BatchV1().Jobs(s.job.Namespace).UpdateStatus(ctx, s.job, metav1.UpdateOptions{})
	if err != nil {
		return err
	}
	if updated.Status.UncountedTerminatedPods == nil {
		updated.Status.UncountedTerminatedPods = &batchv1.UncountedTerminatedPods{}
	}
	s.job = updated
	return nil
}

// countUncounted moves the uncounted pods that no longer carry the finalizer into the
// counters; it reports whether any moved.
func countUncounted(status *batchv1.JobStatus, withFinalizer sets.Set[types.UID]) bool {
	u := status.UncountedTerminatedPods
	keep := func(uids []types.UID) []types.UID {
		var out []types.UID
		for _, uid := range uids {
			if withFinalizer.Has(uid) {
				out = append(out, uid)
			}
		}
		return out
	}
	succeeded, failed := keep(u.Succeeded), keep(u.Failed)
	moved := len(u.Succeeded) - len(succeeded) + len(u.Failed) - len(failed)
	status.Succeeded += int32(len(u.Succeeded) - len(succeeded))
	status.Failed += int32(len(u.Failed) - len(failed))
	u.Succeeded, u.Failed = succeeded, failed
	return moved > 0
}

// enactFinished puts the final condition on the Job once every pod is counted and none is
// still terminating.
func (s *syncState) enactFinished() bool {
	if s.finished == nil {
		return false
	}
	u := s.job.Status.UncountedTerminatedPods
	if len(u.Succeeded)+len(u.Failed) > 0 || s.terminating > 0 {
		return false
	}
	setCondition(s.job, s.finished.Type, corev1.ConditionTrue, s.finished.Reason, s.finished.Message, s.now)
	if s.finished.Type == batchv1.JobComplete {
		t := metav1.NewTime(s.now)
		s.job.Status.CompletionTime = &t
	}
	return true
}

// recordFinished emits the events of a Job that just finished.
func (c *Controller) recordFinished(job *batchv1.Job, cond *batchv1.JobCondition) {
	if cond.Type != batchv1.JobComplete {
		c.recorder.Event(job, corev1.EventTypeWarning, cond.Reason, cond.Message)
		c.log.Info("job failed", "job", job.Namespace+"/"+job.Name, "reason", cond.Reason)
		return
	}
	if job.Spec.Completions != nil && job.Status.Succeeded > *job.Spec.Completions {
		c.recorder.Event(job, corev1.EventTypeWarning, "TooManySucceededPods", "Too many succeeded pods running after completion count reached")
	}
	c.recorder.Event(job, corev1.EventTypeNormal, "Completed", "Job completed")
	c.log.Info("job completed", "job", job.Namespace+"/"+job.Name)
}
