package plugins

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"berth.dev/berth/core/scheduler/framework"
)

func nodeInfo(node *corev1.Node, pods ...*corev1.Pod) *framework.NodeInfo {
	n := framework.NewNodeInfo(pods...)
	n.SetNode(node)
	return n
}

func newNode(name string, mutate ...func(*corev1.Node)) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{}}}
	for _, m := range mutate {
		m(n)
	}
	return n
}

func allocatable(cpu, mem, pods string) func(*corev1.Node) {
	return func(n *corev1.Node) {
		n.Status.Allocatable = corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem), corev1.ResourcePods: resource.MustParse(pods),
		}
	}
}

func newPod(name string, mutate ...func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID("uid-" + name)}}
	p.Spec.Containers = []corev1.Container{{Name: "c"}}
	for _, m := range mutate {
		m(p)
	}
	return p
}

func requests(cpu, mem string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		rl := corev1.ResourceList{}
		if cpu != "" {
			rl[corev1.ResourceCPU] = resource.MustParse(cpu)
		}
		if mem != "" {
			rl[corev1.ResourceMemory] = resource.MustParse(mem)
		}
		p.Spec.Containers[0].Resources.Requests = rl
	}
}

// runFilter runs a plugin's PreFilter (when it has one) then its Filter, as the framework does.
func runFilter(t *testing.T, pl framework.FilterPlugin, pod *corev1.Pod, n *framework.NodeInfo) *framework.Status {
	t.Helper()
	state := framework.NewCycleState()
	if pre, ok := pl.(framework.PreFilterPlugin); ok {
		_, s := pre.PreFilter(context.Background(), state, pod)
		if s.IsSkip() {
			return nil
		}
		if !s.IsSuccess() {
			return s
		}
	}
	return pl.Filter(context.Background(), state, pod, n)
}

// runScore runs PreScore, Score over the nodes and NormalizeScore, and returns the scores.
func runScore(t *testing.T, pl framework.ScorePlugin, pod *corev1.Pod, nodes ...*framework.NodeInfo) []int64 {
	t.Helper()
	ctx := context.Background()
	state := framework.NewCycleState()
	if pre, ok := pl.(framework.PreScorePlugin); ok {
		if s := pre.PreScore(ctx, state, pod, nodes); s.IsSkip() {
			return make([]int64, len(nodes))
		} else if !s.IsSuccess() {
			t.Fatalf("PreScore: %v", s)
		}
	}
	scores := make([]framework.NodeScore, len(nodes))
	for i, n := range nodes {
		v, s := pl.Score(ctx, state, pod, n)
		if !s.IsSuccess() {
			t.Fatalf("Score: %v", s)
		}
		scores[i] = framework.NodeScore{Name: n.Name(), Score: v}
	}
	if ext := pl.ScoreExtensions(); ext != nil {
		if s := ext.NormalizeScore(ctx, state, pod, scores); !s.IsSuccess() {
			t.Fatalf("NormalizeScore: %v", s)
		}
	}
	out := make([]int64, len(scores))
	for i, s := range scores {
		out[i] = s.Score
	}
	return out
}

func sameStatus(a, b *framework.Status) bool { return a.Equal(b) }

func mustQ(s string) *resource.Quantity {
	q := resource.MustParse(s)
	return &q
}
