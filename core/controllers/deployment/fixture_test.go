package deployment

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"berth.dev/berth/core/controllers/reconcile"
)

// epoch is the fixture clock's time; ReplicaSets are created at epoch plus their age.
var epoch = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

// fixture runs the controller against a fake clientset whose objects are also in the
// informer caches (the informers never run: the caches are filled by hand, so a pass sees
// exactly the objects given, as the real controller sees its caches). Its limit: the fake
// does not check resourceVersions, default fields or bump generations.
type fixture struct {
	t      *testing.T
	kube   *fake.Clientset
	c      *Controller
	events *record.FakeRecorder
	now    time.Time
}

func newFixture(t *testing.T, objs ...runtime.Object) *fixture {
	t.Helper()
	kube := fake.NewClientset(objs...)
	factory := informers.NewSharedInformerFactory(kube, 0)
	events := record.NewFakeRecorder(100)
	c, err := New(kube, factory, Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Recorder: events})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, kube: kube, c: c, events: events, now: epoch.Add(time.Hour)}
	c.now = func() time.Time { return f.now }
	for _, obj := range objs {
		var err error
		switch o := obj.(type) {
		case *appsv1.Deployment:
			err = factory.Apps().V1().Deployments().Informer().GetIndexer().Add(o)
		case *appsv1.ReplicaSet:
			err = factory.Apps().V1().ReplicaSets().Informer().GetIndexer().Add(o)
		case *corev1.Pod:
			err = factory.Core().V1().Pods().Informer().GetIndexer().Add(o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return f
}

// sync runs one Reconcile of the deployment and fails the test on error.
func (f *fixture) sync(d *appsv1.Deployment) reconcile.Result {
	f.t.Helper()
	res, err := f.c.Reconcile(context.Background(), d.Namespace+"/"+d.Name)
	if err != nil {
		f.t.Fatalf("reconcile: %v", err)
	}
	return res
}

// deployment reads the deployment back from the fake API.
func (f *fixture) deployment(name string) *appsv1.Deployment {
	f.t.Helper()
	d, err := f.kube.AppsV1().Deployments("ns").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	return d
}

// replicaSets returns the ReplicaSets in the fake API by name.
func (f *fixture) replicaSets() map[string]*appsv1.ReplicaSet {
	f.t.Helper()
	list, err := f.kube.AppsV1().ReplicaSets("ns").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]*appsv1.ReplicaSet{}
	for i := range list.Items {
		out[list.Items[i].Name] = &list.Items[i]
	}
	return out
}

// sizes maps every ReplicaSet in the fake API to its spec.replicas, for compact assertions.
func (f *fixture) sizes() map[string]int32 {
	out := map[string]int32{}
	for name, rs := range f.replicaSets() {
		out[name] = *rs.Spec.Replicas
	}
	return out
}

// drainEvents returns the events recorded so far.
func (f *fixture) drainEvents() []string {
	var out []string
	for {
		select {
		case e := <-f.events.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// writes lists the verbs and resources of the fake's mutating actions.
func (f *fixture) writes() []string {
	var out []string
	for _, a := range f.kube.Actions() {
		switch a.GetVerb() {
		case "get", "list", "watch":
			continue
		}
		w := a.GetVerb() + " " + a.GetResource().Resource
		if a.GetSubresource() != "" {
			w += "/" + a.GetSubresource()
		}
		out = append(out, w)
	}
	return out
}

// newDeployment is a RollingUpdate deployment as the API server defaults it (25%/25%,
// history 10, deadline 600s), running image.
func newDeployment(name string, replicas int32, image string) *appsv1.Deployment {
	surge, unavailable := intstr.FromString("25%"), intstr.FromString("25%")
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID("uid-" + name), Generation: 1},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: template(name, image),
			Strategy: appsv1.DeploymentStrategy{
				Type:          appsv1.RollingUpdateDeploymentStrategyType,
				RollingUpdate: &appsv1.RollingUpdateDeployment{MaxSurge: &surge, MaxUnavailable: &unavailable},
			},
			RevisionHistoryLimit:    ptr(int32(10)),
			ProgressDeadlineSeconds: ptr(int32(600)),
		},
	}
}

func template(app, image string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: app, Image: image}}},
	}
}

// newRS is a ReplicaSet of d running image, as the controller would have created it at
// revision rev and ageMinutes after epoch, with all its replicas available.
func newRS(d *appsv1.Deployment, image string, rev int, ageMinutes int, replicas int32) *appsv1.ReplicaSet {
	tmpl := template(d.Name, image)
	hash := templateHash(&tmpl, nil)
	tmpl.Labels = withLabel(tmpl.Labels, hashLabel, hash)
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{
			Name: d.Name + "-" + hash, Namespace: d.Namespace, UID: types.UID("uid-" + hash),
			Labels:            tmpl.Labels,
			CreationTimestamp: metav1.NewTime(epoch.Add(time.Duration(ageMinutes) * time.Minute)),
			OwnerReferences:   []metav1.OwnerReference{*metav1.NewControllerRef(d, kind)},
			Annotations: map[string]string{
				revisionAnnotation:        fmt.Sprint(rev),
				desiredReplicasAnnotation: fmt.Sprint(*d.Spec.Replicas),
				maxReplicasAnnotation:     fmt.Sprint(*d.Spec.Replicas + maxSurge(d)),
			},
			Generation: 1,
		},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: ptr(replicas),
			Selector: selectorWithLabel(d.Spec.Selector, hashLabel, hash),
			Template: tmpl,
		},
		Status: appsv1.ReplicaSetStatus{Replicas: replicas, ReadyReplicas: replicas, AvailableReplicas: replicas, ObservedGeneration: 1},
	}
}

// withAvailable sets a ReplicaSet's status: replicas pods, available of them available.
func withAvailable(rs *appsv1.ReplicaSet, replicas, available int32) *appsv1.ReplicaSet {
	rs.Status.Replicas, rs.Status.ReadyReplicas, rs.Status.AvailableReplicas = replicas, available, available
	return rs
}

func ptr[T any](v T) *T { return &v }

func hasEvent(events []string, substr string) bool {
	for _, e := range events {
		if strings.Contains(e, substr) {
			return true
		}
	}
	return false
}

func toObjects(objs []any) []runtime.Object {
	out := make([]runtime.Object, len(objs))
	for i, o := range objs {
		out[i] = o.(runtime.Object)
	}
	return out
}
