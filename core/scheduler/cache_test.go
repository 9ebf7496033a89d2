package scheduler

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func cacheNode(name string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{Allocatable: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourcePods: resource.MustParse("110"),
		}},
	}
}

func boundPod(name, node, cpu string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID(name)},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu)},
		}}}},
	}
}

func requestedCPU(t *testing.T, c *Cache, s *Snapshot, node string) int64 {
	t.Helper()
	c.UpdateSnapshot(s)
	n := s.Get(node)
	if n == nil {
		t.Fatalf("node %s not in the snapshot", node)
	}
	return n.Requested.MilliCPU
}

func TestCacheAssumeConfirmForget(t *testing.T) {
	c := NewCache(30 * time.Second)
	s := NewSnapshot()
	c.AddNode(cacheNode("n1"))
	c.AddNode(cacheNode("n2"))

	p := boundPod("p", "n1", "1")
	if err := c.AssumePod(p); err != nil {
		t.Fatal(err)
	}
	if err := c.AssumePod(p); err == nil {
		t.Errorf("assuming a pod twice did not fail")
	}
	if !c.IsAssumed(p.UID) || requestedCPU(t, c, s, "n1") != 1000 {
		t.Fatalf("the assumed pod is not accounted on n1")
	}
	c.ForgetPod(p)
	if c.IsAssumed(p.UID) || requestedCPU(t, c, s, "n1") != 0 {
		t.Fatalf("the forgotten pod is still accounted")
	}

	// Confirmation by the informer, even on another node than assumed, wins.
	if err := c.AssumePod(p); err != nil {
		t.Fatal(err)
	}
	c.AddPod(boundPod("p", "n2", "1"))
	if c.IsAssumed(p.UID) || requestedCPU(t, c, s, "n1") != 0 || requestedCPU(t, c, s, "n2") != 1000 {
		t.Errorf("the confirmed pod is not accounted where the API put it")
	}
	c.RemovePod(p)
	if requestedCPU(t, c, s, "n2") != 0 {
		t.Errorf("the removed pod is still accounted")
	}
}

func TestCacheExpiresUnconfirmedBindings(t *testing.T) {
	c := NewCache(30 * time.Second)
	c.AddNode(cacheNode("n1"))
	p := boundPod("p", "n1", "1")
	if err := c.AssumePod(p); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	if got := c.CleanupExpired(now.Add(time.Hour)); len(got) != 0 {
		t.Fatalf("a pod still binding expired")
	}
	c.FinishBinding(p, now)
	if got := c.CleanupExpired(now.Add(29 * time.Second)); len(got) != 0 {
		t.Fatalf("expired before the TTL")
	}
	if got := c.CleanupExpired(now.Add(31 * time.Second)); len(got) != 1 || c.IsAssumed(p.UID) {
		t.Fatalf("the unconfirmed pod did not expire")
	}
	s := NewSnapshot()
	if requestedCPU(t, c, s, "n1") != 0 {
		t.Errorf("the expired pod is still accounted")
	}
}

func TestSnapshotFollowsNodeChanges(t *testing.T) {
	c := NewCache(time.Minute)
	s := NewSnapshot()
	c.AddPod(boundPod("early", "late-node", "1")) // a pod can arrive before its node
	c.UpdateSnapshot(s)
	if len(s.List()) != 0 {
		t.Fatalf("a node without a Node object is listed")
	}
	c.AddNode(cacheNode("late-node"))
	c.AddNode(cacheNode("a"))
	c.UpdateSnapshot(s)
	if got := names(s); got != "a,late-node" {
		t.Fatalf("snapshot lists %s", got)
	}
	if s.Get("late-node").Requested.MilliCPU != 1000 {
		t.Errorf("the early pod is not accounted")
	}
	kept := s.Get("a")
	c.AddPod(boundPod("q", "a", "2"))
	c.UpdateSnapshot(s)
	if kept.Requested.MilliCPU != 2000 {
		t.Errorf("the listed NodeInfo was not updated in place")
	}
	c.RemoveNode("a")
	c.UpdateSnapshot(s)
	if got := names(s); got != "late-node" {
		t.Errorf("after removing a, snapshot lists %s", got)
	}
}

func names(s *Snapshot) string {
	out := ""
	for i, n := range s.List() {
		if i > 0 {
			out += ","
		}
		out += n.Name()
	}
	return out
}

