package network_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/core/agent/network"
	"berth.dev/berth/core/hosttest"
	"berth.dev/berth/core/internal/testserver"
)

// TestSwitchDriverOnContainerd runs the agent, the API server and containerd with a
// network configuration file: a pod started with the bridge driver gets an address behind
// the bridge; the file switches to ptp and, without a restart, the next pod gets an
// address on a veth of its own (no bridge member); both answer from the host.
func TestSwitchDriverOnContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containerd and pod sandboxes")
	}
	hosttest.RequireHost(t)
	hosttest.RequireCNIPlugins(t, "ptp")
	dir := t.TempDir() // removed last: every cleanup below runs before
	srv := testserver.Start(t)
	cidr := hosttest.FreePodCIDR(t)
	bridge := fmt.Sprintf("berthnw%d", os.Getpid()%100000)
	netFile := filepath.Join(dir, "network.yaml")
	writeNetworkFile(t, netFile, "bridge")

	proc := hosttest.StartContainerd(t, dir, containerd.Config{
		PodCIDR: cidr, Bridge: bridge, NetworkConfig: netFile,
		Log: srv.Log.With("component", "network"), Output: srv.Logs,
	})
	_, subnet, _ := net.ParseCIDR(cidr)

	const node = "node-network-e2e"
	actx, stopAgent := context.WithCancel(context.Background())
	a, err := agent.New(agent.Config{
		Kube: srv.Kube, NodeName: node, RuntimeEndpoint: proc.Endpoint, DataDir: filepath.Join(dir, "agent"),
		PodCIDR: cidr, Log: srv.Log.With("component", "agent"), LeaseRenewInterval: time.Second,
	})
	if err != nil {
		stopAgent()
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(actx) }()
	// Registered after containerd's cleanup, so it runs first: the agent stops before
	// the sandboxes are removed under it.
	t.Cleanup(func() {
		for _, name := range []string{"on-bridge", "on-ptp"} {
			_ = srv.Kube.CoreV1().Pods("default").Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
		}
		stopAgent()
		select {
		case err := <-agentDone:
			if err != nil {
				t.Errorf("agent Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("agent did not stop")
		}
	})

	// With the bridge driver the pod's address is reached through the bridge.
	ip1 := runPod(t, srv.Kube, node, "on-bridge", subnet)
	if dev := routeDevice(t, ip1); dev.Attrs().Name != bridge {
		t.Errorf("pod %s is reached through %s (%s), want the bridge %s", ip1, dev.Attrs().Name, dev.Type(), bridge)
	}

	// Switch to ptp: the watcher renders it, containerd reloads its conf dir by itself.
	writeNetworkFile(t, netFile, "ptp")
	conflist := filepath.Join(proc.CNIConfDir, network.ConflistFile)
	waitFor(t, "the ptp conflist rendered", 10*time.Second, func() bool {
		data, err := os.ReadFile(conflist)
		return err == nil && bytes.Contains(data, []byte(`"type": "ptp"`))
	})
	// containerd's CRI plugin reloads on the conf dir's fsnotify event; give it a moment,
	// then each new pod must be on ptp.
	time.Sleep(time.Second)
	ip2 := runPod(t, srv.Kube, node, "on-ptp", subnet)
	dev := routeDevice(t, ip2)
	if dev.Type() != "veth" || dev.Attrs().MasterIndex != 0 {
		t.Errorf("pod %s is reached through %s (%s, master %d), want a veth of its own that is no bridge member", ip2, dev.Attrs().Name, dev.Type(), dev.Attrs().MasterIndex)
	}
	if ip1.Equal(ip2) {
		t.Errorf("both pods got %s", ip1)
	}
	// Both answer from the host: a TCP connection to a closed port is refused by the
	// pod's kernel, which needs the packets to get there and back.
	for _, ip := range []net.IP{ip1, ip2} {
		if err := reachable(ip); err != nil {
			t.Errorf("pod %s is not reachable from the host: %v", ip, err)
		}
	}
}

func writeNetworkFile(t *testing.T, path, driver string) {
	t.Helper()
	data := fmt.Sprintf("apiVersion: %s\nkind: %s\ndriver: %s\n", network.APIVersion, network.Kind, driver)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// runPod runs a busybox pod on node and returns its IP, which must be in subnet.
func runPod(t *testing.T, kube kubernetes.Interface, node, name string, subnet *net.IPNet) net.IP {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptr.To[int64](0),
			Containers: []corev1.Container{{
				Name: "main", Image: images.BusyboxRef, Command: []string{"sleep", "3600"},
				ImagePullPolicy: corev1.PullIfNotPresent, // no registry is reachable
			}},
		},
	}
	if _, err := kube.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod %s: %v", name, err)
	}
	var ip net.IP
	testserver.WaitForWithin(t, "pod "+name+" Running with an IP", 60*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		ip = net.ParseIP(p.Status.PodIP)
		return p.Status.Phase == corev1.PodRunning && ip != nil, fmt.Errorf("status %+v", p.Status)
	})
	if !subnet.Contains(ip) {
		t.Fatalf("pod %s has IP %s, not in %s", name, ip, subnet)
	}
	t.Logf("pod %s: %s", name, ip)
	return ip
}

// routeDevice is the host link the host reaches ip through.
func routeDevice(t *testing.T, ip net.IP) netlink.Link {
	t.Helper()
	routes, err := netlink.RouteGet(ip)
	if err != nil || len(routes) == 0 {
		t.Fatalf("route to %s: %v", ip, err)
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		t.Fatalf("link of the route to %s: %v", ip, err)
	}
	return l
}

// reachable connects to port 1 of ip: a refusal is an answer from the pod.
func reachable(ip net.IP) error {
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(ip.String(), "1"), 3*time.Second)
	if err == nil {
		conn.Close()
		return nil
	}
	if errors.Is(err, syscall.ECONNREFUSED) {
		return nil
	}
	return err
}

func waitFor(t *testing.T, what string, timeout time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
