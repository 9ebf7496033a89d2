package plugins

import (
	"context"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/core/scheduler/framework"
)

// nodeList is a snapshot of fixed nodes.
type nodeList []*framework.NodeInfo

func (l nodeList) List() []*framework.NodeInfo { return l }
func (l nodeList) Get(name string) *framework.NodeInfo {
	for _, n := range l {
		if n.Name() == name {
			return n
		}
	}
	return nil
}

func nodeLabels(kv ...string) func(*corev1.Node) {
	return func(n *corev1.Node) {
		for i := 0; i+1 < len(kv); i += 2 {
			n.Labels[kv[i]] = kv[i+1]
		}
	}
}

func podLabels(kv ...string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		if p.Labels == nil {
			p.Labels = map[string]string{}
		}
		for i := 0; i+1 < len(kv); i += 2 {
			p.Labels[kv[i]] = kv[i+1]
		}
	}
}

func term(key, value, topology string) corev1.PodAffinityTerm {
	return corev1.PodAffinityTerm{
		LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{key: value}},
		TopologyKey:   topology,
	}
}

func affinity(required ...corev1.PodAffinityTerm) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		if p.Spec.Affinity == nil {
			p.Spec.Affinity = &corev1.Affinity{}
		}
		p.Spec.Affinity.PodAffinity = &corev1.PodAffinity{RequiredDuringSchedulingIgnoredDuringExecution: required}
	}
}

func antiAffinity(required ...corev1.PodAffinityTerm) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		if p.Spec.Affinity == nil {
			p.Spec.Affinity = &corev1.Affinity{}
		}
		p.Spec.Affinity.PodAntiAffinity = &corev1.PodAntiAffinity{RequiredDuringSchedulingIgnoredDuringExecution: required}
	}
}

func preferredPodAffinity(weight int32, t corev1.PodAffinityTerm) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		if p.Spec.Affinity == nil {
			p.Spec.Affinity = &corev1.Affinity{}
		}
		p.Spec.Affinity.PodAffinity = &corev1.PodAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{Weight: weight, PodAffinityTerm: t}}}
	}
}

// filterAll runs PreFilter once and Filter on every node, as the framework does, and
// returns each node's reason ("" when it fits).
func filterAll(t *testing.T, pl interface {
	framework.PreFilterPlugin
	framework.FilterPlugin
}, pod *corev1.Pod, nodes nodeList) []string {
	t.Helper()
	state := framework.NewCycleState()
	_, s := pl.PreFilter(context.Background(), state, pod)
	out := make([]string, len(nodes))
	if s.IsSkip() {
		return out
	}
	if !s.IsSuccess() {
		t.Fatalf("PreFilter: %v", s)
	}
	for i, n := range nodes {
		if s := pl.Filter(context.Background(), state, pod, n); !s.IsSuccess() {
			out[i] = s.Message()
		}
	}
	return out
}

