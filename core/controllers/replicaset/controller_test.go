package replicaset

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clienttesting "k8s.io/client-go/testing"
)

func TestCreatesUpToReplicas(t *testing.T) {
	rs := newRS("web", 3)
	h := newHarness(t, rs)

	if _, err := h.reconcile(rsKey("web")); err != nil {
		t.Fatal(err)
	}
	pods := h.pods("ns")
	if len(pods) != 3 {
		t.Fatalf("got %d pods, want 3", len(pods))
	}
	for _, p := range pods {
		if p.GenerateName != "web-" || !strings.HasPrefix(p.Name, "web-") {
			t.Errorf("pod %s: generateName %q, want web-", p.Name, p.GenerateName)
		}
		if p.Labels["app"] != "web" || p.Labels["tier"] != "web" || p.Annotations["note"] != "from-template" {
			t.Errorf("pod %s: labels %v annotations %v, want the template's", p.Name, p.Labels, p.Annotations)
		}
		if len(p.Spec.Containers) != 1 || p.Spec.Containers[0].Image != "busybox" {
			t.Errorf("pod %s: spec %+v, want the template's", p.Name, p.Spec)
		}
		ref := metav1.GetControllerOf(&p)
		if ref == nil || ref.UID != rs.UID || ref.Kind != "ReplicaSet" || ref.APIVersion != "apps/v1" ||
			ref.BlockOwnerDeletion == nil || !*ref.BlockOwnerDeletion {
			t.Errorf("pod %s: controller reference %+v, want the ReplicaSet's, blocking deletion", p.Name, ref)
		}
	}
	events := h.events()
	if n := countPrefix(events, "Normal SuccessfulCreate Created pod: web-"); n != 3 {
		t.Errorf("events %q: want 3 SuccessfulCreate", events)
	}

	// Once the informer has seen them, the next pass creates nothing and counts them.
	h.observe()
	if _, err := h.reconcile(rsKey("web")); err != nil {
		t.Fatal(err)
	}
	if n := h.count("create", "pods", ""); n != 3 {
		t.Errorf("%d creates, want 3", n)
	}
	if got := h.replicaSet("ns", "web").Status; got.Replicas != 3 || got.FullyLabeledReplicas != 3 || got.ObservedGeneration != 1 {
		t.Errorf("status %+v, want 3 replicas, 3 fully labeled, observedGeneration 1", got)
	}
}

func TestBurstReplicasCapsOnePass(t *testing.T) {
	h := newHarness(t, newRS("web", 5))
	h.c.burst = 2
	if _, err := h.reconcile(rsKey("web")); err != nil {
		t.Fatal(err)
	}
	if n := len(h.pods("ns")); n != 2 {
		t.Fatalf("first pass created %d pods, want BurstReplicas=2", n)
	}
	h.observe()
	if _, err := h.reconcile(rsKey("web")); err != nil {
		t.Fatal(err)
	}
	if n := len(h.pods("ns")); n != 4 {
		t.Fatalf("second pass left %d pods, want 4", n)
	}
}

func TestExpectationsPreventDoubleCreate(t *testing.T) {
	h := newHarness(t, newRS("web", 3))
	if _, err := h.reconcile(rsKey("web")); err != nil {
		t.Fatal(err)
	}
	// The informer has not reported the pods yet: a second pass must not create them again.
	if _, err := h.reconcile(rsKey("web")); err != nil {
		t.Fatal(err)
	}
	if n := h.count("create", "pods", ""); n != 3 {
		t.Fatalf("%d creates before the informer caught up, want 3", n)
	}
	if h.c.expectations.satisfied(rsKey("web")) {
		t.Fatal("expectations satisfied before any creation was observed")
	}
	h.observe()
	if !h.c.expectations.satisfied(rsKey("web")) {
		t.Fatal("expectations still unsatisfied after the informer saw the pods")
	}
	if _, err := h.reconcile(rsKey("web")); err != nil {
		t.Fatal(err)
	}
	if n := h.count("create", "pods", ""); n != 3 {
		t.Fatalf("%d creates, want 3", n)
	}
}

