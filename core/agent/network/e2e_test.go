package network_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/core/agent/network"
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
	requireHost(t)
	dir := t.TempDir() // removed last: every cleanup below runs before
	srv := testserver.Start(t)
	cidr := freePodCIDR(t)
	bridge := fmt.Sprintf("berthnw%d", os.Getpid()%100000)
	netFile := filepath.Join(dir, "network.yaml")
	writeNetworkFile(t, netFile, "bridge")

	files, err := images.BuildAll(filepath.Join(dir, "images"), images.DefaultBusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	proc, err := containerd.Start(ctx, containerd.Config{
		DataDir: filepath.Join(dir, "containerd"), SandboxImage: images.PauseRef, PodCIDR: cidr, Bridge: bridge,
		NetworkConfig: netFile, Log: srv.Log.With("component", "network"), Output: srv.Logs,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(proc.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer ccancel()
		if resp, err := rt.ListPodSandbox(cctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, sb := range resp.Items {
				_, _ = rt.StopPodSandbox(cctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id})
				if _, err := rt.RemovePodSandbox(cctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
					t.Errorf("cleanup: remove sandbox %s: %v", sb.Id, err)
				}
			}
		} else {
			t.Errorf("cleanup: list sandboxes: %v", err)
		}
		conn.Close()
		cancel()
		if err := proc.Wait(); err != nil {
			t.Errorf("containerd: %v", err)
		}
		killShims(t, proc.Address)
		unmountUnder(t, dir)
		if out, err := exec.Command("ip", "link", "del", bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
			t.Errorf("cleanup: delete bridge %s: %v: %s", bridge, err, out)
		}
	})
	for _, f := range files {
		if err := images.Import(ctx, proc.Address, containerd.Namespace, f); err != nil {
			t.Fatal(err)
		}
	}
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

// requireHost skips the test when this machine cannot run containers.
func requireHost(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd and containers")
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			if _, err := os.Stat(filepath.Join("/usr/sbin", bin)); err != nil {
				t.Skipf("%s is missing (make deps installs it): %v", bin, err)
			}
		}
	}
	for _, f := range []string{"bridge", "ptp", "host-local", "portmap", "loopback"} {
		if _, err := os.Stat(filepath.Join(containerd.DefaultCNIBinDir, f)); err != nil {
			t.Skipf("CNI plugin %s is missing (make deps installs containernetworking-plugins): %v", f, err)
		}
	}
	if _, err := os.Stat(images.DefaultBusyboxPath); err != nil {
		t.Skipf("busybox-static is missing (make deps installs it): %v", err)
	}
}

// freePodCIDR picks a /24 under 10.244.0.0/16 that no address or route of this machine
// overlaps, so that tests running side by side do not share a pod network.
func freePodCIDR(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		t.Fatalf("ip route: %v", err)
	}
	used := string(out)
	addrs, _ := net.InterfaceAddrs()
	for i := range 150 {
		third := 100 + (os.Getpid()+i)%150
		_, subnet, _ := net.ParseCIDR(fmt.Sprintf("10.244.%d.0/24", third))
		taken := strings.Contains(used, fmt.Sprintf("10.244.%d.", third))
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && (subnet.Contains(n.IP) || n.Contains(subnet.IP)) {
				taken = true
			}
		}
		if !taken {
			return subnet.String()
		}
	}
	t.Fatal("no free /24 in 10.244.0.0/16")
	return ""
}

// killShims kills the runc shims serving the containerd at address.
func killShims(t *testing.T, address string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		data, err := os.ReadFile(f)
		if err != nil || !bytes.Contains(data, []byte("containerd-shim")) || !bytes.Contains(data, []byte(address)) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(f, "/proc/%d/cmdline", &pid); err == nil {
			t.Logf("cleanup: killing shim %d", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder detaches every mount below dir, deepest first.
func unmountUnder(t *testing.T, dir string) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			t.Errorf("cleanup: unmount %s: %v", p, err)
		}
	}
}
