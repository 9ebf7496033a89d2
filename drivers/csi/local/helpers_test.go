package local

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const mi = int64(1 << 20)

// client is a gRPC client of a driver started by a test.
type client struct {
	csi.IdentityClient
	csi.ControllerClient
	csi.NodeClient
	stop func()
}

// needRoot skips tests that make loop devices and mounts.
func needRoot(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("skipped under -short: attaches loop devices and mounts file systems")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: attaches loop devices and mounts file systems")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "e2fsck", "resize2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
}

// testDir makes a short temporary directory (unix socket paths are limited to 108 bytes)
// and registers, first so that it runs last, a cleanup that unmounts everything under it and
// detaches every loop device of its images, even when the test failed half way.
func testDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "csil")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, m := range mountsUnder(t, dir) {
			if out, err := exec.Command("umount", m).CombinedOutput(); err != nil {
				t.Errorf("cleanup: umount %s: %v: %s", m, err, out)
			}
		}
		images, _ := filepath.Glob(filepath.Join(dir, "*", "*", "*.img"))
		for _, img := range images {
			out, _ := exec.Command("losetup", "-j", img).Output()
			for _, line := range strings.Split(string(out), "\n") {
				if dev, _, ok := strings.Cut(line, ":"); ok && dev != "" {
					if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
						t.Errorf("cleanup: losetup -d %s: %v: %s", dev, err, out)
					}
				}
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return dir
}

// mountsUnder lists the mount points below dir, deepest first.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir+"/") {
			out = append(out, fields[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(out)))
	return out
}

// countMounts counts the mounts at exactly path.
func countMounts(t *testing.T, path string) int {
	t.Helper()
	n := 0
	for _, m := range mountsUnder(t, filepath.Dir(path)) {
		if m == path {
			n++
		}
	}
	return n
}

// startDriver serves a driver on a socket in dir and returns a client of it; stop ends both.
func startDriver(t *testing.T, dir string, cfg Config) *client {
	t.Helper()
	if cfg.NodeID == "" {
		cfg.NodeID = "node-a"
	}
	if cfg.StateDir == "" {
		cfg.StateDir = filepath.Join(dir, "state")
	}
	if cfg.Capacity == 0 {
		cfg.Capacity = 1 << 30
	}
	sock := filepath.Join(dir, "csi.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, "unix://"+sock, cfg) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-done:
			cancel()
			t.Fatalf("driver exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("driver socket did not appear")
		}
		time.Sleep(10 * time.Millisecond)
	}
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	stopped := false
	c := &client{
		IdentityClient:   csi.NewIdentityClient(conn),
		ControllerClient: csi.NewControllerClient(conn),
		NodeClient:       csi.NewNodeClient(conn),
	}
	c.stop = func() {
		if stopped {
			return
		}
		stopped = true
		_ = conn.Close()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("driver: %v", err)
		}
	}
	t.Cleanup(c.stop)
	return c
}

func mountCap(mode csi.VolumeCapability_AccessMode_Mode) *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "ext4"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: mode},
	}
}

func blockCap() *csi.VolumeCapability {
	return &csi.VolumeCapability{
		AccessType: &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

var rwo = mountCap(csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)

func createVolume(t *testing.T, c *client, name string, size int64, vc *csi.VolumeCapability) *csi.Volume {
	t.Helper()
	resp, err := c.CreateVolume(context.Background(), &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{vc},
	})
	if err != nil {
		t.Fatalf("CreateVolume %s: %v", name, err)
	}
	return resp.GetVolume()
}

func stage(t *testing.T, c *client, id, path string, vc *csi.VolumeCapability) {
	t.Helper()
	if _, err := c.NodeStageVolume(context.Background(), &csi.NodeStageVolumeRequest{
		VolumeId: id, StagingTargetPath: path, VolumeCapability: vc}); err != nil {
		t.Fatalf("NodeStageVolume %s: %v", id, err)
	}
}

func publish(c *client, id, staging, target string, vc *csi.VolumeCapability, ro bool) error {
	_, err := c.NodePublishVolume(context.Background(), &csi.NodePublishVolumeRequest{
		VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: vc, Readonly: ro})
	return err
}

func unpublish(t *testing.T, c *client, id, target string) {
	t.Helper()
	if _, err := c.NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatalf("NodeUnpublishVolume %s %s: %v", id, target, err)
	}
}

func unstage(t *testing.T, c *client, id, path string) {
	t.Helper()
	if _, err := c.NodeUnstageVolume(context.Background(), &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: path}); err != nil {
		t.Fatalf("NodeUnstageVolume %s: %v", id, err)
	}
}

func capacity(t *testing.T, c *client) int64 {
	t.Helper()
	resp, err := c.GetCapacity(context.Background(), &csi.GetCapacityRequest{})
	if err != nil {
		t.Fatalf("GetCapacity: %v", err)
	}
	return resp.GetAvailableCapacity()
}

func wantCode(t *testing.T, err error, code codes.Code, what string) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("%s: got %v, want code %s", what, err, code)
	}
}

// loopOf returns the loop device an image is attached to, or "".
func loopOf(t *testing.T, image string) string {
	t.Helper()
	out, err := exec.Command("losetup", "-j", image).Output()
	if err != nil {
		t.Fatalf("losetup -j %s: %v", image, err)
	}
	dev, _, _ := strings.Cut(strings.TrimSpace(string(out)), ":")
	return dev
}
