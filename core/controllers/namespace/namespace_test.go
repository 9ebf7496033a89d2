package namespace

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	kubefake "k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"

	"berth.dev/berth/core/controllers/internal/apifake"
	"berth.dev/berth/core/controllers/reconcile"
	"berth.dev/berth/core/registry"
)

// The tests drive Reconcile against apifake: client-go's fake kubernetes clientset holds the
// namespaces (its finalize subresource emulated), the fake metadata client the content
// (with deletecollection and graceful deletion emulated). apifake's package comment lists
// what the fakes cannot do.

func lookup(t testing.TB, group, resource string) *registry.Resource {
	t.Helper()
	r, ok := registry.Lookup(group, "v1", resource)
	if !ok {
		t.Fatalf("no resource %s in group %q", resource, group)
	}
	return r
}

func terminating(name string, finalizers ...corev1.FinalizerName) *corev1.Namespace {
	now := metav1.Now()
	return &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name), DeletionTimestamp: &now},
		Spec:       corev1.NamespaceSpec{Finalizers: finalizers},
		Status:     corev1.NamespaceStatus{Phase: corev1.NamespaceActive},
	}
}

func item(res *registry.Resource, ns, name string) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: res.GroupVersion(), Kind: res.Kind},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + ns + "-" + name)},
	}
}

type env struct {
	t                       *testing.T
	kube                    *kubefake.Clientset
	api                     *apifake.Metadata
	c                       *Controller
	cm, secret, pod, deploy *registry.Resource
}

func setup(t *testing.T, namespaces ...*corev1.Namespace) *env {
	t.Helper()
	var objs []runtime.Object
	for _, ns := range namespaces {
		objs = append(objs, ns)
	}
	e := &env{t: t, kube: apifake.NewKube(objs...), api: apifake.NewMetadata(),
		cm: lookup(t, "", "configmaps"), secret: lookup(t, "", "secrets"), pod: lookup(t, "", "pods"), deploy: lookup(t, "apps", "deployments")}
	c, err := New(e.kube, e.api, informers.NewSharedInformerFactory(e.kube, 0),
		Options{Resources: []*registry.Resource{e.cm, e.secret, e.deploy, e.pod}, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	e.c = c
	return e
}

func (e *env) reconcile(name string) reconcile.Result {
	e.t.Helper()
	res, err := e.c.Reconcile(context.Background(), name)
	if err != nil {
		e.t.Fatalf("Reconcile(%s): %v", name, err)
	}
	return res
}

func (e *env) namespace(name string) *corev1.Namespace {
	ns, err := e.kube.CoreV1().Namespaces().Get(context.Background(), name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		e.t.Fatal(err)
	}
	return ns
}

// lastStatus returns the last namespace written through the status subresource.
func (e *env) lastStatus(name string) *corev1.Namespace {
	var last *corev1.Namespace
	for _, a := range e.kube.Actions() {
		if u, ok := a.(clienttesting.UpdateAction); ok && a.GetSubresource() == "status" {
			if ns := u.GetObject().(*corev1.Namespace); ns.Name == name {
				last = ns
			}
		}
	}
	return last
}

func condition(ns *corev1.Namespace, t corev1.NamespaceConditionType) *corev1.NamespaceCondition {
	if ns == nil {
		return nil
	}
	return findCondition(ns.Status.Conditions, t)
}

func TestDeletesContentThenFinalizes(t *testing.T) {
	e := setup(t, terminating("doomed", corev1.FinalizerKubernetes), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "other"}})
	e.api.Create(t, e.cm.GVR(), item(e.cm, "doomed", "a"))
	e.api.Create(t, e.secret.GVR(), item(e.secret, "doomed", "b"))
	e.api.Create(t, e.deploy.GVR(), item(e.deploy, "doomed", "d"))
	e.api.Create(t, e.pod.GVR(), item(e.pod, "doomed", "p")) // not on a node: no grace period
	e.api.Create(t, e.cm.GVR(), item(e.cm, "other", "a"))

	if res := e.reconcile("doomed"); res != (reconcile.Result{}) {
		t.Fatalf("Reconcile = %+v, want done", res)
	}
	for _, x := range []struct {
		res  *registry.Resource
		name string
	}{{e.cm, "a"}, {e.secret, "b"}, {e.deploy, "d"}, {e.pod, "p"}} {
		if e.api.Get(x.res.GVR(), "doomed", x.name) != nil {
			t.Errorf("%s doomed/%s survived", x.res.Resource, x.name)
		}
	}
	if e.api.Get(e.cm.GVR(), "other", "a") == nil {
		t.Errorf("a configmap in another namespace was deleted")
	}
	if e.namespace("doomed") != nil {
		t.Errorf("the namespace was not finalized (and so deleted)")
	}
	if e.namespace("other") == nil {
		t.Errorf("another namespace was deleted")
	}
	// Every resource was deleted as a collection, with Background propagation, pods first.
	var order []string
	for _, a := range e.api.Actions() {
		if a.Verb == "deletecollection" {
			order = append(order, a.Resource.Resource)
			if a.Propagation != metav1.DeletePropagationBackground || a.Namespace != "doomed" {
				t.Errorf("deletecollection %s in %q with propagation %q", a.Resource.Resource, a.Namespace, a.Propagation)
			}
		}
	}
	if got := strings.Join(order, ","); got != "pods,configmaps,secrets,deployments" {
		t.Errorf("deletecollection order = %s", got)
	}
	st := e.lastStatus("doomed")
	if st == nil || st.Status.Phase != corev1.NamespaceTerminating {
		t.Fatalf("status not set to Terminating: %+v", st)
	}
	if c := condition(st, corev1.NamespaceContentRemaining); c == nil || c.Status != corev1.ConditionFalse || c.Reason != "ContentRemoved" {
		t.Errorf("NamespaceContentRemaining = %+v", c)
	}
}

