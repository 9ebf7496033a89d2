package job

import (
	"context"
	"fmt"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/tools/cache"

	"berth.dev/berth/core/controllers/reconcile"
)

// syncState is what one sync of a Job learns and decides.
type syncState struct {
	key    string
	job    *batchv1.Job
	now    time.Time
	pods   []*corev1.Pod // claimed, any phase
	active []*corev1.Pod
	// ready and terminating are the status counters being computed.
	ready, terminating int32
	// succeeded and failed count the pods already in the status, the uncounted ones and the
	// newly finished ones.
	succeeded, failed int32
	// uncountedSucceeded and uncountedFailed are status.uncountedTerminatedPods as read.
	uncountedSucceeded, uncountedFailed sets.Set[types.UID]
	// finished is the condition the Job is heading to, nil while it runs.
	finished *batchv1.JobCondition
	backoff  backoffRecord
	indexes  *indexState // nil for a NonIndexed Job
	requeue  time.Duration
}

func (s *syncState) requeueAfter(d time.Duration) {
	if d > 0 && (s.requeue == 0 || d < s.requeue) {
		s.requeue = d
	}
}

// Reconcile syncs one Job, keyed "namespace/name": it creates or deletes pods, counts those
// that finished, decides whether the Job succeeded or failed, and deletes a finished Job
// whose TTL ran out.
func (c *Controller) Reconcile(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil || ns == "" || name == "" {
		return reconcile.Result{}, reconcile.Terminal(fmt.Errorf("invalid job key %q", key))
	}
	// The server's copy, not the informer's: the status this sync builds on must include
	// what the previous sync wrote, or pods would be counted twice.
	job, err := c.kube.BatchV1().Jobs(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		c.backoff.forget(key)
		return reconcile.Result{}, c.releaseStrays(ctx, ns, name, "")
	}
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("get job %s: %w", key, err)
	}
	if m := job.Spec.ManagedBy; m != nil && *m != controllerName {
		return reconcile.Result{}, nil // another controller's
	}
	if _, done := finished(job); done {
		c.backoff.forget(key)
		if err := c.releaseStrays(ctx, ns, name, ""); err != nil {
			return reconcile.Result{}, err
		}
		return c.expire(ctx, job)
	}
	if m := job.Spec.CompletionMode; m != nil && *m != batchv1.NonIndexedCompletion && *m != batchv1.IndexedCompletion {
		c.recorder.Event(job, corev1.EventTypeWarning, "UnknownCompletionMode", "Skipped Job sync because completion mode is unknown")
		return reconcile.Result{}, nil
	}
	if isIndexed(job) && job.Spec.Completions == nil {
		// The server's validation forbids it; without completions there are no indexes.
		return reconcile.Result{}, reconcile.Terminal(fmt.Errorf("indexed job %s has no completions", key))
	}
	if err := c.releaseStrays(ctx, ns, name, job.UID); err != nil {
		return reconcile.Result{}, err
	}
	return c.sync(ctx, key, job)
}

