package agent

import (
	"context"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	testingclock "k8s.io/utils/clock/testing"
)

// scriptedProbes is a probe handler that answers from a script (the last answer repeats)
// and records what happened: runs, events, wakes.
type scriptedProbes struct {
	mu      sync.Mutex
	answers []probeResult
	runs    int
	events  []string
	wakes   int
}

func (s *scriptedProbes) run(context.Context, *corev1.ProbeHandler, time.Duration, probeTarget) (probeResult, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runs++
	r := s.answers[0]
	if len(s.answers) > 1 {
		s.answers = s.answers[1:]
	}
	return r, "out", nil
}

func (s *scriptedProbes) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.runs
}

func newTestProber(clk *testingclock.FakeClock, s *scriptedProbes) *prober {
	return newProber(context.Background(), proberConfig{
		clock: clk, run: s.run,
		event: func(_ *corev1.Pod, _ *corev1.Container, _, reason, message string) {
			s.mu.Lock()
			defer s.mu.Unlock()
			s.events = append(s.events, reason+": "+message)
		},
		wake: func(string) { s.mu.Lock(); s.wakes++; s.mu.Unlock() },
	})
}

// probedPod has one container "main" with probe p of kind k.
func probedPod(k probeKind, p *corev1.Probe) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", UID: "uid-1"},
		Spec:       corev1.PodSpec{RestartPolicy: corev1.RestartPolicyAlways, Containers: []corev1.Container{{Name: "main"}}},
	}
	c := &pod.Spec.Containers[0]
	switch k {
	case livenessProbe:
		c.LivenessProbe = p
	case startupProbe:
		c.StartupProbe = p
	default:
		c.ReadinessProbe = p
	}
	return pod
}

// runningStatus is a status with container id running since startedAt.
func runningStatus(id string, startedAt time.Time, started bool) *corev1.PodStatus {
	return &corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.0.5", ContainerStatuses: []corev1.ContainerStatus{{
		Name: "main", ContainerID: "containerd://" + id, Started: &started,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(startedAt)}},
	}}}
}

// testWorker is a worker of p for pod, not started: the test calls probeOnce itself.
func testWorker(p *prober, pod *corev1.Pod, k probeKind, st *corev1.PodStatus) *probeWorker {
	w := newProbeWorker(p, pod, &pod.Spec.Containers[0], k)
	w.status = st
	p.pods[pod.UID] = map[workerKey]*probeWorker{{"main", k}: w}
	return w
}

func TestProbeThresholds(t *testing.T) {
	tests := []struct {
		name      string
		kind      probeKind
		success   int32
		failure   int32
		answers   []probeResult
		want      []probeResult // the standing result after each round
		wantWakes int
	}{
		{
			name: "readiness starts failed, needs successThreshold successes", kind: readinessProbe, success: 2, failure: 1,
			answers: []probeResult{probeSuccess, probeSuccess, probeFailure, probeSuccess},
			want:    []probeResult{probeFailure, probeSuccess, probeFailure, probeFailure}, wantWakes: 2,
		},
		{
			name: "readiness flips back after failureThreshold failures", kind: readinessProbe, success: 1, failure: 3,
			answers: []probeResult{probeSuccess, probeFailure, probeFailure, probeSuccess, probeFailure, probeFailure, probeFailure},
			want:    []probeResult{probeSuccess, probeSuccess, probeSuccess, probeSuccess, probeSuccess, probeSuccess, probeFailure}, wantWakes: 2,
		},
		{
			name: "liveness starts alive, fails after failureThreshold", kind: livenessProbe, success: 1, failure: 2,
			answers: []probeResult{probeFailure, probeSuccess, probeFailure, probeFailure},
			want:    []probeResult{probeSuccess, probeSuccess, probeSuccess, probeFailure}, wantWakes: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := testingclock.NewFakeClock(statusNow)
			s := &scriptedProbes{answers: tt.answers}
			p := newTestProber(clk, s)
			pod := probedPod(tt.kind, &corev1.Probe{PeriodSeconds: 1, SuccessThreshold: tt.success, FailureThreshold: tt.failure})
			w := testWorker(p, pod, tt.kind, runningStatus("c1", statusNow.Add(-time.Minute), true))
			for i, want := range tt.want {
				if !w.probeOnce(context.Background()) {
					t.Fatalf("round %d: worker stopped", i)
				}
				if got := p.resultLocked("c1", tt.kind); got != want {
					t.Errorf("round %d: result %v, want %v", i, got, want)
				}
			}
			if s.wakes != tt.wantWakes {
				t.Errorf("%d wakes, want %d", s.wakes, tt.wantWakes)
			}
		})
	}
}

