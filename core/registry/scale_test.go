package registry

import (
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
)

func scaled(name string) metav1.ObjectMeta {
	m := objectMeta(name)
	m.UID, m.ResourceVersion, m.CreationTimestamp = types.UID("uid-"+name), "11", metav1.Unix(1700000000, 0)
	return m
}

func TestToScale(t *testing.T) {
	d := newDeployment("web", "nginx")
	d.ObjectMeta = scaled("web")
	d.Spec.Replicas = int32p(3)
	d.Spec.Selector.MatchExpressions = []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpIn, Values: []string{"front"}}}
	d.Status.Replicas = 2

	rc := &corev1.ReplicationController{
		ObjectMeta: scaled("legacy"),
		Spec:       corev1.ReplicationControllerSpec{Replicas: int32p(4), Selector: map[string]string{"app": "legacy", "tier": "back"}},
		Status:     corev1.ReplicationControllerStatus{Replicas: 1},
	}
	sts := &appsv1.StatefulSet{
		ObjectMeta: scaled("db"),
		Spec:       appsv1.StatefulSetSpec{Replicas: int32p(5), Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}},
	}

	tests := []struct {
		name            string
		group, resource string
		obj             runtime.Object
		spec, status    int32
		selector        string
	}{
		{"deployment", "apps", "deployments", d, 3, 2, "app=web,tier in (front)"},
		{"replicationcontroller", "", "replicationcontrollers", rc, 4, 1, "app=legacy,tier=back"},
		{"statefulset", "apps", "statefulsets", sts, 5, 0, "app=db"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustLookup(t, tc.group, tc.resource)
			s, err := r.ToScale(tc.obj)
			if err != nil {
				t.Fatal(err)
			}
			m, _ := meta.Accessor(tc.obj)
			if s.APIVersion != "autoscaling/v1" || s.Kind != "Scale" {
				t.Errorf("scale type %s %s", s.APIVersion, s.Kind)
			}
			if s.Name != m.GetName() || s.Namespace != "default" || s.UID != m.GetUID() || s.ResourceVersion != "11" ||
				!s.CreationTimestamp.Equal(&metav1.Time{Time: m.GetCreationTimestamp().Time}) {
				t.Errorf("scale metadata %+v does not copy the object's", s.ObjectMeta)
			}
			if len(s.Labels) != 0 {
				t.Errorf("scale carries labels %v; kube copies only name, namespace, uid, rv, creationTimestamp", s.Labels)
			}
			if s.Spec.Replicas != tc.spec || s.Status.Replicas != tc.status || s.Status.Selector != tc.selector {
				t.Errorf("scale = spec %d status %d selector %q, want %d %d %q",
					s.Spec.Replicas, s.Status.Replicas, s.Status.Selector, tc.spec, tc.status, tc.selector)
			}

			if err := r.SetReplicas(tc.obj, 9); err != nil {
				t.Fatal(err)
			}
			if s, _ := r.ToScale(tc.obj); s.Spec.Replicas != 9 {
				t.Errorf("after SetReplicas(9) spec.replicas = %d", s.Spec.Replicas)
			}
		})
	}

	if _, err := mustLookup(t, "apps", "daemonsets").ToScale(&appsv1.DaemonSet{}); err == nil {
		t.Error("daemonsets have no scale subresource, ToScale succeeded")
	}
	if err := mustLookup(t, "batch", "jobs").SetReplicas(&batchv1.Job{}, 2); err == nil {
		t.Error("SetReplicas on a job succeeded")
	}
}

func TestApplyScale(t *testing.T) {
	deploy := mustLookup(t, "apps", "deployments")
	current := func() *appsv1.Deployment {
		d := newDeployment("web", "nginx")
		d.ObjectMeta = scaled("web")
		d.Spec.Replicas = int32p(1)
		return d
	}
	tests := []struct {
		name  string
		scale autoscalingv1.Scale
		check func(err error) bool
		want  int32
	}{
		{"scale to 4", autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", ResourceVersion: "11"},
			Spec: autoscalingv1.ScaleSpec{Replicas: 4}}, func(err error) bool { return err == nil }, 4},
		{"negative replicas", autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
			Spec: autoscalingv1.ScaleSpec{Replicas: -1}}, apierrors.IsInvalid, 1},
		{"uid precondition", autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", UID: "other"},
			Spec: autoscalingv1.ScaleSpec{Replicas: 2}}, apierrors.IsConflict, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := current()
			err := deploy.ApplyScale(d, &tc.scale)
			if !tc.check(err) {
				t.Fatalf("unexpected error %v", err)
			}
			if *d.Spec.Replicas != tc.want {
				t.Errorf("spec.replicas = %d, want %d", *d.Spec.Replicas, tc.want)
			}
		})
	}
	errs := ValidateScale(&autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"}, Spec: autoscalingv1.ScaleSpec{Replicas: -2}})
	if len(errs) != 1 || errs[0].Error() != "spec.replicas: Invalid value: -2: must be greater than or equal to 0" {
		t.Errorf("ValidateScale = %v", errs)
	}
}

func TestSelector(t *testing.T) {
	svc := newService("web")
	headless := newService("manual")
	headless.Spec.Selector = nil
	tests := []struct {
		name            string
		group, resource string
		obj             runtime.Object
		want            string // "-" means nil
	}{
		{"deployment", "apps", "deployments", newDeployment("web", "x"), "app=web"},
		{"service", "", "services", svc, "app=web"},
		{"service without selector", "", "services", headless, "-"},
		{"configmap", "", "configmaps", &corev1.ConfigMap{}, "-"},
	}
	for _, tc := range tests {
		sel, err := mustLookup(t, tc.group, tc.resource).Selector(tc.obj)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := "-"
		if sel != nil {
			got = sel.String()
		}
		if got != tc.want {
			t.Errorf("%s: selector %q, want %q", tc.name, got, tc.want)
		}
	}
}