// sync runs an unfinished Job.
func (c *Controller) sync(ctx context.Context, key string, job *batchv1.Job) (reconcile.Result, error) {
	if job.Status.UncountedTerminatedPods == nil {
		job.Status.UncountedTerminatedPods = &batchv1.UncountedTerminatedPods{}
	}
	pods, err := c.podsFor(ctx, job)
	if err != nil {
		return reconcile.Result{}, err
	}
	s := &syncState{
		key: key, job: job, now: c.opts.Now(), pods: pods,
		uncountedSucceeded: sets.New(job.Status.UncountedTerminatedPods.Succeeded...),
		uncountedFailed:    sets.New(job.Status.UncountedTerminatedPods.Failed...),
	}
	for _, p := range pods {
		switch {
		case isActive(p):
			s.active = append(s.active, p)
			if podReady(p) {
				s.ready++
			}
		case isTerminating(p):
			s.terminating++
		}
	}
	newSucceeded, newFailed := s.newlyFinished()
	s.succeeded = job.Status.Succeeded + int32(len(newSucceeded)+s.uncountedSucceeded.Len())
	s.failed = job.Status.Failed + int32(s.uncountedFailed.Len())
	for _, p := range newFailed {
		if matchFailurePolicy(job.Spec.PodFailurePolicy, p).count {
			s.failed++
		}
	}
	if job.Status.StartTime == nil && !suspended(job) {
		start := metav1.NewTime(s.now)
		job.Status.StartTime = &start
	}
	s.backoff = c.backoff.next(key, newSucceeded, newFailed)
	if isIndexed(job) {
		s.indexes = newIndexState(job, pods)
		s.succeeded = s.indexes.total()
	}
	s.judge(job)

	active := int32(len(s.active))
	suspendChanged := false
	var manageErr error
	if s.finished != nil {
		// Failing (or done): stop what still runs. The pods keep their finalizer until they
		// are counted as failed.
		deleted, ready, err := c.deletePods(ctx, job, s.active, false)
		if deleted != active {
			s.finished = nil // not all stopped: try again next sync
		}
		active -= deleted
		s.terminating += deleted
		s.ready -= ready
		manageErr = err
	} else {
		managed := false
		if job.DeletionTimestamp == nil {
			active, manageErr = c.manage(ctx, s)
			managed = true
		}
		completions := specCompletions(job)
		if (completions == nil && s.succeeded > 0 && active == 0) || (completions != nil && s.succeeded >= *completions && active == 0) {
			s.finished = newCondition(batchv1.JobSuccessCriteriaMet, batchv1.JobReasonCompletionsReached, msgCompletions, s.now)
		} else if managed {
			suspendChanged = c.syncSuspended(s)
		}
	}
	needsFlush := suspendChanged || active != job.Status.Active ||
		job.Status.Ready == nil || *job.Status.Ready != s.ready ||
		job.Status.Terminating == nil || *job.Status.Terminating != s.terminating
	job.Status.Active = active
	job.Status.Ready = &s.ready
	job.Status.Terminating = &s.terminating
	if err := c.track(ctx, s, needsFlush); err != nil {
		return reconcile.Result{}, fmt.Errorf("track status of job %s: %w", key, err)
	}
	return reconcile.Result{RequeueAfter: s.requeue}, manageErr
}

// newlyFinished returns the pods that finished and are in neither the status's counters nor
// its uncounted lists yet (a pod without the finalizer was counted already).
func (s *syncState) newlyFinished() (succeeded, failed []*corev1.Pod) {
	for _, p := range s.pods {
		if !hasTrackingFinalizer(p) {
			continue
		}
		if isIndexed(s.job) && !validIndex(s.job, completionIndex(p)) {
			continue
		}
		switch {
		case p.Status.Phase == corev1.PodSucceeded && !s.uncountedSucceeded.Has(p.UID):
			succeeded = append(succeeded, p)
		case isFailed(p, s.job) && !s.uncountedFailed.Has(p.UID):
			failed = append(failed, p)
		}
	}
	return succeeded, failed
}

// judge decides whether the Job has met its success criteria or must fail, in Kubernetes'
// order: a decision taken in an earlier sync stands, then the podFailurePolicy, the
// backoffLimit, the activeDeadlineSeconds.
func (s *syncState) judge(job *batchv1.Job) {
	if c := findCondition(job, batchv1.JobSuccessCriteriaMet); c != nil {
		s.finished = c.DeepCopy()
		return
	}
	if c := findCondition(job, batchv1.JobFailureTarget); c != nil {
		s.finished = newCondition(batchv1.JobFailed, c.Reason, c.Message, s.now)
		return
	}
	for _, p := range s.pods {
		if !isFailed(p, job) {
			continue
		}
		if v := matchFailurePolicy(job.Spec.PodFailurePolicy, p); v.failJob != "" {
			s.finished = newCondition(batchv1.JobFailureTarget, batchv1.JobReasonPodFailurePolicy, v.failJob, s.now)
			return
		}
	}
	switch {
	case s.failed > backoffLimit(job) || pastBackoffLimitOnFailure(job, s.pods):
		s.finished = newCondition(batchv1.JobFailureTarget, batchv1.JobReasonBackoffLimitExceeded, msgBackoffLimit, s.now)
	case job.Spec.ActiveDeadlineSeconds != nil && job.Status.StartTime != nil && !suspended(job):
		deadline := job.Status.StartTime.Add(time.Duration(*job.Spec.ActiveDeadlineSeconds) * time.Second)
		if !s.now.Before(deadline) {
			s.finished = newCondition(batchv1.JobFailureTarget, batchv1.JobReasonDeadlineExceeded, msgDeadline, s.now)
		} else {
			s.requeueAfter(deadline.Sub(s.now))
		}
	}
}