func TestProbeInitialDelay(t *testing.T) {
	clk := testingclock.NewFakeClock(statusNow)
	s := &scriptedProbes{answers: []probeResult{probeSuccess}}
	p := newTestProber(clk, s)
	pod := probedPod(readinessProbe, &corev1.Probe{InitialDelaySeconds: 5, PeriodSeconds: 1})
	w := testWorker(p, pod, readinessProbe, runningStatus("c1", statusNow, true))
	for range 3 {
		w.probeOnce(context.Background())
		clk.Step(time.Second)
	}
	if s.count() != 0 {
		t.Fatalf("probed %d times within the initial delay", s.count())
	}
	clk.Step(2 * time.Second)
	w.probeOnce(context.Background())
	if s.count() != 1 || p.resultLocked("c1", readinessProbe) != probeSuccess {
		t.Errorf("after the initial delay: %d runs, result %v", s.count(), p.resultLocked("c1", readinessProbe))
	}
}

func TestLivenessFailureHoldsUntilNewContainer(t *testing.T) {
	clk := testingclock.NewFakeClock(statusNow)
	s := &scriptedProbes{answers: []probeResult{probeFailure}}
	p := newTestProber(clk, s)
	pod := probedPod(livenessProbe, &corev1.Probe{PeriodSeconds: 1, FailureThreshold: 1})
	w := testWorker(p, pod, livenessProbe, runningStatus("c1", statusNow.Add(-time.Minute), true))
	w.probeOnce(context.Background())
	if kind, failed := p.failed("c1"); !failed || kind != livenessProbe {
		t.Fatalf("failed(c1) = %v %v", kind, failed)
	}
	if len(s.events) != 1 || s.events[0] != "Unhealthy: Liveness probe failed: out" {
		t.Errorf("events %q", s.events)
	}
	// On hold: the container is being killed, no more probes of it.
	w.probeOnce(context.Background())
	if s.count() != 1 {
		t.Errorf("probed %d times on hold", s.count())
	}
	// The restarted container starts alive and is probed again.
	s.answers = []probeResult{probeSuccess}
	w.status = runningStatus("c2", statusNow, true)
	w.probeOnce(context.Background())
	if _, failed := p.failed("c2"); failed || s.count() != 2 {
		t.Errorf("new container: failed %v, %d runs", failed, s.count())
	}
	if _, ok := p.results["c1"]; ok {
		t.Errorf("results of the old container are kept")
	}
}

func TestStartupProbeGatesTheOthers(t *testing.T) {
	clk := testingclock.NewFakeClock(statusNow)
	s := &scriptedProbes{answers: []probeResult{probeSuccess}}
	p := newTestProber(clk, s)
	pod := probedPod(startupProbe, &corev1.Probe{PeriodSeconds: 1, FailureThreshold: 1})
	pod.Spec.Containers[0].LivenessProbe = &corev1.Probe{PeriodSeconds: 1}
	notStarted := runningStatus("c1", statusNow.Add(-time.Minute), false)
	live := newProbeWorker(p, pod, &pod.Spec.Containers[0], livenessProbe)
	live.status = notStarted
	live.probeOnce(context.Background())
	if s.count() != 0 {
		t.Fatalf("liveness probed before the container started")
	}
	start := testWorker(p, pod, startupProbe, notStarted)
	start.probeOnce(context.Background())
	if s.count() != 1 || p.resultLocked("c1", startupProbe) != probeSuccess {
		t.Fatalf("startup: %d runs, result %v", s.count(), p.resultLocked("c1", startupProbe))
	}
	// Decided: the startup probe does not run again; the status now says started.
	start.probeOnce(context.Background())
	live.status = runningStatus("c1", statusNow.Add(-time.Minute), true)
	live.probeOnce(context.Background())
	if s.count() != 2 {
		t.Errorf("%d runs, want the startup probe once and the liveness probe once", s.count())
	}
}

