package daemonset

import (
	"log/slog"
	"reflect"
	"slices"
	"sort"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
)

var now = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func daemon() *appsv1.DaemonSet {
	labels := map[string]string{"app": "agent"}
	return &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: "default", UID: "ds-uid", Generation: 1},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "agent:1"}}},
			},
			UpdateStrategy: appsv1.DaemonSetUpdateStrategy{Type: appsv1.RollingUpdateDaemonSetStrategyType},
		},
	}
}

func node(name string, labels map[string]string, taints ...corev1.Taint) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Spec: corev1.NodeSpec{Taints: taints}}
}

func TestShouldRun(t *testing.T) {
	noSchedule := func(key string) corev1.Taint { return corev1.Taint{Key: key, Effect: corev1.TaintEffectNoSchedule} }
	noExecute := func(key string) corev1.Taint { return corev1.Taint{Key: key, Effect: corev1.TaintEffectNoExecute} }
	withSelector := func(ds *appsv1.DaemonSet) { ds.Spec.Template.Spec.NodeSelector = map[string]string{"disk": "ssd"} }
	withAffinity := func(ds *appsv1.DaemonSet) {
		ds.Spec.Template.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"a", "b"}}},
			}}},
		}}
	}
	tolerating := func(key string) func(*appsv1.DaemonSet) {
		return func(ds *appsv1.DaemonSet) {
			ds.Spec.Template.Spec.Tolerations = append(ds.Spec.Template.Spec.Tolerations, corev1.Toleration{Key: key, Operator: corev1.TolerationOpExists})
		}
	}
	hostNetwork := func(ds *appsv1.DaemonSet) { ds.Spec.Template.Spec.HostNetwork = true }
	for _, tc := range []struct {
		name      string
		node      *corev1.Node
		edit      func(*appsv1.DaemonSet)
		run, stay bool
	}{
		{"plain node", node("n", nil), nil, true, true},
		{"nodeSelector matches", node("n", map[string]string{"disk": "ssd"}), withSelector, true, true},
		{"nodeSelector misses", node("n", map[string]string{"disk": "hdd"}), withSelector, false, false},
		{"affinity matches", node("n", map[string]string{"zone": "b"}), withAffinity, true, true},
		{"affinity misses", node("n", map[string]string{"zone": "c"}), withAffinity, false, false},
		{"untolerated NoSchedule taint keeps a running pod", node("n", nil, noSchedule("dedicated")), nil, false, true},
		{"untolerated NoExecute taint", node("n", nil, noExecute("dedicated")), nil, false, false},
		{"tolerated taint", node("n", nil, noSchedule("dedicated")), tolerating("dedicated"), true, true},
		{"PreferNoSchedule is ignored", node("n", nil, corev1.Taint{Key: "x", Effect: corev1.TaintEffectPreferNoSchedule}), nil, true, true},
		{"cordoned (unschedulable taint)", node("n", nil, noSchedule(corev1.TaintNodeUnschedulable)), nil, true, true},
		{"not ready", node("n", nil, noExecute(corev1.TaintNodeNotReady), noSchedule(corev1.TaintNodeNotReady)), tolerating(corev1.TaintNodeNotReady), true, true},
		{"unreachable NoExecute", node("n", nil, noExecute(corev1.TaintNodeUnreachable)), nil, true, true},
		{"disk pressure", node("n", nil, noSchedule(corev1.TaintNodeDiskPressure)), nil, true, true},
		{"memory pressure", node("n", nil, noSchedule(corev1.TaintNodeMemoryPressure)), nil, true, true},
		{"pid pressure", node("n", nil, noSchedule(corev1.TaintNodePIDPressure)), nil, true, true},
		{"network unavailable", node("n", nil, noSchedule(corev1.TaintNodeNetworkUnavailable)), nil, false, true},
		{"network unavailable, host network", node("n", nil, noSchedule(corev1.TaintNodeNetworkUnavailable)), hostNetwork, true, true},
		{"template names another node", node("n", nil), func(ds *appsv1.DaemonSet) { ds.Spec.Template.Spec.NodeName = "other" }, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ds := daemon()
			if tc.edit != nil {
				tc.edit(ds)
			}
			run, stay := shouldRun(tc.node, ds)
			if run != tc.run || stay != tc.stay {
				t.Errorf("shouldRun = %v, %v; want %v, %v", run, stay, tc.run, tc.stay)
			}
		})
	}
}

