package statefulset

import (
	"context"
	"slices"
	"sort"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func sortedNames(h *harness) []string {
	names := keys(h.podNames())
	sort.Strings(names)
	return names
}

func TestOrderedReadyWaitsForReadiness(t *testing.T) {
	h := newHarness(t, webSet(3, appsv1.OrderedReadyPodManagement))
	h.reconcile("web")
	h.reconcile("web")
	if got := sortedNames(h); !slices.Equal(got, []string{"web-0"}) {
		t.Fatalf("pods before web-0 is ready = %v, want [web-0]", got)
	}
	claims, _ := h.kube.CoreV1().PersistentVolumeClaims("default").List(context.Background(), metav1.ListOptions{})
	if len(claims.Items) != 1 || claims.Items[0].Name != "www-web-0" {
		t.Fatalf("claims = %+v, want www-web-0 only", claims.Items)
	}
	if claims.Items[0].Labels["app"] != "web" {
		t.Errorf("claim labels %v, want the selector's app=web", claims.Items[0].Labels)
	}

	h.ready("web-0")
	h.reconcile("web")
	if got := sortedNames(h); !slices.Equal(got, []string{"web-0", "web-1"}) {
		t.Fatalf("pods after web-0 is ready = %v, want [web-0 web-1]", got)
	}
	h.ready("web-1")
	h.reconcile("web")
	h.ready("web-2")
	h.reconcile("web")

	pod := h.podNames()["web-2"]
	if pod == nil {
		t.Fatal("web-2 was not created")
	}
	if pod.Spec.Hostname != "web-2" || pod.Spec.Subdomain != "nginx" {
		t.Errorf("hostname %q subdomain %q, want web-2 and nginx", pod.Spec.Hostname, pod.Spec.Subdomain)
	}
	if pod.Labels[podNameLabel] != "web-2" || pod.Labels[podIndexLabel] != "2" || pod.Labels["app"] != "web" {
		t.Errorf("labels %v", pod.Labels)
	}
	if len(pod.Spec.Volumes) != 1 || pod.Spec.Volumes[0].PersistentVolumeClaim == nil || pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName != "www-web-2" {
		t.Errorf("volumes %+v, want www from claim www-web-2", pod.Spec.Volumes)
	}
	if ref := metav1.GetControllerOf(pod); ref == nil || ref.Kind != "StatefulSet" || ref.Name != "web" {
		t.Errorf("controller ref %+v", ref)
	}

	s := h.set("web")
	if s.Status.Replicas != 3 || s.Status.ReadyReplicas != 3 || s.Status.AvailableReplicas != 3 ||
		s.Status.CurrentReplicas != 3 || s.Status.UpdatedReplicas != 3 || s.Status.ObservedGeneration != 1 {
		t.Errorf("status %+v", s.Status)
	}
	if s.Status.CurrentRevision == "" || s.Status.CurrentRevision != s.Status.UpdateRevision || pod.Labels[revisionLabel] != s.Status.UpdateRevision {
		t.Errorf("revisions: current %q update %q pod %q", s.Status.CurrentRevision, s.Status.UpdateRevision, pod.Labels[revisionLabel])
	}
	want := map[string]bool{"SuccessfulCreate": false}
	for len(h.recorder.Events) > 0 {
		e := <-h.recorder.Events
		if e == "Normal SuccessfulCreate create Pod web-0 in StatefulSet web successful" ||
			e == "Normal SuccessfulCreate create Claim www-web-0 Pod web-0 in StatefulSet web success" {
			want["SuccessfulCreate"] = true
		}
	}
	if !want["SuccessfulCreate"] {
		t.Error("no SuccessfulCreate event worded as Kubernetes words it")
	}
}

func TestParallelDoesNotWait(t *testing.T) {
	h := newHarness(t, webSet(3, appsv1.ParallelPodManagement))
	h.reconcile("web")
	if got := sortedNames(h); !slices.Equal(got, []string{"web-0", "web-1", "web-2"}) {
		t.Fatalf("pods = %v, want all three at once", got)
	}
}

func TestReplacesDeletedAndFailedPods(t *testing.T) {
	h := newHarness(t, webSet(2, appsv1.OrderedReadyPodManagement))
	h.rollOut("web", 2)
	ctx := context.Background()
	if err := h.kube.CoreV1().Pods("default").Delete(ctx, "web-0", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.reconcile("web")
	if h.podNames()["web-0"] == nil {
		t.Fatal("deleted web-0 was not recreated")
	}
	p := h.podNames()["web-1"]
	p.Status.Phase = "Failed"
	if _, err := h.kube.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.ready("web-0")
	h.reconcile("web")
	if h.podNames()["web-1"] != nil {
		t.Fatal("failed web-1 was not deleted")
	}
	h.reconcile("web")
	if p := h.podNames()["web-1"]; p == nil || p.Status.Phase != "" {
		t.Fatalf("web-1 was not replaced by a fresh pod: %+v", p)
	}
}

func TestScaleDownFromTheTop(t *testing.T) {
	h := newHarness(t, webSet(3, appsv1.OrderedReadyPodManagement))
	h.rollOut("web", 3)
	s := h.set("web")
	one := int32(1)
	s.Spec.Replicas = &one
	h.updateSet(s)

	h.reconcile("web")
	if got := sortedNames(h); !slices.Equal(got, []string{"web-0", "web-1"}) {
		t.Fatalf("after one pass pods = %v, want web-2 deleted first", got)
	}
	h.reconcile("web")
	if got := sortedNames(h); !slices.Equal(got, []string{"web-0"}) {
		t.Fatalf("after two passes pods = %v, want [web-0]", got)
	}
	h.reconcile("web") // the deletion's event brings another pass
	claims, _ := h.kube.CoreV1().PersistentVolumeClaims("default").List(context.Background(), metav1.ListOptions{})
	if len(claims.Items) != 3 {
		t.Errorf("%d claims remain, want 3: whenScaled Retain keeps them", len(claims.Items))
	}
	if s := h.set("web"); s.Status.Replicas != 1 {
		t.Errorf("status.replicas = %d, want 1", s.Status.Replicas)
	}
}

func TestScaleDownWaitsForUnreadyPods(t *testing.T) {
	h := newHarness(t, webSet(3, appsv1.OrderedReadyPodManagement))
	h.rollOut("web", 3)
	ctx := context.Background()
	for _, name := range []string{"web-1", "web-2"} {
		p := h.podNames()[name]
		p.Status.Conditions[0].Status = "False"
		if _, err := h.kube.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s := h.set("web")
	one := int32(1)
	s.Spec.Replicas = &one
	h.updateSet(s)
	h.reconcile("web")
	// web-2 is unready and web-1, lower, is the first unhealthy pod: Kubernetes waits for
	// web-1 rather than delete web-2.
	if got := sortedNames(h); !slices.Equal(got, []string{"web-0", "web-1", "web-2"}) {
		t.Fatalf("pods = %v, want no deletion while web-1 is not ready", got)
	}
}

func TestRollingUpdateWithPartition(t *testing.T) {
	h := newHarness(t, webSet(3, appsv1.OrderedReadyPodManagement))
	h.rollOut("web", 3)
	oldRev := h.set("web").Status.UpdateRevision

	s := h.set("web")
	two := int32(2) // ordinals 2 and up get the new template
	s.Spec.UpdateStrategy.RollingUpdate.Partition = &two
	s.Spec.Template.Spec.Containers[0].Image = "nginx:1.28"
	h.updateSet(s)

	h.reconcile("web")
	if got := sortedNames(h); !slices.Equal(got, []string{"web-0", "web-1"}) {
		t.Fatalf("pods = %v, want web-2 deleted first", got)
	}
	s = h.set("web")
	newRev := s.Status.UpdateRevision
	if newRev == oldRev || s.Status.CurrentRevision != oldRev {
		t.Fatalf("revisions: current %q update %q, had %q", s.Status.CurrentRevision, newRev, oldRev)
	}
	h.reconcile("web")
	p := h.podNames()["web-2"]
	if p == nil || p.Labels[revisionLabel] != newRev || p.Spec.Containers[0].Image != "nginx:1.28" {
		t.Fatalf("web-2 = %+v, want recreated at %s", p, newRev)
	}
	h.ready("web-2")
	h.reconcile("web")
	h.reconcile("web")
	for _, name := range []string{"web-0", "web-1"} {
		p := h.podNames()[name]
		if p == nil || p.Labels[revisionLabel] != oldRev {
			t.Errorf("%s below the partition was touched: %+v", name, p)
		}
	}
	s = h.set("web")
	if s.Status.UpdatedReplicas != 1 || s.Status.CurrentReplicas != 2 || s.Status.CurrentRevision != oldRev {
		t.Errorf("status %+v, want 1 updated, 2 current at the old revision", s.Status)
	}
	revs, _ := h.kube.AppsV1().ControllerRevisions("default").List(context.Background(), metav1.ListOptions{})
	if len(revs.Items) != 2 {
		t.Errorf("%d revisions, want 2", len(revs.Items))
	}

	// Partition 0 finishes the rollout from the top: web-1, then web-0.
	s.Spec.UpdateStrategy.RollingUpdate.Partition = new(int32)
	h.updateSet(s)
	h.reconcile("web")
	if got := sortedNames(h); !slices.Equal(got, []string{"web-0", "web-2"}) {
		t.Fatalf("pods = %v, want web-1 replaced next", got)
	}
	h.rollOut("web", 3)
	s = h.set("web")
	if s.Status.CurrentRevision != newRev || s.Status.UpdatedReplicas != 3 || s.Status.CurrentReplicas != 3 {
		t.Errorf("after the rollout status %+v, want all at %s", s.Status, newRev)
	}
}

func TestOnDeleteLeavesPods(t *testing.T) {
	h := newHarness(t, webSet(2, appsv1.OrderedReadyPodManagement))
	h.rollOut("web", 2)
	s := h.set("web")
	s.Spec.UpdateStrategy = appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}
	s.Spec.Template.Spec.Containers[0].Image = "nginx:1.28"
	h.updateSet(s)
	h.reconcile("web")
	if got := sortedNames(h); !slices.Equal(got, []string{"web-0", "web-1"}) {
		t.Fatalf("OnDelete deleted pods: %v", got)
	}
	if err := h.kube.CoreV1().Pods("default").Delete(context.Background(), "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.reconcile("web")
	if p := h.podNames()["web-1"]; p == nil || p.Spec.Containers[0].Image != "nginx:1.28" {
		t.Fatalf("web-1 recreated as %+v, want the new template", p)
	}
}

func TestRollbackReusesRevision(t *testing.T) {
	h := newHarness(t, webSet(1, appsv1.OrderedReadyPodManagement))
	h.rollOut("web", 1)
	first := h.set("web").Status.UpdateRevision
	s := h.set("web")
	s.Spec.Template.Spec.Containers[0].Image = "nginx:1.28"
	h.updateSet(s)
	h.rollOut("web", 1)
	h.rollOut("web", 1)
	s = h.set("web")
	s.Spec.Template.Spec.Containers[0].Image = "nginx:1.27"
	h.updateSet(s)
	h.reconcile("web")
	if got := h.set("web").Status.UpdateRevision; got != first {
		t.Fatalf("update revision after rollback = %q, want the first one %q", got, first)
	}
	rev, err := h.kube.AppsV1().ControllerRevisions("default").Get(context.Background(), first, metav1.GetOptions{})
	if err != nil || rev.Revision != 3 {
		t.Fatalf("rolled-back revision: %v, number %d, want 3", err, rev.Revision)
	}
}
