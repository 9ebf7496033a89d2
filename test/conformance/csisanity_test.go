package conformance

import (
	"berth.dev/berth/core/hosttest"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// csiSanityBinary finds csi-sanity (scripts/install-deps.sh installs it into GOPATH/bin).
func csiSanityBinary(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("csi-sanity"); err == nil {
		return p
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		p := filepath.Join(string(out[:len(out)-1]), "bin", "csi-sanity")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skip("csi-sanity is not installed (make deps installs it: go install github.com/kubernetes-csi/csi-test/v5/cmd/csi-sanity)")
	return ""
}

// TestCSISanityOnLocalDriver cross-checks berth's CSI suite with Kubernetes' own,
// csi-sanity from kubernetes-csi/csi-test, against berth-csi-local: it must pass.
// docs/conformance-csi.md compares the two. BERTH_CSI_SANITY_FOCUS and
// BERTH_CSI_SANITY_SKIP are ginkgo regexps that narrow the run.
func TestCSISanityOnLocalDriver(t *testing.T) {
	hosttest.RequireLoopDevices(t)
	sanity := csiSanityBinary(t)
	d := startCSILocal(t, buildCSILocal(t), "")
	dir := csiMountDir(t)
	// csi-sanity makes and removes these itself.
	args := []string{
		"--csi.endpoint=" + d.endpoint,
		"--csi.stagingdir=" + filepath.Join(dir, "staging"),
		"--csi.mountdir=" + filepath.Join(dir, "mount"),
		"--csi.testvolumesize=67108864",
		"--ginkgo.no-color",
	}
	if focus := os.Getenv("BERTH_CSI_SANITY_FOCUS"); focus != "" {
		args = append(args, "--ginkgo.focus="+focus)
	}
	if skip := os.Getenv("BERTH_CSI_SANITY_SKIP"); skip != "" {
		args = append(args, "--ginkgo.skip="+skip)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, sanity, args...).CombinedOutput()
	t.Logf("csi-sanity %v:\n%s", args, out)
	if err != nil {
		t.Errorf("csi-sanity: %v", err)
	}
}
