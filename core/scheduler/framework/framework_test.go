package framework

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
)

func TestNumFeasibleNodesToFind(t *testing.T) {
	for _, tc := range []struct {
		percentage int32
		nodes      int32
		want       int32
	}{
		{0, 10, 10},
		{0, 99, 99},
		{0, 100, 100},     // 50% of 100 is 50, but never fewer than 100
		{0, 500, 230},     // 50 - 500/125 = 46%
		{0, 1000, 420},    // 42%
		{0, 5000, 500},    // 50 - 40 = 10%
		{0, 6000, 300},    // 50 - 48 = 2% -> floor 5%
		{0, 20000, 1000},  // 5%
		{10, 1000, 100},   // explicit 10%
		{10, 500, 100},    // 50 -> floor 100
		{100, 5000, 5000}, // every node
	} {
		if got := NumFeasibleNodesToFind(tc.percentage, tc.nodes); got != tc.want {
			t.Errorf("NumFeasibleNodesToFind(%d, %d) = %d, want %d", tc.percentage, tc.nodes, got, tc.want)
		}
	}
}

func TestFitErrorMessage(t *testing.T) {
	statuses := func(absent *Status, set map[string]*Status) *NodeToStatus {
		m := NewNodeToStatus()
		if absent != nil {
			m.SetAbsentStatus(absent)
		}
		for n, s := range set {
			m.Set(n, s)
		}
		return m
	}
	for _, tc := range []struct {
		name string
		fit  FitError
		want string
	}{
		{
			// The example puts "3 Insufficient cpu" first; Kubernetes 1.33 sorts
			// the "N reason" strings, so "1 node(s) ..." comes first.
			name: "filter reasons counted and sorted, then preemption",
			fit: FitError{NumAllNodes: 4, Diagnosis: Diagnosis{
				NodeToStatus: statuses(nil, map[string]*Status{
					"a": NewStatus(Unschedulable, "Insufficient cpu"),
					"b": NewStatus(Unschedulable, "Insufficient cpu"),
					"c": NewStatus(Unschedulable, "Insufficient cpu"),
					"d": NewStatus(UnschedulableAndUnresolvable, "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"),
				}),
				PostFilterMsg: "preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling.",
			}},
			want: "0/4 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, 3 Insufficient cpu. preemption: 0/4 nodes are available: 4 Preemption is not helpful for scheduling.",
		},
		{
			name: "a status with several reasons counts each",
			fit: FitError{NumAllNodes: 2, Diagnosis: Diagnosis{NodeToStatus: statuses(nil, map[string]*Status{
				"a": NewStatus(Unschedulable, "Insufficient cpu", "Insufficient memory"),
				"b": NewStatus(Unschedulable, "Insufficient memory"),
			})}},
			want: "0/2 nodes are available: 1 Insufficient cpu, 2 Insufficient memory.",
		},
		{
			name: "sorted as strings: 10 before 2",
			fit: FitError{NumAllNodes: 12, Diagnosis: Diagnosis{NodeToStatus: statuses(NewStatus(UnschedulableAndUnresolvable, "node(s) were unschedulable"), map[string]*Status{
				"a": NewStatus(Unschedulable, "Too many pods"),
				"b": NewStatus(Unschedulable, "Too many pods"),
			})}},
			want: "0/12 nodes are available: 10 node(s) were unschedulable, 2 Too many pods.",
		},
		{
			name: "PreFilter rejection replaces the per-node reasons",
			fit: FitError{NumAllNodes: 3, Diagnosis: Diagnosis{
				NodeToStatus: statuses(NewStatus(UnschedulableAndUnresolvable, "pod affinity terms conflict"), nil),
				PreFilterMsg: "pod affinity terms conflict",
			}},
			want: "0/3 nodes are available: pod affinity terms conflict.",
		},
		{
			name: "absent nodes without reasons are not counted",
			fit:  FitError{NumAllNodes: 5, Diagnosis: Diagnosis{NodeToStatus: statuses(nil, map[string]*Status{"a": NewStatus(Unschedulable, "Insufficient cpu")})}},
			want: "0/5 nodes are available: 1 Insufficient cpu.",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.fit.Error(); got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

// fakeFilter rejects the nodes in reject and counts its calls.
type fakeFilter struct {
	reject map[string]*Status
	calls  atomic.Int32
}

func (f *fakeFilter) Name() string { return "Fake" }
func (f *fakeFilter) Filter(_ context.Context, _ *CycleState, _ *corev1.Pod, n *NodeInfo) *Status {
	f.calls.Add(1)
	return f.reject[n.Name()]
}

type fakeSort struct{}

func (fakeSort) Name() string                                                   { return "Sort" }
func (fakeSort) Less(a, b *QueuedPodInfo) bool                                  { return a.Timestamp.Before(b.Timestamp) }
func (fakeSort) Bind(context.Context, *CycleState, *corev1.Pod, string) *Status { return nil }

// fakeScore scores nodes by the number in their name's suffix table.
type fakeScore struct{ scores map[string]int64 }

func (f fakeScore) Name() string { return "Score" }
func (f fakeScore) Score(_ context.Context, _ *CycleState, _ *corev1.Pod, n *NodeInfo) (int64, *Status) {
	return f.scores[n.Name()], nil
}
func (f fakeScore) ScoreExtensions() ScoreExtensions { return nil }

func nodes(n int) []*NodeInfo {
	out := make([]*NodeInfo, n)
	for i := range out {
		out[i] = NewNodeInfo()
		out[i].SetNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("n%04d", i)}})
	}
	return out
}

