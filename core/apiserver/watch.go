package apiserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"

	"berth.dev/berth/core/storage"
)

// bookmarkInterval is how often a watch that allows bookmarks is told the current revision.
const bookmarkInterval = time.Minute

// watchEvent is one line of a watch stream (metav1.WatchEvent with the object inline).
type watchEvent struct {
	Type   watch.EventType `json:"type"`
	Object any             `json:"object"`
}

// watch streams changes of a collection (or of one object, via metadata.name) as Kubernetes
// does: newline-separated JSON events, flushed one by one.
func (q *request) watch() {
	v := q.r.URL.Query()
	opts, err := q.listOptions()
	if err != nil {
		q.fail(err)
		return
	}
	opts.limit, opts.cont, opts.revision = 0, "", 0
	if q.info.Name != "" {
		// GET /watch/.../{name} watches one object.
		extra, err := parseSelector(q.res, "", "metadata.name="+q.info.Name)
		if err != nil {
			q.fail(err)
			return
		}
		opts.sel.fields = andFields(opts.sel.fields, extra.fields)
	}
	form, ok := negotiate(q.r.Header.Get("Accept"))
	if !ok {
		q.fail(notAcceptable("only application/json is served"))
		return
	}
	timeout := 30*time.Minute + time.Duration(time.Now().UnixNano()%int64(30*time.Minute))
	if s := v.Get("timeoutSeconds"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			q.fail(apierrors.NewBadRequest(fmt.Sprintf("timeoutSeconds must be a non-negative integer, not %q", s)))
			return
		}
		timeout = time.Duration(n) * time.Second
	}
	ctx, cancel := context.WithTimeout(q.ctx(), timeout)
	defer cancel()

	rv := v.Get("resourceVersion")
	sendInitial := v.Get("sendInitialEvents") == "true"
	prefix := collectionPrefix(q.res, q.info.Namespace)
	var initial []runtime.Object
	var from int64
	if rv == "" || rv == "0" || sendInitial {
		// Start from the current state: synthetic ADDED events for what exists, then changes.
		res, err := q.h.listObjects(q, prefix, opts)
		if err != nil {
			q.fail(err)
			return
		}
		initial, from = res.items, res.revision
	} else {
		n, err := strconv.ParseInt(rv, 10, 64)
		if err != nil {
			q.fail(apierrors.NewBadRequest(fmt.Sprintf("resourceVersion must be an integer, not %q", rv)))
			return
		}
		from = n
	}
	events, errs, stop := q.watchEvents(ctx, prefix, from, !opts.sel.empty())
	defer stop()

	flusher, _ := q.w.(http.Flusher)
	q.w.Header().Set("Content-Type", "application/json")
	q.w.Header().Set("Transfer-Encoding", "chunked")
	q.w.WriteHeader(http.StatusOK)
	if flusher != nil {
		flusher.Flush()
	}
	enc := json.NewEncoder(q.w)
	headers := true
	send := func(t watch.EventType, obj runtime.Object) bool {
		out, err := q.transform(form, obj, headers)
		if err != nil {
			out = toStatus(err)
			t = watch.Error
		}
		headers = false
		if err := enc.Encode(watchEvent{Type: t, Object: out}); err != nil {
			return false
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	for _, obj := range initial {
		if !send(watch.Added, obj) {
			return
		}
	}
	bookmarks := isTrue(v.Get("allowWatchBookmarks"))
	last := from
	if sendInitial && bookmarks {
		if !q.sendBookmark(enc, flusher, last, true) {
			return
		}
	}
	ticker := time.NewTicker(bookmarkInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
			if bookmarks && !q.sendBookmark(enc, flusher, last, false) {
				return
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			if errors.Is(err, storage.ErrGone) {
				send(watch.Error, &metav1.Status{TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"}, Status: metav1.StatusFailure,
					Code: http.StatusGone, Reason: metav1.StatusReasonExpired, Message: fmt.Sprintf("too old resource version: %d: %v", from, err)})
			} else if ctx.Err() == nil {
				send(watch.Error, toStatus(apierrors.NewInternalError(err)))
			}
			return
		case ev, ok := <-events:
			if !ok {
				return
			}
			last = ev.rev
			t, obj, ok := q.filterEvent(ev, opts.sel)
			if !ok {
				continue
			}
			if !send(t, obj) {
				return
			}
		}
	}
}

// watchEvents is the feed of a watch: from the resource's shared hub when it has the
// start revision (watchhub.go), else from an etcd watch of the request's own, decoded
// here. errs reports why the etcd watch ended (never for a hub feed, which just closes).
// stop must be called when the watch ends.
func (q *request) watchEvents(ctx context.Context, prefix string, from int64, needPrev bool) (<-chan hubEvent, <-chan error, func()) {
	if q.h.watches != nil {
		if sub, cancel, ok := q.h.watches.subscribe(q.res, prefix, from); ok {
			return sub.ch, nil, cancel
		}
	}
	raw, errs := q.h.store.Watch(ctx, prefix, from)
	out := make(chan hubEvent, 16)
	go func() {
		defer close(out)
		for ev := range raw {
			he := hubEvent{typ: ev.Type, key: ev.Key, rev: ev.Revision}
			he.obj, he.err = decodeStored(q.res, ev.Value, ev.Revision)
			if needPrev && ev.Type == storage.Modified && ev.PrevValue != nil && he.err == nil {
				if prev, err := decodeStored(q.res, ev.PrevValue, ev.Revision); err == nil {
					he.prev = prev
				}
			}
			select {
			case out <- he:
			case <-ctx.Done():
				// The request is over; let the store's watch drain and end.
				for range raw {
				}
				return
			}
		}
	}()
	return out, errs, func() {}
}

// filterEvent applies the selector to both sides of a change: an object that stops
// matching is reported DELETED and one that starts matching ADDED.
func (q *request) filterEvent(ev hubEvent, sel selector) (watch.EventType, runtime.Object, bool) {
	if ev.err != nil {
		return watch.Error, toStatus(apierrors.NewInternalError(ev.err)), true
	}
	obj := ev.obj
	switch ev.typ {
	case storage.Deleted:
		return watch.Deleted, obj, sel.matches(q.res, obj)
	case storage.Added:
		return watch.Added, obj, sel.matches(q.res, obj)
	}
	now := sel.matches(q.res, obj)
	if sel.empty() || ev.prev == nil {
		return watch.Modified, obj, now
	}
	before := sel.matches(q.res, ev.prev)
	switch {
	case now && before:
		return watch.Modified, obj, true
	case now:
		return watch.Added, obj, true
	case before:
		return watch.Deleted, obj, true
	}
	return "", nil, false
}

// sendBookmark tells the client the revision it has seen up to, so a restarted watch resumes there.
func (q *request) sendBookmark(enc *json.Encoder, flusher http.Flusher, rev int64, initialEnd bool) bool {
	obj := q.res.New()
	m, _ := meta.Accessor(obj)
	m.SetResourceVersion(formatRV(rev))
	if initialEnd {
		m.SetAnnotations(map[string]string{metav1.InitialEventsAnnotationKey: "true"})
	}
	if err := enc.Encode(watchEvent{Type: watch.Bookmark, Object: obj}); err != nil {
		return false
	}
	if flusher != nil {
		flusher.Flush()
	}
	return true
}
