package agent

import (
	"sync"
	"time"
)

// The kubelet's back-off for restarting crashed containers and for pulling images: 10 s,
// doubling to 5 min, forgotten after 10 min (twice the cap) without a failure.
const (
	backoffInitial = 10 * time.Second
	backoffMax     = 5 * time.Minute
)

// backoff keeps one exponential delay per key (pod UID and container name, or pod UID and
// image). It is safe for concurrent use.
type backoff struct {
	initial, max time.Duration
	mu           sync.Mutex
	entries      map[string]backoffEntry
}

type backoffEntry struct {
	delay time.Duration // the current window
	last  time.Time     // when the last attempt was recorded
}

func newBackoff(initial, max time.Duration) *backoff {
	return &backoff{initial: initial, max: max, entries: map[string]backoffEntry{}}
}

// expired tells whether e is old enough to start over: a container that ran fine for twice
// the cap has earned a fresh start.
func (b *backoff) expired(e backoffEntry, now time.Time) bool {
	return now.Sub(e.last) > 2*b.max
}

// Remaining is how long key must still wait, counting its current window from since (the
// container's finish, say); zero when it may go now.
func (b *backoff) Remaining(key string, since, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.entries[key]
	if !ok || b.expired(e, now) {
		return 0
	}
	return max(since.Add(e.delay).Sub(now), 0)
}

// RemainingSinceLast is Remaining counted from the last recorded attempt: for image pulls,
// whose window starts at the failed pull.
func (b *backoff) RemainingSinceLast(key string, now time.Time) time.Duration {
	b.mu.Lock()
	e, ok := b.entries[key]
	b.mu.Unlock()
	if !ok {
		return 0
	}
	return b.Remaining(key, e.last, now)
}

// Next records an attempt at now and returns the new window: the initial delay the first
// time (or after a long quiet spell), twice the previous one after that, capped.
func (b *backoff) Next(key string, now time.Time) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.entries[key]
	if !ok || b.expired(e, now) {
		e.delay = b.initial
	} else {
		e.delay = min(2*e.delay, b.max)
	}
	e.last = now
	b.entries[key] = e
	return e.delay
}

// Delay is key's current window (zero if none).
func (b *backoff) Delay(key string) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.entries[key].delay
}

// Forget drops key, when its pod is gone or its image was pulled.
func (b *backoff) Forget(key string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	delete(b.entries, key)
}

// GC drops the expired entries.
func (b *backoff) GC(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, e := range b.entries {
		if b.expired(e, now) {
			delete(b.entries, k)
		}
	}
}