func TestInterPodAffinityFilter(t *testing.T) {
	zoneA := func(name string) *corev1.Node { return newNode(name, nodeLabels("zone", "a", "host", name)) }
	zoneB := func(name string) *corev1.Node { return newNode(name, nodeLabels("zone", "b", "host", name)) }
	db := newPod("db", podLabels("app", "db"))
	web := newPod("web", podLabels("app", "web"))
	tests := []struct {
		name  string
		pod   *corev1.Pod
		nodes func() nodeList
		want  []string
	}{
		{"affinity to a zone with the pod", newPod("p", affinity(term("app", "db", "zone"))),
			func() nodeList {
				return nodeList{nodeInfo(zoneA("a1"), db), nodeInfo(zoneA("a2")), nodeInfo(zoneB("b1"), web)}
			},
			[]string{"", "", ErrReasonAffinityRulesNotMatch}},
		{"affinity needs the topology key", newPod("p", affinity(term("app", "db", "rack"))),
			func() nodeList { return nodeList{nodeInfo(zoneA("a1"), db)} },
			[]string{ErrReasonAffinityRulesNotMatch}},
		{"first pod of a group matching its own affinity goes anywhere", newPod("p", podLabels("app", "db"), affinity(term("app", "db", "zone"))),
			func() nodeList { return nodeList{nodeInfo(zoneA("a1")), nodeInfo(zoneB("b1"), web)} },
			[]string{"", ""}},
		{"anti-affinity one per host", newPod("p", podLabels("app", "web"), antiAffinity(term("app", "web", "host"))),
			func() nodeList {
				return nodeList{nodeInfo(zoneA("a1"), web), nodeInfo(zoneA("a2")), nodeInfo(zoneB("b1"), db)}
			},
			[]string{ErrReasonAntiAffinityRulesNotMatch, "", ""}},
		{"anti-affinity per zone", newPod("p", antiAffinity(term("app", "db", "zone"))),
			func() nodeList {
				return nodeList{nodeInfo(zoneA("a1"), db), nodeInfo(zoneA("a2")), nodeInfo(zoneB("b1"))}
			},
			[]string{ErrReasonAntiAffinityRulesNotMatch, ErrReasonAntiAffinityRulesNotMatch, ""}},
		{"existing pod's anti-affinity is honoured", newPod("p", podLabels("app", "web")),
			func() nodeList {
				lonely := newPod("lonely", antiAffinity(term("app", "web", "zone")))
				return nodeList{nodeInfo(zoneA("a1")), nodeInfo(zoneA("a2"), lonely), nodeInfo(zoneB("b1"))}
			},
			[]string{ErrReasonExistingAntiAffinityRulesNotMatch, ErrReasonExistingAntiAffinityRulesNotMatch, ""}},
		{"other namespaces do not count", newPod("p", affinity(term("app", "db", "zone"))),
			func() nodeList {
				other := newPod("db2", podLabels("app", "db"), func(p *corev1.Pod) { p.Namespace = "other" })
				return nodeList{nodeInfo(zoneA("a1"), other), nodeInfo(zoneB("b1"), db)}
			},
			[]string{ErrReasonAffinityRulesNotMatch, ""}},
		{"namespaces of the term", newPod("p", affinity(func() corev1.PodAffinityTerm {
			t := term("app", "db", "zone")
			t.Namespaces = []string{"other"}
			return t
		}())),
			func() nodeList {
				other := newPod("db2", podLabels("app", "db"), func(p *corev1.Pod) { p.Namespace = "other" })
				return nodeList{nodeInfo(zoneA("a1"), other), nodeInfo(zoneB("b1"), db)}
			},
			[]string{"", ErrReasonAffinityRulesNotMatch}},
		{"empty namespaceSelector selects every namespace", newPod("p", antiAffinity(func() corev1.PodAffinityTerm {
			t := term("app", "db", "zone")
			t.NamespaceSelector = &metav1.LabelSelector{}
			return t
		}())),
			func() nodeList {
				other := newPod("db2", podLabels("app", "db"), func(p *corev1.Pod) { p.Namespace = "other" })
				return nodeList{nodeInfo(zoneA("a1"), other), nodeInfo(zoneB("b1"))}
			},
			[]string{ErrReasonAntiAffinityRulesNotMatch, ""}},
		{"no terms anywhere: skipped", newPod("p"),
			func() nodeList { return nodeList{nodeInfo(zoneA("a1"), db)} },
			[]string{""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nodes := tt.nodes()
			pl, err := NewInterPodAffinity(DefaultInterPodAffinityArgs(), nodes, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := filterAll(t, pl, tt.pod, nodes); !slices.Equal(got, tt.want) {
				t.Errorf("reasons %q\nwant    %q", got, tt.want)
			}
		})
	}
}

func TestInterPodAffinityPreemptionDryRun(t *testing.T) {
	web := newPod("web", podLabels("app", "web"))
	n := nodeInfo(newNode("n1", nodeLabels("host", "n1")), web)
	nodes := nodeList{n}
	pl, _ := NewInterPodAffinity(DefaultInterPodAffinityArgs(), nodes, nil)
	pod := newPod("p", antiAffinity(term("app", "web", "host")))
	state := framework.NewCycleState()
	if _, s := pl.PreFilter(context.Background(), state, pod); !s.IsSuccess() {
		t.Fatal(s)
	}
	if s := pl.Filter(context.Background(), state, pod, n); s.IsSuccess() {
		t.Fatal("fits beside the pod its anti-affinity excludes")
	}
	dry := state.Clone()
	c := n.Clone()
	c.RemovePod(web)
	pl.RemovePod(context.Background(), dry, pod, framework.NewPodInfo(web), c)
	if s := pl.Filter(context.Background(), dry, pod, c); !s.IsSuccess() {
		t.Errorf("once the pod is removed in the dry run: %v", s)
	}
	if s := pl.Filter(context.Background(), state, pod, n); s.IsSuccess() {
		t.Error("the dry run changed the original state")
	}
}

func TestInterPodAffinityScore(t *testing.T) {
	db := newPod("db", podLabels("app", "db"))
	a1 := nodeInfo(newNode("a1", nodeLabels("zone", "a")), db)
	a2 := nodeInfo(newNode("a2", nodeLabels("zone", "a")))
	b1 := nodeInfo(newNode("b1", nodeLabels("zone", "b")))
	nodes := nodeList{a1, a2, b1}
	pl, _ := NewInterPodAffinity(DefaultInterPodAffinityArgs(), nodes, nil)

	// Preferred affinity: the zone with a db pod scores highest.
	got := runScore(t, pl, newPod("p", preferredPodAffinity(10, term("app", "db", "zone"))), a1, a2, b1)
	if !slices.Equal(got, []int64{100, 100, 0}) {
		t.Errorf("preferred affinity scores %v, want [100 100 0]", got)
	}
	// An existing pod's required affinity draws matching pods (hardPodAffinityWeight).
	follower := newPod("f", affinity(term("app", "web", "zone")))
	c1 := nodeInfo(newNode("c1", nodeLabels("zone", "c")), follower)
	c2 := nodeInfo(newNode("c2", nodeLabels("zone", "d")))
	pl2, _ := NewInterPodAffinity(DefaultInterPodAffinityArgs(), nodeList{c1, c2}, nil)
	if got := runScore(t, pl2, newPod("web", podLabels("app", "web")), c1, c2); !slices.Equal(got, []int64{100, 0}) {
		t.Errorf("hard affinity of existing pods scores %v, want [100 0]", got)
	}
	// Preferred anti-affinity: the zone with a db pod scores lowest.
	anti := newPod("p", func(p *corev1.Pod) {
		p.Spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{Weight: 5, PodAffinityTerm: term("app", "db", "zone")}},
		}}
	})
	if got := runScore(t, pl, anti, a1, a2, b1); !slices.Equal(got, []int64{0, 0, 100}) {
		t.Errorf("preferred anti-affinity scores %v, want [0 0 100]", got)
	}
}
