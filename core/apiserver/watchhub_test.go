package apiserver

import (
	"fmt"
	"testing"

	"berth.dev/berth/core/storage"
)

// TestHubFeeds checks a hub's feeds without etcd: replay from the buffer, prefixes,
// revisions at or before a subscriber's start skipped, a start revision the ring no
// longer holds refused (the watch then falls back to etcd), and a subscriber too slow
// dropped, its feed closed, while the others go on.
func TestHubFeeds(t *testing.T) {
	h := &watchHub{floor: 100, last: 100, subs: map[*hubSubscriber]struct{}{}}
	ev := func(rev int64, key string) hubEvent { return hubEvent{typ: storage.Modified, key: key, rev: rev} }
	h.publish(ev(101, "/pods/a/p1"))
	h.publish(ev(102, "/pods/b/p2"))
	h.publish(ev(103, "/pods/a/p3"))

	revs := func(s *hubSubscriber) []int64 {
		var out []int64
		for {
			select {
			case e, ok := <-s.ch:
				if !ok {
					return append(out, -1) // closed
				}
				out = append(out, e.rev)
			default:
				return out
			}
		}
	}
	all, stopAll, ok := h.subscribe("/pods/", 100)
	if !ok {
		t.Fatal("a subscriber from the hub's start revision was refused")
	}
	nsA, stopA, _ := h.subscribe("/pods/a/", 101)
	if got := fmt.Sprint(revs(all)); got != "[101 102 103]" {
		t.Errorf("replay to a cluster-wide watch from 100: %s", got)
	}
	if got := fmt.Sprint(revs(nsA)); got != "[103]" {
		t.Errorf("replay to a watch of namespace a from 101: %s", got)
	}
	h.publish(ev(104, "/pods/a/p1"))
	h.publish(ev(105, "/pods/b/p1"))
	if got := fmt.Sprint(revs(all)); got != "[104 105]" {
		t.Errorf("live events to the cluster-wide watch: %s", got)
	}
	if got := fmt.Sprint(revs(nsA)); got != "[104]" {
		t.Errorf("live events to the watch of namespace a: %s", got)
	}
	ahead, stopAhead, _ := h.subscribe("/pods/", 200)
	h.publish(ev(106, "/pods/a/p1"))
	if got := revs(ahead); len(got) != 0 {
		t.Errorf("a watch from revision 200 got events %v before its revision", got)
	}
	stopAhead()
	stopA()
	if got := fmt.Sprint(revs(nsA)); got != "[106 -1]" {
		t.Errorf("a stopped feed: %s, want 106 and then closed", got)
	}

	// The ring wraps: revisions before its oldest event can no longer be served.
	// (More than a subscriber's buffer too, for the drop below.)
	for i := range hubBuffer + subscriberBuffer {
		h.publish(ev(int64(1000+i), "/pods/c/x"))
	}
	if _, _, ok := h.subscribe("/pods/", 500); ok {
		t.Errorf("a subscriber from revision 500 was accepted after the ring moved past it (floor %d)", h.floor)
	}
	if _, _, ok := h.subscribe("/pods/", h.floor); !ok {
		t.Errorf("a subscriber from the floor %d was refused", h.floor)
	}

	// `all` has not read its last subscriberBuffer events: it is dropped and closed.
	if _, ok := h.subs[all]; ok {
		t.Errorf("a subscriber %d events behind is still fed", hubBuffer)
	}
	n := 0
	for range all.ch {
		n++
		if n > 2*subscriberBuffer {
			t.Fatal("the slow subscriber's feed was not closed")
		}
	}
	if n == 0 || n > subscriberBuffer+3 {
		t.Errorf("the dropped subscriber's feed held %d events, want 1..%d and then closed", n, subscriberBuffer+3)
	}
	stopAll() // after a drop: no double close
}
