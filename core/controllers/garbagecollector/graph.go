package garbagecollector

import (
	"fmt"
	"reflect"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// objectRef names one object: its apiVersion/kind, namespace, name and UID. For an owner
// known only from references (a virtual node) these are the references' coordinates.
type objectRef struct {
	APIVersion string
	Kind       string
	Namespace  string
	Name       string
	UID        types.UID
}

func (r objectRef) String() string {
	if r.Namespace == "" {
		return fmt.Sprintf("%s/%s %s (uid %s)", r.APIVersion, r.Kind, r.Name, r.UID)
	}
	return fmt.Sprintf("%s/%s %s/%s (uid %s)", r.APIVersion, r.Kind, r.Namespace, r.Name, r.UID)
}

// coordinates is what an ownerReference says about its owner.
func coordinates(ref metav1.OwnerReference) objectRef {
	return objectRef{APIVersion: ref.APIVersion, Kind: ref.Kind, Name: ref.Name, UID: ref.UID}
}

// node is one object in the dependency graph. Every field is guarded by graph.mu.
type node struct {
	ref objectRef
	// owners are the object's ownerReferences as last observed.
	owners []metav1.OwnerReference
	// dependents are the nodes whose ownerReferences name this node's UID.
	dependents map[*node]struct{}
	// virtual is true while the object is known only because something references it.
	virtual bool
	// beingDeleted: the object has a deletionTimestamp.
	beingDeleted bool
	// deletingDependents: being deleted with the foregroundDeletion finalizer.
	deletingDependents bool
	// orphaning: being deleted with the orphan finalizer.
	orphaning bool
}

// blockedBy reports whether dep's reference to n has blockOwnerDeletion=true.
func (n *node) blockedBy(dep *node) bool {
	for _, o := range dep.owners {
		if o.UID == n.ref.UID && o.BlockOwnerDeletion != nil && *o.BlockOwnerDeletion {
			return true
		}
	}
	return false
}

// graph is the uid→node map of every object the informers have shown, plus virtual nodes
// for owners not (yet) seen. The informers' handlers change it; the workers read it.
type graph struct {
	mu      sync.Mutex
	nodes   map[types.UID]*node
	enqueue func(types.UID) // called with mu held; must not call back into the graph
	absent  *absentCache    // owners confirmed gone, so dependents need not ask the server
	// scope says whether an apiVersion/kind is namespaced; ok is false for an unknown kind.
	scope func(apiVersion, kind string) (namespaced, ok bool)
}

func newGraph(enqueue func(types.UID), absent *absentCache, scope func(string, string) (bool, bool)) *graph {
	return &graph{nodes: map[types.UID]*node{}, enqueue: enqueue, absent: absent, scope: scope}
}

// observe records an added or updated object (old is nil for an add).
func (g *graph) observe(ref objectRef, old, obj *metav1.PartialObjectMetadata) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n, found := g.nodes[ref.UID]
	if found && n.virtual {
		// The owner we knew only by references has now been seen. Dependents that named it
		// by other coordinates must check their references against the server.
		n.virtual = false
		if n.ref != ref {
			for dep := range n.dependents {
				if !refersTo(dep, ref) {
					g.enqueue(dep.ref.UID)
				}
			}
			n.ref = ref
		}
	}
	if !found {
		n = &node{ref: ref, owners: obj.GetOwnerReferences(), dependents: map[*node]struct{}{}}
		g.nodes[ref.UID] = n
		g.addToOwners(n, n.owners)
	} else {
		added, removed, changed := referencesDiff(n.owners, obj.GetOwnerReferences())
		if len(added)+len(removed)+len(changed) > 0 {
			// An owner waiting for its blocking dependents may now be free to go.
			for _, r := range removed {
				if isBlocking(r) {
					g.enqueueIfPresent(r.UID)
				}
			}
			for _, c := range changed {
				if isBlocking(c[0]) && !isBlocking(c[1]) {
					g.enqueueIfPresent(c[1].UID)
				}
			}
			n.owners = obj.GetOwnerReferences()
			g.addToOwners(n, added)
			g.removeFromOwners(n, removed)
		}
	}
	deleting := obj.GetDeletionTimestamp() != nil
	n.beingDeleted = deleting
	n.deletingDependents = deleting && hasFinalizer(obj, metav1.FinalizerDeleteDependents)
	n.orphaning = deleting && hasFinalizer(obj, metav1.FinalizerOrphanDependents)

	// Transitions: the object's deletion has just started waiting for the garbage collector.
	if starts(old, obj, metav1.FinalizerOrphanDependents) {
		g.enqueue(n.ref.UID)
		return
	}
	if starts(old, obj, metav1.FinalizerDeleteDependents) {
		for dep := range n.dependents {
			g.enqueue(dep.ref.UID)
		}
		g.enqueue(n.ref.UID)
	}
}

