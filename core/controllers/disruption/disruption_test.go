package disruption

import (
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

// newController builds a controller whose listers are filled by hand (the informers are
// never started), for the pure computations.
func newController(t *testing.T, objs ...any) *Controller {
	t.Helper()
	kube := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(kube, 0)
	c, err := New(kube, factory, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		var err error
		switch o := o.(type) {
		case *appsv1.ReplicaSet:
			err = factory.Apps().V1().ReplicaSets().Informer().GetStore().Add(o)
		case *appsv1.Deployment:
			err = factory.Apps().V1().Deployments().Informer().GetStore().Add(o)
		case *appsv1.StatefulSet:
			err = factory.Apps().V1().StatefulSets().Informer().GetStore().Add(o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func ownedPod(name, kind, owner string, uid types.UID) *corev1.Pod {
	yes := true
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", OwnerReferences: []metav1.OwnerReference{
		{Kind: kind, Name: owner, UID: uid, Controller: &yes},
	}}}
}

func TestExpectations(t *testing.T) {
	five, yes := int32(5), true
	deploy := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", UID: "d1"}, Spec: appsv1.DeploymentSpec{Replicas: &five}}
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "ns", UID: "rs1",
		OwnerReferences: []metav1.OwnerReference{{Kind: "Deployment", Name: "web", UID: "d1", Controller: &yes}}}, Spec: appsv1.ReplicaSetSpec{Replicas: &five}}
	three := int32(3)
	sts := &appsv1.StatefulSet{ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", UID: "s1"}, Spec: appsv1.StatefulSetSpec{Replicas: &three}}
	c := newController(t, deploy, rs, sts)

	webPods := []*corev1.Pod{ownedPod("a", "ReplicaSet", "web-1", "rs1"), ownedPod("b", "ReplicaSet", "web-1", "rs1")}
	dbPods := []*corev1.Pod{ownedPod("db-0", "StatefulSet", "db", "s1")}
	pct := func(s string) *intstr.IntOrString { v := intstr.FromString(s); return &v }
	num := func(n int32) *intstr.IntOrString { v := intstr.FromInt32(n); return &v }
	tests := []struct {
		name                      string
		spec                      policyv1.PodDisruptionBudgetSpec
		pods                      []*corev1.Pod
		wantExpected, wantDesired int32
		wantErr                   string
	}{
		{"integer minAvailable counts the pods", policyv1.PodDisruptionBudgetSpec{MinAvailable: num(1)}, webPods, 2, 1, ""},
		{"maxUnavailable of the deployment's scale", policyv1.PodDisruptionBudgetSpec{MaxUnavailable: num(1)}, webPods, 5, 4, ""},
		{"percent minAvailable rounds up", policyv1.PodDisruptionBudgetSpec{MinAvailable: pct("50%")}, webPods, 5, 3, ""},
		{"percent maxUnavailable rounds up", policyv1.PodDisruptionBudgetSpec{MaxUnavailable: pct("30%")}, webPods, 5, 3, ""},
		{"statefulset scale", policyv1.PodDisruptionBudgetSpec{MaxUnavailable: num(1)}, dbPods, 3, 2, ""},
		{"pod without a controller", policyv1.PodDisruptionBudgetSpec{MaxUnavailable: num(1)},
			[]*corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "stray", Namespace: "ns"}}}, 0, 0, `found no controllers for pod "stray"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pdb := &policyv1.PodDisruptionBudget{Spec: tc.spec}
			expected, desired, err := c.expectations(pdb, tc.pods)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || expected != tc.wantExpected || desired != tc.wantDesired {
				t.Errorf("expected %d, desired %d, err %v; want %d, %d", expected, desired, err, tc.wantExpected, tc.wantDesired)
			}
		})
	}
}

func TestDisruptedPods(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	at := func(ago time.Duration) metav1.Time { return metav1.NewTime(now.Add(-ago)) }
	deleting := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "going", DeletionTimestamp: &metav1.Time{Time: now}}}
	pods := []*corev1.Pod{{ObjectMeta: metav1.ObjectMeta{Name: "fresh"}}, {ObjectMeta: metav1.ObjectMeta{Name: "stale"}}, deleting}
	pdb := &policyv1.PodDisruptionBudget{Status: policyv1.PodDisruptionBudgetStatus{DisruptedPods: map[string]metav1.Time{
		"fresh": at(30 * time.Second), "stale": at(3 * time.Minute), "going": at(time.Second), "gone": at(time.Second),
	}}}
	got, recheck := disruptedPods(pdb, pods, now)
	if _, ok := got["fresh"]; len(got) != 1 || !ok {
		t.Errorf("kept %v, want only the fresh eviction (stale timed out, going is being deleted, gone is gone)", got)
	}
	if recheck != 90*time.Second {
		t.Errorf("recheck after %v, want 90s (when the fresh eviction times out)", recheck)
	}
}
