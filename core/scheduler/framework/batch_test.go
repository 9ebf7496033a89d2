package framework

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/sets"
)

// packFit holds capacity pods a node and scores a node lower the more pods it has (no
// NormalizeScore: its scores follow the node's own pods, as NodeResourcesFit's do).
type packFit struct{ capacity int }

func (packFit) Name() string { return "PackFit" }
func (p packFit) Filter(_ context.Context, _ *CycleState, _ *corev1.Pod, n *NodeInfo) *Status {
	if len(n.Pods) >= p.capacity {
		return NewStatus(Unschedulable, "full")
	}
	return nil
}
func (packFit) Score(_ context.Context, _ *CycleState, _ *corev1.Pod, n *NodeInfo) (int64, *Status) {
	return 100 - 10*int64(len(n.Pods)), nil
}
func (packFit) ScoreExtensions() ScoreExtensions   { return nil }
func (packFit) SignPod(*corev1.Pod) (string, bool) { return "", true }

// preferred scores the nodes labelled preferred=yes 1, others 0, normalized to 100 and 0.
type preferred struct{}

func (preferred) Name() string { return "Preferred" }
func (preferred) Score(_ context.Context, _ *CycleState, _ *corev1.Pod, n *NodeInfo) (int64, *Status) {
	if n.Node().Labels["preferred"] == "yes" {
		return 1, nil
	}
	return 0, nil
}
func (p preferred) ScoreExtensions() ScoreExtensions { return p }
func (preferred) NormalizeScore(_ context.Context, _ *CycleState, _ *corev1.Pod, scores []NodeScore) *Status {
	for i := range scores {
		scores[i].Score *= MaxNodeScore
	}
	return nil
}
func (preferred) SignPod(*corev1.Pod) (string, bool) { return "", true }

// unsigned scores every node alike and cannot sign pods.
type unsigned struct{}

func (unsigned) Name() string { return "Unsigned" }
func (unsigned) Score(context.Context, *CycleState, *corev1.Pod, *NodeInfo) (int64, *Status) {
	return 1, nil
}
func (unsigned) ScoreExtensions() ScoreExtensions { return nil }

// lister is a NodeLister over fixed nodes.
type lister []*NodeInfo

func (l lister) List() []*NodeInfo { return l }
func (l lister) Get(name string) *NodeInfo {
	for _, n := range l {
		if n.Name() == name {
			return n
		}
	}
	return nil
}

func alikePod(i int, app string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", i), Namespace: "default", UID: types.UID(fmt.Sprint("uid-", i)), Labels: map[string]string{"app": app}}}
}

// place schedules pods one cycle each (cycles from first) and adds each to its node, as
// the scheduler's assume does; it returns the nodes chosen.
func place(t *testing.T, f *Framework, all lister, pods []*corev1.Pod, first int64) []string {
	t.Helper()
	var hosts []string
	for i, pod := range pods {
		r, err := f.ScheduleInCycle(context.Background(), NewCycleState(), pod, all, first+int64(i), 0)
		if err != nil {
			t.Fatalf("pod %s: %v", pod.Name, err)
		}
		all.Get(r.SuggestedHost).AddPod(pod)
		hosts = append(hosts, r.SuggestedHost)
	}
	return hosts
}

