package job

import (
	"context"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func TestCompletionsAndParallelism(t *testing.T) {
	job := newJob("work", ptr[int32](3), ptr[int32](2))
	h := newHarness(t, job)
	h.sync(job)

	pods := h.active()
	if len(pods) != 2 {
		t.Fatalf("%d pods after the first sync, want parallelism 2", len(pods))
	}
	p := pods[0]
	if p.GenerateName != "work-" || p.Labels[batchv1.ControllerUidLabel] != "uid-work" || p.Labels[batchv1.JobNameLabel] != "work" ||
		p.Labels["controller-uid"] != "uid-work" || p.Labels["job-name"] != "work" || p.Labels["app"] != "work" {
		t.Errorf("pod generateName %q labels %v", p.GenerateName, p.Labels)
	}
	if !hasTrackingFinalizer(p) {
		t.Errorf("pod finalizers %v, want %s", p.Finalizers, batchv1.JobTrackingFinalizer)
	}
	if ref := metav1.GetControllerOf(p); ref == nil || ref.UID != job.UID || ref.Kind != "Job" {
		t.Errorf("pod controller %+v, want the job", ref)
	}
	h.wantEvent("Normal SuccessfulCreate Created pod: " + p.Name)
	got := h.job("work")
	if got.Status.Active != 2 || got.Status.StartTime == nil || !got.Status.StartTime.Time.Equal(start) {
		t.Errorf("status active %d startTime %v, want 2 and %v", got.Status.Active, got.Status.StartTime, start)
	}

	// One succeeds: it is counted, loses its finalizer, and one more pod starts (3-1 left,
	// 2 at a time).
	h.now = h.now.Add(time.Minute)
	h.finish(pods[0], 0)
	h.sync(job)
	got = h.job("work")
	if got.Status.Succeeded != 1 || got.Status.Active != 2 || len(got.Status.UncountedTerminatedPods.Succeeded) != 0 {
		t.Errorf("status succeeded %d active %d uncounted %v, want 1, 2, none", got.Status.Succeeded, got.Status.Active, got.Status.UncountedTerminatedPods)
	}
	done, _ := h.kube.CoreV1().Pods("default").Get(context.Background(), pods[0].Name, metav1.GetOptions{})
	if hasTrackingFinalizer(done) {
		t.Error("the counted pod keeps its tracking finalizer")
	}

	// The other two succeed: SuccessCriteriaMet, then Complete, in the same sync.
	h.now = h.now.Add(time.Minute)
	for _, p := range h.active() {
		h.finish(p, 0)
	}
	h.sync(job)
	got = h.job("work")
	if got.Status.Succeeded != 3 || got.Status.Active != 0 {
		t.Errorf("status succeeded %d active %d, want 3 and 0", got.Status.Succeeded, got.Status.Active)
	}
	for _, ct := range []batchv1.JobConditionType{batchv1.JobSuccessCriteriaMet, batchv1.JobComplete} {
		c := condition(got, ct)
		if c == nil || c.Status != corev1.ConditionTrue || c.Reason != batchv1.JobReasonCompletionsReached || c.Message != "Reached expected number of succeeded pods" {
			t.Errorf("condition %s = %+v, want True CompletionsReached", ct, c)
		}
	}
	if got.Status.CompletionTime == nil || !got.Status.CompletionTime.Time.Equal(h.now) {
		t.Errorf("completionTime %v, want %v", got.Status.CompletionTime, h.now)
	}
	h.wantEvent("Normal Completed Job completed")
	if n := len(h.pods()); n != 3 {
		t.Errorf("%d pods, want the 3 that ran (no extra)", n)
	}
}

// TestPodCounts checks how many pods one sync creates or deletes.
func TestPodCounts(t *testing.T) {
	tests := []struct {
		name                     string
		completions, parallelism *int32
		succeeded                int32 // already in the status
		running                  int   // pods already running
		wantActive               int
	}{
		{"defaults: one pod", nil, nil, 0, 0, 1},
		{"work queue starts parallelism", nil, ptr[int32](3), 0, 0, 3},
		{"work queue after a success starts no more", nil, ptr[int32](3), 1, 1, 1},
		{"no more than the completions left", ptr[int32](5), ptr[int32](3), 4, 0, 1},
		{"parallelism lowered: delete the extra", ptr[int32](10), ptr[int32](2), 0, 4, 2},
		{"parallelism zero", ptr[int32](3), ptr[int32](0), 0, 1, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			job := newJob("j", tc.completions, tc.parallelism)
			job.Status.Succeeded = tc.succeeded
			h := newHarness(t, job)
			for i := 0; i < tc.running; i++ {
				p := newPod(job, -1)
				p.Name = p.GenerateName + string(rune('a'+i))
				p.UID = types.UID("running-" + p.Name)
				p.Status.Phase = corev1.PodRunning
				if _, err := h.kube.CoreV1().Pods("default").Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			h.sync(job)
			if n := len(h.active()); n != tc.wantActive {
				t.Errorf("%d active pods, want %d", n, tc.wantActive)
			}
			if got := h.job("j").Status.Active; int(got) != tc.wantActive {
				t.Errorf("status.active %d, want %d", got, tc.wantActive)
			}
		})
	}
}

func TestBackoffLimitExceeded(t *testing.T) {
	job := newJob("flaky", ptr[int32](1), ptr[int32](1))
	job.Spec.BackoffLimit = ptr[int32](1)
	h := newHarness(t, job)
	h.sync(job)

	// First failure: counted, and the replacement waits the first 10 s of backoff.
	h.finish(h.active()[0], 1)
	wait := h.sync(job)
	got := h.job("flaky")
	if got.Status.Failed != 1 || len(h.active()) != 0 {
		t.Fatalf("failed %d, %d active; want 1 failure and no replacement yet", got.Status.Failed, len(h.active()))
	}
	if wait != 10*time.Second {
		t.Errorf("requeue after %v, want the 10 s backoff", wait)
	}
	if condition(got, batchv1.JobFailed) != nil {
		t.Fatalf("job failed at its first failure with backoffLimit 1")
	}
	h.now = h.now.Add(4 * time.Second)
	if wait := h.sync(job); wait != 6*time.Second || len(h.active()) != 0 {
		t.Errorf("4 s in: requeue %v with %d pods, want 6 s and none", wait, len(h.active()))
	}
	h.now = h.now.Add(6 * time.Second)
	h.sync(job)
	if len(h.active()) != 1 {
		t.Fatalf("%d active pods after the backoff, want a replacement", len(h.active()))
	}

	// Second failure: past the limit, FailureTarget then Failed.
	h.finish(h.active()[0], 1)
	h.sync(job)
	got = h.job("flaky")
	for _, ct := range []batchv1.JobConditionType{batchv1.JobFailureTarget, batchv1.JobFailed} {
		c := condition(got, ct)
		if c == nil || c.Status != corev1.ConditionTrue || c.Reason != batchv1.JobReasonBackoffLimitExceeded || c.Message != "Job has reached the specified backoff limit" {
			t.Errorf("condition %s = %+v, want True BackoffLimitExceeded", ct, c)
		}
	}
	if got.Status.Failed != 2 || got.Status.CompletionTime != nil {
		t.Errorf("failed %d completionTime %v, want 2 and none", got.Status.Failed, got.Status.CompletionTime)
	}
	h.wantEvent("Warning BackoffLimitExceeded Job has reached the specified backoff limit")
	// A finished Job is left alone.
	h.sync(job)
	if n := len(h.pods()); n != 2 {
		t.Errorf("%d pods, want the 2 that failed", n)
	}
}

func TestBackoffDelay(t *testing.T) {
	tests := []struct {
		failures int32
		since    time.Duration
		want     time.Duration
	}{
		{0, 0, 0},
		{1, 0, 10 * time.Second},
		{1, 3 * time.Second, 7 * time.Second},
		{2, 0, 20 * time.Second},
		{3, 0, 40 * time.Second},
		{6, 0, 320 * time.Second},
		{7, 0, 6 * time.Minute},
		{30, 0, 6 * time.Minute},
		{2, time.Hour, 0},
	}
	for _, tc := range tests {
		r := backoffRecord{failuresAfterLastSuccess: tc.failures, lastFailure: start}
		if got := r.remaining(start.Add(tc.since)); got != tc.want {
			t.Errorf("%d failures, %v since the last: remaining %v, want %v", tc.failures, tc.since, got, tc.want)
		}
	}
}

func TestActiveDeadline(t *testing.T) {
	job := newJob("slow", ptr[int32](4), ptr[int32](2))
	job.Spec.ActiveDeadlineSeconds = ptr[int64](30)
	h := newHarness(t, job)
	if wait := h.sync(job); wait != 30*time.Second {
		t.Errorf("requeue after %v, want at the 30 s deadline", wait)
	}
	if len(h.active()) != 2 {
		t.Fatalf("%d pods, want 2", len(h.active()))
	}

	h.now = h.now.Add(30 * time.Second)
	h.sync(job)
	if n := len(h.pods()); n != 0 {
		t.Errorf("%d pods left past the deadline, want all deleted", n)
	}
	h.wantEvent("Normal SuccessfulDelete Deleted pod: ")
	got := h.job("slow")
	if c := condition(got, batchv1.JobFailureTarget); c == nil || c.Reason != batchv1.JobReasonDeadlineExceeded {
		t.Errorf("FailureTarget = %+v, want DeadlineExceeded", c)
	}
	// The deleted pods were terminating during that sync: Failed waits for the next one.
	h.sync(job)
	got = h.job("slow")
	c := condition(got, batchv1.JobFailed)
	if c == nil || c.Reason != batchv1.JobReasonDeadlineExceeded || c.Message != "Job was active longer than specified deadline" {
		t.Errorf("Failed = %+v, want DeadlineExceeded", c)
	}
	if got.Status.Failed != 2 || got.Status.Active != 0 {
		t.Errorf("failed %d active %d, want the 2 stopped pods failed", got.Status.Failed, got.Status.Active)
	}
	h.wantEvent("Warning DeadlineExceeded Job was active longer than specified deadline")
}

func TestSuspendAndResume(t *testing.T) {
	job := newJob("paused", ptr[int32](2), ptr[int32](2))
	job.Spec.Suspend = ptr(true)
	job.Spec.ActiveDeadlineSeconds = ptr[int64](60)
	h := newHarness(t, job)
	h.sync(job)
	got := h.job("paused")
	if len(h.pods()) != 0 || got.Status.StartTime != nil {
		t.Errorf("suspended job: %d pods, startTime %v; want none", len(h.pods()), got.Status.StartTime)
	}
	if c := condition(got, batchv1.JobSuspended); c == nil || c.Status != corev1.ConditionTrue || c.Reason != "JobSuspended" {
		t.Errorf("Suspended = %+v, want True", c)
	}
	h.wantEvent("Normal Suspended Job suspended")

	h.now = h.now.Add(time.Hour) // longer than the deadline: suspended time does not count
	got.Spec.Suspend = ptr(false)
	if _, err := h.kube.BatchV1().Jobs("default").Update(context.Background(), got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.sync(job)
	got = h.job("paused")
	if len(h.active()) != 2 || condition(got, batchv1.JobFailed) != nil {
		t.Errorf("resumed job: %d pods, conditions %+v; want 2 running", len(h.active()), got.Status.Conditions)
	}
	if c := condition(got, batchv1.JobSuspended); c == nil || c.Status != corev1.ConditionFalse || c.Reason != "JobResumed" {
		t.Errorf("Suspended = %+v, want False JobResumed", c)
	}
	h.wantEvent("Normal Resumed Job resumed")

	// Suspending again stops the pods, which are not counted as failed.
	got.Spec.Suspend = ptr(true)
	if _, err := h.kube.BatchV1().Jobs("default").Update(context.Background(), got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.sync(job)
	h.sync(job)
	got = h.job("paused")
	if len(h.pods()) != 0 || got.Status.Failed != 0 || got.Status.Active != 0 {
		t.Errorf("suspended again: %d pods, failed %d, active %d; want none", len(h.pods()), got.Status.Failed, got.Status.Active)
	}
}

func TestPodFailurePolicy(t *testing.T) {
	job := newJob("policy", ptr[int32](1), ptr[int32](1))
	job.Spec.PodFailurePolicy = &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{
		{Action: batchv1.PodFailurePolicyActionFailJob, OnExitCodes: &batchv1.PodFailurePolicyOnExitCodesRequirement{
			ContainerName: ptr("main"), Operator: batchv1.PodFailurePolicyOnExitCodesOpIn, Values: []int32{42},
		}},
		{Action: batchv1.PodFailurePolicyActionIgnore, OnPodConditions: []batchv1.PodFailurePolicyOnPodConditionsPattern{
			{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue},
		}},
	}}
	h := newHarness(t, job)
	h.sync(job)

	// A disrupted pod is ignored: not counted against the backoffLimit.
	p := h.active()[0]
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue}}
	if _, err := h.kube.CoreV1().Pods("default").UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	p, _ = h.kube.CoreV1().Pods("default").Get(context.Background(), p.Name, metav1.GetOptions{})
	h.finish(p, 137)
	h.sync(job)
	if got := h.job("policy"); got.Status.Failed != 0 || condition(got, batchv1.JobFailed) != nil {
		t.Errorf("ignored failure: failed %d, conditions %+v; want 0 and running", got.Status.Failed, got.Status.Conditions)
	}

	// Exit code 42 fails the Job at once.
	h.now = h.now.Add(time.Hour)
	h.sync(job)
	p = h.active()[0]
	h.finish(p, 42)
	h.sync(job)
	got := h.job("policy")
	want := "Container main for pod default/" + p.Name + " failed with exit code 42 matching FailJob rule at index 0"
	for _, ct := range []batchv1.JobConditionType{batchv1.JobFailureTarget, batchv1.JobFailed} {
		if c := condition(got, ct); c == nil || c.Reason != batchv1.JobReasonPodFailurePolicy || c.Message != want {
			t.Errorf("condition %s = %+v, want PodFailurePolicy %q", ct, c, want)
		}
	}
	h.wantEvent("Warning PodFailurePolicy " + want)
}

