package storage

import (
	"context"
	"errors"
	"testing"
)

// wantEvent is an expected event; Revision 0 means "do not check".
type wantEvent struct {
	typ      EventType
	key      string
	value    string
	revision int64
}

func checkEvents(t *testing.T, events <-chan Event, errc <-chan error, want []wantEvent) {
	t.Helper()
	for i, w := range want {
		ev := nextEvent(t, events, errc)
		if ev.Type != w.typ || ev.Key != w.key || string(ev.Value) != w.value || ev.Revision != w.revision {
			t.Fatalf("event %d = {%s %s %q rev %d}, want {%s %s %q rev %d}",
				i, ev.Type, ev.Key, ev.Value, ev.Revision, w.typ, w.key, w.value, w.revision)
		}
	}
}

func TestWatchFromNow(t *testing.T) {
	s, _ := newStore(t)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	mustCreate(t, s, "/pods/ns1/before", "old") // before the watch: not seen

	events, errc := s.Watch(ctx, "/pods/ns1/", 0)
	// Every write below completes after Watch returned, so each must be seen, and the
	// sibling prefixes never.
	mustCreate(t, s, "/pods/ns10/x", "sibling")
	r1 := mustCreate(t, s, "/pods/ns1/a", "v1")
	mustCreate(t, s, "/pods/ns1", "no slash")
	r2 := mustUpdate(t, s, "/pods/ns1/a", "v2")
	del, err := s.Delete(ctx, "/pods/ns1/a", 0)
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, s, "/pods/ns10/x", "sibling 2")
	r4 := mustCreate(t, s, "/pods/ns1/a", "again")

	checkEvents(t, events, errc, []wantEvent{
		{Added, "/pods/ns1/a", "v1", r1},
		{Modified, "/pods/ns1/a", "v2", r2},
		{Deleted, "/pods/ns1/a", "v2", del.Revision},
		{Added, "/pods/ns1/a", "again", r4},
	})

	// Ending the context closes the channels with no error.
	cancel()
	if err := watchEnd(t, events, errc); err != nil {
		t.Fatalf("watch ended by its context reported %v, want nil", err)
	}
}

func TestWatchReplay(t *testing.T) {
	s, _ := newStore(t)
	ctx := testCtx(t)
	r0 := mustCreate(t, s, "/cm/ns/seen-before", "x")
	r1 := mustCreate(t, s, "/cm/ns/a", "v1")
	r2 := mustUpdate(t, s, "/cm/ns/a", "v2")
	r3 := mustCreate(t, s, "/cm/ns/b", "b1")
	del, err := s.Delete(ctx, "/cm/ns/a", r2)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		fromRev int64
		want    []wantEvent
	}{
		{
			name:    "from the revision before the writes",
			fromRev: r0,
			want: []wantEvent{
				{Added, "/cm/ns/a", "v1", r1},
				{Modified, "/cm/ns/a", "v2", r2},
				{Added, "/cm/ns/b", "b1", r3},
				{Deleted, "/cm/ns/a", "v2", del.Revision},
			},
		},
		{
			name:    "from the middle",
			fromRev: r2,
			want: []wantEvent{
				{Added, "/cm/ns/b", "b1", r3},
				{Deleted, "/cm/ns/a", "v2", del.Revision},
			},
		},
	}
	var lives []wantEvent // each case's live write, replayed by the cases after it
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			events, errc := s.Watch(wctx, "/cm/ns/", tt.fromRev)
			checkEvents(t, events, errc, append(tt.want, lives...))
			// Then the live stream continues after the replay.
			key := "/cm/ns/live-" + tt.name
			live := wantEvent{Added, key, "l", mustCreate(t, s, key, "l")}
			lives = append(lives, live)
			checkEvents(t, events, errc, []wantEvent{live})
		})
	}
}

func TestWatchCompacted(t *testing.T) {
	s, _ := newStore(t)
	ctx := testCtx(t)
	old := mustCreate(t, s, "/cm/ns/a", "v1")
	mustUpdate(t, s, "/cm/ns/a", "v2")
	now := mustUpdate(t, s, "/cm/ns/a", "v3")
	if err := s.Compact(ctx, now); err != nil {
		t.Fatal(err)
	}

	events, errc := s.Watch(ctx, "/cm/ns/", old)
	if err := watchEnd(t, events, errc); !errors.Is(err, ErrGone) {
		t.Fatalf("watch from compacted revision %d (compacted at %d) ended with %v, want ErrGone", old, now, err)
	}

	// From the compacted revision itself the history is complete: no error.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, errc = s.Watch(wctx, "/cm/ns/", now)
	r := mustUpdate(t, s, "/cm/ns/a", "v4")
	checkEvents(t, events, errc, []wantEvent{{Modified, "/cm/ns/a", "v4", r}})
}

// TestWatchEtcdFails checks that the watch reports an error, not a silent close, when
// etcd goes away under it.
func TestWatchEtcdFails(t *testing.T) {
	e := startEtcd(t)
	c := newClient(t, e.Endpoints())
	s := New(c, "/registry")
	ctx := testCtx(t)

	events, errc := s.Watch(ctx, "/cm/", 0)
	r := mustCreate(t, s, "/cm/a", "x")
	checkEvents(t, events, errc, []wantEvent{{Added, "/cm/a", "x", r}})

	// Closing the client is what a failed etcd connection looks like to the watch
	// goroutine: its channel closes while the caller's context is still live.
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	err := watchEnd(t, events, errc)
	if err == nil {
		t.Fatal("watch ended without an error while its context was live")
	}
	t.Logf("watch error after client close: %v", err)
}
