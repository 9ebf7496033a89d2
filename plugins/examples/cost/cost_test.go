package cost

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/plugins/scheduler"
)

func scoreAll(t *testing.T, p *Plugin, labels map[string]map[string]string, names []string) map[string]int64 {
	t.Helper()
	ctx := context.Background()
	scores := make([]scheduler.NodeScore, len(names))
	for i, name := range names {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels[name]}}
		v, st := p.Score(ctx, nil, n)
		if !st.IsSuccess() {
			t.Fatal(st)
		}
		scores[i] = scheduler.NodeScore{Name: name, Score: v}
	}
	if st := p.NormalizeScore(ctx, nil, scores); !st.IsSuccess() {
		t.Fatal(st)
	}
	out := map[string]int64{}
	for _, s := range scores {
		out[s.Name] = s.Score
	}
	return out
}

func TestCostScores(t *testing.T) {
	cost := func(v string) map[string]string { return map[string]string{Label: v} }
	for _, tc := range []struct {
		name   string
		labels map[string]map[string]string
		want   map[string]int64
	}{
		{"cheaper scores higher, unlabelled lowest",
			map[string]map[string]string{"a": cost("10"), "b": cost("20"), "c": cost("15"), "d": nil},
			map[string]int64{"a": 100, "b": 1, "c": 51, "d": 0}},
		{"equal costs all score 100",
			map[string]map[string]string{"a": cost("3"), "b": cost("3"), "c": nil, "d": nil},
			map[string]int64{"a": 100, "b": 100, "c": 0, "d": 0}},
		{"not an integer counts as unlabelled; negative costs work",
			map[string]map[string]string{"a": cost("cheap"), "b": cost("-5"), "c": cost("5"), "d": cost("9223372036854775807")},
			map[string]int64{"a": 0, "b": 100, "c": 100, "d": 1}},
		{"no labels at all",
			map[string]map[string]string{},
			map[string]int64{"a": 0, "b": 0, "c": 0, "d": 0}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := scoreAll(t, New(), tc.labels, []string{"a", "b", "c", "d"})
			for n, w := range tc.want {
				if got[n] != w {
					t.Errorf("node %s scored %d, want %d (all: %v)", n, got[n], w, got)
				}
			}
		})
	}
}

func TestCostArgs(t *testing.T) {
	p := New()
	if err := p.Configure("v1", []byte(`{"label":"example.com/price"}`)); err != nil {
		t.Fatal(err)
	}
	got := scoreAll(t, p, map[string]map[string]string{"a": {"example.com/price": "1"}, "b": {Label: "1"}}, []string{"a", "b"})
	if got["a"] != 100 || got["b"] != 0 {
		t.Errorf("with label example.com/price: %v", got)
	}
	if err := p.Configure("v1", []byte(`{"label":`)); err == nil {
		t.Error("bad args accepted")
	}
}

func TestPodSignature(t *testing.T) {
	// Score never reads the pod: the scheduler may reuse its scores for any alike pod.
	if sig := New().PodSignature(); sig == nil || len(sig.Fields) != 0 {
		t.Errorf("PodSignature = %+v, want an empty signature", sig)
	}
}