func TestNewPodIsPinnedToItsNode(t *testing.T) {
	ds := daemon()
	ds.Spec.Template.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"a"}}},
		}}},
		PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{{Weight: 1}},
	}}
	pod := newPod(ds, "n1", "hash1")
	if pod.Spec.NodeName != "" {
		t.Errorf("nodeName %q: the scheduler binds daemon pods", pod.Spec.NodeName)
	}
	req := pod.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution
	want := corev1.NodeSelectorRequirement{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{"n1"}}
	if len(req.NodeSelectorTerms) != 1 || len(req.NodeSelectorTerms[0].MatchFields) != 1 || len(req.NodeSelectorTerms[0].MatchExpressions) != 0 ||
		req.NodeSelectorTerms[0].MatchFields[0].Key != want.Key || req.NodeSelectorTerms[0].MatchFields[0].Values[0] != "n1" {
		t.Errorf("required affinity %+v, want only %+v", req, want)
	}
	if len(pod.Spec.Affinity.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution) != 1 {
		t.Error("preferred terms dropped")
	}
	if n, err := targetNode(pod); err != nil || n != "n1" {
		t.Errorf("targetNode = %q, %v", n, err)
	}
	if pod.Labels[hashLabel] != "hash1" || pod.GenerateName != "agent-" || len(pod.Spec.Tolerations) != 6 {
		t.Errorf("labels %v generateName %q tolerations %d", pod.Labels, pod.GenerateName, len(pod.Spec.Tolerations))
	}
	if ds.Spec.Template.Spec.Affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms[0].MatchFields != nil {
		t.Error("newPod changed the DaemonSet's template")
	}
}

// dpod is a daemon pod for node at hash, created at now+age, ready or not.
func dpod(name, node, hash string, created time.Duration, ready bool) *corev1.Pod {
	p := newPod(daemon(), node, hash)
	p.Name = name
	p.CreationTimestamp = metav1.NewTime(now.Add(created))
	p.Status.Phase = corev1.PodPending
	if ready {
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(now.Add(-time.Hour))}}
	}
	return p
}

func group(pods ...*corev1.Pod) map[string][]*corev1.Pod {
	return podsByNode(pods)
}

func testController(t *testing.T) (*Controller, *record.FakeRecorder) {
	rec := record.NewFakeRecorder(100)
	kube := fake.NewClientset()
	c, err := New(kube, informers.NewSharedInformerFactory(kube, 0), Options{Log: slog.New(slog.DiscardHandler), Recorder: rec})
	if err != nil {
		t.Fatal(err)
	}
	return c, rec
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	sort.Strings(s)
	return s
}

func TestManage(t *testing.T) {
	c, rec := testController(t)
	ds := daemon()
	ds.Spec.Template.Spec.NodeSelector = map[string]string{"daemon": "yes"}
	yes := map[string]string{"daemon": "yes"}
	nodes := []*corev1.Node{node("a", yes), node("b", yes), node("c", nil), node("d", yes)}
	failed := dpod("d-failed", "d", "h", 0, false)
	failed.Status.Phase = corev1.PodFailed
	byNode := group(
		// a: none -> create. b: three pods -> the oldest stays. c: not eligible -> delete.
		dpod("b-old", "b", "h", -2*time.Minute, true), dpod("b-dup1", "b", "h", -time.Minute, true), dpod("b-dup2", "b", "h", 0, true),
		dpod("c-1", "c", "h", 0, true),
		failed,
		dpod("gone-1", "gone", "h", 0, false), // its node was deleted
	)
	p := c.manage(ds, nodes, byNode, "h", now)
	if !slices.Equal(sorted(p.create), []string{"a", "d"}) {
		t.Errorf("create on %v, want a and d (d's pod failed)", p.create)
	}
	if want := []string{"b-dup1", "b-dup2", "c-1", "d-failed", "gone-1"}; !slices.Equal(sorted(p.remove), want) {
		t.Errorf("remove %v, want %v", sorted(p.remove), want)
	}
	found := false
	for len(rec.Events) > 0 {
		if e := <-rec.Events; e == "Warning FailedDaemonPod Found failed daemon pod default/d-failed on node d, will try to kill it" {
			found = true
		}
	}
	if !found {
		t.Error("no FailedDaemonPod event")
	}
	// A second failure right away is in backoff: not deleted again, retried later.
	p = c.manage(ds, nodes, group(failed), "h", now.Add(100*time.Millisecond))
	if slices.Contains(p.remove, "d-failed") || p.retryAfter <= 0 {
		t.Errorf("failed pod during backoff: remove %v, retryAfter %v", p.remove, p.retryAfter)
	}
}

