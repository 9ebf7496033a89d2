// Package garbagecollector deletes objects whose owners are gone, with Kubernetes' semantics
// (k8s.io/kubernetes pkg/controller/garbagecollector):
//
//   - background: an object all of whose owners are gone is deleted (Background propagation,
//     or the policy its own orphan/foregroundDeletion finalizer asks for); when only some are
//     gone, the dangling ownerReferences are patched away;
//   - foreground: the dependents of an owner deleted with the foregroundDeletion finalizer are
//     deleted (Foreground if they have dependents themselves, else Background); the finalizer
//     is removed once no dependent whose reference has blockOwnerDeletion=true remains;
//   - orphan: the ownerReferences to an owner deleted with the orphan finalizer are removed
//     from all its dependents, then the finalizer is removed.
//
// It watches the metadata of every resource in the registry (events excepted, as in
// Kubernetes) and keeps a uid→node graph of owners and dependents. Workers reconcile one UID
// at a time, level-based: they read the object and its owners from the API server (never
// from the informers alone, so informer lag cannot make them delete an object whose owner
// exists) and act on what they find.
package garbagecollector

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/reconcile"
	"berth.dev/berth/core/registry"
)

// Options tune the garbage collector; the zero value is ready to use.
type Options struct {
	// Workers is how many UIDs are reconciled at once (5 by default).
	Workers int
	// Resources are the resources to watch and resolve owner kinds with (registry.All() by
	// default). Events are never watched: nothing owns through them, and they are many.
	Resources []*registry.Resource
	// Log receives the controller's messages (slog.Default() by default).
	Log *slog.Logger
}

// ignored reports the resources never watched, as Kubernetes' DefaultIgnoredResources.
func ignored(gr schema.GroupResource) bool {
	return gr.Resource == "events" && (gr.Group == "" || gr.Group == "events.k8s.io")
}

// Controller is the garbage collector.
type Controller struct {
	client  metadata.Interface
	log     *slog.Logger
	workers int
	// kinds resolves an ownerReference's group and kind to the served resource. The version
	// is not compared: berth serves one version of each kind.
	kinds  map[schema.GroupKind]*registry.Resource
	queue  workqueue.TypedRateLimitingInterface[types.UID]
	graph  *graph
	absent *absentCache
	synced []namedSync
}

type namedSync struct {
	resource string
	synced   cache.InformerSynced
}

// New builds a garbage collector and registers its informers with factory; start the
// factory after New, then call Run.
func New(client metadata.Interface, factory metadatainformer.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 5
	}
	if opts.Resources == nil {
		opts.Resources = registry.All()
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		client:  client,
		log:     opts.Log,
		workers: opts.Workers,
		kinds:   map[schema.GroupKind]*registry.Resource{},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[types.UID](),
			workqueue.TypedRateLimitingQueueConfig[types.UID]{Name: "garbagecollector"}),
		absent: newAbsentCache(500),
	}
	c.graph = newGraph(c.queue.Add, c.absent, c.scope)
	for _, res := range opts.Resources {
		c.kinds[schema.GroupKind{Group: res.Group, Kind: res.Kind}] = res
	}
	for _, res := range opts.Resources {
		if ignored(res.GVR().GroupResource()) {
			continue
		}
		reg, err := factory.ForResource(res.GVR()).Informer().AddEventHandler(c.handler(res))
		if err != nil {
			return nil, fmt.Errorf("watch %s: %w", res.GVR(), err)
		}
		c.synced = append(c.synced, namedSync{res.GVR().String(), reg.HasSynced})
	}
	return c, nil
}

// handler feeds one resource's informer events into the graph.
func (c *Controller) handler(res *registry.Resource) cache.ResourceEventHandler {
	refOf := func(m *metav1.PartialObjectMetadata) objectRef {
		return objectRef{APIVersion: res.GroupVersion(), Kind: res.Kind, Namespace: m.Namespace, Name: m.Name, UID: m.UID}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
				c.graph.observe(refOf(m), nil, m)
			}
		},
		UpdateFunc: func(oldObj, newObj any) {
			old, _ := oldObj.(*metav1.PartialObjectMetadata)
			if m, ok := newObj.(*metav1.PartialObjectMetadata); ok {
				c.graph.observe(refOf(m), old, m)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
				c.graph.forget(m.UID)
			}
		},
	}
}

