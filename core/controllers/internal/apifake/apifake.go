// Package apifake is the API server stand-in of the controllers' unit tests: client-go's
// fake metadata and kubernetes clientsets, plus the server-side deletion semantics the
// controllers depend on and the fakes lack.
//
// What the fakes cannot do, and so what the unit tests do not cover (the integration test
// against the real server does):
//   - client-go's object tracker keeps no resourceVersions: it never answers Conflict, and
//     a resourceVersion in a patch is not checked;
//   - the metadata fake drops DeleteOptions and has no deletecollection; this package
//     implements both: propagationPolicy (the orphan and foregroundDeletion finalizers, set
//     as Kubernetes sets them), UID preconditions, a deletionTimestamp while finalizers or
//     a grace period remain, deletion once a patch removes the last finalizer;
//   - a strategic merge patch's metadata.uid is not checked as a precondition;
//   - a fake watch cannot resume from a resourceVersion: what changes between an informer's
//     list and its watch is lost, so tests call WaitForWatches before changing anything;
//   - there is no admission: creating content in a terminating namespace succeeds;
//   - no node agent: a pod deleted with a grace period (GraceAnnotation) stays with its
//     deletionTimestamp until the test calls Finish.
package apifake

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	kubefake "k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/metadata"
	metadatafake "k8s.io/client-go/metadata/fake"
	clienttesting "k8s.io/client-go/testing"
)

// GraceAnnotation on an object gives it a deletion grace period in seconds, as a pod running
// on a node has: deleting it sets deletionTimestamp to the deadline and leaves it there.
const GraceAnnotation = "apifake.berth.dev/grace-seconds"

// Action is a write the controllers sent, in the order the server took them.
type Action struct {
	Verb        string // delete, deletecollection, patch
	Resource    schema.GroupVersionResource
	Namespace   string
	Name        string
	Propagation metav1.DeletionPropagation // delete and deletecollection; "" when not given
	UIDPrecond  types.UID                  // delete
	PatchType   types.PatchType            // patch
	Patch       string                     // patch
}

// Metadata is a metadata.Interface backed by client-go's fake, with deletion semantics.
type Metadata struct {
	fake    *metadatafake.FakeMetadataClient
	tracker clienttesting.ObjectTracker

	mu      sync.Mutex // serialises the writes this package emulates
	actions []Action
	watches map[schema.GroupVersionResource]int
	hidden  map[schema.GroupVersionResource]bool
}

var _ metadata.Interface = (*Metadata)(nil)

// NewMetadata returns an empty fake server.
func NewMetadata() *Metadata {
	f := metadatafake.NewSimpleMetadataClient(metadatafake.NewTestScheme())
	m := &Metadata{fake: f, tracker: f.Tracker(), watches: map[schema.GroupVersionResource]int{}, hidden: map[schema.GroupVersionResource]bool{}}
	// Count the watches, so that tests can wait until the informers listen.
	f.PrependWatchReactor("*", func(a clienttesting.Action) (bool, watch.Interface, error) {
		w, err := m.tracker.Watch(a.GetResource(), a.GetNamespace())
		m.mu.Lock()
		m.watches[a.GetResource()]++
		m.mu.Unlock()
		return true, w, err
	})
	return m
}

// Resource implements metadata.Interface.
func (m *Metadata) Resource(gvr schema.GroupVersionResource) metadata.Getter {
	return &resourceClient{m: m, gvr: gvr, inner: m.fake.Resource(gvr)}
}

// Create stores obj as an object of resource gvr.
func (m *Metadata) Create(t testing.TB, gvr schema.GroupVersionResource, obj *metav1.PartialObjectMetadata) {
	t.Helper()
	if err := m.tracker.Create(gvr, obj.DeepCopy(), obj.Namespace); err != nil {
		t.Fatalf("create %s %s/%s: %v", gvr.Resource, obj.Namespace, obj.Name, err)
	}
}

// Get returns the stored object, or nil.
func (m *Metadata) Get(gvr schema.GroupVersionResource, namespace, name string) *metav1.PartialObjectMetadata {
	obj, err := m.tracker.Get(gvr, namespace, name)
	if err != nil {
		return nil
	}
	return obj.(*metav1.PartialObjectMetadata)
}

// Delete deletes an object as a client would, with the server's semantics.
func (m *Metadata) Delete(t testing.TB, gvr schema.GroupVersionResource, namespace, name string, policy metav1.DeletionPropagation) {
	t.Helper()
	if err := m.Resource(gvr).Namespace(namespace).Delete(context.Background(), name, metav1.DeleteOptions{PropagationPolicy: &policy}); err != nil {
		t.Fatalf("delete %s %s/%s: %v", gvr.Resource, namespace, name, err)
	}
}

