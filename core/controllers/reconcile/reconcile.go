// Package reconcile is the shape every berth controller takes (after controller-runtime's
// pkg/reconcile): one level-based Reconcile per key, which reads the world, makes it right
// and returns; workers take the keys off a rate-limited work queue.
package reconcile

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"k8s.io/client-go/util/workqueue"
)

// Result tells the worker whether the key needs another pass although it succeeded.
type Result struct {
	// Requeue asks for another pass after the queue's per-key backoff.
	Requeue bool
	// RequeueAfter asks for another pass after this long; it wins over Requeue.
	RequeueAfter time.Duration
}

// Reconciler makes the state of the world right for one key.
type Reconciler[K comparable] interface {
	Reconcile(ctx context.Context, key K) (Result, error)
}

// Func adapts a function to a Reconciler.
type Func[K comparable] func(ctx context.Context, key K) (Result, error)

// Reconcile calls f.
func (f Func[K]) Reconcile(ctx context.Context, key K) (Result, error) { return f(ctx, key) }

type terminalError struct{ err error }

func (e terminalError) Error() string { return e.err.Error() }
func (e terminalError) Unwrap() error { return e.err }

// Terminal marks an error that retrying cannot fix (an unknown kind, an invalid
// reference): the worker logs it and drops the key instead of backing off forever.
func Terminal(err error) error {
	if err == nil {
		return nil
	}
	return terminalError{err}
}

// IsTerminal reports whether err was marked with Terminal.
func IsTerminal(err error) bool {
	var t terminalError
	return errors.As(err, &t)
}

// Work runs workers that reconcile the keys of q until ctx ends, then shuts q down and
// returns once every worker has finished its current key.
func Work[K comparable](ctx context.Context, q workqueue.TypedRateLimitingInterface[K], r Reconciler[K], workers int, log *slog.Logger) {
	if workers < 1 {
		workers = 1
	}
	stop := context.AfterFunc(ctx, q.ShutDown)
	defer stop()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for processNext(ctx, q, r, log) {
			}
		}()
	}
	wg.Wait()
}

// processNext reconciles one key; it returns false once the queue is shut down.
func processNext[K comparable](ctx context.Context, q workqueue.TypedRateLimitingInterface[K], r Reconciler[K], log *slog.Logger) bool {
	key, quit := q.Get()
	if quit {
		return false
	}
	defer q.Done(key)
	res, err := r.Reconcile(ctx, key)
	switch {
	case err != nil && IsTerminal(err):
		log.Warn("giving up on key", "key", key, "err", err)
		q.Forget(key)
	case err != nil:
		if ctx.Err() == nil {
			log.Info("reconcile failed, will retry", "key", key, "err", err)
		}
		q.AddRateLimited(key)
	case res.RequeueAfter > 0:
		q.Forget(key)
		q.AddAfter(key, res.RequeueAfter)
	case res.Requeue:
		q.AddRateLimited(key)
	default:
		q.Forget(key)
	}
	return true
}
