package cronjob

import (
	"context"
	"fmt"
	"strings"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"

	"berth.dev/berth/core/controllers/ownership"
	"berth.dev/berth/core/controllers/reconcile"
)

// Reconcile syncs one CronJob, keyed "namespace/name": it brings status.active up to date
// with its Jobs, deletes finished Jobs beyond the history limits, starts the Job of the most
// recent schedule time if it is due, and asks to be called again at the next one.
func (c *Controller) Reconcile(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil || ns == "" || name == "" {
		return reconcile.Result{}, reconcile.Terminal(fmt.Errorf("invalid cronjob key %q", key))
	}
	// The server's copy: status.active must include the Job the previous sync started.
	cj, err := c.kube.BatchV1().CronJobs(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("get cronjob %s: %w", key, err)
	}
	jobs, err := c.jobsOf(cj)
	if err != nil {
		return reconcile.Result{}, err
	}
	changed := c.cleanupHistory(ctx, cj, jobs)
	wait, changedBySync, syncErr := c.syncCronJob(ctx, cj, jobs)
	if changed || changedBySync {
		if _, err := c.kube.BatchV1().CronJobs(ns).UpdateStatus(ctx, cj, metav1.UpdateOptions{}); err != nil {
			return reconcile.Result{}, fmt.Errorf("update status of cronjob %s: %w", key, err)
		}
	}
	if wait > 0 {
		return reconcile.Result{RequeueAfter: wait}, nil
	}
	return reconcile.Result{}, syncErr
}

// jobsOf returns the Jobs the CronJob controls, from the informer's cache.
func (c *Controller) jobsOf(cj *batchv1.CronJob) ([]*batchv1.Job, error) {
	all, err := c.jobs.Jobs(cj.Namespace).List(labels.Everything())
	if err != nil {
		return nil, fmt.Errorf("list jobs of cronjob %s/%s: %w", cj.Namespace, cj.Name, err)
	}
	var out []*batchv1.Job
	for _, j := range all {
		if metav1.IsControlledBy(j, cj) {
			out = append(out, j)
		}
	}
	return out, nil
}

