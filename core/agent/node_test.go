package agent

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeRuntime answers Version and Status, the calls node registration makes; any other
// call panics (the embedded interface is nil), so a test that strays shows at once.
type fakeRuntime struct {
	runtimeapi.RuntimeServiceClient
	statusErr    error
	networkReady bool
}

func (f *fakeRuntime) Version(context.Context, *runtimeapi.VersionRequest, ...grpc.CallOption) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{RuntimeName: "containerd", RuntimeVersion: "1.6.20"}, nil
}

func (f *fakeRuntime) Status(context.Context, *runtimeapi.StatusRequest, ...grpc.CallOption) (*runtimeapi.StatusResponse, error) {
	if f.statusErr != nil {
		return nil, f.statusErr
	}
	return &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
		{Type: runtimeapi.NetworkReady, Status: f.networkReady, Reason: "NetworkPluginNotReady", Message: "cni config uninitialized"},
	}}}, nil
}

func testAgent(t *testing.T, rt *fakeRuntime) (*Agent, *fake.Clientset) {
	t.Helper()
	kube := fake.NewClientset()
	a := &Agent{
		cfg: Config{Kube: kube, NodeName: "node-1", DataDir: t.TempDir(), PodCIDR: "10.244.3.0/24"},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)), runtime: rt, now: time.Now, hostIP: "192.0.2.9",
	}
	if err := a.waitRuntime(context.Background()); err != nil {
		t.Fatal(err)
	}
	return a, kube
}

func nodeReady(t *testing.T, n *corev1.Node) corev1.NodeCondition {
	t.Helper()
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c
		}
	}
	t.Fatalf("no Ready condition in %+v", n.Status.Conditions)
	return corev1.NodeCondition{}
}

func TestRegisterNode(t *testing.T) {
	rt := &fakeRuntime{networkReady: true}
	a, kube := testAgent(t, rt)
	ctx := context.Background()
	if err := a.registerNode(ctx); err != nil {
		t.Fatal(err)
	}
	n, err := kube.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory, corev1.ResourceEphemeralStorage, corev1.ResourcePods} {
		c, a := n.Status.Capacity[r], n.Status.Allocatable[r]
		if c.IsZero() || a.Cmp(c) != 0 {
			t.Errorf("%s: capacity %v, allocatable %v", r, c, a)
		}
	}
	if pods := n.Status.Capacity[corev1.ResourcePods]; pods.Value() != maxPods {
		t.Errorf("pods capacity %v", pods)
	}
	if info := n.Status.NodeInfo; info.ContainerRuntimeVersion != "containerd://1.6.20" || info.KubeletVersion != KubeletVersion || info.OperatingSystem != "linux" {
		t.Errorf("nodeInfo %+v", info)
	}
	if len(n.Status.Addresses) == 0 || n.Status.Addresses[0] != (corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "192.0.2.9"}) {
		t.Errorf("addresses %v", n.Status.Addresses)
	}
	if n.Spec.PodCIDR != "10.244.3.0/24" || n.Labels[corev1.LabelHostname] != "node-1" {
		t.Errorf("podCIDR %q, labels %v", n.Spec.PodCIDR, n.Labels)
	}
	if c := nodeReady(t, n); c.Status != corev1.ConditionTrue || c.Reason != "KubeletReady" {
		t.Errorf("Ready %+v", c)
	}

	// The runtime's network goes away: NotReady, with the runtime's reason.
	rt.networkReady = false
	a.lastNodeReport = time.Time{}
	if err := a.updateNodeStatus(ctx); err != nil {
		t.Fatal(err)
	}
	n, _ = kube.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if c := nodeReady(t, n); c.Status != corev1.ConditionFalse || c.Reason != "KubeletNotReady" ||
		c.Message != "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:cni config uninitialized" {
		t.Errorf("Ready %+v", c)
	}
	// The runtime stops answering.
	rt.statusErr = errors.New("connection refused")
	if err := a.updateNodeStatus(ctx); err != nil {
		t.Fatal(err)
	}
	n, _ = kube.CoreV1().Nodes().Get(ctx, "node-1", metav1.GetOptions{})
	if c := nodeReady(t, n); c.Status != corev1.ConditionFalse || c.Message != "container runtime is down: connection refused" {
		t.Errorf("Ready %+v", c)
	}
}

func TestNodeStatusWrittenOnlyOnChange(t *testing.T) {
	a, kube := testAgent(t, &fakeRuntime{networkReady: true})
	ctx := context.Background()
	if err := a.registerNode(ctx); err != nil {
		t.Fatal(err)
	}
	writes := func() int {
		n := 0
		for _, act := range kube.Actions() {
			if act.GetVerb() == "update" && act.GetSubresource() == "status" {
				n++
			}
		}
		return n
	}
	before := writes()
	if err := a.updateNodeStatus(ctx); err != nil {
		t.Fatal(err)
	}
	if writes() != before {
		t.Errorf("an unchanged status was written again")
	}
	a.lastNodeReport = a.lastNodeReport.Add(-nodeStatusReportInterval)
	if err := a.updateNodeStatus(ctx); err != nil {
		t.Fatal(err)
	}
	if writes() != before+1 {
		t.Errorf("the status was not written after %s", nodeStatusReportInterval)
	}
}

func TestRenewLease(t *testing.T) {
	a, kube := testAgent(t, &fakeRuntime{networkReady: true})
	ctx := context.Background()
	if err := a.registerNode(ctx); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	a.now = func() time.Time { return t0 }
	if err := a.renewLeaseOnce(ctx); err != nil {
		t.Fatal(err)
	}
	a.now = func() time.Time { return t0.Add(10 * time.Second) }
	if err := a.renewLeaseOnce(ctx); err != nil {
		t.Fatal(err)
	}
	l, err := kube.CoordinationV1().Leases(corev1.NamespaceNodeLease).Get(ctx, "node-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if *l.Spec.HolderIdentity != "node-1" || *l.Spec.LeaseDurationSeconds != 40 || !l.Spec.RenewTime.Time.Equal(t0.Add(10*time.Second)) {
		t.Errorf("lease spec %+v", l.Spec)
	}
	if len(l.OwnerReferences) != 1 || l.OwnerReferences[0].Kind != "Node" || l.OwnerReferences[0].Name != "node-1" {
		t.Errorf("owner references %+v", l.OwnerReferences)
	}
}
