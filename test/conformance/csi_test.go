package conformance

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"berth.dev/berth/conformance/csi"
)

// requireCSIHost skips the test when this machine cannot run berth's CSI driver: it
// makes loop devices, ext4 filesystems and mounts.
func requireCSIHost(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs berth-csi-local with loop devices and mounts")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for loop devices and mounts")
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		t.Skipf("no loop devices on this machine: %v", err)
	}
	for _, bin := range []string{"losetup", "mkfs.ext4", "resize2fs", "e2fsck", "blkid"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s is missing: %v", bin, err)
		}
	}
}

// buildCSILocal builds berth-csi-local into a directory of the test's.
func buildCSILocal(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "berth-csi-local")
	out, err := exec.Command("go", "build", "-o", bin, "berth.dev/berth/cmd/berth-csi-local").CombinedOutput()
	if err != nil {
		t.Fatalf("build berth-csi-local: %v\n%s", err, out)
	}
	return bin
}

// csiDriver is a berth-csi-local process of a test's.
type csiDriver struct {
	endpoint string
	logs     *lockedBuffer
}

// startCSILocal starts bin with a state dir and socket of its own, --defect defect when
// defect is not empty and the extra flags, and stops it after the test; the driver's
// output goes to the test's log when the test fails.
func startCSILocal(t *testing.T, bin, defect string, extra ...string) *csiDriver {
	t.Helper()
	dir, err := os.MkdirTemp("", "berth-csi-local-")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "csi.sock")
	args := []string{"--endpoint", "unix://" + sock, "--node-id", "conformance-node", "--state-dir", filepath.Join(dir, "state"), "--capacity", "4Gi"}
	if defect != "" {
		args = append(args, "--defect", defect)
	}
	args = append(args, extra...)
	d := &csiDriver{endpoint: "unix://" + sock, logs: &lockedBuffer{}}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = d.logs, d.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start berth-csi-local: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("berth-csi-local did not stop within 20s of SIGTERM")
		}
		if t.Failed() {
			t.Logf("berth-csi-local %v:\n%s", args, d.logs.String())
		}
		// The suite's cleanups undid every stage and publication, so that no loop device
		// of the driver's is left.
		detachLoopDevices(t, dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove the driver's directory: %v", err)
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return d
		}
		select {
		case err := <-exited:
			t.Fatalf("berth-csi-local exited before serving: %v\n%s", err, d.logs.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("berth-csi-local did not listen on %s within 30s\n%s", sock, d.logs.String())
		}
	}
}

// runCSISuite runs the suite against d (restricted by focus when not empty) with its
// staging and target paths in a directory of the test's, and returns the report, with
// the output in the test's log.
func runCSISuite(t *testing.T, d *csiDriver, focus string) *csi.Report {
	t.Helper()
	dir := csiMountDir(t)
	var out lockedBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	rep, err := csi.Run(ctx, csi.Config{
		Endpoint: d.endpoint, StagingDir: filepath.Join(dir, "staging"), TargetDir: filepath.Join(dir, "target"),
		Focus: focus, Output: &out,
	})
	t.Logf("conformance csi on %s:\n%s", d.endpoint, out.String())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Leftovers != "" {
		t.Errorf("%s", rep.Leftovers)
	}
	for _, m := range mountsUnder(dir) {
		t.Errorf("a mount of the suite was left behind: %s", m)
	}
	return rep
}

// csiMountDir makes a directory for staging and target paths. After the test (and
// before the driver stops), whatever is still mounted under it is unmounted, so that a
// failing driver or suite leaves nothing on the host.
func csiMountDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "berth-csi-conformance-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, m := range mountsUnder(dir) {
			t.Logf("cleanup: unmount %s, left behind", m)
			if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
				t.Errorf("cleanup: unmount %s: %v", m, err)
			}
		}
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return dir
}

// mountsUnder lists the mount points at or under dir, deepest first.
func mountsUnder(dir string) []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 && (f[4] == dir || strings.HasPrefix(f[4], dir+"/")) {
			out = append(out, f[4])
		}
	}
	slices.Reverse(out)
	return out
}

// detachLoopDevices detaches the loop devices whose backing files are under dir (the
// driver's state dir), which a driver stopped with volumes still staged leaves behind.
func detachLoopDevices(t *testing.T, dir string) {
	t.Helper()
	out, err := exec.Command("losetup", "-a").Output()
	if err != nil {
		t.Logf("cleanup: losetup -a: %v", err)
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		dev, rest, ok := strings.Cut(line, ":")
		if !ok || !strings.Contains(rest, "("+dir+"/") {
			continue
		}
		t.Errorf("cleanup: loop device %s was left attached to %s", dev, strings.TrimSpace(rest))
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("cleanup: losetup -d %s: %v: %s", dev, err, out)
		}
	}
}

