package replicaset

import (
	"reflect"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
)

// ownerHandler enqueues the ReplicaSets (or ReplicationControllers) the informer reports.
func (c *Controller) ownerHandler(kind string) cache.ResourceEventHandler {
	keyOf := func(obj any) (Key, bool) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		m, ok := obj.(metav1.Object)
		if !ok {
			return Key{}, false
		}
		return Key{Kind: kind, Namespace: m.GetNamespace(), Name: m.GetName()}, true
	}
	deleted := func(obj any) {
		if key, ok := keyOf(obj); ok {
			// A namesake created later must not inherit what this one waited for.
			c.expectations.forget(key)
			c.queue.Add(key)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if key, ok := keyOf(obj); ok {
				c.queue.Add(key)
			}
		},
		// Every update is synced, not only spec changes: a resync then retries owners whose
		// creates failed.
		UpdateFunc: func(old, cur any) {
			o, ok1 := old.(metav1.Object)
			n, ok2 := cur.(metav1.Object)
			if ok1 && ok2 && o.GetUID() != n.GetUID() {
				// Deleted and re-created between two watch events.
				deleted(old)
			}
			if key, ok := keyOf(cur); ok {
				c.queue.Add(key)
			}
		},
		DeleteFunc: deleted,
	}
}

// addPod enqueues the owner of a new pod, counting it as an observed creation, or, for an
// orphan, every owner that might adopt it.
func (c *Controller) addPod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if pod.DeletionTimestamp != nil {
		// Seen for the first time already terminating (a restart of the controller): that
		// is a deletion to observe, not a creation.
		c.deletePod(pod)
		return
	}
	if ref := metav1.GetControllerOf(pod); ref != nil {
		if key, _, ok := c.resolve(pod.Namespace, ref); ok {
			c.expectations.creationsObserved(key, 1)
			c.queue.Add(key)
		}
		return
	}
	// No owner waits for an orphan's creation: only wake those that may adopt it.
	c.enqueueSelecting(pod)
}

// updatePod enqueues the owners a pod change concerns: its old and new controllers, and
// the owners that might adopt it if it became an orphan.
func (c *Controller) updatePod(oldObj, curObj any) {
	old, ok1 := oldObj.(*corev1.Pod)
	cur, ok2 := curObj.(*corev1.Pod)
	if !ok1 || !ok2 || cur.ResourceVersion == old.ResourceVersion {
		return // a resync: nothing changed
	}
	labelsChanged := !reflect.DeepEqual(cur.Labels, old.Labels)
	if cur.DeletionTimestamp != nil {
		// A graceful deletion has begun: replace the pod now rather than once it is gone.
		c.deletePod(cur)
		if labelsChanged {
			c.deletePod(old)
		}
		return
	}
	curRef, oldRef := metav1.GetControllerOf(cur), metav1.GetControllerOf(old)
	refChanged := !reflect.DeepEqual(curRef, oldRef)
	if refChanged && oldRef != nil {
		if key, _, ok := c.resolve(old.Namespace, oldRef); ok {
			c.queue.Add(key)
		}
	}
	if curRef != nil {
		key, o, ok := c.resolve(cur.Namespace, curRef)
		if !ok {
			return
		}
		c.queue.Add(key)
		// Nothing reports a ready pod becoming available minReadySeconds later: look again
		// then, a second late so that it has passed on the controller's clock too.
		if minReady := o.rs.Spec.MinReadySeconds; minReady > 0 && !isReady(old) && isReady(cur) {
			c.queue.AddAfter(key, time.Duration(minReady)*time.Second+time.Second)
		}
		return
	}
	if labelsChanged || refChanged {
		c.enqueueSelecting(cur)
	}
}

// deletePod enqueues the owner of a pod that is gone or being deleted, counting the
// deletion if the owner asked for it.
func (c *Controller) deletePod(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	ref := metav1.GetControllerOf(pod)
	if ref == nil {
		return // no owner cares about an orphan's deletion
	}
	if key, _, ok := c.resolve(pod.Namespace, ref); ok {
		c.expectations.deletionObserved(key, podKey(pod))
		c.queue.Add(key)
	}
}

// resolve finds the owner a controller reference names in the cache; a reference to
// another kind, or to an object since replaced by a namesake, resolves to nothing.
func (c *Controller) resolve(namespace string, ref *metav1.OwnerReference) (Key, *owner, bool) {
	api, ok := c.kinds[ref.Kind]
	if !ok {
		return Key{}, nil, false
	}
	o, err := api.cached(namespace, ref.Name)
	if err != nil || o.rs.UID != ref.UID {
		return Key{}, nil, false
	}
	return Key{Kind: ref.Kind, Namespace: namespace, Name: ref.Name}, o, true
}

// enqueueSelecting enqueues every owner in the pod's namespace whose selector matches it.
// More than one is a user's mistake; claiming decides which one gets the pod.
func (c *Controller) enqueueSelecting(pod *corev1.Pod) {
	for kind, api := range c.kinds {
		owners, err := api.inNamespace(pod.Namespace)
		if err != nil {
			continue
		}
		for _, o := range owners {
			sel, err := metav1.LabelSelectorAsSelector(o.rs.Spec.Selector)
			if err != nil || sel.Empty() || !sel.Matches(labels.Set(pod.Labels)) {
				continue
			}
			c.queue.Add(Key{Kind: kind, Namespace: o.rs.Namespace, Name: o.rs.Name})
		}
	}
}