// syncCronJob updates cj's status in place and starts a Job if one is due; it returns how
// long until the next schedule time (0: no need to come back) and whether the status
// changed.
func (c *Controller) syncCronJob(ctx context.Context, cj *batchv1.CronJob, jobs []*batchv1.Job) (time.Duration, bool, error) {
	now := c.opts.Now()
	changed := false
	children := map[types.UID]bool{}
	for _, j := range jobs {
		children[j.UID] = true
		active := inActive(cj, j.UID)
		cond, done := finished(j)
		switch {
		case !active && !done:
			// A running Job of ours the status does not list: we crashed between creating it
			// and writing the status, or a user created it (kubectl create job --from).
			c.recorder.Eventf(cj, corev1.EventTypeWarning, "UnexpectedJob", "Saw a job that the controller did not create or forgot: %s", j.Name)
		case done:
			if active {
				removeActive(cj, j.UID)
				c.recorder.Eventf(cj, corev1.EventTypeNormal, "SawCompletedJob", "Saw completed job: %s, condition: %v", j.Name, cond)
				changed = true
			}
			if cond == batchv1.JobComplete && j.Status.CompletionTime != nil &&
				(cj.Status.LastSuccessfulTime == nil || j.Status.CompletionTime.After(cj.Status.LastSuccessfulTime.Time)) {
				cj.Status.LastSuccessfulTime = j.Status.CompletionTime
				changed = true
			}
		}
	}
	// An active Job that is gone would keep a Forbid CronJob from ever running again. The
	// cache may just be late: ask the server before dropping it.
	for _, ref := range append([]corev1.ObjectReference(nil), cj.Status.Active...) {
		if children[ref.UID] {
			continue
		}
		_, err := c.kube.BatchV1().Jobs(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			c.recorder.Eventf(cj, corev1.EventTypeNormal, "MissingJob", "Active job went missing: %v", ref.Name)
			removeActive(cj, ref.UID)
			changed = true
		case err != nil:
			return 0, changed, fmt.Errorf("get job %s/%s: %w", ref.Namespace, ref.Name, err)
		}
	}

	if cj.DeletionTimestamp != nil {
		return 0, changed, nil
	}
	if tz := cj.Spec.TimeZone; tz != nil {
		if _, err := time.LoadLocation(*tz); err != nil {
			c.recorder.Eventf(cj, corev1.EventTypeWarning, "UnknownTimeZone", "invalid timeZone: %q: %s", *tz, err)
			return 0, changed, nil
		}
	}
	if cj.Spec.Suspend != nil && *cj.Spec.Suspend {
		return 0, changed, nil
	}
	if strings.Contains(cj.Spec.Schedule, "TZ") {
		c.recorder.Eventf(cj, corev1.EventTypeWarning, "UnsupportedSchedule", "CRON_TZ or TZ used in schedule %q is not officially supported, see https://kubernetes.io/docs/concepts/workloads/controllers/cron-jobs/ for more details", cj.Spec.Schedule)
	}
	sched, err := parseSchedule(cj)
	if err != nil {
		// The user's to fix: wait for the spec to change.
		c.recorder.Eventf(cj, corev1.EventTypeWarning, "UnparseableSchedule", "unparseable schedule: %q : %s", cj.Spec.Schedule, err)
		return 0, changed, nil
	}
	m, err := mostRecent(cj, now, sched, true)
	if err != nil {
		c.recorder.Eventf(cj, corev1.EventTypeWarning, "InvalidSchedule", "invalid schedule: %s : %s", cj.Spec.Schedule, err)
		return 0, changed, nil
	}
	next := untilNext(cj, now, sched)
	if m.recent == nil {
		return next, changed, nil
	}
	scheduled := *m.recent
	if m.count > tooManyMissed {
		c.recorder.Eventf(cj, corev1.EventTypeWarning, "TooManyMissedTimes", "too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew")
		c.log.Info("too many missed start times", "cronjob", cj.Namespace+"/"+cj.Name)
	}
	if d := cj.Spec.StartingDeadlineSeconds; d != nil && scheduled.Add(time.Duration(*d)*time.Second).Before(now) {
		c.recorder.Eventf(cj, corev1.EventTypeWarning, "MissSchedule", "Missed scheduled time to start a job: %s", scheduled.UTC().Format(time.RFC1123Z))
		return next, changed, nil
	}
	if activeNamed(cj, jobName(cj, scheduled)) || (cj.Status.LastScheduleTime != nil && cj.Status.LastScheduleTime.Time.Equal(scheduled)) {
		return next, changed, nil // this run was started already
	}
	switch cj.Spec.ConcurrencyPolicy {
	case batchv1.ForbidConcurrent:
		if len(cj.Status.Active) > 0 {
			c.recorder.Eventf(cj, corev1.EventTypeNormal, "JobAlreadyActive", "Not starting job because prior execution is running and concurrency policy is Forbid")
			return next, changed, nil
		}
	case batchv1.ReplaceConcurrent:
		for _, ref := range append([]corev1.ObjectReference(nil), cj.Status.Active...) {
			j, err := c.kube.BatchV1().Jobs(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
			if err != nil {
				c.recorder.Eventf(cj, corev1.EventTypeWarning, "FailedGet", "Get job: %v", err)
				return 0, changed, fmt.Errorf("get job %s/%s to replace it: %w", ref.Namespace, ref.Name, err)
			}
			if err := c.deleteJob(ctx, cj, j); err != nil {
				return 0, changed, fmt.Errorf("replace job %s/%s: %w", j.Namespace, j.Name, err)
			}
			changed = true
		}
	}

	job, err := newJob(cj, scheduled)
	if err != nil {
		return 0, changed, err
	}
	created, err := c.kube.BatchV1().Jobs(cj.Namespace).Create(ctx, job, metav1.CreateOptions{})
	switch {
	case apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause):
		return 0, changed, err
	case apierrors.IsAlreadyExists(err):
		// Ours from an earlier sync whose status write was lost: list it now. Someone
		// else's: leave it be.
		existing, err := c.kube.BatchV1().Jobs(cj.Namespace).Get(ctx, job.Name, metav1.GetOptions{})
		if err != nil {
			return 0, changed, fmt.Errorf("get job %s/%s: %w", cj.Namespace, job.Name, err)
		}
		if !metav1.IsControlledBy(existing, cj) || inActive(cj, existing.UID) {
			return 0, changed, nil
		}
		created = existing
	case err != nil:
		c.recorder.Eventf(cj, corev1.EventTypeWarning, "FailedCreate", "Error creating job: %v", err)
		return 0, changed, fmt.Errorf("create job for cronjob %s/%s: %w", cj.Namespace, cj.Name, err)
	default:
		c.recorder.Eventf(cj, corev1.EventTypeNormal, "SuccessfulCreate", "Created job %v", created.Name)
		c.log.Info("created job", "cronjob", cj.Namespace+"/"+cj.Name, "job", created.Name, "scheduled", scheduled)
	}
	cj.Status.Active = append(cj.Status.Active, corev1.ObjectReference{
		Kind: "Job", APIVersion: "batch/v1", Namespace: created.Namespace, Name: created.Name,
		UID: created.UID, ResourceVersion: created.ResourceVersion,
	})
	at := metav1.NewTime(scheduled)
	cj.Status.LastScheduleTime = &at
	return untilNext(cj, now, sched), true, nil
}

