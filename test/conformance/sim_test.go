package conformance

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"berth.dev/berth/conformance/cri"
	"berth.dev/berth/drivers/cri/sim"
)

// startSim serves a simulated runtime with defect on a socket of the test's own until
// the test ends, and returns its endpoint.
func startSim(t *testing.T, defect sim.Defect) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "sim.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sim.Serve(ctx, sock, sim.Config{Defect: defect}) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("sim.Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("the simulated runtime did not stop")
		}
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			conn.Close()
			return "unix://" + sock
		}
		select {
		case err := <-done:
			t.Fatalf("sim.Serve ended before serving: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the simulated runtime's socket %s did not answer: %v", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runOnSim runs the whole suite against a simulated runtime with defect.
func runOnSim(t *testing.T, defect sim.Defect) *cri.Report {
	t.Helper()
	report, err := cri.Run(context.Background(), cri.Config{
		Endpoint: startSim(t, defect), Timeout: 30 * time.Second, Output: &logWriter{t: t},
	})
	if err != nil {
		t.Fatal(err)
	}
	return report
}

// TestCRISuiteOnSim: the suite passes on the simulated runtime without a defect; what
// it skips, it skips with a reason.
func TestCRISuiteOnSim(t *testing.T) {
	report := runOnSim(t, sim.DefectNone)
	checkReport(t, report, nil)
	if report.Passed == 0 {
		t.Errorf("nothing passed: %s", report.Summary())
	}
}

// TestCRISuiteCatchesSimDefects: each deliberate defect of the simulated runtime makes
// the suite fail exactly the tests that check what the defect breaks.
func TestCRISuiteCatchesSimDefects(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the whole suite once per defect")
	}
	for _, c := range []struct {
		defect sim.Defect
		// fail are the tests that must fail, and only they.
		fail []string
		// leftovers: the defect keeps sandboxes the suite removed, so its final sweep
		// finds them.
		leftovers bool
	}{
		{sim.DefectWrongExitCode, []string{
			"container/exit-zero", "container/exit-code", "container/stop-timeout",
			"logs/file", "streaming/attach",
		}, false},
		{sim.DefectNeverStops, []string{
			"container/stop-timeout", "container/remove", "idempotence/stop-container-twice",
		}, false},
		{sim.DefectSandboxSurvivesRemoval, []string{
			"sandbox/remove",
		}, true},
		{sim.DefectNotIdempotent, []string{
			"idempotence/stop-sandbox-twice", "idempotence/remove-sandbox-twice", "idempotence/stop-removed-sandbox",
			"idempotence/stop-container-twice", "idempotence/remove-container-twice", "idempotence/stop-removed-container",
		}, false},
	} {
		t.Run(string(c.defect), func(t *testing.T) {
			report := runOnSim(t, c.defect)
			failed := report.Names(cri.StatusFail)
			for _, name := range c.fail {
				if !slices.Contains(failed, name) {
					t.Errorf("%s passed on a runtime with defect %s", name, c.defect)
				}
			}
			for _, name := range failed {
				if !slices.Contains(c.fail, name) {
					res, _ := report.Result(name)
					t.Errorf("%s failed, which defect %s should not cause: %s", name, c.defect, strings.Join(res.Messages, "; "))
				}
			}
			if got := report.Leftovers != ""; got != c.leftovers {
				t.Errorf("leftovers %q, expected some: %v", report.Leftovers, c.leftovers)
			}
		})
	}
}
