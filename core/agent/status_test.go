package agent

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

var statusNow = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func readySandbox(ip string) *runtimeapi.PodSandboxStatus {
	return &runtimeapi.PodSandboxStatus{Id: "sb", State: runtimeapi.PodSandboxState_SANDBOX_READY,
		Network: &runtimeapi.PodSandboxNetworkStatus{Ip: ip}}
}

func running(id string, attempt uint32) *runtimeapi.ContainerStatus {
	return &runtimeapi.ContainerStatus{Id: id, Metadata: &runtimeapi.ContainerMetadata{Name: "main", Attempt: attempt},
		State: runtimeapi.ContainerState_CONTAINER_RUNNING, StartedAt: statusNow.Add(-time.Minute).UnixNano(), ImageRef: "sha256:img"}
}

func exited(id string, attempt uint32, code int32) *runtimeapi.ContainerStatus {
	return &runtimeapi.ContainerStatus{Id: id, Metadata: &runtimeapi.ContainerMetadata{Name: "main", Attempt: attempt},
		State: runtimeapi.ContainerState_CONTAINER_EXITED, ExitCode: code, ImageRef: "sha256:img",
		StartedAt: statusNow.Add(-time.Minute).UnixNano(), FinishedAt: statusNow.Add(-time.Second).UnixNano()}
}

func condition(st corev1.PodStatus, typ corev1.PodConditionType) corev1.PodCondition {
	for _, c := range st.Conditions {
		if c.Type == typ {
			return c
		}
	}
	return corev1.PodCondition{}
}