func TestFindFeasibleNodesSamplesAndRecords(t *testing.T) {
	all := nodes(1000)
	reject := map[string]*Status{}
	for i := 0; i < 1000; i += 2 {
		reject[all[i].Name()] = NewStatus(Unschedulable, "Insufficient cpu")
	}
	filter := &fakeFilter{reject: reject}
	p := ProfileFromPlugins("test", []Plugin{fakeSort{}, filter, fakeScore{}}, nil)
	f, err := New(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}}
	feasible, diag, err := f.FindFeasibleNodes(context.Background(), NewCycleState(), pod, all)
	if err != nil {
		t.Fatal(err)
	}
	if len(feasible) != 420 {
		t.Errorf("found %d feasible nodes, want 420 (42%% of 1000)", len(feasible))
	}
	seen := sets.New[string]()
	for _, n := range feasible {
		if reject[n.Name()] != nil || seen.Has(n.Name()) {
			t.Fatalf("feasible list holds %s twice or a rejected node", n.Name())
		}
		seen.Insert(n.Name())
	}
	if diag.NodeToStatus.Len() == 0 || !diag.UnschedulablePlugins.Has("Fake") {
		t.Errorf("diagnosis: %d statuses, plugins %v; want rejections by Fake", diag.NodeToStatus.Len(), diag.UnschedulablePlugins)
	}
	// The next search starts where this one stopped.
	if got := f.nextStart.Load(); got == 0 {
		t.Errorf("next start index did not move")
	}
	// Without scoring one feasible node is enough.
	p2 := ProfileFromPlugins("noscore", []Plugin{fakeSort{}, &fakeFilter{}}, nil)
	f2, _ := New(p2, nil)
	feasible, _, err = f2.FindFeasibleNodes(context.Background(), NewCycleState(), pod, all)
	if err != nil || len(feasible) != 1 {
		t.Errorf("without Score plugins: %d feasible (err %v), want 1", len(feasible), err)
	}
}

func TestSchedulePodFitErrorAndScore(t *testing.T) {
	all := nodes(4)
	filter := &fakeFilter{reject: map[string]*Status{
		"n0000": NewStatus(Unschedulable, "Insufficient cpu"),
	}}
	score := fakeScore{scores: map[string]int64{"n0001": 10, "n0002": 90, "n0003": 50}}
	f, err := New(ProfileFromPlugins("test", []Plugin{fakeSort{}, filter, score}, map[string]int64{"Score": 2}), nil)
	if err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}}
	res, err := f.SchedulePod(context.Background(), NewCycleState(), pod, all)
	if err != nil {
		t.Fatal(err)
	}
	if res.SuggestedHost != "n0002" || res.FeasibleNodes != 3 || res.EvaluatedNodes != 4 {
		t.Errorf("result %+v, want n0002 with 3 feasible of 4 evaluated", res)
	}

	for _, n := range all {
		filter.reject[n.Name()] = NewStatus(Unschedulable, "Insufficient cpu")
	}
	_, err = f.SchedulePod(context.Background(), NewCycleState(), pod, all)
	fit, ok := err.(*FitError)
	if !ok {
		t.Fatalf("error %v, want a *FitError", err)
	}
	if got, want := fit.Error(), "0/4 nodes are available: 4 Insufficient cpu."; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
}

func TestSelectHostBreaksTiesAtRandom(t *testing.T) {
	scores := []NodeTotalScore{{"a", 5}, {"b", 9}, {"c", 9}, {"d", 1}}
	picked := map[string]int{}
	for range 400 {
		h, err := SelectHost(scores)
		if err != nil {
			t.Fatal(err)
		}
		picked[h]++
	}
	if picked["a"]+picked["d"] != 0 || picked["b"] < 100 || picked["c"] < 100 {
		t.Errorf("picks %v, want b and c about evenly and nothing else", picked)
	}
	if _, err := SelectHost(nil); err == nil {
		t.Errorf("SelectHost(nil) did not fail")
	}
}

func TestHostPortInfoConflicts(t *testing.T) {
	h := HostPortInfo{}
	h.Add("127.0.0.1", "TCP", 80)
	h.Add("", "", 8080) // 0.0.0.0 TCP
	for _, tc := range []struct {
		ip, proto string
		port      int32
		want      bool
	}{
		{"127.0.0.1", "TCP", 80, true},
		{"127.0.0.2", "TCP", 80, false},
		{"0.0.0.0", "TCP", 80, true},
		{"127.0.0.1", "UDP", 80, false},
		{"10.0.0.1", "TCP", 8080, true},
		{"", "", 0, false},
	} {
		if got := h.Conflicts(tc.ip, tc.proto, tc.port); got != tc.want {
			t.Errorf("Conflicts(%q, %q, %d) = %v, want %v", tc.ip, tc.proto, tc.port, got, tc.want)
		}
	}
}