func TestExpectationsExpire(t *testing.T) {
	e := newExpectations()
	now := time.Now()
	e.now = func() time.Time { return now }
	key := rsKey("web")
	e.expectCreations(key, 2)
	e.creationsObserved(key, 1)
	if e.satisfied(key) {
		t.Fatal("satisfied with one creation outstanding")
	}
	now = now.Add(expectationsTimeout + time.Second)
	if !e.satisfied(key) {
		t.Fatal("still waiting after the timeout")
	}

	e.expectDeletions(key, []string{"ns/a", "ns/b"})
	e.deletionObserved(key, "ns/a")
	e.deletionObserved(key, "ns/a") // counted once only
	e.deletionObserved(key, "ns/other")
	if e.satisfied(key) {
		t.Fatal("satisfied with ns/b's deletion outstanding")
	}
	e.deletionObserved(key, "ns/b")
	if !e.satisfied(key) {
		t.Fatal("unsatisfied after both deletions")
	}
}

func TestDeletesSurplus(t *testing.T) {
	rs := newRS("web", 1)
	lbls := map[string]string{"app": "web", "tier": "web"}
	old := metav1.NewTime(time.Now().Add(-time.Hour))
	ready := newPod("ready", lbls, rs, KindReplicaSet)
	ready.Spec.NodeName = "n1"
	ready.CreationTimestamp = old
	ready.Status = corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: old}}}
	pending := newPod("pending", lbls, rs, KindReplicaSet)
	pending.Status.Phase = corev1.PodPending
	notReady := newPod("not-ready", lbls, rs, KindReplicaSet)
	notReady.Spec.NodeName = "n1"
	notReady.Status.Phase = corev1.PodRunning
	h := newHarness(t, rs, ready, pending, notReady)

	if _, err := h.reconcile(rsKey("web")); err != nil {
		t.Fatal(err)
	}
	pods := h.pods("ns")
	if len(pods) != 1 || pods[0].Name != "ready" {
		t.Fatalf("left %v, want only the ready pod", names(pods))
	}
	events := h.events()
	for _, want := range []string{"Normal SuccessfulDelete Deleted pod: pending", "Normal SuccessfulDelete Deleted pod: not-ready"} {
		if !slices.Contains(events, want) {
			t.Errorf("events %q lack %q", events, want)
		}
	}
	if h.c.expectations.satisfied(rsKey("web")) {
		t.Error("expectations satisfied before the deletions were observed")
	}
	h.observe()
	if !h.c.expectations.satisfied(rsKey("web")) {
		t.Error("expectations unsatisfied after the deletions were observed")
	}
}

func TestFailedDelete(t *testing.T) {
	rs := newRS("web", 0)
	h := newHarness(t, rs, newPod("a", map[string]string{"app": "web"}, rs, KindReplicaSet))
	h.kube.PrependReactor("delete", "pods", func(clienttesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewInternalError(errors.New("etcd is sulking"))
	})
	if _, err := h.reconcile(rsKey("web")); err == nil {
		t.Fatal("no error from a failed delete")
	}
	events := h.events()
	if countPrefix(events, "Warning FailedDelete Error deleting: ") != 1 {
		t.Errorf("events %q: want one FailedDelete", events)
	}
	cond := condition(h.replicaSet("ns", "web").Status, appsv1.ReplicaSetReplicaFailure)
	if cond == nil || cond.Reason != "FailedDelete" || !strings.Contains(cond.Message, "etcd is sulking") {
		t.Errorf("ReplicaFailure condition %+v, want reason FailedDelete with the error", cond)
	}
	// A failed delete is not waited for.
	if !h.c.expectations.satisfied(rsKey("web")) {
		t.Error("expectations wait for a deletion that failed")
	}
}

func TestAdoptsAndReleases(t *testing.T) {
	rs := newRS("web", 2)
	other := newRS("other", 0)
	orphan := newPod("orphan", map[string]string{"app": "web"}, nil, "")
	strayed := newPod("strayed", map[string]string{"app": "elsewhere"}, rs, KindReplicaSet)
	foreign := newPod("foreign", map[string]string{"app": "web"}, other, KindReplicaSet)
	h := newHarness(t, rs, other, orphan, strayed, foreign)

	if _, err := h.reconcile(rsKey("web")); err != nil {
		t.Fatal(err)
	}
	get := func(name string) *corev1.Pod {
		p, err := h.kube.CoreV1().Pods("ns").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if ref := metav1.GetControllerOf(get("orphan")); ref == nil || ref.UID != rs.UID {
		t.Errorf("orphan's controller %+v, want the ReplicaSet", ref)
	}
	if refs := get("strayed").OwnerReferences; len(refs) != 0 {
		t.Errorf("strayed pod keeps ownerReferences %+v, want them released", refs)
	}
	if ref := metav1.GetControllerOf(get("foreign")); ref == nil || ref.UID != other.UID {
		t.Errorf("another owner's pod was taken: controller %+v", ref)
	}
	// The adopted orphan counts: one pod short of two, not two.
	if n := h.count("create", "pods", ""); n != 1 {
		t.Errorf("%d creates, want 1 besides the adopted orphan", n)
	}
}

func TestNoAdoptionByADeletedOwner(t *testing.T) {
	rs := newRS("web", 1)
	h := newHarness(t, rs, newPod("orphan", map[string]string{"app": "web"}, nil, ""))
	// The cache still has the ReplicaSet; the server has a namesake.
	replaced := newRS("web", 1)
	replaced.UID = "uid-new"
	if err := h.kube.Tracker().Update(schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "replicasets"}, replaced, "ns"); err != nil {
		t.Fatal(err)
	}
	_, err := h.reconcile(rsKey("web"))
	if err == nil || !strings.Contains(err.Error(), "is gone") {
		t.Fatalf("reconcile: %v, want the adoption refused", err)
	}
	if n := h.count("patch", "pods", ""); n != 0 {
		t.Errorf("%d patches, want none", n)
	}
}