// newJob builds the Job of one schedule time from the CronJob's template.
func newJob(cj *batchv1.CronJob, scheduled time.Time) (*batchv1.Job, error) {
	loc := time.UTC
	if tz := cj.Spec.TimeZone; tz != nil {
		var err error
		if loc, err = time.LoadLocation(*tz); err != nil {
			return nil, fmt.Errorf("time zone of cronjob %s/%s: %w", cj.Namespace, cj.Name, err)
		}
	}
	job := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{
			Name:            jobName(cj, scheduled),
			Namespace:       cj.Namespace,
			Labels:          map[string]string{},
			Annotations:     map[string]string{},
			OwnerReferences: []metav1.OwnerReference{ownership.ControllerRef(cj, kind)},
		},
	}
	for k, v := range cj.Spec.JobTemplate.Labels {
		job.Labels[k] = v
	}
	for k, v := range cj.Spec.JobTemplate.Annotations {
		job.Annotations[k] = v
	}
	job.Annotations[batchv1.CronJobScheduledTimestampAnnotation] = scheduled.In(loc).Format(time.RFC3339)
	cj.Spec.JobTemplate.Spec.DeepCopyInto(&job.Spec)
	return job, nil
}

// deleteJob deletes a Job with its pods (Background propagation) and drops it from
// status.active.
func (c *Controller) deleteJob(ctx context.Context, cj *batchv1.CronJob, j *batchv1.Job) error {
	background := metav1.DeletePropagationBackground
	err := c.kube.BatchV1().Jobs(j.Namespace).Delete(ctx, j.Name, metav1.DeleteOptions{PropagationPolicy: &background})
	if err != nil && !apierrors.IsNotFound(err) {
		c.recorder.Eventf(cj, corev1.EventTypeWarning, "FailedDelete", "Deleted job: %v", err)
		return fmt.Errorf("delete job %s/%s: %w", j.Namespace, j.Name, err)
	}
	removeActive(cj, j.UID)
	c.recorder.Eventf(cj, corev1.EventTypeNormal, "SuccessfulDelete", "Deleted job %v", j.Name)
	return nil
}

// finished returns a Job's Complete or Failed condition type if it is True.
func finished(j *batchv1.Job) (batchv1.JobConditionType, bool) {
	for _, c := range j.Status.Conditions {
		if (c.Type == batchv1.JobComplete || c.Type == batchv1.JobFailed) && c.Status == corev1.ConditionTrue {
			return c.Type, true
		}
	}
	return "", false
}

func inActive(cj *batchv1.CronJob, uid types.UID) bool {
	for _, ref := range cj.Status.Active {
		if ref.UID == uid {
			return true
		}
	}
	return false
}

func activeNamed(cj *batchv1.CronJob, name string) bool {
	for _, ref := range cj.Status.Active {
		if ref.Name == name && ref.Namespace == cj.Namespace {
			return true
		}
	}
	return false
}

func removeActive(cj *batchv1.CronJob, uid types.UID) {
	var keep []corev1.ObjectReference
	for _, ref := range cj.Status.Active {
		if ref.UID != uid {
			keep = append(keep, ref)
		}
	}
	cj.Status.Active = keep
}
