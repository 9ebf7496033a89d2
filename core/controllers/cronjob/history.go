package cronjob

import (
	"context"
	"sort"

	batchv1 "k8s.io/api/batch/v1"
)

// cleanupHistory deletes the oldest finished Jobs beyond successfulJobsHistoryLimit and
// failedJobsHistoryLimit (the server defaults them to 3 and 1; unset means keep all). It
// reports whether status.active changed.
func (c *Controller) cleanupHistory(ctx context.Context, cj *batchv1.CronJob, jobs []*batchv1.Job) bool {
	var succeeded, failed []*batchv1.Job
	for _, j := range jobs {
		switch cond, _ := finished(j); cond {
		case batchv1.JobComplete:
			succeeded = append(succeeded, j)
		case batchv1.JobFailed:
			failed = append(failed, j)
		}
	}
	changed := false
	for _, h := range []struct {
		jobs  []*batchv1.Job
		limit *int32
	}{{succeeded, cj.Spec.SuccessfulJobsHistoryLimit}, {failed, cj.Spec.FailedJobsHistoryLimit}} {
		if h.limit == nil || len(h.jobs) <= int(*h.limit) {
			continue
		}
		oldestFirst(h.jobs)
		for _, j := range h.jobs[:len(h.jobs)-int(*h.limit)] {
			if err := c.deleteJob(ctx, cj, j); err != nil {
				c.log.Info("could not delete old job", "cronjob", cj.Namespace+"/"+cj.Name, "job", j.Name, "err", err)
				continue
			}
			changed = true
		}
	}
	return changed
}

// oldestFirst sorts Jobs by start time, those never started last, then by name.
func oldestFirst(jobs []*batchv1.Job) {
	sort.SliceStable(jobs, func(a, b int) bool {
		sa, sb := jobs[a].Status.StartTime, jobs[b].Status.StartTime
		switch {
		case sa == nil && sb != nil:
			return false
		case sa != nil && sb == nil:
			return true
		case sa == nil || sa.Equal(sb):
			return jobs[a].Name < jobs[b].Name
		}
		return sa.Before(sb)
	})
}