// forget removes a deleted object; uid must match (a tombstone may be for a recreated object).
func (g *graph) forget(uid types.UID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if n, ok := g.nodes[uid]; ok {
		g.remove(n)
	}
}

// remove drops n from the graph and asks its dependents and its foreground-deleting owners
// to look again. mu must be held.
func (g *graph) remove(n *node) {
	delete(g.nodes, n.ref.UID)
	g.removeFromOwners(n, n.owners)
	for _, o := range n.owners {
		if owner, ok := g.nodes[o.UID]; ok && owner.deletingDependents {
			g.enqueue(owner.ref.UID)
		}
	}
	if len(n.dependents) > 0 {
		g.absent.add(n.ref)
	}
	for dep := range n.dependents {
		g.enqueue(dep.ref.UID)
	}
}

// removeGone drops the node for uid after the server said the object does not exist, as
// long as the node still names the object that was looked up.
func (g *graph) removeGone(ref objectRef) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n, ok := g.nodes[ref.UID]
	if !ok || n.ref != ref {
		return
	}
	if n.virtual {
		// Dependents may name this UID by other coordinates (another kind, name or
		// namespace): those were not looked up. Keep the node under the next such identity
		// not yet known to be absent, and look again; only the dependents that used the
		// coordinates just checked learn that their owner is gone.
		g.absent.add(ref)
		var alt *objectRef
		for dep := range n.dependents {
			if refersTo(dep, ref) {
				g.enqueue(dep.ref.UID)
				continue
			}
			for _, o := range dep.owners {
				if o.UID != ref.UID {
					continue
				}
				c := coordinates(o)
				if namespaced, known := g.scope(o.APIVersion, o.Kind); !known || namespaced {
					c.Namespace = dep.ref.Namespace
				}
				if c != ref && !g.absent.has(c) && (alt == nil || lessRef(c, *alt)) {
					alt = &c
				}
			}
		}
		if alt != nil {
			n.ref = *alt
			g.enqueue(n.ref.UID)
			return
		}
	}
	g.remove(n)
}

// lessRef orders identities, so that the choice among alternates is deterministic.
func lessRef(a, b objectRef) bool {
	if a.Kind != b.Kind {
		return a.Kind < b.Kind
	}
	if a.APIVersion != b.APIVersion {
		return a.APIVersion < b.APIVersion
	}
	if a.Namespace != b.Namespace {
		return a.Namespace < b.Namespace
	}
	return a.Name < b.Name
}

// removeIfUnreferenced drops a virtual node that no dependent names any more.
func (g *graph) removeIfUnreferenced(uid types.UID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	n, ok := g.nodes[uid]
	if ok && n.virtual && len(n.dependents) == 0 {
		delete(g.nodes, uid)
		return true
	}
	return false
}

// addToOwners adds n to the dependents of each owner, creating a virtual node (and asking a
// worker to look it up) for an owner the informers have not shown. mu must be held.
func (g *graph) addToOwners(n *node, owners []metav1.OwnerReference) {
	suspect := false
	for _, o := range owners {
		owner, ok := g.nodes[o.UID]
		if !ok {
			ref := coordinates(o)
			if namespaced, known := g.scope(o.APIVersion, o.Kind); !known || namespaced {
				ref.Namespace = n.ref.Namespace
			}
			owner = &node{ref: ref, dependents: map[*node]struct{}{}, virtual: true}
			g.nodes[o.UID] = owner
			owner.dependents[n] = struct{}{}
			g.enqueue(o.UID)
			continue
		}
		owner.dependents[n] = struct{}{}
		// A reference that disagrees with the owner's observed namespace or coordinates may be
		// dangling (a namespaced owner can only own objects in its own namespace).
		if owner.ref.Namespace != "" && owner.ref.Namespace != n.ref.Namespace {
			suspect = true
		} else if !sameCoordinates(o, owner.ref) {
			suspect = true
		}
	}
	if suspect {
		g.enqueue(n.ref.UID)
	}
}