func TestMatchFailurePolicy(t *testing.T) {
	exit := func(codes ...int32) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"}, Status: corev1.PodStatus{Phase: corev1.PodFailed}}
		for i, c := range codes {
			p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
				Name: []string{"a", "b"}[i], State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: c}},
			})
		}
		return p
	}
	notIn := &batchv1.PodFailurePolicy{Rules: []batchv1.PodFailurePolicyRule{{
		Action:      batchv1.PodFailurePolicyActionFailJob,
		OnExitCodes: &batchv1.PodFailurePolicyOnExitCodesRequirement{Operator: batchv1.PodFailurePolicyOnExitCodesOpNotIn, Values: []int32{1, 2}},
	}, {
		Action:      batchv1.PodFailurePolicyActionCount,
		OnExitCodes: &batchv1.PodFailurePolicyOnExitCodesRequirement{Operator: batchv1.PodFailurePolicyOnExitCodesOpIn, Values: []int32{1}},
	}}}
	tests := []struct {
		name       string
		policy     *batchv1.PodFailurePolicy
		pod        *corev1.Pod
		wantFail   string
		wantCount  bool
		wantAction batchv1.PodFailurePolicyAction
	}{
		{"no policy counts", nil, exit(3), "", true, ""},
		{"NotIn matches another code", notIn, exit(3), "Container a for pod ns/p failed with exit code 3 matching FailJob rule at index 0", true, batchv1.PodFailurePolicyActionFailJob},
		{"exit code 0 never matches", notIn, exit(0), "", true, ""},
		{"second container", notIn, exit(0, 7), "Container b for pod ns/p failed with exit code 7 matching FailJob rule at index 0", true, batchv1.PodFailurePolicyActionFailJob},
		{"Count rule", notIn, exit(1), "", true, batchv1.PodFailurePolicyActionCount},
		{"no rule matches", notIn, exit(2), "", true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := matchFailurePolicy(tc.policy, tc.pod)
			if v.failJob != tc.wantFail || v.count != tc.wantCount || v.action != tc.wantAction {
				t.Errorf("got %+v, want failJob %q count %v action %q", v, tc.wantFail, tc.wantCount, tc.wantAction)
			}
		})
	}
}

