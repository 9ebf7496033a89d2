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
	"berth.dev/berth/core/hosttest"
)

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
		// of the driver's is left; one still attached is the driver's or the suite's fault.
		if n := hosttest.DetachLoopsUnder(t, dir); n > 0 {
			t.Errorf("cleanup: %d loop device(s) were left attached to files under %s", n, dir)
		}
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
	for _, m := range hosttest.MountsUnder(t, dir) {
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
		hosttest.UnmountUnder(t, dir)
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return dir
}

// TestCSISuiteOnLocalDriver runs the whole suite against berth-csi-local: every test
// passes; only ControllerPublishVolume (which the driver declares only with
// --controller-publish) is skipped.
func TestCSISuiteOnLocalDriver(t *testing.T) {
	hosttest.RequireLoopDevices(t)
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
	hosttest.RequireLoopDevices(t)
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
	hosttest.RequireLoopDevices(t)
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
