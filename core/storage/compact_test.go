package storage

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestRunCompactor(t *testing.T) {
	s, _ := newStore(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	old := mustCreate(t, s, "/cm/a", "v1")
	mustUpdate(t, s, "/cm/a", "v2")

	done := make(chan struct{})
	go func() {
		defer close(done)
		s.RunCompactor(ctx, 100*time.Millisecond)
	}()

	// The first tick only records the revision; a later one compacts past old.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := s.List(ctx, "/cm/", ListOptions{Revision: old})
		if errors.Is(err, ErrGone) {
			break
		}
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("revision %d still readable 10s after starting a 100ms compactor", old)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The latest state survives compaction.
	if obj, err := s.Get(ctx, "/cm/a"); err != nil || string(obj.Value) != "v2" {
		t.Fatalf("Get after compaction = %q, %v", obj.Value, err)
	}

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("RunCompactor did not return after its context ended")
	}
}

// TestCompactStepSharesWork checks the kube-apiserver protocol: of two compactors on
// one etcd, only the first to claim an interval compacts, and the other adopts its version.
func TestCompactStepSharesWork(t *testing.T) {
	s, c := newStore(t)
	other := New(c, "/other")
	ctx := testCtx(t)
	r1 := mustCreate(t, s, "/cm/a", "v1")
	r2 := mustUpdate(t, s, "/cm/a", "v2")

	// Both at version 0; the first remembers r1 from its last tick, the second r2.
	v, rev, err := s.compactStep(ctx, 0, r1)
	if err != nil || v != 1 {
		t.Fatalf("first compactor: version %d, %v; want 1", v, err)
	}
	ov, orev, err := other.compactStep(ctx, 0, r2)
	if err != nil || ov != 1 {
		t.Fatalf("second compactor lost the race and must adopt version 1: got %d, %v", ov, err)
	}
	// Only the first compacted: r1 is still readable (the second did not compact to r2)
	// and r1-1 is not.
	if _, err := s.List(ctx, "/cm/", ListOptions{Revision: r1}); err != nil {
		t.Fatalf("list at r1 (only the first compactor's target): %v", err)
	}
	if _, err := s.List(ctx, "/cm/", ListOptions{Revision: r1 - 1}); !errors.Is(err, ErrGone) {
		t.Fatalf("list before compacted revision: %v, want ErrGone", err)
	}
	if rev <= r2 || orev < rev {
		t.Fatalf("remembered revisions %d, %d; want after %d", rev, orev, r2)
	}
}
