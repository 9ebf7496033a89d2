package integration

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/drivers/cri/sim"
)

// TestAgentOnSimulatedRuntime runs the real agent against the simulated CRI runtime and a
// real API server: a pod goes Running with an IP of the simulator's CIDR, a container
// exiting 1 under restartPolicy Always goes CrashLoopBackOff, and a deleted pod leaves no
// sandbox behind.
func TestAgentOnSimulatedRuntime(t *testing.T) {
	srv := startServer(t)
	kube := clientset(t, srv.Kubeconfig)
	dir := t.TempDir()
	const cidr = "10.123.0.0/24"

	ctx, cancel := context.WithCancel(context.Background())
	socket := filepath.Join(dir, "sim.sock")
	simDone := make(chan error, 1)
	go func() { simDone <- sim.Serve(ctx, socket, sim.Config{PodCIDR: cidr, Log: quietLogger()}) }()

	const node = "sim-node"
	a, err := agent.New(agent.Config{
		Kube: kube, NodeName: node, RuntimeEndpoint: "unix://" + socket, DataDir: filepath.Join(dir, "agent"),
		PodCIDR: cidr, NodeIP: "127.0.0.1", Log: quietLogger(), LeaseRenewInterval: time.Second,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		for name, ch := range map[string]chan error{"agent": agentDone, "simulated runtime": simDone} {
			select {
			case err := <-ch:
				if err != nil {
					t.Errorf("%s stopped with: %v", name, err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("%s did not stop", name)
			}
		}
	})

	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cri := runtimeapi.NewRuntimeServiceClient(conn)

	tctx := testContext(t)
	simWaitFor(t, "node Ready on berth-sim", 30*time.Second, func() (bool, error) {
		n, err := kube.CoreV1().Nodes().Get(tctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return n.Status.NodeInfo.ContainerRuntimeVersion == "berth-sim://"+sim.RuntimeVersion,
					fmt.Errorf("runtime version %q", n.Status.NodeInfo.ContainerRuntimeVersion)
			}
		}
		return false, fmt.Errorf("conditions %v", n.Status.Conditions)
	})

	pod := func(name string, policy corev1.RestartPolicy, command ...string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PodSpec{
				NodeName: node, RestartPolicy: policy, TerminationGracePeriodSeconds: ptrTo[int64](1),
				Containers: []corev1.Container{{
					Name: "main", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullIfNotPresent, Command: command,
				}},
			},
		}
	}
	pods := kube.CoreV1().Pods("default")

	// A sleeper runs, Ready, with an IP of the simulator's CIDR.
	sleeper, err := pods.Create(tctx, pod("sleeper", corev1.RestartPolicyAlways, "sleep", "3600"), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_, subnet, _ := net.ParseCIDR(cidr)
	simWaitFor(t, "sleeper Running with an IP", 30*time.Second, func() (bool, error) {
		p, err := pods.Get(tctx, "sleeper", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		ip := net.ParseIP(p.Status.PodIP)
		ok := p.Status.Phase == corev1.PodRunning && ip != nil && subnet.Contains(ip) &&
			len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].Ready &&
			strings.HasPrefix(p.Status.ContainerStatuses[0].ContainerID, "berth-sim://")
		return ok, fmt.Errorf("phase %s, podIP %q, containers %+v", p.Status.Phase, p.Status.PodIP, p.Status.ContainerStatuses)
	})

	// sh -c "exit 1" under restartPolicy Always: restarted, then backed off.
	if _, err := pods.Create(tctx, pod("crasher", corev1.RestartPolicyAlways, "sh", "-c", "exit 1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	simWaitFor(t, "crasher in CrashLoopBackOff", 60*time.Second, func() (bool, error) {
		p, err := pods.Get(tctx, "crasher", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) != 1 {
			return false, err
		}
		cs := p.Status.ContainerStatuses[0]
		last := cs.LastTerminationState.Terminated
		ok := cs.State.Waiting != nil && cs.State.Waiting.Reason == "CrashLoopBackOff" && cs.RestartCount >= 1 &&
			last != nil && last.ExitCode == 1 && last.Reason == "Error"
		return ok, fmt.Errorf("phase %s, container %+v", p.Status.Phase, cs)
	})

	// Deleting the sleeper (which ignores SIGTERM, so it is killed after its 1 s grace
	// period) removes its sandbox, and the pod goes from the API.
	if err := pods.Delete(tctx, "sleeper", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	simWaitFor(t, "sleeper deleted and its sandbox removed", 30*time.Second, func() (bool, error) {
		_, err := pods.Get(tctx, "sleeper", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) {
			return false, fmt.Errorf("pod still there: %v", err)
		}
		resp, err := cri.ListPodSandbox(tctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
			LabelSelector: map[string]string{"io.kubernetes.pod.uid": string(sleeper.UID)},
		}})
		if err != nil {
			return false, err
		}
		return len(resp.Items) == 0, fmt.Errorf("%d sandboxes of the pod left", len(resp.Items))
	})
}

// simWaitFor polls cond every 100 ms until it is true, failing the test with cond's last
// error after timeout.
func simWaitFor(t *testing.T, what string, timeout time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, err := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