// manage creates or deletes pods so that the right number runs, and returns how many are
// active afterwards.
func (c *Controller) manage(ctx context.Context, s *syncState) (int32, error) {
	job := s.job
	active := int32(len(s.active))
	if suspended(job) {
		deleted, ready, err := c.deletePods(ctx, job, s.active, true)
		s.terminating += deleted
		s.ready -= ready
		return active - deleted, err
	}
	parallelism := int32(1)
	if job.Spec.Parallelism != nil {
		parallelism = *job.Spec.Parallelism
	}
	var want int32
	if completions := specCompletions(job); completions == nil {
		// A work queue: once one pod succeeded, the others finish on their own.
		want = parallelism
		if s.succeeded > 0 {
			want = active
		}
	} else {
		want = max(0, min(*completions-s.succeeded, parallelism))
	}

	var remove []*corev1.Pod
	keep := s.active
	if s.indexes != nil {
		remove, keep = s.indexes.duplicates(s.active)
	}
	remove = append(remove, forRemoval(keep, int(active-want)-len(remove))...)
	if len(remove) > maxPodChangesPerSync {
		remove = remove[:maxPodChangesPerSync]
	}
	if len(remove) > 0 {
		// Deleting and creating in one sync could fight; deleting wins, creating waits.
		deleted, ready, err := c.deletePods(ctx, job, remove, true)
		s.terminating += deleted
		s.ready -= ready
		return active - deleted, err
	}

	var terminating int32
	if onlyReplaceFailed(job) {
		terminating = s.terminating
	}
	diff := min(want-terminating-active, maxPodChangesPerSync)
	if diff <= 0 {
		return active, nil
	}
	if wait := s.backoff.remaining(s.now); wait > 0 {
		s.requeueAfter(wait)
		return active, nil
	}
	indexes := make([]int, diff)
	for i := range indexes {
		indexes[i] = -1
	}
	if s.indexes != nil {
		indexes = s.indexes.pending(s.active, int(diff))
	}
	created, err := c.createPods(ctx, job, indexes)
	return active + created, err
}

// syncSuspended sets the Suspended condition from spec.suspend; resuming restarts the clock
// of activeDeadlineSeconds, which counts the time a Job is running.
func (c *Controller) syncSuspended(s *syncState) bool {
	job := s.job
	if suspended(job) {
		if !setCondition(job, batchv1.JobSuspended, corev1.ConditionTrue, "JobSuspended", "Job suspended", s.now) {
			return false
		}
		c.recorder.Event(job, corev1.EventTypeNormal, "Suspended", "Job suspended")
		return true
	}
	if !setCondition(job, batchv1.JobSuspended, corev1.ConditionFalse, "JobResumed", "Job resumed", s.now) {
		return false
	}
	c.recorder.Event(job, corev1.EventTypeNormal, "Resumed", "Job resumed")
	start := metav1.NewTime(s.now)
	job.Status.StartTime = &start
	return true
}

// backoffLimit is spec.backoffLimit, 6 when the server did not default it.
func backoffLimit(job *batchv1.Job) int32 {
	if job.Spec.BackoffLimit == nil {
		return 6
	}
	return *job.Spec.BackoffLimit
}

// specCompletions is spec.completions, 1 when neither it nor parallelism is set (the
// server's default); nil means any one success completes the Job.
func specCompletions(job *batchv1.Job) *int32 {
	if job.Spec.Completions == nil && job.Spec.Parallelism == nil {
		one := int32(1)
		return &one
	}
	return job.Spec.Completions
}

// pastBackoffLimitOnFailure: with restartPolicy OnFailure failures show as container restarts
// of running pods, and those count against backoffLimit.
func pastBackoffLimitOnFailure(job *batchv1.Job, pods []*corev1.Pod) bool {
	if job.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyOnFailure {
		return false
	}
	var restarts int32
	for _, p := range pods {
		if p.Status.Phase != corev1.PodRunning && p.Status.Phase != corev1.PodPending {
			continue
		}
		for _, cs := range append(append([]corev1.ContainerStatus(nil), p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
			restarts += cs.RestartCount
		}
	}
	if limit := backoffLimit(job); limit > 0 {
		return restarts >= limit
	}
	return restarts > 0
}
