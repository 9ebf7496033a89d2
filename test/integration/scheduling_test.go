package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestKubectlScheduling: with kubectl 1.33 against `berth server`, a pod that fits the one
// node is bound to it, and one that fits nowhere stays Pending while `kubectl describe`
// shows kube-scheduler's FailedScheduling message. The node is API-only (no agent runs it),
// so the test has a server of its own: the node lifecycle controller would otherwise
// taint it under the other tests' pods.
func TestKubectlScheduling(t *testing.T) {
	skipShort(t)
	p := startBerth(t, t.TempDir())
	k := kubectlRun{Version: "1.33", Kubeconfig: p.kubeconfig}
	node := writeFile(t, "node.yaml", `apiVersion: v1
kind: Node
metadata:
  name: small
  labels: {kubernetes.io/hostname: small}
`)
	k.mustRun(t, "apply", "-f", node)
	k.mustRun(t, "patch", "node", "small", "--subresource=status", "--type=merge", "-p",
		`{"status":{"allocatable":{"cpu":"2","memory":"4Gi","pods":"10"},"capacity":{"cpu":"2","memory":"4Gi","pods":"10"},"conditions":[{"type":"Ready","status":"True","reason":"KubeletReady"}]}}`)

	k.mustRun(t, "run", "fits", "--image=busybox", "--restart=Never", "--overrides",
		`{"spec":{"containers":[{"name":"fits","image":"busybox","resources":{"requests":{"cpu":"500m"}}}]}}`)
	k.mustRun(t, "run", "big", "--image=busybox", "--restart=Never", "--overrides",
		`{"spec":{"containers":[{"name":"big","image":"busybox","resources":{"requests":{"cpu":"64"}}}]}}`)

	deadline := time.Now().Add(30 * time.Second)
	for {
		node := strings.TrimSpace(k.mustRun(t, "get", "pod", "fits", "-o", "jsonpath={.spec.nodeName}").Stdout)
		describe := k.mustRun(t, "describe", "pod", "big").Stdout
		const why = "0/1 nodes are available: 1 Insufficient cpu."
		if node == "small" && strings.Contains(describe, "FailedScheduling") && strings.Contains(describe, why) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 30 s: pod fits is on node %q (want small); describe pod big:\n%s\nwant a FailedScheduling event saying %q", node, describe, why)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if res := k.mustRun(t, "get", "pod", "big", "--no-headers"); !strings.Contains(res.Stdout, "Pending") {
		t.Errorf("the pod that fits nowhere: %s, want Pending", res.Stdout)
	}
}

// writeFile writes content to a file of the test's temp dir and returns its path.
func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
