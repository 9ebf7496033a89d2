package garbagecollector

import (
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/metadata/metadatainformer"

	"berth.dev/berth/core/controllers/internal/apifake"
	"berth.dev/berth/core/registry"
)

// The unit tests run the real informers, graph and workers against apifake (client-go's
// fake metadata client plus the server's deletion semantics); its package comment lists
// what the fake cannot do. integration_test.go in core/controllers covers the real server.

func lookup(t testing.TB, group, resource string) *registry.Resource {
	t.Helper()
	for _, r := range registry.All() {
		if r.Group == group && r.Resource == resource {
			return r
		}
	}
	t.Fatalf("no resource %s in group %q", resource, group)
	return nil
}

type kinds struct {
	cm, secret, pod, rs, deploy, node *registry.Resource
}

func testKinds(t testing.TB) kinds {
	return kinds{
		cm:     lookup(t, "", "configmaps"),
		secret: lookup(t, "", "secrets"),
		pod:    lookup(t, "", "pods"),
		rs:     lookup(t, "apps", "replicasets"),
		deploy: lookup(t, "apps", "deployments"),
		node:   lookup(t, "", "nodes"),
	}
}

func (k kinds) all() []*registry.Resource {
	return []*registry.Resource{k.cm, k.secret, k.pod, k.rs, k.deploy, k.node}
}

// object builds the metadata of an object; its UID is "uid-" + name.
func object(res *registry.Resource, ns, name string, owners ...metav1.OwnerReference) *metav1.PartialObjectMetadata {
	return &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: res.GroupVersion(), Kind: res.Kind},
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), OwnerReferences: owners},
	}
}

// ownedBy is an ownerReference to the object object(res, _, name) builds.
func ownedBy(res *registry.Resource, name string, block bool) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: res.GroupVersion(), Kind: res.Kind, Name: name, UID: types.UID("uid-" + name), BlockOwnerDeletion: &block}
}

