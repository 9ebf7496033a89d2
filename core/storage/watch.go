package storage

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// watchBuffer lets etcd deliver a burst (a replay, a busy namespace) without waiting
// on the consumer for every event.
const watchBuffer = 128

// Watch streams the changes under prefix with a revision greater than fromRev, in
// revision order. fromRev 0 means "from now": the current revision is read first, so
// every write that completes after Watch returns is seen.
//
// Drain events until it is closed, then read errc once: nil means ctx ended; otherwise
// it is the reason the watch stopped (ErrGone when fromRev is compacted, and the client
// must list again). Both channels are closed when the watch ends. While etcd is
// unreachable the watch neither fails nor closes: clientv3 reconnects and resumes from
// the last delivered revision (ErrGone if that was compacted meanwhile).
//
// The caller passes prefix with its trailing "/" so that "/pods/ns1/" does not see
// "/pods/ns10/..."; it is used as given.
func (s *Store) Watch(ctx context.Context, prefix string, fromRev int64) (<-chan Event, <-chan error) {
	events := make(chan Event, watchBuffer)
	errc := make(chan error, 1) // buffered: the goroutine never blocks on reporting its end
	fail := func(err error) (<-chan Event, <-chan error) {
		errc <- err
		close(errc)
		close(events)
		return events, errc
	}

	full, err := s.fullKey(prefix)
	if err != nil {
		return fail(fmt.Errorf("watch %s: %w", prefix, err))
	}
	if fromRev < 0 {
		return fail(fmt.Errorf("watch %s: negative revision %d", prefix, fromRev))
	}
	if fromRev == 0 {
		// etcd's own "from now" is decided when the server registers the watch, which
		// happens after this function returns; pinning the revision here closes that gap.
		rev, err := s.Revision(ctx)
		if err != nil {
			return fail(fmt.Errorf("watch %s: %w", prefix, err))
		}
		fromRev = rev
	}

	// WithRequireLeader: a member cut off from its cluster ends the watch instead of
	// staying silent forever, as kube-apiserver does.
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := s.client.Watch(wctx, full, clientv3.WithPrefix(), clientv3.WithPrevKV(), clientv3.WithRev(fromRev+1))

	go func() {
		defer cancel()
		defer close(errc)
		defer close(events)
		for {
			var resp clientv3.WatchResponse
			var ok bool
			select {
			case <-ctx.Done():
				return
			case resp, ok = <-wch:
			}
			if !ok {
				if ctx.Err() == nil {
					errc <- fmt.Errorf("watch %s from revision %d: etcd closed the watch", prefix, fromRev)
				}
				return
			}
			if err := resp.Err(); err != nil {
				if resp.CompactRevision != 0 {
					err = fmt.Errorf("watch %s from revision %d: compacted at %d: %w", prefix, fromRev, resp.CompactRevision, ErrGone)
				} else if errors.Is(err, context.Canceled) && ctx.Err() != nil {
					return
				} else {
					err = fmt.Errorf("watch %s from revision %d: %w", prefix, fromRev, err)
				}
				errc <- err
				return
			}
			for _, ev := range resp.Events {
				out := Event{Key: s.relKey(ev.Kv.Key), Revision: ev.Kv.ModRevision}
				switch {
				case ev.Type == clientv3.EventTypeDelete:
					out.Type = Deleted
					if ev.PrevKv != nil {
						out.Value = ev.PrevKv.Value
					}
				case ev.IsCreate():
					out.Type, out.Value = Added, ev.Kv.Value
				default:
					out.Type, out.Value = Modified, ev.Kv.Value
					if ev.PrevKv != nil {
						out.PrevValue = ev.PrevKv.Value
					}
				}
				select {
				case events <- out:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return events, errc
}
