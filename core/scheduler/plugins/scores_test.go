package plugins

import (
	"context"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"berth.dev/berth/core/scheduler/framework"
)

func TestScores(t *testing.T) {
	least, _ := NewNodeResourcesFit(LeastAllocated)
	most, _ := NewNodeResourcesFit(MostAllocated)
	big := allocatable("4", "8Gi", "110")
	empty := nodeInfo(newNode("empty", big))
	busy := nodeInfo(newNode("busy", big), newPod("q", requests("2", "4Gi")))
	soft := func(keys ...string) func(*corev1.Node) {
		return func(n *corev1.Node) {
			for _, k := range keys {
				n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: k, Effect: corev1.TaintEffectPreferNoSchedule})
			}
		}
	}
	preferred := func(p *corev1.Pod) {
		term := func(w int32, key string) corev1.PreferredSchedulingTerm {
			return corev1.PreferredSchedulingTerm{Weight: w, Preference: corev1.NodeSelectorTerm{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: key, Operator: corev1.NodeSelectorOpExists}},
			}}
		}
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{term(10, "ssd"), term(30, "gpu")},
		}}
	}
	labelled := func(keys ...string) func(*corev1.Node) {
		return func(n *corev1.Node) {
			for _, k := range keys {
				n.Labels[k] = "yes"
			}
		}
	}
	for _, tc := range []struct {
		name   string
		plugin framework.ScorePlugin
		pod    *corev1.Pod
		nodes  []*framework.NodeInfo
		want   []int64
	}{
		// cpu (4000-1000)/4000 = 75, memory (8-2)/8 = 75; busy: 25 and 25.
		{"LeastAllocated", least, newPod("p", requests("1", "2Gi")), []*framework.NodeInfo{empty, busy}, []int64{75, 25}},
		{"MostAllocated", most, newPod("p", requests("1", "2Gi")), []*framework.NodeInfo{empty, busy}, []int64{25, 75}},
		// No requests: scored as 100m and 200Mi. cpu (4000-100)*100/4000 = 97, memory
		// (8192-200)*100/8192 = 97.
		{"LeastAllocated counts missing requests as defaults", least, newPod("p"), []*framework.NodeInfo{empty}, []int64{97}},
		{"TaintToleration prefers fewer untolerated PreferNoSchedule taints", TaintToleration{}, newPod("p"),
			[]*framework.NodeInfo{nodeInfo(newNode("a")), nodeInfo(newNode("b", soft("x"))), nodeInfo(newNode("c", soft("x", "y")))},
			[]int64{100, 50, 0}},
		{"TaintToleration: tolerated taints do not count", TaintToleration{},
			newPod("p", func(p *corev1.Pod) {
				p.Spec.Tolerations = []corev1.Toleration{{Key: "x", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectPreferNoSchedule}}
			}),
			[]*framework.NodeInfo{nodeInfo(newNode("a")), nodeInfo(newNode("b", soft("x")))},
			[]int64{100, 100}},
		{"NodeAffinity weighs preferred terms", NodeAffinity{}, newPod("p", preferred),
			[]*framework.NodeInfo{nodeInfo(newNode("a")), nodeInfo(newNode("b", labelled("ssd"))), nodeInfo(newNode("c", labelled("ssd", "gpu"))), nodeInfo(newNode("d", labelled("gpu")))},
			[]int64{0, 25, 100, 75}},
		{"NodeAffinity without preferences skips", NodeAffinity{}, newPod("p"),
			[]*framework.NodeInfo{nodeInfo(newNode("a")), nodeInfo(newNode("b", labelled("ssd")))}, []int64{0, 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := runScore(t, tc.plugin, tc.pod, tc.nodes...); !slices.Equal(got, tc.want) {
				t.Errorf("scores %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := NewNodeResourcesFit("Balanced"); err == nil {
		t.Errorf("an unknown strategy was accepted")
	}
}

// fakePreemption is a PreemptionHandle over a fixed list of nodes, filtering with
// NodeResourcesFit, that records evictions instead of deleting.
type fakePreemption struct {
	nodes   []*framework.NodeInfo
	evicted []string
}

func (f *fakePreemption) List() []*framework.NodeInfo { return f.nodes }
func (f *fakePreemption) Get(name string) *framework.NodeInfo {
	for _, n := range f.nodes {
		if n.Name() == name {
			return n
		}
	}
	return nil
}
func (f *fakePreemption) Snapshot() framework.NodeLister { return f }
func (f *fakePreemption) RunFilter(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, n *framework.NodeInfo) *framework.Status {
	fit, _ := NewNodeResourcesFit("")
	return fit.Filter(ctx, state, pod, n)
}
func (f *fakePreemption) Evict(_ context.Context, victim, _ *corev1.Pod, _ string) error {
	f.evicted = append(f.evicted, victim.Name)
	return nil
}
func (f *fakePreemption) RunPreFilterExtensionAddPod(context.Context, *framework.CycleState, *corev1.Pod, *framework.PodInfo, *framework.NodeInfo) *framework.Status {
	return nil
}
func (f *fakePreemption) RunPreFilterExtensionRemovePod(context.Context, *framework.CycleState, *corev1.Pod, *framework.PodInfo, *framework.NodeInfo) *framework.Status {
	return nil
}

func TestDefaultPreemption(t *testing.T) {
	prio := func(p int32) func(*corev1.Pod) { return func(pod *corev1.Pod) { pod.Spec.Priority = &p } }
	alloc := allocatable("2", "8Gi", "110")
	unsched := func(nodes ...*framework.NodeInfo) *framework.NodeToStatus {
		m := framework.NewNodeToStatus()
		for _, n := range nodes {
			m.Set(n.Name(), framework.NewStatus(framework.Unschedulable, "Insufficient cpu"))
		}
		return m
	}
	t.Run("no victims, and an unresolvable node", func(t *testing.T) {
		same := nodeInfo(newNode("same", alloc), newPod("q", requests("2", ""), prio(10)))
		tainted := nodeInfo(newNode("tainted", alloc))
		h := &fakePreemption{nodes: []*framework.NodeInfo{same, tainted}}
		statuses := unsched(same)
		statuses.Set("tainted", framework.NewStatus(framework.UnschedulableAndUnresolvable, "node(s) had untolerated taint {a: b}"))
		_, s := NewDefaultPreemption(h).PostFilter(context.Background(), framework.NewCycleState(), newPod("p", requests("1", ""), prio(10)), statuses)
		want := "preemption: 0/2 nodes are available: 1 No preemption victims found for incoming pod, 1 Preemption is not helpful for scheduling."
		if s.Code() != framework.Unschedulable || s.Message() != want {
			t.Errorf("status %v, want Unschedulable %q", s, want)
		}
	})
	t.Run("evicts the fewest, least important pods", func(t *testing.T) {
		n1 := nodeInfo(newNode("n1", alloc), newPod("a", requests("1", ""), prio(1)), newPod("b", requests("1", ""), prio(5)))
		n2 := nodeInfo(newNode("n2", alloc), newPod("c", requests("1", ""), prio(3)), newPod("d", requests("1", ""), prio(100)))
		h := &fakePreemption{nodes: []*framework.NodeInfo{n1, n2}}
		res, s := NewDefaultPreemption(h).PostFilter(context.Background(), framework.NewCycleState(), newPod("p", requests("1", ""), prio(10)), unsched(n1, n2))
		if !s.IsSuccess() || res == nil || res.NominatedNodeName != "n1" || !slices.Equal(h.evicted, []string{"a"}) {
			t.Errorf("result %+v %v, evicted %v; want n1 nominated and only a evicted", res, s, h.evicted)
		}
	})
	t.Run("preemptionPolicy Never", func(t *testing.T) {
		never := corev1.PreemptNever
		pod := newPod("p", func(p *corev1.Pod) { p.Spec.PreemptionPolicy = &never })
		_, s := NewDefaultPreemption(&fakePreemption{}).PostFilter(context.Background(), framework.NewCycleState(), pod, framework.NewNodeToStatus())
		if s.Message() != "preemption: not eligible due to preemptionPolicy=Never." {
			t.Errorf("status %v", s)
		}
	})
}
