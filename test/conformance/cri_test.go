package conformance

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"berth.dev/berth/conformance/cri"
	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/core/hosttest"
)

// containerdGaps are the tests containerd 1.6.20 (Debian's) fails, with the reason; the
// test expects exactly these to fail, so that a containerd that closes a gap, or opens a
// new one, is noticed. docs/conformance-cri.md lists them next to critest's findings.
var containerdGaps = map[string]string{
	"image/list-filter": "containerd 1.6 ignores ListImages' filter and lists every image",
	"idempotence/stop-removed-sandbox": "containerd 1.6.20 answers NotFound to StopPodSandbox of a removed sandbox " +
		"(made idempotent by containerd/containerd#10520 in 2024, backported to release/1.6 by #10531)",
	"idempotence/stop-removed-container": "containerd 1.6.20 answers NotFound to StopContainer of a removed container " +
		"(made idempotent by containerd/containerd#10521 in 2024)",
}

// TestCRISuiteOnContainerd runs the whole CRI suite against a containerd of its own,
// started as the agent starts it: every test passes, is skipped with a reason, or is a
// documented gap of containerd 1.6. Then it runs `berth conformance cri` itself: its
// output, its reports and its exit codes.
func TestCRISuiteOnContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containerd and real containers")
	}
	hosttest.RequireHost(t)
	hosttest.RequireCommands(t, "iptables")
	dir := t.TempDir()
	logs := &lockedBuffer{}
	rt := startContainerd(t, dir, logs)
	defer func() {
		if t.Failed() {
			t.Logf("containerd log:\n%s", tail(logs.String(), 60))
		}
	}()

	ctx := context.Background()
	report, err := cri.Run(ctx, cri.Config{
		Endpoint: rt.Endpoint, Image: images.BusyboxRef, RemovableImage: removableImageRef,
		Timeout: 90 * time.Second, Output: &logWriter{t: t},
	})
	if err != nil {
		t.Fatal(err)
	}
	checkReport(t, report, containerdGaps)
	if want := len(cri.Tests()); len(report.Results) != want {
		t.Errorf("the report has %d results, expected %d", len(report.Results), want)
	}
	for _, res := range report.Results {
		if res.Status == cri.StatusSkip {
			t.Logf("skipped on containerd: %s: %s", res.Name, res.Messages[0])
		}
	}

	t.Run("cli", func(t *testing.T) {
		testCLI(t, rt.Endpoint, filepath.Join(dir, "cli"))
	})
}

// testCLI builds berth and runs `berth conformance cri` against endpoint: a passing run
// with both reports, then a failing one, which must exit non-zero.
func testCLI(t *testing.T, endpoint, dir string) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "berth")
	if out, err := exec.Command("go", "build", "-o", bin, "berth.dev/berth/cmd/berth").CombinedOutput(); err != nil {
		t.Fatalf("go build berth: %v\n%s", err, out)
	}
	junit, jsonFile := filepath.Join(dir, "report.xml"), filepath.Join(dir, "report.json")
	out, err := exec.Command(bin, "conformance", "cri", "--endpoint", endpoint, "--focus", "^(runtime/|image/status$)",
		"--junit", junit, "--json", jsonFile, "--timeout", "30s").CombinedOutput()
	if err != nil {
		t.Fatalf("berth conformance cri: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "PASS runtime/version (") || !strings.HasPrefix(lines[1], "PASS runtime/status (") ||
		!strings.HasPrefix(lines[2], "PASS image/status (") || lines[3] != "3 passed, 0 failed, 0 skipped" {
		t.Errorf("berth conformance cri printed:\n%s", out)
	}
	var report cri.Report
	if data, err := os.ReadFile(jsonFile); err != nil {
		t.Error(err)
	} else if err := json.Unmarshal(data, &report); err != nil || report.Passed != 3 || len(report.Results) != 3 {
		t.Errorf("JSON report (%v):\n%s", err, data)
	}
	var junitDoc struct {
		Tests  int `xml:"tests,attr"`
		Suites []struct {
			Cases []struct {
				Name string `xml:"name,attr"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if data, err := os.ReadFile(junit); err != nil {
		t.Error(err)
	} else if err := xml.Unmarshal(data, &junitDoc); err != nil || junitDoc.Tests != 3 || len(junitDoc.Suites) != 1 || len(junitDoc.Suites[0].Cases) != 3 {
		t.Errorf("JUnit report (%v):\n%s", err, data)
	}

	// An image the runtime does not have cannot be pulled: image/pull fails, and so does
	// the command.
	out, err = exec.Command(bin, "conformance", "cri", "--endpoint", endpoint, "--focus", "^image/pull$",
		"--image", "127.0.0.1:1/berth-conformance-missing:1", "--timeout", "30s").CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Errorf("berth conformance cri with a failing test: %v, expected exit code 1\n%s", err, out)
	}
	if !strings.Contains(string(out), "FAIL image/pull: PullImage 127.0.0.1:1/berth-conformance-missing:1") ||
		!strings.Contains(string(out), "0 passed, 1 failed, 0 skipped") {
		t.Errorf("berth conformance cri with a failing test printed:\n%s", out)
	}
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