func TestStatus(t *testing.T) {
	rs := newRS("web", 4)
	rs.Generation = 7
	rs.Spec.MinReadySeconds = 10
	full := map[string]string{"app": "web", "tier": "web"}
	readySince := func(p *corev1.Pod, ago time.Duration) *corev1.Pod {
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(time.Now().Add(-ago))}}
		return p
	}
	available := readySince(newPod("available", full, rs, KindReplicaSet), time.Minute)
	fresh := readySince(newPod("fresh", full, rs, KindReplicaSet), 3*time.Second)
	starting := newPod("starting", full, rs, KindReplicaSet)
	partial := newPod("partial", map[string]string{"app": "web"}, rs, KindReplicaSet) // lacks tier
	done := newPod("done", full, rs, KindReplicaSet)
	done.Status.Phase = corev1.PodSucceeded
	h := newHarness(t, rs, available, fresh, starting, partial, done)

	res, err := h.reconcile(rsKey("web"))
	if err != nil {
		t.Fatal(err)
	}
	got := h.replicaSet("ns", "web").Status
	want := appsv1.ReplicaSetStatus{Replicas: 4, FullyLabeledReplicas: 3, ReadyReplicas: 2, AvailableReplicas: 1, ObservedGeneration: 7}
	if got.Replicas != want.Replicas || got.FullyLabeledReplicas != want.FullyLabeledReplicas || got.ReadyReplicas != want.ReadyReplicas ||
		got.AvailableReplicas != want.AvailableReplicas || got.ObservedGeneration != want.ObservedGeneration || len(got.Conditions) != 0 {
		t.Errorf("status %+v, want %+v", got, want)
	}
	// "fresh" becomes available 10s after it became ready, 3s ago.
	if res.RequeueAfter <= 6*time.Second || res.RequeueAfter > 8*time.Second {
		t.Errorf("RequeueAfter %v, want about the 7s until the fresh pod is available", res.RequeueAfter)
	}
	if n := h.count("create", "pods", "") + h.count("delete", "pods", ""); n != 0 {
		t.Errorf("%d creates and deletes, want none", n)
	}

	// Unchanged counts are not written again.
	h.observe()
	if _, err := h.reconcile(rsKey("web")); err != nil {
		t.Fatal(err)
	}
	if n := h.count("update", "replicasets", "status"); n != 1 {
		t.Errorf("%d status updates, want 1", n)
	}
}

func TestReplicaFailureOnCreateError(t *testing.T) {
	h := newHarness(t, newRS("web", 3))
	failing := true
	h.kube.PrependReactor("create", "pods", func(clienttesting.Action) (bool, runtime.Object, error) {
		if failing {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "", errors.New("exceeded quota"))
		}
		return false, nil, nil
	})

	if _, err := h.reconcile(rsKey("web")); err == nil {
		t.Fatal("no error from failing creates")
	}
	// Slow start: the first batch of one failed, so the other two were never tried.
	if n := h.count("create", "pods", ""); n != 1 {
		t.Errorf("%d create attempts, want 1", n)
	}
	if !h.c.expectations.satisfied(rsKey("web")) {
		t.Error("expectations wait for creates that were skipped")
	}
	events := h.events()
	if len(events) != 1 || !strings.HasPrefix(events[0], "Warning FailedCreate Error creating: ") || !strings.Contains(events[0], "exceeded quota") {
		t.Errorf("events %q, want one FailedCreate with the error", events)
	}
	cond := condition(h.replicaSet("ns", "web").Status, appsv1.ReplicaSetReplicaFailure)
	if cond == nil || cond.Status != corev1.ConditionTrue || cond.Reason != "FailedCreate" || !strings.Contains(cond.Message, "exceeded quota") {
		t.Fatalf("ReplicaFailure condition %+v, want reason FailedCreate with the error", cond)
	}

	// Once creates succeed, the condition goes.
	failing = false
	h.observe()
	if _, err := h.reconcile(rsKey("web")); err != nil {
		t.Fatal(err)
	}
	if n := len(h.pods("ns")); n != 3 {
		t.Errorf("%d pods, want 3", n)
	}
	if cond := condition(h.replicaSet("ns", "web").Status, appsv1.ReplicaSetReplicaFailure); cond != nil {
		t.Errorf("ReplicaFailure condition %+v remains after success", cond)
	}
}