func TestComputeStatus(t *testing.T) {
	tests := []struct {
		name       string
		policy     corev1.RestartPolicy
		sandbox    *runtimeapi.PodSandboxStatus
		containers []*runtimeapi.ContainerStatus
		waiting    map[string]waitingState
		phase      corev1.PodPhase
		ready      bool
		check      func(t *testing.T, cs corev1.ContainerStatus)
	}{
		{
			name: "no sandbox yet", policy: corev1.RestartPolicyAlways, phase: corev1.PodPending,
			check: func(t *testing.T, cs corev1.ContainerStatus) {
				if cs.State.Waiting == nil || cs.State.Waiting.Reason != "ContainerCreating" {
					t.Errorf("state %+v", cs.State)
				}
			},
		},
		{
			name: "running", policy: corev1.RestartPolicyAlways, sandbox: readySandbox("10.244.0.5"),
			containers: []*runtimeapi.ContainerStatus{running("c1", 0)}, phase: corev1.PodRunning, ready: true,
			check: func(t *testing.T, cs corev1.ContainerStatus) {
				if cs.State.Running == nil || !cs.Ready || cs.ContainerID != "containerd://c1" || cs.ImageID != "sha256:img" || !*cs.Started {
					t.Errorf("status %+v", cs)
				}
			},
		},
		{
			name: "restarted, previous exit in lastState", policy: corev1.RestartPolicyAlways, sandbox: readySandbox("10.244.0.5"),
			containers: []*runtimeapi.ContainerStatus{running("c2", 1), exited("c1", 0, 2)}, phase: corev1.PodRunning, ready: true,
			check: func(t *testing.T, cs corev1.ContainerStatus) {
				if cs.RestartCount != 1 || cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ExitCode != 2 ||
					cs.LastTerminationState.Terminated.ContainerID != "containerd://c1" {
					t.Errorf("status %+v", cs)
				}
			},
		},
		{
			name: "crash loop", policy: corev1.RestartPolicyAlways, sandbox: readySandbox("10.244.0.5"),
			containers: []*runtimeapi.ContainerStatus{exited("c2", 1, 1), exited("c1", 0, 1)},
			waiting:    map[string]waitingState{"main": {reason: "CrashLoopBackOff", message: "back-off 10s"}},
			phase:      corev1.PodRunning,
			check: func(t *testing.T, cs corev1.ContainerStatus) {
				last := cs.LastTerminationState.Terminated
				if cs.State.Waiting == nil || cs.State.Waiting.Reason != "CrashLoopBackOff" || cs.RestartCount != 1 ||
					last == nil || last.ExitCode != 1 || last.Reason != "Error" || last.ContainerID != "containerd://c2" {
					t.Errorf("status %+v", cs)
				}
			},
		},
		{
			name: "image pull error", policy: corev1.RestartPolicyAlways, sandbox: readySandbox("10.244.0.5"),
			waiting: map[string]waitingState{"main": {reason: "ErrImagePull", message: "not found"}},
			phase:   corev1.PodPending,
			check: func(t *testing.T, cs corev1.ContainerStatus) {
				if cs.State.Waiting == nil || cs.State.Waiting.Reason != "ErrImagePull" || cs.State.Waiting.Message != "not found" {
					t.Errorf("state %+v", cs.State)
				}
			},
		},
		{
			name: "never, failed", policy: corev1.RestartPolicyNever, sandbox: readySandbox("10.244.0.5"),
			containers: []*runtimeapi.ContainerStatus{exited("c1", 0, 3)}, phase: corev1.PodFailed,
			check: func(t *testing.T, cs corev1.ContainerStatus) {
				if cs.State.Terminated == nil || cs.State.Terminated.ExitCode != 3 {
					t.Errorf("state %+v", cs.State)
				}
			},
		},
		{
			name: "on failure, completed", policy: corev1.RestartPolicyOnFailure, sandbox: readySandbox("10.244.0.5"),
			containers: []*runtimeapi.ContainerStatus{exited("c1", 0, 0)}, phase: corev1.PodSucceeded,
			check: func(t *testing.T, cs corev1.ContainerStatus) {
				if cs.State.Terminated == nil || cs.State.Terminated.Reason != "Completed" {
					t.Errorf("state %+v", cs.State)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := testPod()
			pod.Spec.RestartPolicy = tt.policy
			rt := podRuntime{sandbox: tt.sandbox, containers: map[string][]*runtimeapi.ContainerStatus{}}
			if len(tt.containers) > 0 {
				rt.containers["main"] = tt.containers
			}
			st := computeStatus(statusInput{pod: pod, rt: rt, waiting: tt.waiting, runtimeName: "containerd", hostIP: "192.0.2.2", now: statusNow})
			if st.Phase != tt.phase {
				t.Errorf("phase %s, want %s", st.Phase, tt.phase)
			}
			ready := condition(st, corev1.PodReady)
			if (ready.Status == corev1.ConditionTrue) != tt.ready || condition(st, corev1.ContainersReady).Status != ready.Status {
				t.Errorf("Ready %+v, ContainersReady %+v, want ready=%v", ready, condition(st, corev1.ContainersReady), tt.ready)
			}
			if condition(st, corev1.PodScheduled).Status != corev1.ConditionTrue || condition(st, corev1.PodInitialized).Status != corev1.ConditionTrue {
				t.Errorf("conditions %+v", st.Conditions)
			}
			if tt.sandbox != nil && (st.PodIP != "10.244.0.5" || len(st.PodIPs) != 1) {
				t.Errorf("pod IPs %q %v", st.PodIP, st.PodIPs)
			}
			if st.HostIP != "192.0.2.2" || st.StartTime == nil || !st.StartTime.Time.Equal(statusNow) {
				t.Errorf("hostIP %q, startTime %v", st.HostIP, st.StartTime)
			}
			if len(st.ContainerStatuses) != 1 || st.ContainerStatuses[0].Name != "main" || st.ContainerStatuses[0].Image != pod.Spec.Containers[0].Image {
				t.Fatalf("container statuses %+v", st.ContainerStatuses)
			}
			tt.check(t, st.ContainerStatuses[0])
		})
	}
}

// A recomputed status equals the written one, so that the agent writes only on change:
// conditions keep their transition times, start time and IPs stay, a terminal phase is
// final.
func TestComputeStatusIsStable(t *testing.T) {
	pod := testPod()
	pod.Spec.RestartPolicy = corev1.RestartPolicyNever
	rt := podRuntime{sandbox: readySandbox("10.244.0.9"), containers: map[string][]*runtimeapi.ContainerStatus{"main": {running("c1", 0)}}}
	first := computeStatus(statusInput{pod: pod, rt: rt, runtimeName: "containerd", now: statusNow})
	pod.Status = first
	second := computeStatus(statusInput{pod: pod, rt: rt, runtimeName: "containerd", now: statusNow.Add(time.Hour)})
	for i := range first.Conditions {
		if !first.Conditions[i].LastTransitionTime.Equal(&second.Conditions[i].LastTransitionTime) {
			t.Errorf("condition %s moved its transition time", first.Conditions[i].Type)
		}
	}
	if !second.StartTime.Equal(first.StartTime) {
		t.Errorf("start time moved: %v to %v", first.StartTime, second.StartTime)
	}

	// The container ends and the sandbox is stopped: Failed, the IP kept.
	rt = podRuntime{sandbox: &runtimeapi.PodSandboxStatus{State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY},
		containers: map[string][]*runtimeapi.ContainerStatus{"main": {exited("c1", 0, 1)}}}
	pod.Status = computeStatus(statusInput{pod: pod, rt: rt, runtimeName: "containerd", now: statusNow.Add(2 * time.Hour)})
	if pod.Status.Phase != corev1.PodFailed || pod.Status.PodIP != "10.244.0.9" {
		t.Errorf("phase %s, pod IP %q", pod.Status.Phase, pod.Status.PodIP)
	}
	if c := condition(pod.Status, corev1.PodReady); c.Status != corev1.ConditionFalse || c.Reason != "PodCompleted" ||
		!c.LastTransitionTime.Equal(&metav1.Time{Time: statusNow.Add(2 * time.Hour)}) {
		t.Errorf("Ready %+v", c)
	}
	// Even if the runtime forgets the container, the phase stays terminal.
	again := computeStatus(statusInput{pod: pod, rt: podRuntime{}, runtimeName: "containerd", now: statusNow.Add(3 * time.Hour)})
	if again.Phase != corev1.PodFailed {
		t.Errorf("terminal phase changed to %s", again.Phase)
	}
}

func TestPodPhase(t *testing.T) {
	run := corev1.ContainerStatus{State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
	ok := corev1.ContainerStatus{State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}}
	fail := corev1.ContainerStatus{State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1}}}
	wait := corev1.ContainerStatus{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{}}}
	backoff := corev1.ContainerStatus{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{}},
		LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1}}}
	tests := []struct {
		name     string
		policy   corev1.RestartPolicy
		statuses []corev1.ContainerStatus
		want     corev1.PodPhase
	}{
		{"none", corev1.RestartPolicyAlways, nil, corev1.PodPending},
		{"one waiting", corev1.RestartPolicyAlways, []corev1.ContainerStatus{run, wait}, corev1.PodPending},
		{"running", corev1.RestartPolicyAlways, []corev1.ContainerStatus{run, ok}, corev1.PodRunning},
		{"back-off counts as stopped", corev1.RestartPolicyAlways, []corev1.ContainerStatus{backoff}, corev1.PodRunning},
		{"always, all exited", corev1.RestartPolicyAlways, []corev1.ContainerStatus{ok}, corev1.PodRunning},
		{"never, all ok", corev1.RestartPolicyNever, []corev1.ContainerStatus{ok, ok}, corev1.PodSucceeded},
		{"never, one failed", corev1.RestartPolicyNever, []corev1.ContainerStatus{ok, fail}, corev1.PodFailed},
		{"on failure, one failed", corev1.RestartPolicyOnFailure, []corev1.ContainerStatus{fail}, corev1.PodRunning},
		{"on failure, all ok", corev1.RestartPolicyOnFailure, []corev1.ContainerStatus{ok}, corev1.PodSucceeded},
	}
	for _, tt := range tests {
		if got := podPhase(tt.policy, tt.statuses); got != tt.want {
			t.Errorf("%s: phase %s, want %s", tt.name, got, tt.want)
		}
	}
}