func TestProbeWorkerStops(t *testing.T) {
	tests := []struct {
		name     string
		policy   corev1.RestartPolicy
		status   func() *corev1.PodStatus
		deleting bool
		kind     probeKind
		going    bool
		result   probeResult
	}{
		{"pod succeeded", corev1.RestartPolicyAlways, func() *corev1.PodStatus {
			return &corev1.PodStatus{Phase: corev1.PodSucceeded}
		}, false, readinessProbe, false, probeUnknown},
		{"exited, will restart", corev1.RestartPolicyAlways, func() *corev1.PodStatus {
			return exitedStatus()
		}, false, readinessProbe, true, probeFailure},
		{"exited, never restarts", corev1.RestartPolicyNever, func() *corev1.PodStatus {
			return exitedStatus()
		}, false, readinessProbe, false, probeFailure},
		{"deleting: liveness passes and stops", corev1.RestartPolicyAlways, func() *corev1.PodStatus {
			return runningStatus("c1", statusNow, true)
		}, true, livenessProbe, false, probeSuccess},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &scriptedProbes{answers: []probeResult{probeFailure}}
			p := newTestProber(testingclock.NewFakeClock(statusNow), s)
			pod := probedPod(tt.kind, &corev1.Probe{PeriodSeconds: 1})
			pod.Spec.RestartPolicy = tt.policy
			if tt.deleting {
				pod.DeletionTimestamp = &metav1.Time{Time: statusNow}
			}
			w := testWorker(p, pod, tt.kind, tt.status())
			if going := w.probeOnce(context.Background()); going != tt.going {
				t.Errorf("keep going %v, want %v", going, tt.going)
			}
			if got := p.resultLocked("c1", tt.kind); got != tt.result {
				t.Errorf("result %v, want %v", got, tt.result)
			}
			if s.count() != 0 {
				t.Errorf("probed %d times", s.count())
			}
		})
	}
}

func exitedStatus() *corev1.PodStatus {
	return &corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{
		Name: "main", ContainerID: "containerd://c1",
		State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1}},
	}}}
}

// TestProbeWorkerPeriod runs a real worker goroutine on a fake clock: it probes once at
// start, then once per period, runs a readiness probe at once when asked by update, and
// stops with removePod.
func TestProbeWorkerPeriod(t *testing.T) {
	clk := testingclock.NewFakeClock(statusNow)
	s := &scriptedProbes{answers: []probeResult{probeFailure}}
	p := newTestProber(clk, s)
	p.start = statusNow.Add(-time.Hour) // long running: no start-up jitter
	defer p.stop()
	pod := probedPod(readinessProbe, &corev1.Probe{PeriodSeconds: 10, FailureThreshold: 1})
	st := runningStatus("c1", statusNow.Add(-time.Minute), true)
	p.update(pod, st)
	waitRuns := func(want int) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for s.count() < want && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if s.count() != want {
			t.Fatalf("%d probes, want %d", s.count(), want)
		}
	}
	waitRuns(1)
	// Wait for the worker to sit on its ticker before moving the clock.
	for !clk.HasWaiters() {
		time.Sleep(time.Millisecond)
	}
	clk.Step(5 * time.Second)
	time.Sleep(20 * time.Millisecond)
	if s.count() != 1 {
		t.Fatalf("probed before the period: %d", s.count())
	}
	clk.Step(5 * time.Second)
	waitRuns(2)
	// Not ready yet: a status update asks for a probe now.
	p.update(pod, st)
	waitRuns(3)
	p.removePod(pod.UID)
	clk.Step(time.Minute)
	time.Sleep(20 * time.Millisecond)
	if s.count() != 3 {
		t.Errorf("probed after removePod: %d", s.count())
	}
}

func TestComputeStatusWithProbes(t *testing.T) {
	base := func() *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
			Spec: corev1.PodSpec{RestartPolicy: corev1.RestartPolicyAlways, Containers: []corev1.Container{{
				Name: "main", ReadinessProbe: &corev1.Probe{}, StartupProbe: &corev1.Probe{},
			}}},
		}
	}
	tests := []struct {
		name           string
		results        map[string]containerProbes
		started, ready bool
	}{
		{"not probed yet", nil, false, false},
		{"started, not ready", map[string]containerProbes{"c1": {startup: probeSuccess, readiness: probeFailure}}, true, false},
		{"started and ready", map[string]containerProbes{"c1": {startup: probeSuccess, readiness: probeSuccess}}, true, true},
		{"ready result, not started", map[string]containerProbes{"c1": {readiness: probeSuccess}}, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := computeStatus(statusInput{
				pod: base(), now: statusNow, probes: tt.results,
				rt: podRuntime{sandbox: readySandbox("10.244.0.5"), containers: map[string][]*runtimeapi.ContainerStatus{"main": {running("c1", 0)}}},
			})
			cs := st.ContainerStatuses[0]
			if *cs.Started != tt.started || cs.Ready != tt.ready {
				t.Errorf("started %v ready %v, want %v %v", *cs.Started, cs.Ready, tt.started, tt.ready)
			}
			wantReady := corev1.ConditionFalse
			if tt.ready {
				wantReady = corev1.ConditionTrue
			}
			if c := condition(st, corev1.PodReady); c.Status != wantReady {
				t.Errorf("Ready condition %+v", c)
			}
			if c := condition(st, corev1.ContainersReady); c.Status != wantReady {
				t.Errorf("ContainersReady condition %+v", c)
			}
		})
	}
}
