package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCordonAndDrain is issue 3's node maintenance as an operator does it with kubectl 1.33
// on `berth up --runtime sim --nodes 3`: a cordoned node gets no new pods; drain evicts
// the node's pods through pods/eviction, one at a time as a PodDisruptionBudget allows,
// while their Deployment replaces them elsewhere; a budget with no room makes drain fail
// with the eviction's refusal; uncordon makes the node schedulable again.
func TestCordonAndDrain(t *testing.T) {
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
	nodes := strings.Fields(k.mustRun(t, "get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").Stdout)
	if len(nodes) != 3 {
		t.Fatalf("nodes: %q", nodes)
	}
	target := nodes[0]

	manifest := filepath.Join(t.TempDir(), "web.yaml")
	if err := os.WriteFile(manifest, []byte(drainManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	k.mustRun(t, "apply", "-f", manifest)
	// podsOn tells how many Running web pods each node has, and how many in all.
	podsOn := func() (map[string]int, int, string) {
		res := k.run(t, "get", "pods", "-l", "app=web", "--no-headers", "-o", "custom-columns=P:.status.phase,N:.spec.nodeName,D:.metadata.deletionTimestamp")
		per := map[string]int{}
		total := 0
		for _, l := range strings.Split(strings.TrimSpace(res.Stdout), "\n") {
			f := strings.Fields(l)
			if len(f) == 3 && f[0] == "Running" && f[2] == "<none>" {
				per[f[1]]++
				total++
			}
		}
		return per, total, res.Stdout + res.Stderr
	}
	waitFor(t, 60*time.Second, "six running web pods on all three nodes", func() (bool, string) {
		per, total, seen := podsOn()
		return total == 6 && len(per) == 3, seen
	})

	// Cordon: the node is unschedulable and new pods avoid it.
	k.mustRun(t, "cordon", target)
	res := k.mustRun(t, "get", "node", target, "--no-headers")
	if !strings.Contains(res.Stdout, "SchedulingDisabled") {
		t.Fatalf("kubectl get node after cordon: %q, want Ready,SchedulingDisabled", res.Stdout)
	}
	before, _, _ := podsOn()
	k.mustRun(t, "scale", "deployment", "web", "--replicas=9")
	waitFor(t, 60*time.Second, "nine running web pods", func() (bool, string) {
		_, total, seen := podsOn()
		return total == 9, seen
	})
	after, _, _ := podsOn()
	if after[target] != before[target] {
		t.Errorf("cordoned node %s went from %d to %d web pods; new pods must avoid it", target, before[target], after[target])
	}

	// A budget with no room: drain cannot evict and says why.
	k.mustRun(t, "create", "poddisruptionbudget", "web", "--selector=app=web", "--min-available=9")
	waitFor(t, 30*time.Second, "the budget to count nine healthy pods", func() (bool, string) {
		res := k.run(t, "get", "pdb", "web", "-o", "jsonpath={.status.currentHealthy}/{.status.disruptionsAllowed}")
		return res.Stdout == "9/0", res.Stdout + res.Stderr
	})
	res = k.run(t, "drain", target, "--timeout=8s", "--ignore-daemonsets")
	if res.Code == 0 {
		t.Fatalf("drain succeeded although the budget allows no disruption:\n%s", res)
	}
	if !strings.Contains(res.Stdout+res.Stderr, "disruption budget") {
		t.Errorf("drain's refusal does not name the disruption budget:\n%s", res)
	}

	// A budget with room for one: drain evicts one pod at a time and finishes, and every
	// evicted pod is replaced on the other nodes.
	k.mustRun(t, "patch", "pdb", "web", "--type=merge", "-p", `{"spec":{"minAvailable":8}}`)
	drainer := k
	drainer.Timeout = 150 * time.Second
	res = drainer.run(t, "drain", target, "--timeout=120s", "--ignore-daemonsets")
	if res.Code != 0 {
		t.Fatalf("drain with a budget that has room:\n%s", res)
	}
	if !strings.Contains(res.Stdout, "drained") {
		t.Errorf("drain output does not say the node was drained:\n%s", res.Stdout)
	}
	waitFor(t, 60*time.Second, "nine running web pods, none on the drained node", func() (bool, string) {
		per, total, seen := podsOn()
		return total == 9 && per[target] == 0, seen
	})

	// Uncordon: the node takes pods again.
	k.mustRun(t, "uncordon", target)
	res = k.mustRun(t, "get", "node", target, "-o", "jsonpath={.spec.unschedulable}")
	if strings.TrimSpace(res.Stdout) == "true" {
		t.Fatalf("node %s still unschedulable after uncordon", target)
	}
	k.mustRun(t, "delete", "pdb", "web")
	k.mustRun(t, "scale", "deployment", "web", "--replicas=14")
	waitFor(t, 60*time.Second, "new pods on the uncordoned node", func() (bool, string) {
		per, total, seen := podsOn()
		return total == 14 && per[target] > 0, seen
	})
}

const drainManifest = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
spec:
  replicas: 6
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - maxSkew: 1
        topologyKey: kubernetes.io/hostname
        whenUnsatisfiable: ScheduleAnyway
        labelSelector:
          matchLabels: {app: web}
      containers:
      - name: web
        image: berth.local/busybox:1.35
        command: ["sleep", "infinity"]
`
