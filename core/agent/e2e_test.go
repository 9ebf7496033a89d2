package agent_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/core/hosttest"
	"berth.dev/berth/core/internal/testserver"
)

// TestPodsOnContainerd runs the agent against a containerd of its own and the real API
// server: a pod runs and becomes Ready with an IP of the node's pod network, a crashing
// container goes CrashLoopBackOff, and a deleted pod leaves nothing behind in the runtime.
func TestPodsOnContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containerd, real containers and an API server")
	}
	hosttest.RequireHost(t)
	start := time.Now()
	step := func(what string) { t.Logf("%5.1fs %s", time.Since(start).Seconds(), what) }
	dir := t.TempDir() // removed last: every cleanup below runs before
	srv := testserver.Start(t)
	kube, log := srv.Kube, srv.Log

	cidr := hosttest.FreePodCIDR(t)
	bridge := fmt.Sprintf("berthe2e%d", os.Getpid()%100000)
	rt := startContainerd(t, dir, cidr, bridge, srv.Logs)

	const node = "node-e2e"
	ctx := context.Background()
	// startAgent runs an agent until the stop it returns, which the test calls to restart
	// it; the cleanups stop whichever agent runs.
	startAgent := func(component string) (stop func()) {
		return runAgent(t, agent.Config{
			Kube: kube, NodeName: node, RuntimeEndpoint: rt.Endpoint, DataDir: filepath.Join(dir, "agent"),
			PodCIDR: cidr, Log: log.With("component", component), LeaseRenewInterval: time.Second,
		})
	}
	step("containerd and API server up")
	stopAgent := startAgent("agent")

	// The node registers, Ready, with the runtime in its nodeInfo, and renews its Lease.
	testserver.WaitForWithin(t, "node Ready", 30*time.Second, func() (bool, error) {
		n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return strings.HasPrefix(n.Status.NodeInfo.ContainerRuntimeVersion, "containerd://"), nil
			}
		}
		return false, fmt.Errorf("conditions %v", n.Status.Conditions)
	})
	testserver.WaitForWithin(t, "node lease", 10*time.Second, func() (bool, error) {
		_, err := kube.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, node, metav1.GetOptions{})
		return err == nil, err
	})

	step("node Ready with its Lease")
	// A pod with sleep 3600 runs and is Ready with an IP from the node's pod CIDR.
	sleeper := busyboxPod("sleeper", node, corev1.RestartPolicyAlways, "sleep", "3600")
	sleeper.Spec.Containers[0].Env = []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "GREETING", Value: "hello $(POD_NAME)"},
	}
	sleeper.Spec.InitContainers = []corev1.Container{{
		Name: "init", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullIfNotPresent,
		Command: []string{"sh", "-c", "echo initialized"},
	}}
	sleeper, err := kube.CoreV1().Pods("default").Create(ctx, sleeper, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, subnet, _ := net.ParseCIDR(cidr)
	var running *corev1.Pod
	testserver.WaitForWithin(t, "sleeper Running and Ready", 30*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, "sleeper", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		running = p
		return p.Status.Phase == corev1.PodRunning && podReady(p) && p.Status.PodIP != "", fmt.Errorf("status %+v", p.Status)
	})
	step("sleeper Running and Ready")
	if ip := net.ParseIP(running.Status.PodIP); ip == nil || !subnet.Contains(ip) {
		t.Errorf("podIP %q is not in the pod CIDR %s", running.Status.PodIP, cidr)
	}
	cs := running.Status.ContainerStatuses
	if len(cs) != 1 || !strings.HasPrefix(cs[0].ContainerID, "containerd://") || cs[0].ImageID == "" || cs[0].State.Running == nil || running.Status.StartTime == nil {
		t.Errorf("container statuses %+v, startTime %v", cs, running.Status.StartTime)
	}
	// The downward API and $(VAR) expansion reached the container.
	if len(cs) == 1 {
		out := rt.exec(t, strings.TrimPrefix(cs[0].ContainerID, "containerd://"), "sh", "-c", `echo "$POD_NAME $POD_IP $GREETING"`)
		if want := fmt.Sprintf("sleeper %s hello sleeper", running.Status.PodIP); strings.TrimSpace(out) != want {
			t.Errorf("env in the container: %q, want %q", strings.TrimSpace(out), want)
		}
	}

	if ics := running.Status.InitContainerStatuses; len(ics) != 1 || ics[0].State.Terminated == nil || ics[0].State.Terminated.Reason != "Completed" {
		t.Errorf("init container statuses %+v", ics)
	}
	// The runtime wrote the containers' logs under the agent's data dir.
	logDir := filepath.Join(dir, "agent", "pods", "default_sleeper_"+string(sleeper.UID))
	if data, err := os.ReadFile(filepath.Join(logDir, "init", "0.log")); err != nil || !strings.Contains(string(data), "initialized") {
		t.Errorf("init container log: %q, %v", data, err)
	}

	// A restarted agent adopts the running pod: same container, no restart.
	stopAgent()
	startAgent("agent2")
	time.Sleep(3 * time.Second) // a few relists
	if p, err := kube.CoreV1().Pods("default").Get(ctx, "sleeper", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if cs := p.Status.ContainerStatuses; len(cs) != 1 || cs[0].ContainerID != running.Status.ContainerStatuses[0].ContainerID ||
		cs[0].RestartCount != 0 || !podReady(p) {
		t.Errorf("after an agent restart: ready %v, container statuses %+v", podReady(p), cs)
	}
	if sbs := rt.sandboxes(t, map[string]string{"io.kubernetes.pod.uid": string(sleeper.UID)}); len(sbs) != 1 {
		t.Errorf("after an agent restart the pod has sandboxes %v", sbs)
	}

	step("agent restarted, pod adopted")
	// A container that exits 1 under restartPolicy Always is restarted, then backs off.
	crasher, err := kube.CoreV1().Pods("default").Create(ctx, busyboxPod("crasher", node, corev1.RestartPolicyAlways, "sh", "-c", "exit 1"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testserver.WaitForWithin(t, "crasher in CrashLoopBackOff", 30*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, "crasher", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) != 1 {
			return false, err
		}
		cs := p.Status.ContainerStatuses[0]
		last := cs.LastTerminationState.Terminated
		ok := cs.State.Waiting != nil && cs.State.Waiting.Reason == "CrashLoopBackOff" && cs.RestartCount >= 1 &&
			last != nil && last.ExitCode == 1 && p.Status.Phase == corev1.PodRunning
		return ok, fmt.Errorf("phase %s, container %+v", p.Status.Phase, cs)
	})

	step("crasher in CrashLoopBackOff")
	// An image that cannot be pulled (nothing listens at 127.0.0.1:1) gives ErrImagePull,
	// then ImagePullBackOff, with the runtime's message; the other pods are not disturbed.
	unpullable := busyboxPod("unpullable", node, corev1.RestartPolicyAlways, "true")
	unpullable.Spec.Containers[0].Image = "127.0.0.1:1/missing:1"
	unpullable, err = kube.CoreV1().Pods("default").Create(ctx, unpullable, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	testserver.WaitForWithin(t, "unpullable in ErrImagePull or ImagePullBackOff", 30*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, "unpullable", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) != 1 {
			return false, err
		}
		w := p.Status.ContainerStatuses[0].State.Waiting
		ok := w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff") &&
			strings.Contains(w.Message, "127.0.0.1:1") && p.Status.Phase == corev1.PodPending
		return ok, fmt.Errorf("phase %s, state %+v", p.Status.Phase, p.Status.ContainerStatuses[0].State)
	})

	step("unpullable in ImagePullBackOff")
	// Deleting a pod stops it (sleep ignores SIGTERM: the grace period of 2 s ends in
	// SIGKILL), removes its sandbox and then the pod object.
	if p, err := kube.CoreV1().Pods("default").Get(ctx, "sleeper", metav1.GetOptions{}); err != nil || !podReady(p) {
		t.Errorf("sleeper is no longer ready (%v)", err)
	}
	for _, p := range []*corev1.Pod{sleeper, crasher, unpullable} {
		if err := kube.CoreV1().Pods("default").Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*corev1.Pod{sleeper, crasher, unpullable} {
		testserver.WaitForWithin(t, "pod "+p.Name+" gone", 30*time.Second, func() (bool, error) {
			_, err := kube.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), err
		})
		if sbs := rt.sandboxes(t, map[string]string{"io.kubernetes.pod.uid": string(p.UID)}); len(sbs) != 0 {
			t.Errorf("pod %s deleted, but the runtime still has its sandboxes %v", p.Name, sbs)
		}
		if _, err := os.Stat(filepath.Join(dir, "agent", "pods", "default_"+p.Name+"_"+string(p.UID))); !os.IsNotExist(err) {
			t.Errorf("pod %s deleted, but its log dir is still there (%v)", p.Name, err)
		}
	}
	step("pods deleted")
	events, err := kube.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]bool{}
	for _, e := range events.Items {
		reasons[e.Reason] = true
	}
	for _, want := range []string{"Pulling", "Pulled", "Created", "Started", "BackOff", "Killing", "Failed"} {
		if !reasons[want] {
			t.Errorf("no %s event; events: %v", want, reasons)
		}
	}
}

