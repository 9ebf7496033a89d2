package integration

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestUpWithSimulatedNodes runs `berth up --runtime sim --nodes 3` as a user would and
// drives it with kubectl 1.33: three nodes become Ready, a Deployment's pods run on them
// and scale, and the process stops cleanly on SIGTERM, nodes first.
func TestUpWithSimulatedNodes(t *testing.T) {
	skipShort(t)
	dir := filepath.Join(t.TempDir(), "up")
	p, err := launchBerthCommand(berthBinary(t), "up", dir, "--runtime", "sim", "--nodes", "3")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("berth up output:\n%s", tail(p.logs.String(), 60))
		}
		p.kill()
	})
	k := kubectlRun{Version: "1.33", Kubeconfig: p.kubeconfig}

	waitFor(t, 60*time.Second, "three Ready nodes", func() (bool, string) {
		res := k.run(t, "get", "nodes", "--no-headers")
		return strings.Count(res.Stdout, " Ready ") == 3, res.Stdout + res.Stderr
	})
	// The nodes say which runtime they run on.
	res := k.mustRun(t, "get", "nodes", "-o", "jsonpath={.items[*].status.nodeInfo.containerRuntimeVersion}")
	if got := strings.Fields(res.Stdout); len(got) != 3 || !strings.HasPrefix(got[0], "berth-sim://") {
		t.Errorf("containerRuntimeVersion of the nodes: %q, want berth-sim://... three times", res.Stdout)
	}

	k.mustRun(t, "create", "deployment", "sleepers", "--image=berth.local/busybox:1.35", "--replicas=6", "--", "sleep", "infinity")
	running := func(n int) func() (bool, string) {
		return func() (bool, string) {
			res := k.run(t, "get", "pods", "-l", "app=sleepers", "--no-headers", "-o", "custom-columns=S:.status.phase,N:.spec.nodeName,R:.status.containerStatuses[0].ready")
			lines := strings.Split(strings.TrimSpace(res.Stdout), "\n")
			nodes := map[string]bool{}
			ok := 0
			for _, l := range lines {
				f := strings.Fields(l)
				if len(f) == 3 && f[0] == "Running" && f[2] == "true" {
					ok++
					nodes[f[1]] = true
				}
			}
			return ok == n && len(lines) == n && (n < 3 || len(nodes) == 3), res.Stdout + res.Stderr
		}
	}
	waitFor(t, 60*time.Second, "six Ready pods spread over the three nodes", running(6))
	k.mustRun(t, "scale", "deployment", "sleepers", "--replicas=2")
	waitFor(t, 60*time.Second, "two pods left", running(2))

	took, err := p.stop(30 * time.Second)
	if err != nil {
		t.Fatalf("berth up after SIGTERM: %v (took %s)\n%s", err, took, tail(p.logs.String(), 30))
	}
	t.Logf("berth up exited 0, %s after SIGTERM", took.Round(time.Millisecond))
}

// waitFor polls cond every 200 ms until it holds, failing the test after limit with what
// cond saw last (a command's output, say).
func waitFor(t *testing.T, limit time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, seen := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			fatalf(t, "timed out after %s waiting for %s; last seen:\n%s", limit, what, seen)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
