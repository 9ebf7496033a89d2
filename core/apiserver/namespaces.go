package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"berth.dev/berth/core/registry"
	"berth.dev/berth/core/storage"
)

// namespaceCache mirrors the namespaces' phases from a watch, so that admitting a namespaced
// create (namespace exists and is not terminating) costs no etcd round trip.
type namespaceCache struct {
	store  *storage.Store
	prefix string
	mu     sync.RWMutex
	phases map[string]corev1.NamespacePhase
}

func newNamespaceCache(ctx context.Context, store *storage.Store) (*namespaceCache, error) {
	res, _ := registry.Lookup("", "v1", "namespaces")
	c := &namespaceCache{store: store, prefix: collectionPrefix(res, ""), phases: map[string]corev1.NamespacePhase{}}
	rev, err := c.relist(ctx)
	if err != nil {
		return nil, err
	}
	go c.run(ctx, rev)
	return c, nil
}

// relist replaces the cache with what the store holds and returns the list's revision.
func (c *namespaceCache) relist(ctx context.Context) (int64, error) {
	list, err := c.store.List(ctx, c.prefix, storage.ListOptions{})
	if err != nil {
		return 0, fmt.Errorf("list namespaces: %w", err)
	}
	c.mu.Lock()
	c.phases = map[string]corev1.NamespacePhase{}
	c.mu.Unlock()
	for _, o := range list.Items {
		c.apply(storage.Added, o.Key, o.Value)
	}
	return list.Revision, nil
}

// run follows namespace changes until ctx ends. When its revision was compacted away it
// lists again, so that a namespace deleted in the gap does not linger in the cache.
func (c *namespaceCache) run(ctx context.Context, rev int64) {
	for ctx.Err() == nil {
		events, errs := c.store.Watch(ctx, c.prefix, rev)
		for ev := range events {
			c.apply(ev.Type, ev.Key, ev.Value)
			rev = ev.Revision
		}
		if err := <-errs; err != nil && errors.Is(err, storage.ErrGone) {
			for ctx.Err() == nil {
				r, err := c.relist(ctx)
				if err == nil {
					rev = r
					break
				}
				sleepCtx(ctx, time.Second)
			}
		}
	}
}

func (c *namespaceCache) apply(t storage.EventType, key string, value []byte) {
	name := key[strings.LastIndex(key, "/")+1:]
	c.mu.Lock()
	defer c.mu.Unlock()
	if t == storage.Deleted {
		delete(c.phases, name)
		return
	}
	var ns corev1.Namespace
	if err := json.Unmarshal(value, &ns); err != nil {
		return
	}
	phase := ns.Status.Phase
	if ns.DeletionTimestamp != nil {
		phase = corev1.NamespaceTerminating
	}
	c.phases[name] = phase
}

// admit refuses a create in a namespace that does not exist or is being deleted, with the
// words of Kubernetes' NamespaceLifecycle admission.
func (c *namespaceCache) admit(ctx context.Context, name string) error {
	c.mu.RLock()
	phase, ok := c.phases[name]
	c.mu.RUnlock()
	if !ok {
		// The watch may lag a namespace created a moment ago: ask the store.
		o, err := c.store.Get(ctx, c.prefix+name)
		if err != nil {
			if errors.Is(err, storage.ErrNotFound) {
				return apierrors.NewNotFound(groupResource("", "namespaces"), name)
			}
			return apierrors.NewInternalError(err)
		}
		c.apply(storage.Added, o.Key, o.Value)
		c.mu.RLock()
		phase = c.phases[name]
		c.mu.RUnlock()
	}
	if phase == corev1.NamespaceTerminating {
		return apierrors.NewForbidden(groupResource("", "namespaces"), name,
			fmt.Errorf("unable to create new content in namespace %s because it is being terminated", name))
	}
	return nil
}