func busyboxPod(name, node string, policy corev1.RestartPolicy, command ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			RestartPolicy:                 policy,
			TerminationGracePeriodSeconds: ptr.To[int64](2),
			Containers: []corev1.Container{{
				Name: "main", Image: images.BusyboxRef, Command: command,
				// :latest defaults to Always, and no registry is reachable.
				ImagePullPolicy: corev1.PullIfNotPresent,
			}},
		},
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// runAgent runs an agent made with cfg until the stop it returns, which waits up to 30 s
// for Run to return and fails the test when Run failed. stop is also a cleanup of the
// test; only its first call does anything.
func runAgent(t *testing.T, cfg agent.Config) (stop func()) {
	t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("agent Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("agent did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// testRuntime is the containerd the test started, with a CRI client of its own.
type testRuntime struct{ *hosttest.Containerd }

// startContainerd starts containerd on dir with the test images imported, its own pod
// CIDR and bridge; hosttest.StartContainerd's cleanup leaves nothing behind.
func startContainerd(t *testing.T, dir, cidr, bridge string, logs io.Writer) *testRuntime {
	t.Helper()
	return &testRuntime{hosttest.StartContainerd(t, dir, containerd.Config{PodCIDR: cidr, Bridge: bridge, Output: logs})}
}

func (rt *testRuntime) sandboxes(t *testing.T, labels map[string]string) []string {
	t.Helper()
	resp, err := rt.Runtime.ListPodSandbox(context.Background(), &runtimeapi.ListPodSandboxRequest{
		Filter: &runtimeapi.PodSandboxFilter{LabelSelector: labels},
	})
	if err != nil {
		t.Fatalf("list sandboxes: %v", err)
	}
	var ids []string
	for _, sb := range resp.Items {
		ids = append(ids, sb.Id+" "+sb.State.String())
	}
	return ids
}

func (rt *testRuntime) exec(t *testing.T, id string, cmd ...string) string {
	t.Helper()
	resp, err := rt.Runtime.ExecSync(context.Background(), &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 10})
	if err != nil {
		t.Fatalf("exec in %s: %v", id, err)
	}
	if resp.ExitCode != 0 {
		t.Errorf("exec %v in %s: exit %d: %s", cmd, id, resp.ExitCode, resp.Stderr)
	}
	return string(resp.Stdout)
}
