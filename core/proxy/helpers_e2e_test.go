package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
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

	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/core/internal/testserver"
	"berth.dev/berth/core/proxy"
)

// The helpers below follow core/agent/e2e_test.go's (which a test of another package
// cannot import).

// requireHost skips the test when this machine cannot run containers or program nftables.
func requireHost(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd, containers and nftables")
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			if _, err := os.Stat(filepath.Join("/usr/sbin", bin)); err != nil {
				t.Skipf("%s is missing (make deps installs it): %v", bin, err)
			}
		}
	}
	for _, f := range []string{"bridge", "host-local", "portmap", "loopback"} {
		if _, err := os.Stat(filepath.Join(containerd.DefaultCNIBinDir, f)); err != nil {
			t.Skipf("CNI plugin %s is missing: %v", f, err)
		}
	}
	if _, err := os.Stat(images.DefaultBusyboxPath); err != nil {
		t.Skipf("busybox-static is missing: %v", err)
	}
}

// freePodCIDR picks a /24 under 10.244.0.0/16 that no address or route of this machine
// overlaps.
func freePodCIDR(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		t.Fatalf("ip route: %v", err)
	}
	addrs, _ := net.InterfaceAddrs()
	for i := range 150 {
		third := 100 + (os.Getpid()+i+77)%150
		_, subnet, _ := net.ParseCIDR(fmt.Sprintf("10.244.%d.0/24", third))
		taken := strings.Contains(string(out), fmt.Sprintf("10.244.%d.", third))
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

type testRuntime struct {
	endpoint string
	runtime  runtimeapi.RuntimeServiceClient
}

// startContainerd starts containerd with a CNI bridge of the test's own and imports
// berth's images; everything is removed when the test ends.
func startContainerd(t *testing.T, dir, cidr, bridge string, logs io.Writer) *testRuntime {
	t.Helper()
	files, err := images.BuildAll(filepath.Join(dir, "images"), images.DefaultBusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	proc, err := containerd.Start(ctx, containerd.Config{
		DataDir: filepath.Join(dir, "containerd"), SandboxImage: images.PauseRef,
		PodCIDR: cidr, Bridge: bridge, Output: logs,
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
	rt := &testRuntime{endpoint: proc.Endpoint, runtime: runtimeapi.NewRuntimeServiceClient(conn)}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		if resp, err := rt.runtime.ListPodSandbox(cctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, sb := range resp.Items {
				_, _ = rt.runtime.StopPodSandbox(cctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id})
				if _, err := rt.runtime.RemovePodSandbox(cctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
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
	return rt
}

// execCode runs cmd in a container and returns its output (stdout and stderr) and exit code.
func (rt *testRuntime) execCode(id string, cmd ...string) (string, int32) {
	resp, err := rt.runtime.ExecSync(context.Background(), &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 10})
	if err != nil {
		return err.Error(), -1
	}
	return string(resp.Stdout) + string(resp.Stderr), resp.ExitCode
}

// httpGet fetches url ("http://host:port/path") from inside a container with busybox nc
// (busybox's static wget crashes on these machines) and returns the body, trimmed.
func (rt *testRuntime) httpGet(id, url string) (string, int32) {
	hostPort, path, _ := strings.Cut(strings.TrimPrefix(url, "http://"), "/")
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		host, port = hostPort, "80"
	}
	out, code := rt.execCode(id, "sh", "-c", fmt.Sprintf(`printf 'GET /%s HTTP/1.0\r\n\r\n' | nc -w 2 %s %s`, path, host, port))
	if code != 0 {
		return out, code
	}
	_, body, ok := strings.Cut(out, "\r\n\r\n")
	if !ok {
		return out, 1
	}
	return strings.TrimSpace(body), 0
}

func killShims(t *testing.T, address string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		data, err := os.ReadFile(f)
		if err != nil || !bytes.Contains(data, []byte("containerd-shim")) || !bytes.Contains(data, []byte(address)) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(f, "/proc/%d/cmdline", &pid); err == nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

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

func busyboxPod(name, node string, labels map[string]string, command ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: node, TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name: "main", Image: images.BusyboxRef, Command: command, ImagePullPolicy: corev1.PullIfNotPresent,
				Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
			}},
		},
	}
}

// webPod serves its name at /hostname on port 8080 with busybox httpd.
func webPod(name, node string) *corev1.Pod {
	return busyboxPod(name, node, map[string]string{"app": "web"},
		"sh", "-c", `mkdir -p /www && echo "$POD_NAME" > /www/hostname && exec httpd -f -p 8080 -h /www`)
}

func createPod(t *testing.T, kube kubernetes.Interface, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	p, err := kube.CoreV1().Pods("default").Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func createService(t *testing.T, kube kubernetes.Interface, s *corev1.Service) *corev1.Service {
	t.Helper()
	s, err := kube.CoreV1().Services("default").Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitRunning waits for the pod to be Running and Ready and returns its container's ID.
func waitRunning(t *testing.T, kube kubernetes.Interface, name string) string {
	t.Helper()
	var id string
	testserver.WaitForWithin(t, name+" Running and Ready", 60*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		ready := false
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				ready = c.Status == corev1.ConditionTrue
			}
		}
		if len(p.Status.ContainerStatuses) == 1 {
			id = strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
		}
		return ready && id != "" && p.Status.PodIP != "", fmt.Errorf("phase %s", p.Status.Phase)
	})
	return id
}

// unassignedServiceIP is an address of the service range that no Service of the test's
// API server holds.
func unassignedServiceIP(t *testing.T, kube kubernetes.Interface) string {
	t.Helper()
	svcs, err := kube.CoreV1().Services("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, s := range svcs.Items {
		used[s.Spec.ClusterIP] = true
	}
	for i := 200; i < 250; i++ {
		ip := fmt.Sprintf("10.111.%d.%d", i, i)
		if !used[ip] {
			return ip
		}
	}
	t.Fatal("no unassigned service IP")
	return ""
}

// requireServiceRoute fails the test unless the unreachable route of the service range is
// in the proxy's routing table, with the rule that consults it.
func requireServiceRoute(t *testing.T, cfg proxy.Config) {
	t.Helper()
	routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: cfg.RouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range routes {
		if r.Type == unix.RTN_UNREACHABLE && r.Dst != nil && r.Dst.String() == cfg.ServiceCIDR.String() {
			found = true
		}
	}
	if !found {
		t.Fatalf("no unreachable route for %s in table %d: %v", cfg.ServiceCIDR, cfg.RouteTable, routes)
	}
	rules, err := netlink.RuleListFiltered(unix.AF_INET, &netlink.Rule{Table: cfg.RouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil || len(rules) == 0 {
		t.Fatalf("no routing rule for table %d: %v", cfg.RouteTable, err)
	}
}