func TestTTLAfterFinished(t *testing.T) {
	job := newJob("old", ptr[int32](1), ptr[int32](1))
	job.Spec.TTLSecondsAfterFinished = ptr[int32](60)
	job.Status.Conditions = []batchv1.JobCondition{{Type: batchv1.JobComplete, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(start)}}
	h := newHarness(t, job)
	h.now = start.Add(10 * time.Second)
	if wait := h.sync(job); wait != 50*time.Second {
		t.Errorf("requeue after %v, want the 50 s left", wait)
	}
	h.job("old")

	h.now = start.Add(60 * time.Second)
	h.sync(job)
	if _, err := h.kube.BatchV1().Jobs("default").Get(context.Background(), "old", metav1.GetOptions{}); err == nil {
		t.Fatal("the job outlived its TTL")
	}
	for _, a := range h.kube.Actions() {
		if a.GetVerb() == "delete" && a.GetResource().Resource == "jobs" {
			opts := a.(interface{ GetDeleteOptions() metav1.DeleteOptions }).GetDeleteOptions()
			if opts.PropagationPolicy == nil || *opts.PropagationPolicy != metav1.DeletePropagationBackground {
				t.Errorf("deleted with propagation %v, want Background", opts.PropagationPolicy)
			}
		}
	}
}