// removeFromOwners removes n from the dependents of each owner. mu must be held.
func (g *graph) removeFromOwners(n *node, owners []metav1.OwnerReference) {
	for _, o := range owners {
		if owner, ok := g.nodes[o.UID]; ok {
			delete(owner.dependents, n)
		}
	}
}

func (g *graph) enqueueIfPresent(uid types.UID) {
	if _, ok := g.nodes[uid]; ok {
		g.enqueue(uid)
	}
}

// view is a copy of what a worker needs to know about a node.
type view struct {
	ref                objectRef
	virtual            bool
	beingDeleted       bool
	deletingDependents bool
	orphaning          bool
	dependents         int
	// dependentDeletingDependents: a dependent is itself being deleted in the foreground.
	dependentDeletingDependents bool
}

func (g *graph) view(uid types.UID) (view, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n, ok := g.nodes[uid]
	if !ok {
		return view{}, false
	}
	v := view{ref: n.ref, virtual: n.virtual, beingDeleted: n.beingDeleted,
		deletingDependents: n.deletingDependents, orphaning: n.orphaning, dependents: len(n.dependents)}
	for dep := range n.dependents {
		if dep.deletingDependents {
			v.dependentDeletingDependents = true
		}
	}
	return v, true
}

// dependents returns the dependents of uid, and those among them whose reference to uid has
// blockOwnerDeletion=true.
func (g *graph) dependents(uid types.UID) (all, blocking []objectRef, blockingIdle []types.UID) {
	g.mu.Lock()
	defer g.mu.Unlock()
	n, ok := g.nodes[uid]
	if !ok {
		return nil, nil, nil
	}
	for dep := range n.dependents {
		all = append(all, dep.ref)
		if n.blockedBy(dep) {
			blocking = append(blocking, dep.ref)
			if !dep.deletingDependents {
				blockingIdle = append(blockingIdle, dep.ref.UID)
			}
		}
	}
	return all, blocking, blockingIdle
}

// owners returns the observed ownerReferences of uid.
func (g *graph) owners(uid types.UID) []metav1.OwnerReference {
	g.mu.Lock()
	defer g.mu.Unlock()
	if n, ok := g.nodes[uid]; ok {
		return append([]metav1.OwnerReference(nil), n.owners...)
	}
	return nil
}

// has reports whether uid is in the graph (for tests).
func (g *graph) has(uid types.UID) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.nodes[uid]
	return ok
}

func refersTo(dep *node, owner objectRef) bool {
	if owner.Namespace != "" && dep.ref.Namespace != owner.Namespace {
		return false
	}
	for _, o := range dep.owners {
		if o.UID == owner.UID && sameCoordinates(o, owner) {
			return true
		}
	}
	return false
}

func sameCoordinates(o metav1.OwnerReference, r objectRef) bool {
	return o.UID == r.UID && o.Name == r.Name && o.Kind == r.Kind && o.APIVersion == r.APIVersion
}

func isBlocking(o metav1.OwnerReference) bool {
	return o.BlockOwnerDeletion != nil && *o.BlockOwnerDeletion
}

// referencesDiff compares two ownerReference lists by UID; changed holds [old, new] pairs.
func referencesDiff(old, cur []metav1.OwnerReference) (added, removed []metav1.OwnerReference, changed [][2]metav1.OwnerReference) {
	byUID := make(map[types.UID]metav1.OwnerReference, len(old))
	for _, o := range old {
		byUID[o.UID] = o
	}
	for _, c := range cur {
		o, ok := byUID[c.UID]
		if !ok {
			added = append(added, c)
			continue
		}
		if !reflect.DeepEqual(o, c) {
			changed = append(changed, [2]metav1.OwnerReference{o, c})
		}
		delete(byUID, c.UID)
	}
	for _, o := range old {
		if _, ok := byUID[o.UID]; ok {
			removed = append(removed, o)
		}
	}
	return added, removed, changed
}

func hasFinalizer(obj metav1.Object, f string) bool {
	for _, x := range obj.GetFinalizers() {
		if x == f {
			return true
		}
	}
	return false
}

// starts reports whether obj is being deleted with finalizer f and old was not.
func starts(old, obj *metav1.PartialObjectMetadata, f string) bool {
	if obj.GetDeletionTimestamp() == nil || !hasFinalizer(obj, f) {
		return false
	}
	return old == nil || old.GetDeletionTimestamp() == nil || !hasFinalizer(old, f)
}