// RemoveFinalizers empties an object's finalizers as another controller would; an object
// being deleted then goes unless a grace period still runs.
func (m *Metadata) RemoveFinalizers(t testing.TB, gvr schema.GroupVersionResource, namespace, name string) {
	t.Helper()
	_, err := m.Resource(gvr).Namespace(namespace).Patch(context.Background(), name, types.MergePatchType,
		[]byte(`{"metadata":{"finalizers":null}}`), metav1.PatchOptions{})
	if err != nil {
		t.Fatalf("remove finalizers of %s %s/%s: %v", gvr.Resource, namespace, name, err)
	}
}

// Finish is the node agent confirming a pod has stopped: the object goes if being deleted
// and no finalizer remains.
func (m *Metadata) Finish(t testing.TB, gvr schema.GroupVersionResource, namespace, name string) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	obj := m.Get(gvr, namespace, name)
	if obj == nil || obj.DeletionTimestamp == nil || len(obj.Finalizers) > 0 {
		t.Fatalf("finish %s %s/%s: not waiting for its grace period: %+v", gvr.Resource, namespace, name, obj)
	}
	if err := m.tracker.Delete(gvr, namespace, name); err != nil {
		t.Fatal(err)
	}
}

// Hide makes the objects of gvr invisible to lists and watches, though not to gets: an
// informer that has not caught up. Call it before the informers start.
func (m *Metadata) Hide(gvr schema.GroupVersionResource) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.hidden[gvr] = true
}

func (m *Metadata) isHidden(gvr schema.GroupVersionResource) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.hidden[gvr]
}

// Actions returns the writes so far.
func (m *Metadata) Actions() []Action {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Action(nil), m.actions...)
}

// WaitForWatches waits until n watches have been opened.
func (m *Metadata) WaitForWatches(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		m.mu.Lock()
		got := 0
		for _, c := range m.watches {
			got += c
		}
		m.mu.Unlock()
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d watches opened, want %d", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// resourceClient is one resource (in one namespace) of a Metadata.
type resourceClient struct {
	m         *Metadata
	gvr       schema.GroupVersionResource
	namespace string
	inner     metadata.Getter
}

func (r *resourceClient) Namespace(ns string) metadata.ResourceInterface {
	return &resourceClient{m: r.m, gvr: r.gvr, namespace: ns, inner: r.inner}
}

func (r *resourceClient) innerNS() metadata.ResourceInterface {
	if r.namespace == "" {
		return r.inner
	}
	return r.inner.Namespace(r.namespace)
}

func (r *resourceClient) Get(ctx context.Context, name string, opts metav1.GetOptions, sub ...string) (*metav1.PartialObjectMetadata, error) {
	return r.innerNS().Get(ctx, name, opts, sub...)
}

func (r *resourceClient) List(ctx context.Context, opts metav1.ListOptions) (*metav1.PartialObjectMetadataList, error) {
	if r.m.isHidden(r.gvr) {
		return &metav1.PartialObjectMetadataList{}, nil
	}
	return r.innerNS().List(ctx, opts)
}

func (r *resourceClient) Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
	if r.m.isHidden(r.gvr) {
		r.m.mu.Lock()
		r.m.watches[r.gvr]++
		r.m.mu.Unlock()
		return watch.NewFake(), nil
	}
	return r.innerNS().Watch(ctx, opts)
}

func (r *resourceClient) Delete(ctx context.Context, name string, opts metav1.DeleteOptions, sub ...string) error {
	r.m.mu.Lock()
	defer r.m.mu.Unlock()
	return r.deleteLocked(name, opts, "delete")
}