func TestIndexedJob(t *testing.T) {
	job := newJob("idx", ptr[int32](3), ptr[int32](2))
	job.Spec.CompletionMode = ptr(batchv1.IndexedCompletion)
	h := newHarness(t, job)
	h.sync(job)
	byIndex := map[string]*corev1.Pod{}
	for _, p := range h.active() {
		ix := p.Annotations[batchv1.JobCompletionIndexAnnotation]
		byIndex[ix] = p
		if p.Spec.Hostname != "idx-"+ix || !strings.HasPrefix(p.GenerateName, "idx-"+ix+"-") || p.Labels[batchv1.JobCompletionIndexAnnotation] != ix {
			t.Errorf("pod for index %s: hostname %q generateName %q labels %v", ix, p.Spec.Hostname, p.GenerateName, p.Labels)
		}
		if env := p.Spec.Containers[0].Env; len(env) != 1 || env[0].Name != "JOB_COMPLETION_INDEX" {
			t.Errorf("container env %+v, want JOB_COMPLETION_INDEX", env)
		}
	}
	if len(byIndex) != 2 || byIndex["0"] == nil || byIndex["1"] == nil {
		t.Fatalf("indexes %v, want 0 and 1", byIndex)
	}
	h.finish(byIndex["1"], 0)
	h.sync(job)
	got := h.job("idx")
	if got.Status.CompletedIndexes != "1" || got.Status.Succeeded != 1 {
		t.Errorf("completedIndexes %q succeeded %d, want \"1\" and 1", got.Status.CompletedIndexes, got.Status.Succeeded)
	}
	var next *corev1.Pod
	for _, p := range h.active() {
		if p.Annotations[batchv1.JobCompletionIndexAnnotation] == "2" {
			next = p
		}
	}
	if next == nil {
		t.Fatal("index 2 did not start after index 1 succeeded")
	}
	h.finish(byIndex["0"], 0)
	h.finish(next, 0)
	h.sync(job)
	got = h.job("idx")
	if got.Status.CompletedIndexes != "0-2" || condition(got, batchv1.JobComplete) == nil {
		t.Errorf("completedIndexes %q conditions %+v, want 0-2 and Complete", got.Status.CompletedIndexes, got.Status.Conditions)
	}
}

func TestFormatIndexes(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"", ""},
		{"3", "3"},
		{"0,1", "0,1"},
		{"0-2,4,6,7,9-11", "0-2,4,6,7,9"}, // 10 and 11 are beyond completions (10)
		{"5-3", ""},
		{"8,20", "8"},
	}
	for _, tc := range tests {
		if got := formatIndexes(parseIndexes(tc.in, 10)); got != tc.want {
			t.Errorf("format(parse(%q)) = %q, want %q", tc.in, got, tc.want)
		}
	}
}
