package agent_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/hosttest"
	"berth.dev/berth/core/internal/testserver"
)

// TestProbesOnContainerd runs probes against real containers: a pod whose readiness
// probe execs `cat /tmp/ready` stays not Ready until the file exists, and a container whose
// liveness probe execs `false` is killed and restarted, with Unhealthy and Killing events;
// postStart and preStop hooks run, and their failures are events.
func TestProbesOnContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containerd, real containers and an API server")
	}
	hosttest.RequireHost(t)
	start := time.Now()
	step := func(what string) { t.Logf("%5.1fs %s", time.Since(start).Seconds(), what) }
	dir := t.TempDir()
	srv := testserver.Start(t)
	kube := srv.Kube
	cidr := hosttest.FreePodCIDR(t)
	rt := startContainerd(t, dir, cidr, fmt.Sprintf("berthp%d", time.Now().UnixNano()%1000000), srv.Logs)

	const node = "node-probes"
	ctx := context.Background()
	runAgent(t, agent.Config{
		Kube: kube, NodeName: node, RuntimeEndpoint: rt.Endpoint, DataDir: filepath.Join(dir, "agent"),
		PodCIDR: cidr, Log: srv.Log.With("component", "agent"), LeaseRenewInterval: time.Second,
	})
	step("containerd, API server and agent up")

	probe := func(cmd ...string) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: cmd}},
			PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 1,
		}
	}
	gated := busyboxPod("gated", node, corev1.RestartPolicyAlways, "sleep", "3600")
	gated.Spec.Containers[0].ReadinessProbe = probe("cat", "/tmp/ready")
	unhealthy := busyboxPod("unhealthy", node, corev1.RestartPolicyAlways, "sleep", "3600")
	unhealthy.Spec.Containers[0].LivenessProbe = probe("false")
	for _, p := range []*corev1.Pod{gated, unhealthy} {
		if _, err := kube.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	get := func(name string) (*corev1.Pod, error) {
		return kube.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
	}

	// The readiness probe fails while /tmp/ready is missing: running, not ready.
	var containerID string
	testserver.WaitForWithin(t, "gated running", 30*time.Second, func() (bool, error) {
		p, err := get("gated")
		if err != nil || len(p.Status.ContainerStatuses) != 1 {
			return false, err
		}
		cs := p.Status.ContainerStatuses[0]
		containerID = strings.TrimPrefix(cs.ContainerID, "containerd://")
		return cs.State.Running != nil, fmt.Errorf("status %+v", p.Status)
	})
	step("gated running")
	testserver.WaitForWithin(t, "readiness probe failed event", 15*time.Second, func() (bool, error) {
		return hasEvent(ctx, t, kube, "gated", "Unhealthy", "Readiness probe failed: "), nil
	})
	if p, err := get("gated"); err != nil {
		t.Fatal(err)
	} else if cs := p.Status.ContainerStatuses[0]; podReady(p) || cs.Ready || cs.Started == nil || !*cs.Started {
		t.Errorf("gated before /tmp/ready: pod ready %v, container %+v", podReady(p), cs)
	}
	rt.exec(t, containerID, "touch", "/tmp/ready")
	testserver.WaitForWithin(t, "gated Ready", 15*time.Second, func() (bool, error) {
		p, err := get("gated")
		if err != nil {
			return false, err
		}
		containersReady := false
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.ContainersReady {
				containersReady = c.Status == corev1.ConditionTrue
			}
		}
		return podReady(p) && containersReady && p.Status.ContainerStatuses[0].Ready, fmt.Errorf("conditions %+v", p.Status.Conditions)
	})
	step("gated Ready once /tmp/ready exists")

	// The liveness probe fails at once: the container is killed and restarted.
	testserver.WaitForWithin(t, "unhealthy restarted", 30*time.Second, func() (bool, error) {
		p, err := get("unhealthy")
		if err != nil || len(p.Status.ContainerStatuses) != 1 {
			return false, err
		}
		cs := p.Status.ContainerStatuses[0]
		return cs.RestartCount >= 1 && cs.LastTerminationState.Terminated != nil, fmt.Errorf("container %+v", cs)
	})
	step("unhealthy restarted")
	if !hasEvent(ctx, t, kube, "unhealthy", "Unhealthy", "Liveness probe failed: ") {
		t.Errorf("no Unhealthy event for the liveness probe")
	}
	testserver.WaitForWithin(t, "Killing event", 10*time.Second, func() (bool, error) {
		return hasEvent(ctx, t, kube, "unhealthy", "Killing", "Container main failed liveness probe, will be restarted"), nil
	})

	// Lifecycle hooks: postStart runs in the container before it counts as started; a
	// failing postStart gets the container killed and restarted; preStop runs on deletion
	// and its failure is an event that carries its output.
	hooked := busyboxPod("hooked", node, corev1.RestartPolicyAlways, "sleep", "3600")
	hooked.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{
		PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c", "echo started > /tmp/poststart"}}},
		PreStop:   &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c", "echo goodbye; exit 1"}}},
	}
	badStart := busyboxPod("badstart", node, corev1.RestartPolicyAlways, "sleep", "3600")
	badStart.Spec.Containers[0].Lifecycle = &corev1.Lifecycle{
		PostStart: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"false"}}},
	}
	for _, p := range []*corev1.Pod{hooked, badStart} {
		if _, err := kube.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	testserver.WaitForWithin(t, "hooked running", 30*time.Second, func() (bool, error) {
		p, err := get("hooked")
		if err != nil || len(p.Status.ContainerStatuses) != 1 {
			return false, err
		}
		cs := p.Status.ContainerStatuses[0]
		containerID = strings.TrimPrefix(cs.ContainerID, "containerd://")
		return cs.State.Running != nil, fmt.Errorf("status %+v", p.Status)
	})
	if got := rt.exec(t, containerID, "cat", "/tmp/poststart"); got != "started\n" {
		t.Errorf("the postStart hook wrote %q, want \"started\\n\"", got)
	}
	testserver.WaitForWithin(t, "badstart restarted after its postStart hook failed", 30*time.Second, func() (bool, error) {
		p, err := get("badstart")
		if err != nil || len(p.Status.ContainerStatuses) != 1 {
			return false, err
		}
		cs := p.Status.ContainerStatuses[0]
		return cs.RestartCount >= 1 && hasEvent(ctx, t, kube, "badstart", "FailedPostStartHook", "Exec lifecycle hook ([false]) for Container \"main\""), fmt.Errorf("container %+v", cs)
	})
	step("postStart hooks ran")
	if err := kube.CoreV1().Pods("default").Delete(ctx, "hooked", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testserver.WaitForWithin(t, "FailedPreStopHook event with the hook's output", 30*time.Second, func() (bool, error) {
		return hasEvent(ctx, t, kube, "hooked", "FailedPreStopHook", "Exec lifecycle hook ([sh -c echo goodbye; exit 1]) for Container \"main\""), nil
	})
	step("preStop hook ran")

	for _, name := range []string{"gated", "unhealthy", "hooked", "badstart"} {
		if err := kube.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"gated", "unhealthy", "hooked", "badstart"} {
		testserver.WaitForWithin(t, "pod "+name+" gone", 30*time.Second, func() (bool, error) {
			_, err := get(name)
			return apierrors.IsNotFound(err), err
		})
	}
	step("pods deleted")
}

// hasEvent tells whether pod has an event with reason whose message starts with prefix.
func hasEvent(ctx context.Context, t *testing.T, kube kubernetes.Interface, pod, reason, prefix string) bool {
	t.Helper()
	events, err := kube.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events.Items {
		if e.InvolvedObject.Name == pod && e.Reason == reason && strings.HasPrefix(e.Message, prefix) {
			return true
		}
	}
	return false
}
