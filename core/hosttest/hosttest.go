// Package hosttest holds what tests that run real containers on this machine share:
// checking that the host can (root, containerd, runc, the CNI plugins, busybox, loop
// devices), picking a pod network no other test or route uses, starting a containerd of
// the test's own with berth's images, and undoing what such a test leaves behind (shims,
// mounts, loop devices) even when it fails half-way. Only tests import it; drivers/ may
// not (test/boundaries), so a driver's tests keep their own.
package hosttest

import (
	"bytes"
	"context"
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

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
)

// RequireHost skips the test, saying what is missing, unless this machine can run
// containerd and containers: root, containerd and its runc shim, ctr, ip, Debian's CNI
// plugins and busybox-static (make deps installs them). A test that needs more names it
// with RequireCommands or RequireCNIPlugins after this.
func RequireHost(t testing.TB) {
	t.Helper()
	RequireRoot(t, "to run containerd and containers")
	RequireCommands(t, "containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip")
	RequireCNIPlugins(t, "bridge", "host-local", "portmap", "loopback")
	if _, err := os.Stat(images.DefaultBusyboxPath); err != nil {
		t.Skipf("busybox-static is missing (make deps installs it): %v", err)
	}
}

// RequireRoot skips the test unless it runs as root; why completes "needs root ..." in
// the skip message ("to make network namespaces").
func RequireRoot(t testing.TB, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root " + why)
	}
}

// RequireCommands skips the test unless every command is on PATH or in /usr/sbin (which
// a non-login root shell may leave off PATH).
func RequireCommands(t testing.TB, commands ...string) {
	t.Helper()
	for _, bin := range commands {
		if _, err := exec.LookPath(bin); err != nil {
			if _, err := os.Stat(filepath.Join("/usr/sbin", bin)); err != nil {
				t.Skipf("%s is missing (make deps installs it): %v", bin, err)
			}
		}
	}
}

// RequireCNIPlugins skips the test unless every plugin is in the CNI bin dir the agent
// uses.
func RequireCNIPlugins(t testing.TB, plugins ...string) {
	t.Helper()
	for _, f := range plugins {
		if _, err := os.Stat(filepath.Join(containerd.DefaultCNIBinDir, f)); err != nil {
			t.Skipf("CNI plugin %s is missing (make deps installs containernetworking-plugins): %v", f, err)
		}
	}
}

// RequireLoopDevices skips the test unless this machine can run a CSI driver that backs
// volumes with loop devices and ext4 (berth-csi-local): root, /dev/loop-control, and
// losetup, mkfs.ext4, resize2fs, e2fsck and blkid. Such tests are also skipped under
// -short: they attach devices and mount file systems on the host.
func RequireLoopDevices(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped under -short: attaches loop devices and mounts file systems")
	}
	RequireRoot(t, "for loop devices and mounts")
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop devices on this machine: %v", err)
	}
	RequireCommands(t, "losetup", "mkfs.ext4", "resize2fs", "e2fsck", "blkid")
}