// TestSnapshotAffinityCounts checks the totals that let the inter-pod plugins skip.
func TestSnapshotAffinityCounts(t *testing.T) {
	c, s := NewCache(time.Minute), NewSnapshot()
	c.AddNode(cacheNode("n1"))
	c.AddNode(cacheNode("n2"))
	anti := boundPod("anti", "n1", "1")
	anti.Spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{TopologyKey: "zone"}},
	}}
	pref := boundPod("pref", "n2", "1")
	pref.Spec.Affinity = &corev1.Affinity{PodAffinity: &corev1.PodAffinity{}}
	check := func(what string, withAffinity, withAnti int) {
		t.Helper()
		c.UpdateSnapshot(s)
		if s.NumPodsWithAffinity() != withAffinity || s.NumPodsWithRequiredAntiAffinity() != withAnti {
			t.Errorf("%s: %d with affinity, %d with required anti-affinity; want %d, %d", what, s.NumPodsWithAffinity(), s.NumPodsWithRequiredAntiAffinity(), withAffinity, withAnti)
		}
	}
	check("empty", 0, 0)
	c.AddPod(anti)
	c.AddPod(pref)
	c.AddPod(boundPod("plain", "n2", "1"))
	check("added", 2, 1)
	c.RemovePod(anti)
	check("anti removed", 1, 0)
	c.RemovePod(pref)
	c.RemoveNode("n2")
	check("all gone", 0, 0)
}

// TestSnapshotIncrementalMatchesFresh changes nodes and pods in many small steps, updating
// one snapshot after each; it must always equal a snapshot built from scratch (the cache
// walks only the nodes changed since the last update, newest first).
func TestSnapshotIncrementalMatchesFresh(t *testing.T) {
	c, s := NewCache(time.Minute), NewSnapshot()
	steps := []struct {
		name string
		do   func()
	}{
		{"three nodes", func() { c.AddNode(cacheNode("a")); c.AddNode(cacheNode("b")); c.AddNode(cacheNode("c")) }},
		{"pod on b", func() { c.AddPod(boundPod("p1", "b", "1")) }},
		{"pod on a, then b again", func() { c.AddPod(boundPod("p2", "a", "1")); c.AddPod(boundPod("p3", "b", "1")) }},
		{"one node goes as another comes", func() { c.RemoveNode("c"); c.AddNode(cacheNode("d")) }},
		{"a pod leaves the middle of the list", func() { c.RemovePod(boundPod("p2", "a", "1")) }},
		{"node with a pod goes, pod-only entry stays", func() { c.RemoveNode("b") }},
		{"its pods go too", func() { c.RemovePod(boundPod("p1", "b", "1")); c.RemovePod(boundPod("p3", "b", "1")) }},
		{"b comes back", func() { c.AddNode(cacheNode("b")); c.AddPod(boundPod("p4", "b", "2")) }},
		{"nothing changed", func() {}},
	}
	for _, st := range steps {
		st.do()
		c.UpdateSnapshot(s)
		fresh := NewSnapshot()
		c.UpdateSnapshot(fresh)
		if got, want := names(s), names(fresh); got != want {
			t.Fatalf("%s: snapshot lists %s, want %s", st.name, got, want)
		}
		if len(s.nodes) != len(fresh.nodes) {
			t.Fatalf("%s: snapshot holds %d entries, want %d", st.name, len(s.nodes), len(fresh.nodes))
		}
		for _, n := range fresh.List() {
			if got := s.Get(n.Name()); got.Requested.MilliCPU != n.Requested.MilliCPU || len(got.Pods) != len(n.Pods) {
				t.Errorf("%s: node %s has %d pods, %dm cpu; want %d, %dm", st.name, n.Name(), len(got.Pods), got.Requested.MilliCPU, len(n.Pods), n.Requested.MilliCPU)
			}
		}
	}
}

func TestSnapshotCountsOthersChanges(t *testing.T) {
	c := NewCache(30 * time.Second)
	s := NewSnapshot()
	changes := func() int64 { c.UpdateSnapshot(s); return s.Changes() }
	c.AddNode(cacheNode("n1"))
	before := changes()
	// The scheduler's own placement, and the API confirming it where it was assumed, are
	// not others' changes: a batch may go on.
	p := boundPod("p", "n1", "1")
	if err := c.AssumePod(p); err != nil {
		t.Fatal(err)
	}
	c.AddPod(boundPod("p", "n1", "1"))
	if got := changes(); got != before {
		t.Errorf("an assumed pod and its confirmation changed the count from %d to %d", before, got)
	}
	for _, step := range []struct {
		what   string
		change func()
	}{
		{"a node added", func() { c.AddNode(cacheNode("n2")) }},
		{"a pod bound by another", func() { c.AddPod(boundPod("q", "n2", "1")) }},
		{"a pod deleted", func() { c.RemovePod(boundPod("q", "n2", "1")) }},
		{"a confirmation on another node", func() { _ = c.AssumePod(boundPod("r", "n1", "1")); c.AddPod(boundPod("r", "n2", "1")) }},
		{"a node removed", func() { c.RemoveNode("n2") }},
	} {
		before := changes()
		step.change()
		if got := changes(); got == before {
			t.Errorf("%s left the count of others' changes at %d", step.what, got)
		}
	}
}