func TestBatchedPodsSpreadAsFullCyclesDo(t *testing.T) {
	all := lister(nodes(10))
	f, err := New(ProfileFromPlugins("test", []Plugin{fakeSort{}, packFit{capacity: 3}}, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	var pods []*corev1.Pod
	for i := range 30 {
		pods = append(pods, alikePod(i, "web"))
	}
	hosts := place(t, f, all, pods, 1)
	// Rescoring the last node sends each pod to an emptier one: the first ten to ten
	// different nodes, and 3 pods a node in the end, as full cycles would place them.
	if distinct := len(sets.New(hosts[:10]...)); distinct != 10 {
		t.Errorf("the first 10 pods went to %d different nodes, want 10: %v", distinct, hosts[:10])
	}
	for _, n := range all {
		if len(n.Pods) != 3 {
			t.Errorf("node %s holds %d pods, want 3", n.Name(), len(n.Pods))
		}
	}
	if got := f.BatchedPods(); got != 29 {
		t.Errorf("%d pods batched, want 29 (all but the first)", got)
	}
	// Every node is full: the batch checks the nodes again, finds none, and the full cycle
	// says why.
	_, err = f.ScheduleInCycle(context.Background(), NewCycleState(), alikePod(30, "web"), all, 31, 0)
	var fit *FitError
	if !errors.As(err, &fit) {
		t.Fatalf("pod 31 of 30 places: error %v, want a FitError", err)
	}
}

func TestBatchKeepsNormalizedScores(t *testing.T) {
	all := lister(nodes(4))
	for _, n := range all[:2] {
		n.Node().Labels = map[string]string{"preferred": "yes"}
	}
	f, err := New(ProfileFromPlugins("test", []Plugin{fakeSort{}, packFit{capacity: 2}, preferred{}}, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	var pods []*corev1.Pod
	for i := range 8 {
		pods = append(pods, alikePod(i, "web"))
	}
	hosts := place(t, f, all, pods, 1)
	// The preferred nodes fill first (100 for the label outweighs 10 per pod), then the others.
	for i, h := range hosts {
		preferredNode := h == "n0000" || h == "n0001"
		if i < 4 != preferredNode {
			t.Errorf("pod %d went to %s; want the preferred nodes for the first 4 pods only (placements %v)", i, h, hosts)
		}
	}
	if got := f.BatchedPods(); got != 7 {
		t.Errorf("%d pods batched, want 7", got)
	}
}

func TestBatchOnlyForAlikeConsecutiveRecentPods(t *testing.T) {
	newFramework := func(t *testing.T, plugins ...Plugin) *Framework {
		f, err := New(ProfileFromPlugins("test", append([]Plugin{fakeSort{}}, plugins...), nil), nil)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	t.Run("different labels", func(t *testing.T) {
		f := newFramework(t, packFit{capacity: 10})
		place(t, f, lister(nodes(3)), []*corev1.Pod{alikePod(0, "a"), alikePod(1, "b"), alikePod(2, "a")}, 1)
		if got := f.BatchedPods(); got != 0 {
			t.Errorf("%d pods batched, want 0", got)
		}
	})
	t.Run("not consecutive cycles", func(t *testing.T) {
		f := newFramework(t, packFit{capacity: 10})
		all := lister(nodes(3))
		place(t, f, all, []*corev1.Pod{alikePod(0, "a")}, 1)
		place(t, f, all, []*corev1.Pod{alikePod(1, "a")}, 3) // another profile had cycle 2
		if got := f.BatchedPods(); got != 0 {
			t.Errorf("%d pods batched, want 0", got)
		}
	})
	t.Run("the cluster changed in between", func(t *testing.T) {
		f := newFramework(t, packFit{capacity: 10})
		all := lister(nodes(3))
		for i, changes := range []int64{0, 1} {
			// A node added, a pod deleted ...: the count of others' changes moved.
			if _, err := f.ScheduleInCycle(context.Background(), NewCycleState(), alikePod(i, "a"), all, int64(i+1), changes); err != nil {
				t.Fatal(err)
			}
		}
		if got := f.BatchedPods(); got != 0 {
			t.Errorf("%d pods batched, want 0", got)
		}
	})
	t.Run("older than maxBatchAge", func(t *testing.T) {
		f := newFramework(t, packFit{capacity: 10})
		clock := time.Unix(0, 0)
		f.now = func() time.Time { clock = clock.Add(maxBatchAge + time.Millisecond); return clock }
		place(t, f, lister(nodes(3)), []*corev1.Pod{alikePod(0, "a"), alikePod(1, "a"), alikePod(2, "a")}, 1)
		if got := f.BatchedPods(); got != 0 {
			t.Errorf("%d pods batched, want 0", got)
		}
	})
	t.Run("forgotten after a failed reserve", func(t *testing.T) {
		f := newFramework(t, packFit{capacity: 10})
		all := lister(nodes(3))
		place(t, f, all, []*corev1.Pod{alikePod(0, "a")}, 1)
		f.ForgetBatch()
		place(t, f, all, []*corev1.Pod{alikePod(1, "a")}, 2)
		if got := f.BatchedPods(); got != 0 {
			t.Errorf("%d pods batched, want 0", got)
		}
	})
	t.Run("a plugin that cannot sign", func(t *testing.T) {
		f := newFramework(t, packFit{capacity: 10}, unsigned{})
		if _, ok := f.SignPod(alikePod(0, "a")); ok {
			t.Fatal("SignPod succeeded in a profile with a plugin that does not sign")
		}
		place(t, f, lister(nodes(3)), []*corev1.Pod{alikePod(0, "a"), alikePod(1, "a")}, 1)
		if got := f.BatchedPods(); got != 0 {
			t.Errorf("%d pods batched, want 0", got)
		}
	})
}

func TestSignatureFollowsSchedulingFields(t *testing.T) {
	f, err := New(ProfileFromPlugins("test", []Plugin{fakeSort{}, packFit{capacity: 1}}, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	base := alikePod(0, "web")
	base.Spec.Containers = []corev1.Container{{Name: "c", Image: "one"}}
	sign := func(p *corev1.Pod) string {
		s, ok := f.SignPod(p)
		if !ok {
			t.Fatalf("pod %s cannot be signed", p.Name)
		}
		return s
	}
	same := base.DeepCopy()
	same.Name, same.UID = "other", types.UID("other-uid")
	same.Spec.Containers[0].Image = "two" // the image is no plugin's business here
	if sign(base) != sign(same) {
		t.Error("pods differing only in name, UID and image got different signatures")
	}
	for name, change := range map[string]func(*corev1.Pod){
		"namespace":     func(p *corev1.Pod) { p.Namespace = "other" },
		"labels":        func(p *corev1.Pod) { p.Labels["tier"] = "x" },
		"node selector": func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{"a": "b"} },
		"tolerations":   func(p *corev1.Pod) { p.Spec.Tolerations = []corev1.Toleration{{Key: "k"}} },
		"host port":     func(p *corev1.Pod) { p.Spec.Containers[0].Ports = []corev1.ContainerPort{{HostPort: 80}} },
		"requests": func(p *corev1.Pod) {
			p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")}
		},
	} {
		p := base.DeepCopy()
		change(p)
		if sign(p) == sign(base) {
			t.Errorf("a different %s gave the same signature", name)
		}
	}
}

// relative scores every node 50 and says its scores are relative to the others (as an
// out-of-process plugin's, normalized in its batch call); it counts its calls.
type relative struct{ calls *atomic.Int32 }

func (relative) Name() string { return "Relative" }
func (r relative) Score(context.Context, *CycleState, *corev1.Pod, *NodeInfo) (int64, *Status) {
	r.calls.Add(1)
	return 50, nil
}
func (relative) ScoreExtensions() ScoreExtensions   { return nil }
func (relative) ScoresAreRelative() bool            { return true }
func (relative) SignPod(*corev1.Pod) (string, bool) { return "", true }

func TestBatchKeepsRelativeScores(t *testing.T) {
	var calls atomic.Int32
	f, err := New(ProfileFromPlugins("test", []Plugin{fakeSort{}, packFit{capacity: 5}, relative{&calls}}, nil), nil)
	if err != nil {
		t.Fatal(err)
	}
	place(t, f, lister(nodes(4)), []*corev1.Pod{alikePod(0, "a"), alikePod(1, "a"), alikePod(2, "a")}, 1)
	// The full cycle scores the 4 nodes; the two batched pods ask the plugin nothing.
	if got := calls.Load(); got != 4 {
		t.Errorf("the relative scorer was called %d times, want 4 (the full cycle only)", got)
	}
}
