package apiserver

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/runtime"

	"berth.dev/berth/core/registry"
	"berth.dev/berth/core/storage"
)

// policyCache mirrors every object of one namespaced resource (LimitRanges, ResourceQuotas)
// from a watch, so that admitting a create costs no etcd round trip when a namespace has
// none, which is the common case.
type policyCache struct {
	res    *registry.Resource
	store  *storage.Store
	prefix string
	mu     sync.RWMutex
	byNS   map[string]map[string]runtime.Object // namespace -> name -> object (resourceVersion set)
}

func newPolicyCache(ctx context.Context, store *storage.Store, resource string) (*policyCache, error) {
	res, ok := registry.Lookup("", "v1", resource)
	if !ok {
		return nil, fmt.Errorf("no resource v1 %s", resource)
	}
	c := &policyCache{res: res, store: store, prefix: collectionPrefix(res, ""), byNS: map[string]map[string]runtime.Object{}}
	rev, err := c.relist(ctx)
	if err != nil {
		return nil, err
	}
	go c.run(ctx, rev)
	return c, nil
}

// relist replaces the cache with what the store holds and returns the list's revision.
func (c *policyCache) relist(ctx context.Context) (int64, error) {
	list, err := c.store.List(ctx, c.prefix, storage.ListOptions{})
	if err != nil {
		return 0, fmt.Errorf("list %s: %w", c.res.Resource, err)
	}
	c.mu.Lock()
	c.byNS = map[string]map[string]runtime.Object{}
	c.mu.Unlock()
	for _, o := range list.Items {
		c.apply(storage.Added, o.Key, o.Value, o.Revision)
	}
	return list.Revision, nil
}

// run follows changes until ctx ends; after a compaction it lists again.
func (c *policyCache) run(ctx context.Context, rev int64) {
	for ctx.Err() == nil {
		events, errs := c.store.Watch(ctx, c.prefix, rev)
		for ev := range events {
			c.apply(ev.Type, ev.Key, ev.Value, ev.Revision)
			rev = ev.Revision
		}
		if err := <-errs; err != nil && errors.Is(err, storage.ErrGone) {
			if r, err := c.relist(ctx); err == nil {
				rev = r
			}
		}
	}
}

func (c *policyCache) apply(t storage.EventType, key string, value []byte, rev int64) {
	rel := strings.TrimPrefix(key, c.prefix)
	ns, name, ok := strings.Cut(rel, "/")
	if !ok {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if t == storage.Deleted {
		delete(c.byNS[ns], name)
		return
	}
	obj, err := decodeStored(c.res, value, rev)
	if err != nil {
		return
	}
	if c.byNS[ns] == nil {
		c.byNS[ns] = map[string]runtime.Object{}
	}
	c.byNS[ns][name] = obj
}

// put records an object the server itself just wrote, ahead of its watch event.
func (c *policyCache) put(ns, name string, obj runtime.Object) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.byNS[ns] == nil {
		c.byNS[ns] = map[string]runtime.Object{}
	}
	c.byNS[ns][name] = obj
}

// list returns deep copies of a namespace's objects, sorted by name.
func (c *policyCache) list(ns string) []runtime.Object {
	c.mu.RLock()
	defer c.mu.RUnlock()
	objs := c.byNS[ns]
	if len(objs) == 0 {
		return nil
	}
	names := make([]string, 0, len(objs))
	for n := range objs {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]runtime.Object, len(names))
	for i, n := range names {
		out[i] = objs[n].DeepCopyObject()
	}
	return out
}