// TestCSISuiteOnLocalDriver runs the whole suite against berth-csi-local: every test
// passes; only ControllerPublishVolume (which the driver declares only with
// --controller-publish) is skipped.
func TestCSISuiteOnLocalDriver(t *testing.T) {
	requireCSIHost(t)
	bin := buildCSILocal(t)
	rep := runCSISuite(t, startCSILocal(t, bin, ""), "")
	for _, res := range rep.Results {
		switch {
		case res.Status == csi.StatusFail:
			t.Errorf("%s failed: %s", res.Name, strings.Join(res.Messages, "; "))
		case res.Status == csi.StatusSkip && res.Name != "Controller/ControllerPublishVolume/basic":
			t.Errorf("%s skipped: %s", res.Name, strings.Join(res.Messages, "; "))
		}
	}
	if len(rep.Results) != len(csi.Tests()) {
		t.Errorf("%d results for %d tests", len(rep.Results), len(csi.Tests()))
	}
}

// TestCSISuiteOnLocalDriverWithControllerPublish runs the suite against berth-csi-local
// --controller-publish, which declares PUBLISH_UNPUBLISH_VOLUME and wants the publish
// context in NodeStageVolume: every test passes, ControllerPublishVolume's included.
func TestCSISuiteOnLocalDriverWithControllerPublish(t *testing.T) {
	requireCSIHost(t)
	rep := runCSISuite(t, startCSILocal(t, buildCSILocal(t), "", "--controller-publish"), "")
	for _, res := range rep.Results {
		if res.Status != csi.StatusPass {
			t.Errorf("%s: %s %s", res.Name, res.Status, strings.Join(res.Messages, "; "))
		}
	}
}

// TestCSISuiteCatchesDefects runs the suite against berth-csi-local with each of its
// deliberate defects: each fails exactly the tests of the promise it breaks, besides
// whatever the driver without a defect fails (TestCSISuiteOnLocalDriver's business).
func TestCSISuiteCatchesDefects(t *testing.T) {
	requireCSIHost(t)
	bin := buildCSILocal(t)
	var baseline []string
	t.Run("none", func(t *testing.T) {
		baseline = runCSISuite(t, startCSILocal(t, bin, ""), "").Names(csi.StatusFail)
		if len(baseline) > 0 {
			t.Logf("without a defect the driver fails %v; the defects are judged by what they fail beyond", baseline)
		}
	})
	expected := map[string][]string{
		"wrong-capacity": {
			"Controller/CreateVolume/capacity-range",
			"Controller/GetCapacity/accounting",
			"Controller/ControllerExpandVolume/grows",
		},
		"second-publish-fails": {
			"Node/NodePublishVolume/idempotent",
			"Node/NodePublishVolume/block",
			"Lifecycle/NodePublishVolume/concurrent",
		},
		"delete-published": {"Lifecycle/DeleteVolume/published"},
		"ignore-readonly":  {"Node/NodePublishVolume/readonly"},
	}
	for _, defect := range []string{"wrong-capacity", "second-publish-fails", "delete-published", "ignore-readonly"} {
		t.Run(defect, func(t *testing.T) {
			rep := runCSISuite(t, startCSILocal(t, bin, defect), "")
			var failed []string
			for _, name := range rep.Names(csi.StatusFail) {
				if !slices.Contains(baseline, name) {
					failed = append(failed, name)
				}
			}
			if !slices.Equal(failed, expected[defect]) {
				t.Errorf("with defect %s the suite failed %v, want exactly %v", defect, failed, expected[defect])
			}
		})
	}
}

// TestCSISuiteRejectsBadArguments checks the run's own errors: no endpoint, a bad
// expression, a socket nobody serves.
func TestCSISuiteRejectsBadArguments(t *testing.T) {
	ctx := context.Background()
	if _, err := csi.Run(ctx, csi.Config{}); err == nil {
		t.Errorf("a run without an endpoint succeeded")
	}
	if _, err := csi.Run(ctx, csi.Config{Endpoint: "unix:///nonexistent.sock", Focus: "("}); err == nil {
		t.Errorf("a run with a bad focus expression succeeded")
	}
	short, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	_, err := csi.Run(short, csi.Config{Endpoint: filepath.Join(t.TempDir(), "nobody.sock")})
	if err == nil || !strings.Contains(err.Error(), "GetPluginInfo") {
		t.Errorf("a run against a socket nobody serves: %v, want an error naming GetPluginInfo", err)
	}
	if errors.Is(err, context.Canceled) {
		t.Errorf("unexpected cancellation: %v", err)
	}
}
