package nodelifecycle

import (
	"context"
	"log/slog"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
)

var start = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// harness runs the controller's Reconcile by hand against client-go's fake clientset (which
// has no admission, validation or resourceVersion checks), syncing the informers' stores from
// the fake after every step so the listers see what the controller wrote.
type harness struct {
	t       *testing.T
	kube    *fake.Clientset
	c       *Controller
	now     time.Time
	factory informers.SharedInformerFactory
}

func newHarness(t *testing.T, objs ...runtime.Object) *harness {
	h := &harness{t: t, kube: fake.NewClientset(objs...), now: start}
	h.factory = informers.NewSharedInformerFactory(h.kube, 0)
	c, err := New(h.kube, h.factory, Options{Now: func() time.Time { return h.now }, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		t.Fatal("caches did not sync")
	}
	return h
}

// reconcile runs one pass once the informers have caught up with the fake.
func (h *harness) reconcile(node string) time.Duration {
	h.t.Helper()
	h.settle()
	res, err := h.c.Reconcile(context.Background(), node)
	if err != nil {
		h.t.Fatalf("Reconcile(%s): %v", node, err)
	}
	h.settle()
	return res.RequeueAfter
}

// settle waits until every object of the fake is in the informers at its latest version.
func (h *harness) settle() {
	h.t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		nodes, _ := h.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		pods, _ := h.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		ok := true
		for i := range nodes.Items {
			n, err := h.c.nodes.Get(nodes.Items[i].Name)
			// The fake sets no resourceVersions: compare the objects.
			ok = ok && err == nil && apiequality.Semantic.DeepEqual(n, &nodes.Items[i])
		}
		ok = ok && len(h.c.pods.List()) == len(pods.Items)
		for i := range pods.Items {
			p, exists, err := h.c.pods.Get(&pods.Items[i])
			ok = ok && err == nil && exists && apiequality.Semantic.DeepEqual(p, &pods.Items[i])
		}
		if ok {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.t.Fatal("informers did not catch up with the fake clientset")
}

func node(name string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, CreationTimestamp: metav1.NewTime(start.Add(-time.Hour))},
		Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			LastHeartbeatTime: metav1.NewTime(start.Add(-time.Hour)),
		}}},
	}
}

func lease(name string, renewed time.Time) *coordinationv1.Lease {
	t := metav1.NewMicroTime(renewed)
	return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: leaseNamespace}, Spec: coordinationv1.LeaseSpec{RenewTime: &t}}
}

func pod(name, node string, tolerationSeconds *int64) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: "uid-" + "name"},
		Spec:       corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{
			{Type: corev1.PodReady, Status: corev1.ConditionTrue},
		}},
	}
	if tolerationSeconds != nil {
		p.Spec.Tolerations = []corev1.Toleration{{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: tolerationSeconds}}
	}
	return p
}

func secs(n int64) *int64 { return &n }

func TestHealthyNodeIsLeftAlone(t *testing.T) {
	h := newHarness(t, node("n1"), lease("n1", start.Add(-10*time.Second)), pod("p", "n1", nil))
	wait := h.reconcile("n1")
	if wait <= 0 || wait > 31*time.Second {
		t.Errorf("requeue after %v, want about the 30 s left of the grace period", wait)
	}
	n, _ := h.kube.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
	if len(n.Spec.Taints) != 0 || n.Status.Conditions[0].Status != corev1.ConditionTrue {
		t.Errorf("healthy node changed: taints %v, conditions %v", n.Spec.Taints, n.Status.Conditions)
	}
	if _, err := h.kube.CoreV1().Pods("default").Get(context.Background(), "p", metav1.GetOptions{}); err != nil {
		t.Errorf("pod on a healthy node: %v", err)
	}
}

