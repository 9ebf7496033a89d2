package reconcile

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/util/workqueue"
)

func TestWorkRetriesRequeuesAndDrops(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	r := Func[string](func(_ context.Context, key string) (Result, error) {
		mu.Lock()
		calls[key]++
		n := calls[key]
		mu.Unlock()
		switch key {
		case "fails-twice":
			if n <= 2 {
				return Result{}, errors.New("not yet")
			}
		case "terminal":
			return Result{}, Terminal(errors.New("never"))
		case "after":
			if n == 1 {
				return Result{RequeueAfter: 20 * time.Millisecond}, nil
			}
		case "requeue":
			if n == 1 {
				return Result{Requeue: true}, nil
			}
		}
		return Result{}, nil
	})
	q := workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](time.Millisecond, 10*time.Millisecond))
	for _, k := range []string{"ok", "fails-twice", "terminal", "after", "requeue"} {
		q.Add(k)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Work(ctx, q, r, 2, slog.New(slog.NewTextHandler(io.Discard, nil)))
		close(done)
	}()
	want := map[string]int{"ok": 1, "fails-twice": 3, "terminal": 1, "after": 2, "requeue": 2}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		reached := true
		for k, n := range want {
			if calls[k] < n {
				reached = false
			}
		}
		mu.Unlock()
		if reached {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("calls = %v, want %v", calls, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // nothing more may come
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Work did not return after ctx ended")
	}
	mu.Lock()
	defer mu.Unlock()
	for k, n := range want {
		if calls[k] != n {
			t.Errorf("%s reconciled %d times, want %d", k, calls[k], n)
		}
	}
}

func TestTerminal(t *testing.T) {
	base := errors.New("bad")
	if err := Terminal(base); !IsTerminal(err) || !errors.Is(err, base) {
		t.Errorf("Terminal(err) = %v: terminal %v, wraps %v", err, IsTerminal(err), errors.Is(err, base))
	}
	if IsTerminal(base) || Terminal(nil) != nil {
		t.Errorf("plain errors are not terminal; Terminal(nil) is nil")
	}
	wrapped := errors.Join(errors.New("context"), Terminal(base))
	if !IsTerminal(wrapped) {
		t.Errorf("a wrapped terminal error is terminal")
	}
}