func TestSurplusKeepsOldestOfEachRevision(t *testing.T) {
	pods := []*corev1.Pod{
		dpod("new2", "n", "new", 3*time.Second, true), dpod("old1", "n", "old", time.Second, true),
		dpod("new1", "n", "new", 2*time.Second, true), dpod("old2", "n", "old", 4*time.Second, true),
	}
	if got := sorted(surplus(pods, "new")); !slices.Equal(got, []string{"new2", "old2"}) {
		t.Errorf("surplus = %v, want new2 and old2", got)
	}
}

func TestRollingUpdateWithoutSurge(t *testing.T) {
	ds := daemon()
	two := intstr.FromInt32(2)
	ds.Spec.UpdateStrategy.RollingUpdate = &appsv1.RollingUpdateDaemonSet{MaxUnavailable: &two}
	nodes := []*corev1.Node{node("a", nil), node("b", nil), node("c", nil), node("d", nil), node("e", nil)}
	for _, tc := range []struct {
		name   string
		pods   []*corev1.Pod
		remove []string
	}{
		{"all old and available: two at a time", []*corev1.Pod{
			dpod("a", "a", "old", 0, true), dpod("b", "b", "old", 0, true), dpod("c", "c", "old", 0, true),
			dpod("d", "d", "old", 0, true), dpod("e", "e", "old", 0, true)}, []string{"a", "b"}},
		{"one new not yet available: one more", []*corev1.Pod{
			dpod("a", "a", "new", 0, false), dpod("b", "b", "old", 0, true), dpod("c", "c", "old", 0, true),
			dpod("d", "d", "old", 0, true), dpod("e", "e", "old", 0, true)}, []string{"b"}},
		{"a node without a pod counts as unavailable", []*corev1.Pod{
			dpod("b", "b", "old", 0, true), dpod("c", "c", "old", 0, true),
			dpod("d", "d", "new", 0, false), dpod("e", "e", "old", 0, true)}, nil},
		{"unavailable old pods go regardless", []*corev1.Pod{
			dpod("a", "a", "new", 0, false), dpod("b", "b", "new", 0, false), dpod("c", "c", "old", 0, false),
			dpod("d", "d", "old", 0, true), dpod("e", "e", "old", 0, true)}, []string{"c"}},
		{"all updated", []*corev1.Pod{
			dpod("a", "a", "new", 0, true), dpod("b", "b", "new", 0, true), dpod("c", "c", "new", 0, true),
			dpod("d", "d", "new", 0, true), dpod("e", "e", "new", 0, true)}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			create, remove := rollingUpdate(ds, nodes, group(tc.pods...), "new", now)
			if len(create) != 0 || !slices.Equal(sorted(remove), tc.remove) {
				t.Errorf("create %v remove %v, want no creations and remove %v", create, remove, tc.remove)
			}
		})
	}
}