func TestSilentNodeIsMarkedTaintedAndEvicted(t *testing.T) {
	h := newHarness(t, node("n1"), lease("n1", start.Add(-41*time.Second)),
		pod("intolerant", "n1", nil), pod("patient", "n1", secs(300)), pod("forever", "n1", nil))
	// "forever" tolerates the taint with no limit.
	forever, _ := h.kube.CoreV1().Pods("default").Get(context.Background(), "forever", metav1.GetOptions{})
	forever.Spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}}
	if _, err := h.kube.CoreV1().Pods("default").Update(context.Background(), forever, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	h.reconcile("n1")
	ctx := context.Background()
	n, _ := h.kube.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if c := condition(n, corev1.NodeReady); c.Status != corev1.ConditionUnknown || c.Reason != "NodeStatusUnknown" {
		t.Errorf("Ready = %s (%s), want Unknown (NodeStatusUnknown)", c.Status, c.Reason)
	}
	want := map[corev1.TaintEffect]bool{corev1.TaintEffectNoSchedule: false, corev1.TaintEffectNoExecute: false}
	for _, taint := range n.Spec.Taints {
		if taint.Key == corev1.TaintNodeUnreachable {
			want[taint.Effect] = true
		}
	}
	if !want[corev1.TaintEffectNoSchedule] || !want[corev1.TaintEffectNoExecute] {
		t.Errorf("taints %v, want unreachable NoSchedule and NoExecute", n.Spec.Taints)
	}
	// The NoExecute taint came in the same pass; the next pass evicts.
	wait := h.reconcile("n1")
	if _, err := h.kube.CoreV1().Pods("default").Get(ctx, "intolerant", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("pod without a toleration: err %v, want it evicted", err)
	}
	patient, err := h.kube.CoreV1().Pods("default").Get(ctx, "patient", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("pod tolerating 300 s was evicted at once: %v", err)
	}
	if patient.Status.Conditions[0].Status != corev1.ConditionFalse {
		t.Errorf("pod on an unreachable node is still Ready")
	}
	if wait <= 299*time.Second || wait > 300*time.Second {
		t.Errorf("requeue after %v, want the 300 s of the toleration", wait)
	}

	h.now = h.now.Add(301 * time.Second)
	h.reconcile("n1")
	if _, err := h.kube.CoreV1().Pods("default").Get(ctx, "patient", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("pod after its 300 s toleration: err %v, want it evicted", err)
	}
	if _, err := h.kube.CoreV1().Pods("default").Get(ctx, "forever", metav1.GetOptions{}); err != nil {
		t.Errorf("pod tolerating every taint forever: %v", err)
	}

	// The agent comes back: Ready=True again removes the taints.
	n, _ = h.kube.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.NewTime(h.now)}}
	if _, err := h.kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.reconcile("n1")
	n, _ = h.kube.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	if len(n.Spec.Taints) != 0 {
		t.Errorf("taints %v after the node recovered, want none", n.Spec.Taints)
	}
}

func TestNotReadyNodeGetsNotReadyTaint(t *testing.T) {
	n := node("n1")
	n.Status.Conditions[0].Status = corev1.ConditionFalse
	h := newHarness(t, n, lease("n1", start))
	h.reconcile("n1")
	got, _ := h.kube.CoreV1().Nodes().Get(context.Background(), "n1", metav1.GetOptions{})
	if len(got.Spec.Taints) != 2 || got.Spec.Taints[0].Key != corev1.TaintNodeNotReady || got.Spec.Taints[1].Key != corev1.TaintNodeNotReady {
		t.Errorf("taints %v, want not-ready NoSchedule and NoExecute", got.Spec.Taints)
	}
}

func TestEvictionDue(t *testing.T) {
	added := metav1.NewTime(start)
	taints := []corev1.Taint{{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoExecute, TimeAdded: &added}}
	tests := []struct {
		name      string
		pod       *corev1.Pod
		now       time.Time
		wantWait  time.Duration
		wantEvict bool
	}{
		{"not tolerated", pod("p", "n", nil), start, 0, true},
		{"tolerated for 60 s, 20 s in", pod("p", "n", secs(60)), start.Add(20 * time.Second), 40 * time.Second, false},
		{"tolerated for 60 s, 60 s in", pod("p", "n", secs(60)), start.Add(60 * time.Second), 0, true},
		{"negative seconds evict at once", pod("p", "n", secs(-5)), start, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wait, evict := evictionDue(tc.pod, taints, tc.now)
			if wait != tc.wantWait || evict != tc.wantEvict {
				t.Errorf("evictionDue = %v, %v; want %v, %v", wait, evict, tc.wantWait, tc.wantEvict)
			}
		})
	}
}