// Run waits until every informer has delivered its first list (so that the graph knows
// every dependent before an owner is orphaned or finalized), then reconciles until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.log.Info("starting garbage collector", "resources", len(c.synced), "workers", c.workers)
	if !c.waitForSync(ctx) {
		return nil
	}
	c.log.Info("garbage collector synced")
	reconcile.Work(ctx, c.queue, reconcile.Func[types.UID](c.Reconcile), c.workers, c.log)
	return nil
}

// waitForSync polls the informers, naming those still behind every 30 seconds.
func (c *Controller) waitForSync(ctx context.Context) bool {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	start := time.Now()
	lastReport := start
	for {
		var pending []string
		for _, s := range c.synced {
			if !s.synced() {
				pending = append(pending, s.resource)
			}
		}
		if len(pending) == 0 {
			return true
		}
		if time.Since(lastReport) >= 30*time.Second {
			sort.Strings(pending)
			c.log.Warn("garbage collector still waiting for informers", "waited", time.Since(start).Round(time.Second), "resources", strings.Join(pending, ","))
			lastReport = time.Now()
		}
		select {
		case <-ctx.Done():
			return false
		case <-tick.C:
		}
	}
}

// Reconcile looks at the object with this UID and does what the garbage collector owes it:
// orphan or delete its dependents if it is being deleted with the matching finalizer,
// delete it if all its owners are gone, or drop its dangling ownerReferences.
func (c *Controller) Reconcile(ctx context.Context, uid types.UID) (reconcile.Result, error) {
	v, ok := c.graph.view(uid)
	if !ok {
		return reconcile.Result{}, nil
	}
	if v.virtual && c.graph.removeIfUnreferenced(uid) {
		return reconcile.Result{}, nil
	}
	// Being deleted and not waiting for us: its deletion will run its course.
	if v.beingDeleted && !v.deletingDependents && !v.orphaning {
		return reconcile.Result{}, nil
	}
	latest, err := c.get(ctx, v.ref)
	if err != nil {
		return reconcile.Result{}, err
	}
	if latest == nil {
		// Gone (or replaced by a namesake): drop the node; its dependents look again.
		c.graph.removeGone(v.ref)
		return reconcile.Result{}, nil
	}
	log := c.log.With("object", v.ref.String())

	switch {
	case latest.DeletionTimestamp != nil && hasFinalizer(latest, metav1.FinalizerOrphanDependents):
		return reconcile.Result{}, c.orphanDependents(ctx, log, v.ref)
	case latest.DeletionTimestamp != nil && hasFinalizer(latest, metav1.FinalizerDeleteDependents):
		return reconcile.Result{}, c.deleteDependents(ctx, log, v.ref)
	case latest.DeletionTimestamp != nil:
		return reconcile.Result{}, nil
	}

	if err := c.collect(ctx, log, v, latest); err != nil {
		return reconcile.Result{}, err
	}
	// A virtual node stays under watch until an informer shows the object: otherwise an
	// object created and deleted while a watch was down could leave it in the graph forever.
	return reconcile.Result{Requeue: v.virtual}, nil
}

