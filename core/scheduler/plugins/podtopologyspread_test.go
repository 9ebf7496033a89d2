package plugins

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func spread(maxSkew int32, key string, when corev1.UnsatisfiableConstraintAction, mutate ...func(*corev1.TopologySpreadConstraint)) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		c := corev1.TopologySpreadConstraint{
			MaxSkew: maxSkew, TopologyKey: key, WhenUnsatisfiable: when,
			LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
		}
		for _, m := range mutate {
			m(&c)
		}
		p.Spec.TopologySpreadConstraints = append(p.Spec.TopologySpreadConstraints, c)
	}
}

func webPods(n int) []*corev1.Pod {
	var out []*corev1.Pod
	for i := range n {
		out = append(out, newPod("w"+string(rune('a'+i)), podLabels("app", "web")))
	}
	return out
}

func TestPodTopologySpreadFilter(t *testing.T) {
	zone := func(name, z string, mutate ...func(*corev1.Node)) *corev1.Node {
		return newNode(name, append([]func(*corev1.Node){nodeLabels("zone", z, corev1.LabelHostname, name)}, mutate...)...)
	}
	w := webPods(6)
	two := func(i int) []*corev1.Pod { return w[i : i+2] }
	tests := []struct {
		name  string
		pod   *corev1.Pod
		nodes nodeList
		want  []string
	}{
		{"maxSkew 1 over zones: only the emptiest zone", newPod("p", podLabels("app", "web"), spread(1, "zone", corev1.DoNotSchedule)),
			nodeList{nodeInfo(zone("a1", "a"), two(0)...), nodeInfo(zone("b1", "b"), w[2]), nodeInfo(zone("c1", "c"), w[3])},
			[]string{ErrReasonTopologySpreadNotMatch, "", ""}},
		{"maxSkew 2 allows one more", newPod("p", podLabels("app", "web"), spread(2, "zone", corev1.DoNotSchedule)),
			nodeList{nodeInfo(zone("a1", "a"), two(0)...), nodeInfo(zone("b1", "b"), w[2]), nodeInfo(zone("c1", "c"), w[3])},
			[]string{"", "", ""}},
		{"a node without the key", newPod("p", podLabels("app", "web"), spread(1, "zone", corev1.DoNotSchedule)),
			nodeList{nodeInfo(newNode("bare")), nodeInfo(zone("a1", "a"))},
			[]string{ErrReasonTopologyLabelMissing, ""}},
		{"a pod not matching its own selector does not count itself", newPod("p", spread(1, "zone", corev1.DoNotSchedule)),
			nodeList{nodeInfo(zone("a1", "a"), w[0]), nodeInfo(zone("b1", "b"))},
			[]string{"", ""}},
		{"minDomains: fewer domains than wanted count the minimum as 0", newPod("p", podLabels("app", "web"), spread(1, "zone", corev1.DoNotSchedule, func(c *corev1.TopologySpreadConstraint) {
			three := int32(3)
			c.MinDomains = &three
		})),
			nodeList{nodeInfo(zone("a1", "a"), w[0]), nodeInfo(zone("b1", "b"), w[1])},
			[]string{ErrReasonTopologySpreadNotMatch, ErrReasonTopologySpreadNotMatch}},
		{"nodeAffinityPolicy Honor: excluded nodes' domains do not count", newPod("p", podLabels("app", "web"), spread(1, "zone", corev1.DoNotSchedule), func(p *corev1.Pod) {
			p.Spec.NodeSelector = map[string]string{"pool": "x"}
		}),
			nodeList{nodeInfo(zone("a1", "a", nodeLabels("pool", "x")), w[0]), nodeInfo(zone("b1", "b", nodeLabels("pool", "x")), w[1]), nodeInfo(zone("c1", "c"))},
			[]string{"", "", ""}},
		{"nodeTaintsPolicy Honor: tainted nodes' domains do not count", newPod("p", podLabels("app", "web"), spread(1, "zone", corev1.DoNotSchedule, func(c *corev1.TopologySpreadConstraint) {
			honor := corev1.NodeInclusionPolicyHonor
			c.NodeTaintsPolicy = &honor
		})),
			nodeList{nodeInfo(zone("a1", "a"), w[0]), nodeInfo(zone("b1", "b"), w[1]), nodeInfo(zone("c1", "c", func(n *corev1.Node) {
				n.Spec.Taints = []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}}
			}))},
			[]string{"", "", ""}},
		{"ScheduleAnyway does not filter", newPod("p", podLabels("app", "web"), spread(1, "zone", corev1.ScheduleAnyway)),
			nodeList{nodeInfo(zone("a1", "a"), two(0)...), nodeInfo(zone("b1", "b"))},
			[]string{"", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pl, err := NewPodTopologySpread(PodTopologySpreadArgs{}, tt.nodes, SpreadListers{})
			if err != nil {
				t.Fatal(err)
			}
			if got := filterAll(t, pl, tt.pod, tt.nodes); !slices.Equal(got, tt.want) {
				t.Errorf("reasons %q\nwant    %q", got, tt.want)
			}
		})
	}
}

func TestPodTopologySpreadScore(t *testing.T) {
	w := webPods(4)
	a1 := nodeInfo(newNode("a1", nodeLabels("zone", "a")), w[0], w[1], w[2])
	b1 := nodeInfo(newNode("b1", nodeLabels("zone", "b")), w[3])
	c1 := nodeInfo(newNode("c1", nodeLabels("zone", "c")))
	bare := nodeInfo(newNode("bare"))
	nodes := nodeList{a1, b1, c1, bare}
	pl, err := NewPodTopologySpread(PodTopologySpreadArgs{}, nodes, SpreadListers{})
	if err != nil {
		t.Fatal(err)
	}
	got := runScore(t, pl, newPod("p", podLabels("app", "web"), spread(1, "zone", corev1.ScheduleAnyway)), a1, b1, c1, bare)
	// Fewer matching pods in the zone score higher; a node without the key scores 0.
	if !(got[2] > got[1] && got[1] > got[0]) || got[2] != 100 || got[3] != 0 {
		t.Errorf("scores %v, want c1 (100) > b1 > a1, bare 0", got)
	}
	// A pod without constraints and no owners or services: the system defaults select
	// nothing and the plugin is skipped.
	if got := runScore(t, pl, newPod("q", podLabels("app", "web")), a1, b1, c1); !slices.Equal(got, []int64{0, 0, 0}) {
		t.Errorf("scores without constraints %v, want skipped", got)
	}
}

func TestPodTopologySpreadArgs(t *testing.T) {
	if _, err := NewPodTopologySpread(PodTopologySpreadArgs{DefaultingType: ListDefaulting, DefaultConstraints: []corev1.TopologySpreadConstraint{{MaxSkew: 0, TopologyKey: "zone", WhenUnsatisfiable: corev1.DoNotSchedule}}}, nodeList{}, SpreadListers{}); err == nil {
		t.Error("maxSkew 0 accepted")
	}
	if _, err := NewPodTopologySpread(PodTopologySpreadArgs{DefaultConstraints: SystemDefaultConstraints}, nodeList{}, SpreadListers{}); err == nil {
		t.Error("defaultConstraints accepted with System defaulting")
	}
}