func TestWaitsForPodsInGracePeriodBeforeOtherContent(t *testing.T) {
	e := setup(t, terminating("web", corev1.FinalizerKubernetes))
	pod := item(e.pod, "web", "p")
	pod.Annotations = map[string]string{apifake.GraceAnnotation: "30"}
	e.api.Create(t, e.pod.GVR(), pod)
	e.api.Create(t, e.cm.GVR(), item(e.cm, "web", "config"))

	res := e.reconcile("web")
	if res.RequeueAfter < 14*time.Second || res.RequeueAfter > 16*time.Second {
		t.Errorf("RequeueAfter = %v, want half the 30s grace period + 1s", res.RequeueAfter)
	}
	if p := e.api.Get(e.pod.GVR(), "web", "p"); p == nil || p.DeletionTimestamp == nil {
		t.Fatalf("pod: want deleting and lingering, got %+v", p)
	}
	if e.api.Get(e.cm.GVR(), "web", "config") == nil {
		t.Errorf("other content was deleted while pods remain")
	}
	if e.namespace("web") == nil {
		t.Fatalf("finalized with a pod left")
	}
	c := condition(e.lastStatus("web"), corev1.NamespaceContentRemaining)
	if c == nil || c.Status != corev1.ConditionTrue || c.Message != "Some resources are remaining: pods. has 1 resource instances" {
		t.Errorf("NamespaceContentRemaining = %+v", c)
	}

	e.api.Finish(t, e.pod.GVR(), "web", "p") // the node agent saw the pod stop
	if res := e.reconcile("web"); res != (reconcile.Result{}) {
		t.Fatalf("Reconcile = %+v, want done", res)
	}
	if e.api.Get(e.cm.GVR(), "web", "config") != nil || e.namespace("web") != nil {
		t.Errorf("content or namespace left after the pod went")
	}
}

func TestWaitsForFinalizersAndReportsThem(t *testing.T) {
	e := setup(t, terminating("held", corev1.FinalizerKubernetes, "example.com/other"))
	cm := item(e.cm, "held", "x")
	cm.Finalizers = []string{"example.com/hold"}
	e.api.Create(t, e.cm.GVR(), cm)

	if res := e.reconcile("held"); !res.Requeue {
		t.Fatalf("Reconcile = %+v, want a requeue", res)
	}
	ns := e.namespace("held")
	if ns == nil || len(ns.Spec.Finalizers) != 2 {
		t.Fatalf("finalized while content remains: %+v", ns)
	}
	c := condition(e.lastStatus("held"), corev1.NamespaceFinalizersRemaining)
	if c == nil || c.Status != corev1.ConditionTrue || c.Message != "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances" {
		t.Errorf("NamespaceFinalizersRemaining = %+v", c)
	}

	e.api.RemoveFinalizers(t, e.cm.GVR(), "held", "x")
	if res := e.reconcile("held"); res != (reconcile.Result{}) {
		t.Fatalf("Reconcile = %+v, want done", res)
	}
	// Another finalizer remains: the namespace stays, without "kubernetes".
	ns = e.namespace("held")
	if ns == nil || len(ns.Spec.Finalizers) != 1 || ns.Spec.Finalizers[0] != "example.com/other" {
		t.Fatalf("spec.finalizers = %+v, want [example.com/other]", ns)
	}
	if c := condition(ns, corev1.NamespaceFinalizersRemaining); c == nil || c.Status != corev1.ConditionFalse {
		t.Errorf("NamespaceFinalizersRemaining after cleanup = %+v", c)
	}
}

func TestLeavesLiveOrAlreadyFinalizedNamespacesAlone(t *testing.T) {
	live := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "live"}, Spec: corev1.NamespaceSpec{Finalizers: []corev1.FinalizerName{corev1.FinalizerKubernetes}}}
	e := setup(t, live, terminating("theirs", "example.com/other"))
	e.api.Create(t, e.cm.GVR(), item(e.cm, "live", "a"))
	e.api.Create(t, e.cm.GVR(), item(e.cm, "theirs", "a"))
	for _, name := range []string{"live", "theirs", "missing"} {
		if res := e.reconcile(name); res != (reconcile.Result{}) {
			t.Errorf("Reconcile(%s) = %+v", name, res)
		}
	}
	if e.api.Get(e.cm.GVR(), "live", "a") == nil || e.api.Get(e.cm.GVR(), "theirs", "a") == nil {
		t.Errorf("content deleted: %+v", e.api.Actions())
	}
	if n := len(e.api.Actions()); n != 0 {
		t.Errorf("%d writes to content, want none", n)
	}
}

// Run finds a terminating namespace through its informer and cleans it up.
func TestRunCleansUpNamespaceFromInformer(t *testing.T) {
	kube := apifake.NewKube(terminating("gone", corev1.FinalizerKubernetes))
	api := apifake.NewMetadata()
	cm := lookup(t, "", "configmaps")
	api.Create(t, cm.GVR(), item(cm, "gone", "a"))
	factory := informers.NewSharedInformerFactory(kube, 0)
	c, err := New(kube, api, factory, Options{Resources: []*registry.Resource{cm}, Delay: -1, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		factory.Shutdown()
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := kube.CoreV1().Namespaces().Get(ctx, "gone", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("namespace still there: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if api.Get(cm.GVR(), "gone", "a") != nil {
		t.Errorf("content survived its namespace")
	}
}
