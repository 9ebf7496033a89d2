package conformance

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/core/hosttest"
)

// TestCritestOnContainerd runs Kubernetes' own CRI validation suite, critest from
// cri-tools, against a containerd started as TestCRISuiteOnContainerd starts it, to
// cross-check berth's suite (docs/conformance-cri.md has the results). It is a manual
// check, not a gate: it runs only when BERTH_CRITEST names the critest binary (built as
// /work/shared/environment.md says), takes minutes, and fails wherever the machine has no
// registry. BERTH_CRITEST_FOCUS and BERTH_CRITEST_SKIP are ginkgo regexps (benchmarks
// are skipped by default); BERTH_CRITEST_REPORTS is where its JUnit report goes.
func TestCritestOnContainerd(t *testing.T) {
	bin := os.Getenv("BERTH_CRITEST")
	if bin == "" {
		t.Skip("set BERTH_CRITEST to the critest binary to cross-check with critest")
	}
	if testing.Short() {
		t.Skip("starts containerd and runs critest")
	}
	hosttest.RequireHost(t)
	hosttest.RequireCommands(t, "iptables")
	dir := t.TempDir()
	logs := &lockedBuffer{}
	rt := startContainerd(t, dir, logs)

	// critest pulls a test image only when it is missing: berth's busybox stands in for
	// its default image. Its web server image runs nginx-like servers busybox cannot be.
	imagesFile := filepath.Join(dir, "critest-images.yaml")
	if err := os.WriteFile(imagesFile, []byte("defaultTestContainerImage: "+images.BusyboxRef+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	reports := os.Getenv("BERTH_CRITEST_REPORTS")
	if reports == "" {
		reports = filepath.Join(dir, "reports")
	}
	skip := os.Getenv("BERTH_CRITEST_SKIP")
	if skip == "" {
		skip = "benchmark"
	}
	args := []string{
		"--runtime-endpoint=" + rt.Endpoint, "--image-endpoint=" + rt.Endpoint,
		"--test-images-file=" + imagesFile, "--report-dir=" + reports,
		"--ginkgo.skip=" + skip, "--ginkgo.no-color",
	}
	if focus := os.Getenv("BERTH_CRITEST_FOCUS"); focus != "" {
		args = append(args, "--ginkgo.focus="+focus)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	out, err := cmd.CombinedOutput()
	t.Logf("critest %v:\n%s", args, out)
	if err != nil {
		t.Errorf("critest: %v (reports in %s)", err, reports)
	}
}