func TestReplicationController(t *testing.T) {
	rc := newRC("legacy", 2)
	h := newHarness(t, rc)
	key := Key{Kind: KindReplicationController, Namespace: "ns", Name: "legacy"}
	if _, err := h.reconcile(key); err != nil {
		t.Fatal(err)
	}
	pods := h.pods("ns")
	if len(pods) != 2 {
		t.Fatalf("%d pods, want 2", len(pods))
	}
	for _, p := range pods {
		ref := metav1.GetControllerOf(&p)
		if ref == nil || ref.Kind != "ReplicationController" || ref.APIVersion != "v1" || ref.UID != rc.UID {
			t.Errorf("pod %s: controller %+v, want the ReplicationController", p.Name, ref)
		}
	}
	h.observe()
	if q := h.queued(); !slices.Contains(q, key) {
		t.Errorf("queued %v after the pods were seen, want %v", q, key)
	}
	if _, err := h.reconcile(key); err != nil {
		t.Fatal(err)
	}
	got, err := h.kube.CoreV1().ReplicationControllers("ns").Get(context.Background(), "legacy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Status.Replicas != 2 || got.Status.FullyLabeledReplicas != 2 || got.Status.ObservedGeneration != 1 {
		t.Errorf("status %+v, want 2 replicas observed at generation 1", got.Status)
	}
}

func TestPodHandlersEnqueueOwners(t *testing.T) {
	rs := newRS("web", 1)
	other := newRS("other", 1)
	rc := newRC("legacy", 1)
	rc.Spec.Selector = map[string]string{"app": "web"} // selects the same pods as "web"
	h := newHarness(t, rs, other, rc)
	rcKey := Key{Kind: KindReplicationController, Namespace: "ns", Name: "legacy"}
	h.queued()

	owned := newPod("p", map[string]string{"app": "web"}, rs, KindReplicaSet)
	owned.ResourceVersion = "1"
	h.c.addPod(owned)
	if q := h.queued(); !slices.Equal(q, []Key{rsKey("web")}) {
		t.Errorf("owned pod added: queued %v, want the owner", q)
	}

	orphan := newPod("o", map[string]string{"app": "web"}, nil, "")
	h.c.addPod(orphan)
	if q := h.queued(); len(q) != 2 || !slices.Contains(q, rsKey("web")) || !slices.Contains(q, rcKey) {
		t.Errorf("orphan added: queued %v, want both selecting owners", q)
	}

	moved := owned.DeepCopy()
	moved.ResourceVersion = "2"
	moved.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(other, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))}
	h.c.updatePod(owned, moved)
	if q := h.queued(); len(q) != 2 || !slices.Contains(q, rsKey("web")) || !slices.Contains(q, rsKey("other")) {
		t.Errorf("controller changed: queued %v, want old and new owners", q)
	}

	h.c.updatePod(moved, moved.DeepCopy())
	if q := h.queued(); len(q) != 0 {
		t.Errorf("resync (same resourceVersion): queued %v, want nothing", q)
	}

	h.c.deletePod(moved)
	if q := h.queued(); !slices.Equal(q, []Key{rsKey("other")}) {
		t.Errorf("pod deleted: queued %v, want its owner", q)
	}

	// A reference to a namesake replaced since resolves to nothing.
	stale := newPod("s", map[string]string{"app": "web"}, rs, KindReplicaSet)
	stale.OwnerReferences[0].UID = "uid-gone"
	h.c.addPod(stale)
	if q := h.queued(); len(q) != 0 {
		t.Errorf("stale reference: queued %v, want nothing", q)
	}
}

func names(pods []corev1.Pod) []string {
	var out []string
	for _, p := range pods {
		out = append(out, p.Name)
	}
	return out
}
