package apiserver

import (
	"context"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/runtime"

	"berth.dev/berth/core/registry"
	"berth.dev/berth/core/storage"
)

// hubBuffer is how many recent events of a resource a hub keeps, so that a watch that
// starts a little behind (an informer's list, then its watch) is served from memory.
const hubBuffer = 1024

// subscriberBuffer is how far a watcher may fall behind before the hub drops it; its
// client then watches again from the last revision it saw, as after a timeout.
const subscriberBuffer = 1024

// watchHubs shares one etcd watch, and one decoding of each event, among all the watches
// of a resource: with a thousand node agents each watching its own pods, every pod event
// would otherwise be sent by etcd and decoded a thousand times (kube-apiserver's watch
// cache exists for the same reason). A watch whose start revision the hub no longer has
// falls back to an etcd watch of its own.
type watchHubs struct {
	ctx   context.Context
	store *storage.Store
	mu    sync.Mutex
	hubs  map[*registry.Resource]*watchHub
}

func newWatchHubs(ctx context.Context, store *storage.Store) *watchHubs {
	return &watchHubs{ctx: ctx, store: store, hubs: map[*registry.Resource]*watchHub{}}
}

// hubEvent is one change of a resource, decoded once for every watcher.
type hubEvent struct {
	typ  storage.EventType
	key  string
	rev  int64
	obj  runtime.Object // the object (its last state for a deletion), or nil with err
	prev runtime.Object // the previous state of a modified object, when etcd sent it
	err  error          // the object could not be decoded
}

// watchHub follows one resource cluster-wide from the revision it started at.
type watchHub struct {
	res *registry.Resource

	mu sync.Mutex
	// floor is the revision from which the buffer is complete: events after floor up to
	// last are all in buf (floor is the start revision until the ring wraps).
	floor, last int64
	buf         []hubEvent // ring, oldest first from head
	head        int
	subs        map[*hubSubscriber]struct{}
	stopped     bool
}

// hubSubscriber is one watch's feed from a hub: events with a revision after from whose
// key starts with prefix. ch is closed when the hub stops or drops the subscriber.
type hubSubscriber struct {
	prefix string
	from   int64
	ch     chan hubEvent
}

// subscribe returns a feed of res's events after revision from under prefix, or false
// when the hub cannot serve that revision (the caller watches etcd itself). cancel must
// be called when the watch ends.
func (w *watchHubs) subscribe(res *registry.Resource, prefix string, from int64) (sub *hubSubscriber, cancel func(), ok bool) {
	hub, err := w.hub(res)
	if err != nil {
		return nil, nil, false
	}
	return hub.subscribe(prefix, from)
}

// subscribe adds a feed of the hub's events after from under prefix, replaying what the
// buffer holds of them first; false when the buffer does not reach back to from.
func (h *watchHub) subscribe(prefix string, from int64) (sub *hubSubscriber, cancel func(), ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.stopped || from < h.floor {
		return nil, nil, false
	}
	var replay []hubEvent
	for i := range len(h.buf) {
		ev := h.buf[(h.head+i)%len(h.buf)]
		if ev.rev > from && strings.HasPrefix(ev.key, prefix) {
			replay = append(replay, ev)
		}
	}
	sub = &hubSubscriber{prefix: prefix, from: from, ch: make(chan hubEvent, len(replay)+subscriberBuffer)}
	for _, ev := range replay {
		sub.ch <- ev
	}
	h.subs[sub] = struct{}{}
	return sub, func() { h.drop(sub) }, true
}

// hub returns res's hub, starting it from etcd's current revision when there is none.
func (w *watchHubs) hub(res *registry.Resource) (*watchHub, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if h, ok := w.hubs[res]; ok {
		h.mu.Lock()
		stopped := h.stopped
		h.mu.Unlock()
		if !stopped {
			return h, nil
		}
	}
	rev, err := w.store.Revision(w.ctx)
	if err != nil {
		return nil, err
	}
	h := &watchHub{res: res, floor: rev, last: rev, subs: map[*hubSubscriber]struct{}{}}
	events, errs := w.store.Watch(w.ctx, collectionPrefix(res, ""), rev)
	go h.run(events, errs)
	w.hubs[res] = h
	return h, nil
}

// run decodes each event once and hands it to the subscribers it concerns, until the
// etcd watch ends; then every subscriber's feed is closed and its client watches again.
func (h *watchHub) run(events <-chan storage.Event, errs <-chan error) {
	defer func() {
		h.mu.Lock()
		h.stopped = true
		for s := range h.subs {
			close(s.ch)
		}
		h.subs = nil
		h.mu.Unlock()
	}()
	for ev := range events {
		he := hubEvent{typ: ev.Type, key: ev.Key, rev: ev.Revision}
		he.obj, he.err = decodeStored(h.res, ev.Value, ev.Revision)
		if ev.Type == storage.Modified && ev.PrevValue != nil && he.err == nil {
			// The previous state is only for selectors (did the object start or stop
			// matching?); one that cannot be decoded counts as absent.
			if prev, err := decodeStored(h.res, ev.PrevValue, ev.Revision); err == nil {
				he.prev = prev
			}
		}
		h.publish(he)
	}
	<-errs
}

func (h *watchHub) publish(ev hubEvent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.buf) < hubBuffer {
		h.buf = append(h.buf, ev)
	} else {
		h.floor = h.buf[h.head].rev
		h.buf[h.head] = ev
		h.head = (h.head + 1) % len(h.buf)
	}
	h.last = ev.rev
	for s := range h.subs {
		if ev.rev <= s.from || !strings.HasPrefix(ev.key, s.prefix) {
			continue
		}
		select {
		case s.ch <- ev:
		default:
			// Too slow: dropped, so that one stuck client cannot hold the others back.
			delete(h.subs, s)
			close(s.ch)
		}
	}
}

// drop ends a subscriber's feed (its watch ended).
func (h *watchHub) drop(s *hubSubscriber) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.subs[s]; ok {
		delete(h.subs, s)
		close(s.ch)
	}
}
