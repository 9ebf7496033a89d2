package daemonset

import (
	"sync"
	"time"
)

// expectationTTL is how long the controller waits for the informer to show its own
// creations and deletions before it stops trusting the count (Kubernetes' 5 minutes).
const expectationTTL = 5 * time.Minute

// expectations count, per DaemonSet key, the pod creations and deletions it issued that the
// informer has not shown yet. Until they are seen the pod cache is stale for that set, and
// acting on it would create pods twice (they are named by generateName).
type expectations struct {
	mu    sync.Mutex
	items map[string]*pending
}

type pending struct {
	adds, dels int
	at         time.Time
}

func newExpectations() *expectations { return &expectations{items: map[string]*pending{}} }

// satisfied reports whether everything issued for key has been observed (or has expired).
func (e *expectations) satisfied(key string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.items[key]
	return !ok || (p.adds <= 0 && p.dels <= 0) || time.Since(p.at) > expectationTTL
}

// expect records creations and deletions about to be issued for key.
func (e *expectations) expect(key string, adds, dels int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.items[key] = &pending{adds: adds, dels: dels, at: time.Now()}
}

// observe records a creation (add) or deletion seen by the informer, or one that failed.
func (e *expectations) observe(key string, add bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if p, ok := e.items[key]; ok {
		if add {
			p.adds--
		} else {
			p.dels--
		}
	}
}

func (e *expectations) forget(key string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.items, key)
}