// FreePodCIDR picks a /24 under 10.244.0.0/16 that no address or route of this machine
// overlaps, so that tests running side by side do not share a pod network.
func FreePodCIDR(t testing.TB) string {
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

// Containerd is a containerd a test started with StartContainerd.
type Containerd struct {
	// Paths are its files: Endpoint (CRI, unix://...), Address (its socket, for the
	// images API and ctr), CNIConfDir...
	containerd.Paths
	// Runtime is a CRI client of the test's own, open until the test ends.
	Runtime runtimeapi.RuntimeServiceClient
}

// StartContainerd starts containerd as cfg says, below dir (cfg.DataDir and
// cfg.SandboxImage default to dir/containerd and berth's pause image), and imports
// berth's images (built under dir/images) and the image tarballs in extraImages. Its
// cleanup leaves nothing behind even when the test fails half-way: it removes every
// sandbox (which stops their containers and removes their network namespaces and CNI
// attachments), stops containerd, kills any shim of this containerd still running,
// unmounts what is left under dir and deletes cfg.Bridge. A cleanup the test registers
// after this runs before it, while containerd still serves.
func StartContainerd(t testing.TB, dir string, cfg containerd.Config, extraImages ...string) *Containerd {
	t.Helper()
	files, err := images.BuildAll(filepath.Join(dir, "images"), images.DefaultBusyboxPath)
	if err != nil {
		t.Fatalf("build berth's images: %v", err)
	}
	files = append(files, extraImages...)
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join(dir, "containerd")
	}
	if cfg.SandboxImage == "" {
		cfg.SandboxImage = images.PauseRef
	}
	ctx, cancel := context.WithCancel(context.Background())
	proc, err := containerd.Start(ctx, cfg)
	if err != nil {
		cancel()
		t.Fatalf("start containerd: %v", err)
	}
	conn, err := grpc.NewClient(proc.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		_ = proc.Wait()
		t.Fatalf("connect to containerd at %s: %v", proc.Endpoint, err)
	}
	rt := &Containerd{Paths: proc.Paths, Runtime: runtimeapi.NewRuntimeServiceClient(conn)}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer ccancel()
		if resp, err := rt.Runtime.ListPodSandbox(cctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, sb := range resp.Items {
				_, _ = rt.Runtime.StopPodSandbox(cctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id})
				if _, err := rt.Runtime.RemovePodSandbox(cctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
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
		KillShims(t, proc.Address)
		UnmountUnder(t, dir)
		if cfg.Bridge != "" {
			if out, err := exec.Command("ip", "link", "del", cfg.Bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
				t.Errorf("cleanup: delete bridge %s: %v: %s", cfg.Bridge, err, out)
			}
		}
	})
	for _, f := range files {
		if err := images.Import(ctx, proc.Address, containerd.Namespace, f); err != nil {
			t.Fatalf("import %s into containerd: %v", f, err)
		}
	}
	return rt
}

// KillShims kills the runc shims serving the containerd at address, found by the address
// on their command line; there are none when every sandbox was removed.
func KillShims(t testing.TB, address string) {
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

// MountsUnder lists the mount points at or below dir, deepest first (the order to
// unmount them in). It fails the test when the mount table cannot be read.
func MountsUnder(t testing.TB, dir string) []string {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Errorf("read the mount table: %v", err)
		return nil
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			points = append(points, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	return points
}

// UnmountUnder detaches every mount at or below dir, deepest first, so that removing dir
// never reaches into a container's or a volume's file system. It returns how many it
// detached, so that a test can fail when something should have done so before it.
func UnmountUnder(t testing.TB, dir string) int {
	t.Helper()
	points := MountsUnder(t, dir)
	for _, p := range points {
		t.Logf("cleanup: unmounting %s", p)
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			t.Errorf("cleanup: unmount %s: %v", p, err)
		}
	}
	return len(points)
}

// DetachLoopsUnder detaches the loop devices whose backing files are below dir (a CSI
// driver's volumes), after UnmountUnder has unmounted what used them. It returns how many
// it detached, so that a test can fail when something should have done so before it.
func DetachLoopsUnder(t testing.TB, dir string) int {
	out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	if err != nil {
		t.Errorf("cleanup: losetup --list: %v", err)
		return 0
	}
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		// A backing file removed while attached has a third field, "(deleted)".
		if len(f) >= 2 && strings.HasPrefix(f[1], dir+"/") {
			t.Logf("cleanup: detaching %s (%s)", f[0], f[1])
			if out, err := exec.Command("losetup", "-d", f[0]).CombinedOutput(); err != nil {
				t.Errorf("cleanup: losetup -d %s: %v: %s", f[0], err, bytes.TrimSpace(out))
			}
			n++
		}
	}
	return n
}