// collect deletes latest if none of its owners remains, or removes its references to owners
// that are gone or waiting for their dependents' deletion when a solid owner remains.
func (c *Controller) collect(ctx context.Context, log *slog.Logger, v view, latest *metav1.PartialObjectMetadata) error {
	refs := latest.GetOwnerReferences()
	if len(refs) == 0 {
		return nil
	}
	var solid, dangling, waiting []metav1.OwnerReference
	for _, ref := range refs {
		owner, err := c.owner(ctx, ref, v.ref)
		if err != nil {
			return err
		}
		switch {
		case owner == nil:
			dangling = append(dangling, ref)
		case owner.DeletionTimestamp != nil && hasFinalizer(owner, metav1.FinalizerDeleteDependents):
			waiting = append(waiting, ref)
		default:
			solid = append(solid, ref)
		}
	}

	switch {
	case len(solid) > 0:
		if len(dangling)+len(waiting) == 0 {
			return nil
		}
		// The references to owners waiting for their dependents go too: otherwise those owners
		// would wait for this object forever.
		var uids []types.UID
		for _, r := range append(dangling, waiting...) {
			uids = append(uids, r.UID)
		}
		log.Info("removing references to owners that are gone or being deleted", "owners", uidList(uids))
		return c.removeOwnerReferences(ctx, v.ref, uids)

	case len(waiting) > 0 && v.dependents > 0:
		// An owner waits for this object, which has dependents of its own: delete it in the
		// foreground too. If one of its dependents is itself deleting dependents, there may be
		// a cycle: unblock our own references first so that nobody waits for anybody forever.
		if v.dependentDeletingDependents {
			log.Info("unblocking references to owners, to break a possible foreground cycle")
			if err := c.unblockOwnerReferences(ctx, v.ref); err != nil {
				return err
			}
		}
		log.Info("deleting object whose owner waits for its dependents", "propagationPolicy", metav1.DeletePropagationForeground)
		return c.delete(ctx, v.ref, metav1.DeletePropagationForeground)

	default:
		// No solid owner: collect it, honouring a finalizer the object already has.
		policy := metav1.DeletePropagationBackground
		switch {
		case hasFinalizer(latest, metav1.FinalizerOrphanDependents):
			policy = metav1.DeletePropagationOrphan
		case hasFinalizer(latest, metav1.FinalizerDeleteDependents):
			policy = metav1.DeletePropagationForeground
		}
		log.Info("deleting object whose owners are gone", "propagationPolicy", policy)
		return c.delete(ctx, v.ref, policy)
	}
}

// orphanDependents removes the references to owner from all its dependents, then the orphan
// finalizer from owner.
func (c *Controller) orphanDependents(ctx context.Context, log *slog.Logger, owner objectRef) error {
	deps, _, _ := c.graph.dependents(owner.UID)
	var (
		mu   sync.Mutex
		errs []error
		g    errgroup.Group
	)
	g.SetLimit(8)
	for _, dep := range deps {
		g.Go(func() error {
			if err := c.removeOwnerReferences(ctx, dep, []types.UID{owner.UID}); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
			return nil
		})
	}
	_ = g.Wait() // the workers report through errs, so that one failure stops none of the others
	if len(errs) > 0 {
		return fmt.Errorf("orphan the dependents of %s: %w", owner, errors.Join(errs...))
	}
	log.Info("orphaned dependents", "dependents", len(deps))
	return c.removeFinalizer(ctx, owner, metav1.FinalizerOrphanDependents)
}

// deleteDependents has the dependents of an owner deleted in the foreground reconciled (they
// find their owner waiting and delete themselves), and removes the owner's finalizer once
// no dependent with blockOwnerDeletion=true is left.
func (c *Controller) deleteDependents(ctx context.Context, log *slog.Logger, owner objectRef) error {
	all, blocking, idle := c.graph.dependents(owner.UID)
	if len(blocking) == 0 {
		log.Info("no blocking dependents left, removing the foregroundDeletion finalizer", "dependents", len(all))
		return c.removeFinalizer(ctx, owner, metav1.FinalizerDeleteDependents)
	}
	for _, uid := range idle {
		c.queue.Add(uid)
	}
	return nil
}

// scope says whether apiVersion/kind is namespaced, and whether it is known at all.
func (c *Controller) scope(apiVersion, kind string) (bool, bool) {
	res, err := c.resource(apiVersion, kind)
	if err != nil {
		return false, false
	}
	return res.Namespaced, true
}

// resource maps an apiVersion and kind to the served resource.
func (c *Controller) resource(apiVersion, kind string) (*registry.Resource, error) {
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil {
		return nil, reconcile.Terminal(fmt.Errorf("invalid apiVersion %q: %w", apiVersion, err))
	}
	res, ok := c.kinds[schema.GroupKind{Group: gv.Group, Kind: kind}]
	if !ok {
		return nil, reconcile.Terminal(fmt.Errorf("no served resource has apiVersion %q and kind %q", apiVersion, kind))
	}
	return res, nil
}

func uidList(uids []types.UID) string {
	s := make([]string, len(uids))
	for i, u := range uids {
		s[i] = string(u)
	}
	return strings.Join(s, ",")
}
