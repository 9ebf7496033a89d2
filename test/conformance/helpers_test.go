// Package conformance runs berth's conformance suites against the drivers they are meant
// for: the CRI suite against a real containerd of its own and against berth's simulated
// runtime, with and without its deliberate defects.
package conformance

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
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"berth.dev/berth/conformance/cri"
	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
)

// requireHost skips the test when this machine cannot run containers.
func requireHost(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run containerd and containers")
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			if _, err := os.Stat(filepath.Join("/usr/sbin", bin)); err != nil {
				t.Skipf("%s is missing (make deps installs it): %v", bin, err)
			}
		}
	}
	for _, f := range []string{"bridge", "host-local", "portmap", "loopback"} {
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

// removableImageRef is a second busybox image, with an image ID of its own, that the
// suite's image/remove test may remove.
const removableImageRef = "berth.local/conformance-removable:1"

// testContainerd is a containerd the test started, with berth's images and the
// removable image imported.
type testContainerd struct {
	endpoint, address string
}

// startContainerd starts containerd on dir (its own pod CIDR and bridge). Its cleanup
// leaves nothing behind even when the test fails half-way: it removes every sandbox,
// stops containerd, kills any shim of this containerd still running, unmounts what is
// left under dir and deletes the bridge.
func startContainerd(t *testing.T, dir string, logs io.Writer) *testContainerd {
	t.Helper()
	files, err := images.BuildAll(filepath.Join(dir, "images"), images.DefaultBusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	removable, err := removableImage()
	if err != nil {
		t.Fatal(err)
	}
	removableFile := filepath.Join(dir, "images", "removable.tar")
	if err := images.WriteTarball(removableFile, removableImageRef, removable); err != nil {
		t.Fatal(err)
	}
	files = append(files, removableFile)

	cidr := freePodCIDR(t)
	bridge := fmt.Sprintf("berthcc%d", os.Getpid()%100000)
	ctx, cancel := context.WithCancel(context.Background())
	proc, err := containerd.Start(ctx, containerd.Config{
		DataDir: filepath.Join(dir, "containerd"), SandboxImage: images.PauseRef,
		PodCIDR: cidr, Bridge: bridge, Output: logs,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cleanupRuntime(t, proc.Endpoint)
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
	t.Logf("containerd at %s, pod CIDR %s, bridge %s", proc.Endpoint, cidr, bridge)
	return &testContainerd{endpoint: proc.Endpoint, address: proc.Address}
}

// removableImage is berth's busybox with one more env entry, so that its config, and so
// its image ID, differ from the test image's.
func removableImage() (v1.Image, error) {
	img, err := images.Busybox(images.DefaultBusyboxPath)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("removable image config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.Config.Env = append(cfg.Config.Env, "BERTH_CONFORMANCE=removable")
	out, err := mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("removable image: %w", err)
	}
	return out, nil
}

// cleanupRuntime removes every sandbox the runtime at endpoint still has and fails the
// test when the suite left any of its own behind.
func cleanupRuntime(t *testing.T, endpoint string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Errorf("cleanup: connect to %s: %v", endpoint, err)
		return
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	resp, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Errorf("cleanup: list sandboxes: %v", err)
		return
	}
	for _, sb := range resp.Items {
		if _, ok := sb.Labels[cri.RunLabel]; ok {
			t.Errorf("the suite left sandbox %s (%s) behind", sb.Id, sb.Metadata.GetName())
		}
		_, _ = rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id})
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			t.Errorf("cleanup: remove sandbox %s: %v", sb.Id, err)
		}
	}
}

// killShims kills the runc shims serving the containerd at address, found by the address
// on their command line; there are none when every sandbox was removed.
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
		t.Logf("cleanup: unmounting %s", p)
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			t.Errorf("cleanup: unmount %s: %v", p, err)
		}
	}
}

// logWriter sends what the suite prints, line by line, to the test's log.
type logWriter struct {
	t   *testing.T
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(line)
			return len(p), nil
		}
		w.t.Log(strings.TrimSuffix(line, "\n"))
	}
}

// checkReport fails the test for every failed test of report that is not in expected
// (name -> why), for every expected failure that passed, and for a skip without a reason.
func checkReport(t *testing.T, report *cri.Report, expected map[string]string) {
	t.Helper()
	for _, res := range report.Results {
		why, known := expected[res.Name]
		switch res.Status {
		case cri.StatusFail:
			if !known {
				t.Errorf("%s failed: %s", res.Name, strings.Join(res.Messages, "; "))
			}
		case cri.StatusSkip:
			if len(res.Messages) == 0 || strings.TrimSpace(res.Messages[0]) == "" {
				t.Errorf("%s skipped without a reason", res.Name)
			}
		case cri.StatusPass:
			if known {
				t.Errorf("%s passed, but it is expected to fail (%s): update the expectations and docs/conformance-cri.md", res.Name, why)
			}
		}
	}
	if report.Leftovers != "" {
		t.Errorf("%s", report.Leftovers)
	}
}

// lockedBuffer collects a daemon's output, which its goroutines write while the test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