func (r *resourceClient) DeleteCollection(ctx context.Context, opts metav1.DeleteOptions, lopts metav1.ListOptions) error {
	r.m.mu.Lock()
	defer r.m.mu.Unlock()
	a := Action{Verb: "deletecollection", Resource: r.gvr, Namespace: r.namespace}
	if opts.PropagationPolicy != nil {
		a.Propagation = *opts.PropagationPolicy
	}
	r.m.actions = append(r.m.actions, a)
	list, err := r.innerNS().List(ctx, lopts)
	if err != nil {
		return err
	}
	for _, item := range list.Items {
		if err := r.deleteLocked(item.Name, opts, ""); err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}

// deleteLocked deletes as the API server does; verb "" records nothing.
func (r *resourceClient) deleteLocked(name string, opts metav1.DeleteOptions, verb string) error {
	cur, err := r.m.tracker.Get(r.gvr, r.namespace, name)
	if err != nil {
		return err
	}
	obj := cur.(*metav1.PartialObjectMetadata)
	if p := opts.Preconditions; p != nil && p.UID != nil && *p.UID != obj.UID {
		return apierrors.NewConflict(r.gvr.GroupResource(), name,
			//lint:ignore ST1005 the API server's own words
			fmt.Errorf("Precondition failed: UID in precondition: %v, UID in object meta: %v", *p.UID, obj.UID))
	}
	if verb != "" {
		a := Action{Verb: verb, Resource: r.gvr, Namespace: r.namespace, Name: name}
		if opts.PropagationPolicy != nil {
			a.Propagation = *opts.PropagationPolicy
		}
		if opts.Preconditions != nil && opts.Preconditions.UID != nil {
			a.UIDPrecond = *opts.Preconditions.UID
		}
		r.m.actions = append(r.m.actions, a)
	}
	// Kubernetes' deletionFinalizersForGarbageCollection: an explicit policy replaces the
	// garbage collector's finalizers.
	fin := obj.Finalizers
	if p := opts.PropagationPolicy; p != nil {
		fin = nil
		for _, f := range obj.Finalizers {
			if f != metav1.FinalizerOrphanDependents && f != metav1.FinalizerDeleteDependents {
				fin = append(fin, f)
			}
		}
		switch *p {
		case metav1.DeletePropagationOrphan:
			fin = append(fin, metav1.FinalizerOrphanDependents)
		case metav1.DeletePropagationForeground:
			fin = append(fin, metav1.FinalizerDeleteDependents)
		}
	}
	grace := graceSeconds(obj)
	if len(fin) == 0 && grace == 0 {
		return r.m.tracker.Delete(r.gvr, r.namespace, name)
	}
	if obj.DeletionTimestamp == nil {
		t := metav1.NewTime(time.Now().Add(time.Duration(grace) * time.Second))
		obj.DeletionTimestamp = &t
		obj.DeletionGracePeriodSeconds = &grace
	}
	obj.Finalizers = fin
	return r.m.tracker.Update(r.gvr, obj, r.namespace)
}

func (r *resourceClient) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, sub ...string) (*metav1.PartialObjectMetadata, error) {
	r.m.mu.Lock()
	defer r.m.mu.Unlock()
	r.m.actions = append(r.m.actions, Action{Verb: "patch", Resource: r.gvr, Namespace: r.namespace, Name: name, PatchType: pt, Patch: string(data)})
	out, err := r.innerNS().Patch(ctx, name, pt, data, opts, sub...)
	if err != nil {
		return nil, err
	}
	// An object being deleted goes once its last finalizer does (and its grace period ends:
	// for a pod, when the node agent says so).
	if out.DeletionTimestamp != nil && len(out.Finalizers) == 0 && graceSeconds(out) == 0 {
		if err := r.m.tracker.Delete(r.gvr, r.namespace, name); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func graceSeconds(obj *metav1.PartialObjectMetadata) int64 {
	n, _ := strconv.ParseInt(obj.Annotations[GraceAnnotation], 10, 64)
	return n
}

// NewKube returns client-go's fake clientset holding objs, whose namespaces' finalize
// subresource works as the API server's: it sets spec.finalizers and deletes a namespace
// being deleted once none remain.
func NewKube(objs ...runtime.Object) *kubefake.Clientset {
	c := kubefake.NewClientset(objs...)
	nsGVR := corev1.SchemeGroupVersion.WithResource("namespaces")
	c.PrependReactor("create", "namespaces", func(a clienttesting.Action) (bool, runtime.Object, error) {
		ca, ok := a.(clienttesting.CreateAction)
		if !ok || ca.GetSubresource() != "finalize" {
			return false, nil, nil
		}
		want := ca.GetObject().(*corev1.Namespace)
		cur, err := c.Tracker().Get(nsGVR, "", want.Name)
		if err != nil {
			return true, nil, err
		}
		ns := cur.(*corev1.Namespace).DeepCopy()
		ns.Spec.Finalizers = want.Spec.Finalizers
		if ns.DeletionTimestamp != nil && len(ns.Spec.Finalizers) == 0 && len(ns.Finalizers) == 0 {
			return true, ns, c.Tracker().Delete(nsGVR, "", ns.Name)
		}
		return true, ns, c.Tracker().Update(nsGVR, ns, "")
	})
	return c
}
