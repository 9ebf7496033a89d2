package apiserver

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
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
	// checked is when a namespace that the cache showed empty was last read from the store.
	checked map[string]time.Time
}

// liveLookupTTL is how long a namespace found empty in the store is believed empty, as
// Kubernetes' LimitRanger and quota admission do (30 s): the watch, not a read per create,
// brings what is created after that.
const liveLookupTTL = 30 * time.Second

func newPolicyCache(ctx context.Context, store *storage.Store, resource string) (*policyCache, error) {
	res, ok := registry.Lookup("", "v1", resource)
	if !ok {
		return nil, fmt.Errorf("no resource v1 %s", resource)
	}
	c := &policyCache{res: res, store: store, prefix: collectionPrefix(res, ""), byNS: map[string]map[string]runtime.Object{}, checked: map[string]time.Time{}}
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
			} else {
				sleepCtx(ctx, time.Second) // etcd is unwell: do not spin
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
	if have, ok := c.byNS[ns][name]; ok && rev > 0 {
		// put may have recorded a newer version than this event's.
		if m, err := meta.Accessor(have); err == nil && m.GetResourceVersion() != "" && m.GetResourceVersion() > "" {
			if cur, err := strconv.ParseInt(m.GetResourceVersion(), 10, 64); err == nil && cur > rev {
				return
			}
		}
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

// lookup returns a namespace's objects like list, but when the cache has none it reads the
// store (at most once per liveLookupTTL per namespace), so that an object created a moment
// ago, whose watch event is still on its way, is not missed.
func (c *policyCache) lookup(ctx context.Context, ns string) ([]runtime.Object, error) {
	if objs := c.list(ns); len(objs) > 0 {
		return objs, nil
	}
	now := time.Now()
	c.mu.RLock()
	at, ok := c.checked[ns]
	c.mu.RUnlock()
	if ok && now.Sub(at) < liveLookupTTL {
		return nil, nil
	}
	if err := c.refresh(ctx, ns); err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.checked) > 10000 {
		clear(c.checked)
	}
	c.checked[ns] = now
	c.mu.Unlock()
	return c.list(ns), nil
}

// refresh reads one namespace's objects from the store, for when the watch may lag.
func (c *policyCache) refresh(ctx context.Context, ns string) error {
	prefix := collectionPrefix(c.res, ns)
	list, err := c.store.List(ctx, prefix, storage.ListOptions{})
	if err != nil {
		return fmt.Errorf("list %s in %s: %w", c.res.Resource, ns, err)
	}
	fresh := map[string]runtime.Object{}
	for _, o := range list.Items {
		if obj, err := decodeStored(c.res, o.Value, o.Revision); err == nil {
			fresh[strings.TrimPrefix(o.Key, prefix)] = obj
		}
	}
	c.mu.Lock()
	c.byNS[ns] = fresh
	c.mu.Unlock()
	return nil
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