func TestComputeStatusInitContainers(t *testing.T) {
	tests := []struct {
		name        string
		policy      corev1.RestartPolicy
		init, app   []*runtimeapi.ContainerStatus
		waiting     map[string]waitingState
		phase       corev1.PodPhase
		initialized bool
		appReason   string // the app container's waiting reason, if waiting
	}{
		{name: "init running", policy: corev1.RestartPolicyAlways, init: []*runtimeapi.ContainerStatus{running("i1", 0)},
			phase: corev1.PodPending, appReason: "PodInitializing"},
		{name: "init done, app running", policy: corev1.RestartPolicyAlways, init: []*runtimeapi.ContainerStatus{exited("i1", 0, 0)},
			app: []*runtimeapi.ContainerStatus{running("c1", 0)}, phase: corev1.PodRunning, initialized: true},
		{name: "init failed, never", policy: corev1.RestartPolicyNever, init: []*runtimeapi.ContainerStatus{exited("i1", 0, 1)},
			phase: corev1.PodFailed, appReason: "PodInitializing"},
		{name: "init crash loop", policy: corev1.RestartPolicyAlways, init: []*runtimeapi.ContainerStatus{exited("i1", 0, 1)},
			waiting: map[string]waitingState{"init": {reason: "CrashLoopBackOff"}}, phase: corev1.PodPending, appReason: "PodInitializing"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pod := testPod()
			pod.Spec.RestartPolicy = tt.policy
			pod.Spec.InitContainers = []corev1.Container{{Name: "init", Image: "berth.local/busybox:1.35"}}
			rt := podRuntime{sandbox: readySandbox("10.244.0.5"), containers: map[string][]*runtimeapi.ContainerStatus{"init": tt.init}}
			if tt.app != nil {
				rt.containers["main"] = tt.app
			}
			st := computeStatus(statusInput{pod: pod, rt: rt, waiting: tt.waiting, runtimeName: "containerd", now: statusNow})
			if st.Phase != tt.phase {
				t.Errorf("phase %s, want %s", st.Phase, tt.phase)
			}
			c := condition(st, corev1.PodInitialized)
			if (c.Status == corev1.ConditionTrue) != tt.initialized {
				t.Errorf("Initialized %+v, want %v", c, tt.initialized)
			}
			if !tt.initialized && (c.Reason != "ContainersNotInitialized" || c.Message != "containers with incomplete status: [init]") {
				t.Errorf("Initialized %+v", c)
			}
			if len(st.InitContainerStatuses) != 1 || st.InitContainerStatuses[0].Ready != tt.initialized {
				t.Errorf("init container statuses %+v", st.InitContainerStatuses)
			}
			w := st.ContainerStatuses[0].State.Waiting
			if tt.appReason != "" && (w == nil || w.Reason != tt.appReason) {
				t.Errorf("app container state %+v, want waiting %s", st.ContainerStatuses[0].State, tt.appReason)
			}
		})
	}
}