func TestRollingUpdateWithSurge(t *testing.T) {
	ds := daemon()
	one := intstr.FromInt32(1)
	zero := intstr.FromInt32(0)
	ds.Spec.UpdateStrategy.RollingUpdate = &appsv1.RollingUpdateDaemonSet{MaxSurge: &one, MaxUnavailable: &zero}
	nodes := []*corev1.Node{node("a", nil), node("b", nil), node("c", nil)}
	create, remove := rollingUpdate(ds, nodes, group(dpod("a", "a", "old", 0, true), dpod("b", "b", "old", 0, true), dpod("c", "c", "old", 0, true)), "new", now)
	if !slices.Equal(create, []string{"a"}) || len(remove) != 0 {
		t.Errorf("first step: create on %v remove %v, want a new pod on a only", create, remove)
	}
	// The surge pod on a is not available yet: nothing more.
	pods := group(dpod("a", "a", "old", 0, true), dpod("a2", "a", "new", time.Second, false), dpod("b", "b", "old", 0, true), dpod("c", "c", "old", 0, true))
	if create, remove := rollingUpdate(ds, nodes, pods, "new", now); len(create) != 0 || len(remove) != 0 {
		t.Errorf("while surging: create on %v remove %v, want nothing", create, remove)
	}
	// Once it is, the old pod on a goes and b surges.
	pods = group(dpod("a", "a", "old", 0, true), dpod("a2", "a", "new", time.Second, true), dpod("b", "b", "old", 0, true), dpod("c", "c", "old", 0, true))
	if create, remove := rollingUpdate(ds, nodes, pods, "new", now); !slices.Equal(create, []string{"b"}) || !slices.Equal(remove, []string{"a"}) {
		t.Errorf("after a: create on %v remove %v, want b and a", create, remove)
	}
}

func TestBudgets(t *testing.T) {
	pct := func(s string) *intstr.IntOrString { v := intstr.FromString(s); return &v }
	num := func(n int32) *intstr.IntOrString { v := intstr.FromInt32(n); return &v }
	for _, tc := range []struct {
		surge, unavailable *intstr.IntOrString
		desired            int
		wantS, wantU       int
	}{
		{nil, num(1), 5, 0, 1},
		{nil, pct("30%"), 5, 0, 2}, // rounds up
		{pct("10%"), num(0), 5, 1, 0},
		{num(0), num(0), 5, 0, 1}, // both zero: 1 unavailable
		{num(0), num(0), 0, 0, 0},
	} {
		ds := daemon()
		ds.Spec.UpdateStrategy.RollingUpdate = &appsv1.RollingUpdateDaemonSet{MaxSurge: tc.surge, MaxUnavailable: tc.unavailable}
		s, u := budgets(ds, tc.desired)
		if s != tc.wantS || u != tc.wantU {
			t.Errorf("budgets(surge %v, unavailable %v, desired %d) = %d, %d; want %d, %d", tc.surge, tc.unavailable, tc.desired, s, u, tc.wantS, tc.wantU)
		}
	}
}

func TestComputeStatus(t *testing.T) {
	ds := daemon()
	ds.Spec.Template.Spec.NodeSelector = map[string]string{"daemon": "yes"}
	ds.Spec.MinReadySeconds = 60
	yes := map[string]string{"daemon": "yes"}
	nodes := []*corev1.Node{node("a", yes), node("b", yes), node("c", yes), node("d", yes), node("e", nil)}
	fresh := dpod("c", "c", "new", 0, true)
	fresh.Status.Conditions[0].LastTransitionTime = metav1.NewTime(now.Add(-time.Second)) // ready, not yet available
	byNode := group(
		dpod("a", "a", "new", 0, true),
		dpod("b", "b", "old", 0, true), dpod("b2", "b", "new", time.Second, false), // judged by the oldest
		fresh,
		dpod("e", "e", "new", 0, true), // misscheduled
	)
	got := computeStatus(ds, nodes, byNode, "new", now)
	want := appsv1.DaemonSetStatus{
		ObservedGeneration: 1, DesiredNumberScheduled: 4, CurrentNumberScheduled: 3, NumberMisscheduled: 1,
		NumberReady: 3, NumberAvailable: 2, UpdatedNumberScheduled: 2, NumberUnavailable: 2,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("status\n got %+v\nwant %+v", got, want)
	}
}
