package cronjob

import (
	"context"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestCreatesJobWhenDue(t *testing.T) {
	cj := newCronJob("tick", "*/1 * * * *", at("2026-12-01T10:00:30Z"))
	h := newHarness(t, at("2026-12-01T10:00:50Z"), cj)
	if wait := h.sync("tick"); wait != 10*time.Second+requeueSlack {
		t.Errorf("before the first run: requeue after %v, want 10.1 s", wait)
	}
	if n := len(h.jobs()); n != 0 {
		t.Fatalf("%d jobs before the schedule, want none", n)
	}

	h.now = at("2026-12-01T10:01:05Z")
	if wait := h.sync("tick"); wait != 55*time.Second+requeueSlack {
		t.Errorf("requeue after %v, want at the next minute", wait)
	}
	jobs := h.jobs()
	if len(jobs) != 1 {
		t.Fatalf("%d jobs, want 1", len(jobs))
	}
	j := jobs[0]
	scheduled := at("2026-12-01T10:01:00Z")
	if j.Name != jobName(cj, scheduled) || j.Annotations[batchv1.CronJobScheduledTimestampAnnotation] != "2026-12-01T10:01:00Z" {
		t.Errorf("job %s annotations %v, want %s and the scheduled time", j.Name, j.Annotations, jobName(cj, scheduled))
	}
	if j.Labels["team"] != "a" || j.Annotations["note"] != "b" || len(j.Spec.Template.Spec.Containers) != 1 {
		t.Errorf("job labels %v annotations %v spec %+v: not from the template", j.Labels, j.Annotations, j.Spec)
	}
	if !metav1.IsControlledBy(j, cj) {
		t.Errorf("job ownerReferences %+v, want the cronjob as controller", j.OwnerReferences)
	}
	h.wantEvent("Normal SuccessfulCreate Created job " + j.Name)
	got := h.cronJob("tick")
	if len(got.Status.Active) != 1 || got.Status.Active[0].UID != j.UID || got.Status.Active[0].Kind != "Job" {
		t.Errorf("status.active %+v, want the job", got.Status.Active)
	}
	if got.Status.LastScheduleTime == nil || !got.Status.LastScheduleTime.Time.Equal(scheduled) {
		t.Errorf("lastScheduleTime %v, want %v", got.Status.LastScheduleTime, scheduled)
	}

	// The same run is not started twice.
	h.sync("tick")
	if n := len(h.jobs()); n != 1 {
		t.Errorf("%d jobs after a second sync in the same minute, want 1", n)
	}

	// The job completes: out of status.active, into lastSuccessfulTime.
	done := at("2026-12-01T10:01:40Z")
	h.finish(j, batchv1.JobComplete, done)
	h.now = at("2026-12-01T10:01:45Z")
	h.sync("tick")
	got = h.cronJob("tick")
	if len(got.Status.Active) != 0 || got.Status.LastSuccessfulTime == nil || !got.Status.LastSuccessfulTime.Time.Equal(done) {
		t.Errorf("status %+v, want no active job and lastSuccessfulTime %v", got.Status, done)
	}
	h.wantEvent("Normal SawCompletedJob Saw completed job: " + j.Name + ", condition: Complete")
}

func TestConcurrencyPolicy(t *testing.T) {
	tests := []struct {
		policy     batchv1.ConcurrencyPolicy
		wantJobs   int
		wantActive int
		wantEvent  string
	}{
		{batchv1.AllowConcurrent, 2, 2, "Normal SuccessfulCreate"},
		{batchv1.ForbidConcurrent, 1, 1, "Normal JobAlreadyActive Not starting job because prior execution is running and concurrency policy is Forbid"},
		{batchv1.ReplaceConcurrent, 1, 1, "Normal SuccessfulDelete Deleted job tick-"},
	}
	for _, tc := range tests {
		t.Run(string(tc.policy), func(t *testing.T) {
			cj := newCronJob("tick", "*/1 * * * *", at("2026-12-01T10:00:30Z"))
			cj.Spec.ConcurrencyPolicy = tc.policy
			h := newHarness(t, at("2026-12-01T10:01:05Z"), cj)
			h.sync("tick")
			first := h.jobs()[0].Name
			h.drainEvents()

			h.now = at("2026-12-01T10:02:05Z") // the first job still runs
			h.sync("tick")
			if n := len(h.jobs()); n != tc.wantJobs {
				t.Errorf("%d jobs, want %d", n, tc.wantJobs)
			}
			if n := len(h.cronJob("tick").Status.Active); n != tc.wantActive {
				t.Errorf("%d active, want %d", n, tc.wantActive)
			}
			h.wantEvent(tc.wantEvent)
			if tc.policy == batchv1.ReplaceConcurrent && h.jobs()[0].Name == first {
				t.Errorf("the running job %s was not replaced", first)
			}
		})
	}
}

func TestHistoryLimits(t *testing.T) {
	cj := newCronJob("hist", "0 0 1 1 *", at("2026-01-01T00:00:30Z")) // next run far away
	h := newHarness(t, at("2026-12-01T10:00:00Z"), cj)
	ctx := context.Background()
	var names []string
	for i, outcome := range []batchv1.JobConditionType{
		batchv1.JobComplete, batchv1.JobFailed, batchv1.JobComplete, batchv1.JobComplete,
		batchv1.JobFailed, batchv1.JobComplete, batchv1.JobComplete, batchv1.JobFailed, "",
	} {
		j, err := newJob(cj, at("2026-11-01T00:00:00Z").Add(time.Duration(i)*time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		start := metav1.NewTime(at("2026-11-01T00:00:00Z").Add(time.Duration(i) * time.Hour))
		j.Status.StartTime = &start
		j, err = h.kube.BatchV1().Jobs("default").Create(ctx, j, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if outcome != "" {
			h.finish(j, outcome, start.Add(time.Minute))
		}
		names = append(names, j.Name)
	}
	h.sync("hist")
	left := map[string]bool{}
	for _, j := range h.jobs() {
		left[j.Name] = true
	}
	// Succeeded: 0, 2, 3, 5, 6 -> keep the newest 3 (3, 5, 6); failed: 1, 4, 7 -> keep 7;
	// 8 still runs.
	want := map[string]bool{names[3]: true, names[5]: true, names[6]: true, names[7]: true, names[8]: true}
	for name := range want {
		if !left[name] {
			t.Errorf("job %s was deleted, want it kept", name)
		}
	}
	for name := range left {
		if !want[name] {
			t.Errorf("job %s was kept, want it deleted", name)
		}
	}
	for _, a := range h.kube.Actions() {
		if a.GetVerb() == "delete" {
			opts := a.(interface{ GetDeleteOptions() metav1.DeleteOptions }).GetDeleteOptions()
			if opts.PropagationPolicy == nil || *opts.PropagationPolicy != metav1.DeletePropagationBackground {
				t.Errorf("deleted with propagation %v, want Background", opts.PropagationPolicy)
			}
		}
	}
}

func TestSuspendedAndMissedDeadline(t *testing.T) {
	cj := newCronJob("paused", "*/1 * * * *", at("2026-12-01T10:00:30Z"))
	cj.Spec.Suspend = ptr(true)
	late := newCronJob("late", "0 * * * *", at("2026-12-01T08:00:00Z"))
	last := metav1.NewTime(at("2026-12-01T09:00:00Z"))
	late.Status.LastScheduleTime = &last
	late.Spec.StartingDeadlineSeconds = ptr[int64](60)
	h := newHarness(t, at("2026-12-01T10:05:00Z"), cj, late)
	if wait := h.sync("paused"); wait != 0 || len(h.jobs()) != 0 {
		t.Errorf("suspended: requeue %v, %d jobs; want neither", wait, len(h.jobs()))
	}
	// The 10:00 run is five minutes late with a one-minute deadline: skipped.
	if wait := h.sync("late"); wait != 55*time.Minute+requeueSlack || len(h.jobs()) != 0 {
		t.Errorf("past the deadline: requeue %v, %d jobs; want 55 min and none", wait, len(h.jobs()))
	}
}

func TestTooManyMissedAndTimeZone(t *testing.T) {
	cj := newCronJob("tokyo", "*/1 * * * *", at("2026-11-01T00:00:00Z"))
	cj.Spec.TimeZone = ptr("Asia/Tokyo")
	h := newHarness(t, at("2026-12-01T10:05:10Z"), cj)
	h.sync("tokyo")
	events := h.drainEvents()
	found := false
	for _, e := range events {
		found = found || e == "Warning TooManyMissedTimes too many missed start times. Set or decrease .spec.startingDeadlineSeconds or check clock skew"
	}
	if !found {
		t.Errorf("events %q, want TooManyMissedTimes", events)
	}
	jobs := h.jobs()
	if len(jobs) != 1 || jobs[0].Annotations[batchv1.CronJobScheduledTimestampAnnotation] != "2026-12-01T19:05:00+09:00" {
		t.Errorf("jobs %d, first annotations %v; want one, scheduled 19:05 Tokyo time", len(jobs), jobs[0].Annotations)
	}
}

func TestMissingActiveJobIsDropped(t *testing.T) {
	cj := newCronJob("gone", "0 0 1 1 *", at("2026-01-01T00:00:30Z"))
	cj.Status.Active = []corev1.ObjectReference{{Kind: "Job", Namespace: "default", Name: "gone-1", UID: "uid-gone-1"}}
	h := newHarness(t, at("2026-12-01T10:00:00Z"), cj)
	h.sync("gone")
	if got := h.cronJob("gone"); len(got.Status.Active) != 0 {
		t.Errorf("status.active %+v, want the missing job dropped", got.Status.Active)
	}
	h.wantEvent("Normal MissingJob Active job went missing: gone-1")
}