func testLog(t testing.TB) *slog.Logger {
	if testing.Verbose() || os.Getenv("BERTH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type env struct {
	t   *testing.T
	k   kinds
	api *apifake.Metadata
	gc  *Controller
}

// start runs a garbage collector over the given objects and waits until it watches.
func start(t *testing.T, objs ...*metav1.PartialObjectMetadata) *env {
	t.Helper()
	return startWith(t, nil, objs...)
}

// startWith is start with a hook to set the fake up first.
func startWith(t *testing.T, setup func(*apifake.Metadata), objs ...*metav1.PartialObjectMetadata) *env {
	t.Helper()
	k := testKinds(t)
	api := apifake.NewMetadata()
	if setup != nil {
		setup(api)
	}
	for _, o := range objs {
		api.Create(t, resourceOf(t, k, o).GVR(), o)
	}
	factory := metadatainformer.NewSharedInformerFactory(api, 0)
	gc, err := New(api, factory, Options{Resources: k.all(), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	done := make(chan error, 1)
	go func() { done <- gc.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		factory.Shutdown()
	})
	api.WaitForWatches(t, len(k.all()))
	return &env{t: t, k: k, api: api, gc: gc}
}

func resourceOf(t testing.TB, k kinds, o *metav1.PartialObjectMetadata) *registry.Resource {
	for _, r := range k.all() {
		if r.Kind == o.Kind && r.GroupVersion() == o.APIVersion {
			return r
		}
	}
	t.Fatalf("no test resource for %s", o.GroupVersionKind())
	return nil
}

func (e *env) get(res *registry.Resource, ns, name string) *metav1.PartialObjectMetadata {
	return e.api.Get(res.GVR(), ns, name)
}

// eventually polls cond for up to 10 seconds.
func (e *env) eventually(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting: %s\nactions: %s", what, describe(e.api.Actions()))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) gone(res *registry.Resource, ns, name string) func() bool {
	return func() bool { return e.get(res, ns, name) == nil }
}

func describe(actions []apifake.Action) string {
	var b strings.Builder
	for _, a := range actions {
		b.WriteString("\n  " + a.Verb + " " + a.Resource.Resource + " " + a.Namespace + "/" + a.Name)
		if a.Propagation != "" {
			b.WriteString(" propagation=" + string(a.Propagation))
		}
		if a.Patch != "" {
			b.WriteString(" " + a.Patch)
		}
	}
	return b.String()
}

// index returns the position of the first action matching, or -1.
func index(actions []apifake.Action, verb, name, patchContains string) int {
	for i, a := range actions {
		if a.Verb == verb && a.Name == name && strings.Contains(a.Patch, patchContains) {
			return i
		}
	}
	return -1
}

func deletesOf(actions []apifake.Action, name string) []apifake.Action {
	var out []apifake.Action
	for _, a := range actions {
		if a.Verb == "delete" && a.Name == name {
			out = append(out, a)
		}
	}
	return out
}

func ownerUIDs(o *metav1.PartialObjectMetadata) []types.UID {
	var out []types.UID
	for _, r := range o.OwnerReferences {
		out = append(out, r.UID)
	}
	return out
}

func TestBackgroundDeletesDependentsOfDeletedOwner(t *testing.T) {
	k := testKinds(t)
	widget := metav1.OwnerReference{APIVersion: "example.com/v1", Kind: "Widget", Name: "w", UID: "uid-w"}
	e := start(t,
		object(k.cm, "ns", "owner"),
		object(k.cm, "ns", "dep", ownedBy(k.cm, "owner", false)),
		object(k.secret, "ns", "dep-secret", ownedBy(k.cm, "owner", true)),
		// A dependent whose owner was deleted before the collector started.
		object(k.cm, "ns", "stale", ownedBy(k.cm, "deleted-long-ago", false)),
		// A node (cluster-scoped) may own namespaced objects.
		object(k.node, "", "n1"),
		object(k.cm, "other", "node-lease", ownedBy(k.node, "n1", false)),
		// Kept: an existing owner; a kind no resource serves.
		object(k.cm, "ns", "keeper"),
		object(k.cm, "ns", "kept", ownedBy(k.cm, "keeper", false)),
		object(k.cm, "ns", "unknown-owner", widget),
	)
	e.eventually("the dependent of a never-seen owner is collected", e.gone(k.cm, "ns", "stale"))

	e.api.Delete(t, k.cm.GVR(), "ns", "owner", metav1.DeletePropagationBackground)
	e.api.Delete(t, k.node.GVR(), "", "n1", metav1.DeletePropagationBackground)
	e.eventually("dependents of deleted owners are collected", func() bool {
		return e.get(k.cm, "ns", "dep") == nil && e.get(k.secret, "ns", "dep-secret") == nil && e.get(k.cm, "other", "node-lease") == nil
	})

	actions := e.api.Actions()
	for _, name := range []string{"dep", "dep-secret", "stale", "node-lease"} {
		d := deletesOf(actions, name)
		if len(d) == 0 {
			t.Errorf("%s: no delete by the collector: %s", name, describe(actions))
			continue
		}
		if d[0].Propagation != metav1.DeletePropagationBackground || d[0].UIDPrecond != types.UID("uid-"+name) {
			t.Errorf("%s deleted with propagation %q, UID precondition %q; want Background and uid-%s", name, d[0].Propagation, d[0].UIDPrecond, name)
		}
	}
	// The kept objects were not touched; they were already examined (kept and
	// unknown-owner's owners were looked up when first seen).
	for _, name := range []string{"keeper", "kept", "unknown-owner"} {
		if e.get(k.cm, "ns", name) == nil || index(actions, "delete", name, "") >= 0 || index(actions, "patch", name, "") >= 0 {
			t.Errorf("%s was deleted or patched: %s", name, describe(actions))
		}
	}
}

func TestPartialOwnersDanglingReferencesRemoved(t *testing.T) {
	k := testKinds(t)
	namesake := object(k.cm, "ns", "b") // named like dep2's second owner, but another UID
	namesake.UID = "uid-b-new"
	e := start(t,
		object(k.cm, "ns", "a"),
		namesake,
		object(k.cm, "ns", "dep", ownedBy(k.cm, "a", true), ownedBy(k.cm, "gone", true)),
		object(k.cm, "ns", "dep2", ownedBy(k.cm, "a", false), ownedBy(k.cm, "b", false)),
	)
	for _, name := range []string{"dep", "dep2"} {
		e.eventually(name+" keeps only its live owner", func() bool {
			o := e.get(k.cm, "ns", name)
			return o != nil && len(o.OwnerReferences) == 1 && o.OwnerReferences[0].UID == "uid-a"
		})
	}
	actions := e.api.Actions()
	for _, name := range []string{"dep", "dep2", "a", "b"} {
		if d := deletesOf(actions, name); len(d) > 0 {
			t.Errorf("%s was deleted: %s", name, describe(actions))
		}
	}
	if i := index(actions, "patch", "dep", `"$patch":"delete"`); i < 0 {
		t.Errorf("dep's reference was not removed by a strategic merge patch: %s", describe(actions))
	}

	// The remaining owner goes: now the dependents go too.
	e.api.Delete(t, k.cm.GVR(), "ns", "a", metav1.DeletePropagationBackground)
	e.eventually("dependents of the last owner are collected", func() bool {
		return e.get(k.cm, "ns", "dep") == nil && e.get(k.cm, "ns", "dep2") == nil
	})
	if e.get(k.cm, "ns", "b") == nil {
		t.Errorf("the namesake of a dangling owner was deleted")
	}
}

// An informer that lags (here: never shows the ReplicaSet) must not get a dependent deleted:
// the collector asks the server whether the owner exists.
func TestOwnerVerifiedWithServerBeforeDeleting(t *testing.T) {
	k := testKinds(t)
	e := startWith(t, func(api *apifake.Metadata) { api.Hide(k.rs.GVR()) },
		object(k.rs, "ns", "rs"),
		object(k.pod, "ns", "pod", ownedBy(k.rs, "rs", true)),
	)
	e.eventually("the graph knows the pod", func() bool { return e.gc.graph.has("uid-pod") })
	// Whatever the queue did so far, look at the pod once more now.
	if _, err := e.gc.Reconcile(context.Background(), "uid-pod"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.gc.Reconcile(context.Background(), "uid-rs"); err != nil {
		t.Fatal(err)
	}
	if e.get(k.pod, "ns", "pod") == nil || len(deletesOf(e.api.Actions(), "pod")) > 0 {
		t.Fatalf("the pod was deleted although its owner exists: %s", describe(e.api.Actions()))
	}
	if !e.gc.graph.has("uid-rs") {
		t.Errorf("the unseen owner's virtual node was dropped although the server has it")
	}
}

func TestForegroundDeletesBlockingDependentsFirst(t *testing.T) {
	k := testKinds(t)
	hold := object(k.cm, "ns", "note", ownedBy(k.deploy, "web", false))
	hold.Finalizers = []string{"example.com/hold"}
	e := start(t,
		object(k.deploy, "ns", "web"),
		object(k.rs, "ns", "web-1", ownedBy(k.deploy, "web", true)),
		object(k.pod, "ns", "web-1-a", ownedBy(k.rs, "web-1", true)),
		// Not blocking: web need not wait for it although it lingers.
		hold,
	)
	e.api.Delete(t, k.deploy.GVR(), "ns", "web", metav1.DeletePropagationForeground)
	if o := e.get(k.deploy, "ns", "web"); o == nil || o.DeletionTimestamp == nil {
		t.Fatalf("the fake did not start a foreground deletion: %+v", o)
	}
	e.eventually("the owner goes once its blocking dependents are gone", e.gone(k.deploy, "ns", "web"))

	actions := e.api.Actions()
	if e.get(k.rs, "ns", "web-1") != nil || e.get(k.pod, "ns", "web-1-a") != nil {
		t.Fatalf("web went before its blocking dependents: %s", describe(actions))
	}
	// Kubernetes deletes a dependent in the foreground when it has dependents of its own.
	if d := deletesOf(actions, "web-1"); len(d) == 0 || d[0].Propagation != metav1.DeletePropagationForeground {
		t.Errorf("web-1 was not deleted with Foreground: %s", describe(actions))
	}
	if d := deletesOf(actions, "web-1-a"); len(d) == 0 || d[0].Propagation != metav1.DeletePropagationBackground {
		t.Errorf("web-1-a was not deleted with Background: %s", describe(actions))
	}
	podDeleted := index(actions, "delete", "web-1-a", "")
	rsFinalized := index(actions, "patch", "web-1", `"finalizers":[]`)
	webFinalized := index(actions, "patch", "web", `"finalizers":[]`)
	if podDeleted < 0 || rsFinalized < podDeleted || webFinalized < rsFinalized {
		t.Errorf("want pod deleted (%d) < web-1 finalized (%d) < web finalized (%d): %s", podDeleted, rsFinalized, webFinalized, describe(actions))
	}
	// The non-blocking dependent was deleted too, and lingers on its own finalizer.
	if o := e.get(k.cm, "ns", "note"); o == nil || o.DeletionTimestamp == nil {
		t.Errorf("note: want being deleted and held by its finalizer, got %+v", o)
	}
}

func TestForegroundOwnerWaitsForLingeringBlockingDependent(t *testing.T) {
	k := testKinds(t)
	pod := object(k.pod, "ns", "slow", ownedBy(k.deploy, "api", true))
	pod.Finalizers = []string{"example.com/hold"}
	e := start(t, object(k.deploy, "ns", "api"), pod)

	e.api.Delete(t, k.deploy.GVR(), "ns", "api", metav1.DeletePropagationForeground)
	e.eventually("the blocking dependent is being deleted", func() bool {
		o := e.get(k.pod, "ns", "slow")
		return o != nil && o.DeletionTimestamp != nil
	})
	// Give the collector time to act wrongly: the owner must keep its finalizer while the
	// blocking dependent exists.
	time.Sleep(300 * time.Millisecond)
	if o := e.get(k.deploy, "ns", "api"); o == nil || !hasFinalizer(o, metav1.FinalizerDeleteDependents) {
		t.Fatalf("the owner did not wait for its blocking dependent: %+v\n%s", o, describe(e.api.Actions()))
	}
	e.api.RemoveFinalizers(t, k.pod.GVR(), "ns", "slow")
	e.eventually("the owner goes once the dependent is gone", e.gone(k.deploy, "ns", "api"))
}

func TestOrphanRemovesReferencesThenFinalizer(t *testing.T) {
	k := testKinds(t)
	e := start(t,
		object(k.rs, "ns", "rs"),
		object(k.cm, "ns", "other"),
		object(k.pod, "ns", "a", ownedBy(k.rs, "rs", true)),
		object(k.pod, "ns", "b", ownedBy(k.rs, "rs", true)),
		object(k.cm, "ns", "c", ownedBy(k.rs, "rs", false), ownedBy(k.cm, "other", false)),
	)
	e.api.Delete(t, k.rs.GVR(), "ns", "rs", metav1.DeletePropagationOrphan)
	if o := e.get(k.rs, "ns", "rs"); o == nil || !hasFinalizer(o, metav1.FinalizerOrphanDependents) {
		t.Fatalf("the fake did not start an orphaning deletion: %+v", o)
	}
	e.eventually("the owner goes", e.gone(k.rs, "ns", "rs"))

	// Let the dependents be reconciled after the owner's disappearance, had they been queued.
	time.Sleep(200 * time.Millisecond)
	actions := e.api.Actions()
	for _, d := range []struct {
		res  *registry.Resource
		name string
		want []types.UID
	}{{k.pod, "a", nil}, {k.pod, "b", nil}, {k.cm, "c", []types.UID{"uid-other"}}} {
		o := e.get(d.res, "ns", d.name)
		if o == nil {
			t.Errorf("%s was deleted: %s", d.name, describe(actions))
			continue
		}
		if got := ownerUIDs(o); len(got) != len(d.want) || (len(got) == 1 && got[0] != d.want[0]) {
			t.Errorf("%s owners = %v, want %v", d.name, got, d.want)
		}
	}
	// All references went before the finalizer did.
	fin := index(actions, "patch", "rs", `"finalizers":[]`)
	for _, name := range []string{"a", "b", "c"} {
		if i := index(actions, "patch", name, "uid-rs"); i < 0 || i > fin {
			t.Errorf("%s's reference removed at %d, finalizer at %d: %s", name, i, fin, describe(actions))
		}
	}
}

func TestReferencesDiff(t *testing.T) {
	yes, no := true, false
	a := metav1.OwnerReference{UID: "a", BlockOwnerDeletion: &yes}
	aUnblocked := metav1.OwnerReference{UID: "a", BlockOwnerDeletion: &no}
	b := metav1.OwnerReference{UID: "b"}
	c := metav1.OwnerReference{UID: "c"}
	added, removed, changed := referencesDiff([]metav1.OwnerReference{a, b}, []metav1.OwnerReference{aUnblocked, c})
	if len(added) != 1 || added[0].UID != "c" {
		t.Errorf("added = %v", added)
	}
	if len(removed) != 1 || removed[0].UID != "b" {
		t.Errorf("removed = %v", removed)
	}
	if len(changed) != 1 || !isBlocking(changed[0][0]) || isBlocking(changed[0][1]) {
		t.Errorf("changed = %v", changed)
	}
}

func TestResourceMapping(t *testing.T) {
	c := &Controller{kinds: map[schema.GroupKind]*registry.Resource{}}
	for _, r := range registry.All() {
		c.kinds[schema.GroupKind{Group: r.Group, Kind: r.Kind}] = r
	}
	for _, tc := range []struct {
		apiVersion, kind, want string
		ok                     bool
	}{
		{"apps/v1", "ReplicaSet", "replicasets", true},
		{"v1", "ConfigMap", "configmaps", true},
		{"apps/v1beta2", "Deployment", "deployments", true}, // same kind, another version
		{"v1", "Event", "events", true},
		{"events.k8s.io/v1", "Event", "events", true},
		{"example.com/v1", "Widget", "", false},
		{"a/b/c", "Thing", "", false},
	} {
		r, err := c.resource(tc.apiVersion, tc.kind)
		if (err == nil) != tc.ok || (err == nil && r.Resource != tc.want) {
			t.Errorf("resource(%s, %s) = %v, %v; want %s, ok=%v", tc.apiVersion, tc.kind, r, err, tc.want, tc.ok)
		}
	}
}

// Two dependents name one owner UID by different coordinates; the wrong ones are checked
// first. The owner's node must survive under the right identity, or the other dependent
// would be forgotten when the owner goes.
func TestOwnerNamedByConflictingCoordinates(t *testing.T) {
	k := testKinds(t)
	api := apifake.NewMetadata()
	owner := object(k.cm, "ns", "real")
	wrong := ownedBy(k.secret, "real", false) // the owner's UID, but as a Secret
	a := object(k.pod, "ns", "a", wrong)
	b := object(k.pod, "ns", "b", ownedBy(k.cm, "real", true))
	for _, o := range []*metav1.PartialObjectMetadata{owner, a, b} {
		api.Create(t, resourceOf(t, k, o).GVR(), o)
	}
	gc, err := New(api, metadatainformer.NewSharedInformerFactory(api, 0), Options{Resources: k.all(), Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	ref := func(res *registry.Resource, o *metav1.PartialObjectMetadata) objectRef {
		return objectRef{APIVersion: res.GroupVersion(), Kind: res.Kind, Namespace: o.Namespace, Name: o.Name, UID: o.UID}
	}
	// The informers are not running: feed the graph by hand, a first.
	gc.graph.observe(ref(k.pod, a), nil, a)
	gc.graph.observe(ref(k.pod, b), nil, b)
	ctx := context.Background()
	if _, err := gc.Reconcile(ctx, owner.UID); err != nil {
		t.Fatal(err)
	}
	v, ok := gc.graph.view(owner.UID)
	if !ok || !v.virtual || v.ref.Kind != "ConfigMap" || v.dependents != 2 {
		t.Fatalf("owner node after checking the Secret identity: %+v (present %v); want virtual ConfigMap with 2 dependents", v, ok)
	}
	// a named an owner that does not exist: it is collected; b's owner exists: b stays.
	for _, uid := range []types.UID{a.UID, b.UID, owner.UID} {
		if _, err := gc.Reconcile(ctx, uid); err != nil {
			t.Fatal(err)
		}
	}
	if api.Get(k.pod.GVR(), "ns", "a") != nil {
		t.Errorf("a, whose owner reference is dangling, was not collected: %s", describe(api.Actions()))
	}
	if api.Get(k.pod.GVR(), "ns", "b") == nil {
		t.Errorf("b was deleted although its owner exists: %s", describe(api.Actions()))
	}
	// Now the owner goes: b is found through the graph.
	gc.graph.observe(ref(k.cm, owner), nil, owner)
	api.Delete(t, k.cm.GVR(), "ns", "real", metav1.DeletePropagationBackground)
	drain := func() map[types.UID]bool {
		got := map[types.UID]bool{}
		for gc.queue.Len() > 0 {
			uid, _ := gc.queue.Get()
			got[uid] = true
			gc.queue.Done(uid)
			gc.queue.Forget(uid)
		}
		return got
	}
	drain()
	gc.graph.forget(owner.UID)
	if queued := drain(); !queued[b.UID] {
		t.Fatalf("the owner's deletion did not queue b: %v", queued)
	}
	if _, err := gc.Reconcile(ctx, b.UID); err != nil {
		t.Fatal(err)
	}
	if api.Get(k.pod.GVR(), "ns", "b") != nil {
		t.Errorf("b outlived its owner: %s", describe(api.Actions()))
	}
}
