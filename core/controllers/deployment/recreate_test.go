package deployment

import (
	"maps"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestRecreateOrdering: old pods go entirely before the new ReplicaSet is created.
func TestRecreateOrdering(t *testing.T) {
	d := newDeployment("web", 3, "v2")
	d.Spec.Strategy = appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}
	oldName, newName := newRS(d, "v1", 1, 0, 0).Name, newRS(d, "v2", 2, 1, 0).Name

	runningPod := func(rs *appsv1.ReplicaSet, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: rs.Name + "-x", Namespace: "ns", Labels: rs.Spec.Template.Labels,
				OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(rs, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))}},
			Status: corev1.PodStatus{Phase: phase},
		}
	}
	stopped := func() *appsv1.ReplicaSet { return withAvailable(newRS(d, "v1", 1, 0, 0), 0, 0) }
	tests := []struct {
		name string
		objs []runtime.Object
		want map[string]int32
	}{
		{"scales the old set to zero first", []runtime.Object{newRS(d, "v1", 1, 0, 3)},
			map[string]int32{oldName: 0}},
		{"waits while the old set reports pods", []runtime.Object{withAvailable(newRS(d, "v1", 1, 0, 0), 2, 0)},
			map[string]int32{oldName: 0}},
		{"waits while an old pod runs", []runtime.Object{stopped(), runningPod(stopped(), corev1.PodRunning)},
			map[string]int32{oldName: 0}},
		{"ignores finished old pods", []runtime.Object{stopped(), runningPod(stopped(), corev1.PodSucceeded)},
			map[string]int32{oldName: 0, newName: 3}},
		{"creates the new set at full size once the old pods are gone", []runtime.Object{stopped()},
			map[string]int32{oldName: 0, newName: 3}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, append([]runtime.Object{d.DeepCopy()}, tt.objs...)...)
			f.sync(d)
			if got := f.sizes(); !maps.Equal(got, tt.want) {
				t.Errorf("sizes %v, want %v", got, tt.want)
			}
		})
	}
}
