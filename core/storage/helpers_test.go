package storage

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// testCtx bounds each test's etcd calls so a hung server fails the test instead of the run.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startEtcd runs an embedded etcd in a fresh temp dir for one test.
func startEtcd(t *testing.T) *Embedded {
	t.Helper()
	e, err := StartEmbedded(testCtx(t), t.TempDir())
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func newClient(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	c, err := NewClient(endpoints)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	// Registered after the server's cleanup, so it runs first: a client left open on a
	// stopped server keeps retrying in the background.
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// newStore returns a Store under "/registry" on its own embedded etcd, and the raw
// client for checks that go around the Store.
func newStore(t *testing.T) (*Store, *clientv3.Client) {
	t.Helper()
	e := startEtcd(t)
	c := newClient(t, e.Endpoints())
	return New(c, "/registry"), c
}

func mustCreate(t *testing.T, s *Store, key, value string) int64 {
	t.Helper()
	rev, err := s.Create(testCtx(t), key, []byte(value))
	if err != nil {
		t.Fatalf("Create %s: %v", key, err)
	}
	return rev
}

func mustUpdate(t *testing.T, s *Store, key, value string) int64 {
	t.Helper()
	rev, err := s.Update(testCtx(t), key, []byte(value), 0)
	if err != nil {
		t.Fatalf("Update %s: %v", key, err)
	}
	return rev
}

// nextEvent waits for one event, failing the test on timeout or on the watch ending.
func nextEvent(t *testing.T, events <-chan Event, errc <-chan error) Event {
	t.Helper()
	select {
	case ev, ok := <-events:
		if !ok {
			t.Fatalf("watch ended early: %v", <-errc)
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no watch event within 10s")
	}
	return Event{}
}

// watchEnd waits for the event channel to close and returns what errc reported.
func watchEnd(t *testing.T, events <-chan Event, errc <-chan error) error {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return <-errc
			}
			t.Fatalf("unexpected event while waiting for the watch to end: %+v", ev)
		case <-deadline:
			t.Fatal("watch did not end within 10s")
		}
	}
}
