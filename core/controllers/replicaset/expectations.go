package replicaset

import (
	"sync"
	"time"
)

// expectationsTimeout is how long the controller trusts its own count of the creates and
// deletes it is waiting to observe; after that a lost watch event can no longer stall an
// owner (Kubernetes' ExpectationsTimeout).
const expectationsTimeout = 5 * time.Minute

// expectations remembers, per owner, how many pod creations and which pod deletions the
// controller has asked for and not yet seen in the pod informer, as Kubernetes'
// UIDTrackingControllerExpectations does. While an owner waits, its replicas are not
// synced again: the informer lags behind the API, and counting from it would create or
// delete the same pods twice.
type expectations struct {
	mu      sync.Mutex
	now     func() time.Time
	byOwner map[Key]*expectation
}

// expectation is what one owner still waits for.
type expectation struct {
	adds    int
	deletes map[string]bool // pod keys (namespace/name) whose deletion is still unseen
	set     time.Time
}

func newExpectations() *expectations {
	return &expectations{now: time.Now, byOwner: map[Key]*expectation{}}
}

// satisfied reports whether the owner may sync its replicas: it expects nothing, everything
// it expected has been observed, or it has waited too long.
func (e *expectations) satisfied(key Key) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	exp, ok := e.byOwner[key]
	if !ok {
		return true
	}
	return (exp.adds <= 0 && len(exp.deletes) == 0) || e.now().Sub(exp.set) > expectationsTimeout
}

// expectCreations replaces the owner's expectations with n creations.
func (e *expectations) expectCreations(key Key, n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.byOwner[key] = &expectation{adds: n, set: e.now()}
}

// expectDeletions replaces the owner's expectations with the deletion of these pods.
func (e *expectations) expectDeletions(key Key, podKeys []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	exp := &expectation{deletes: make(map[string]bool, len(podKeys)), set: e.now()}
	for _, k := range podKeys {
		exp.deletes[k] = true
	}
	e.byOwner[key] = exp
}

// creationsObserved lowers the creations the owner waits for by n: pods the informer has
// seen, or creations that were never attempted or failed.
func (e *expectations) creationsObserved(key Key, n int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if exp, ok := e.byOwner[key]; ok {
		exp.adds -= n
	}
}

// deletionObserved records that the pod is gone (or going); a pod the owner did not ask to
// delete, or one already counted when its deletionTimestamp was set, changes nothing.
func (e *expectations) deletionObserved(key Key, podKey string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if exp, ok := e.byOwner[key]; ok {
		delete(exp.deletes, podKey)
	}
}

// forget drops the owner's expectations, so that a namesake created later starts clean.
func (e *expectations) forget(key Key) {
	e.mu.Lock()
	defer e.mu.Unlock()
	delete(e.byOwner, key)
}
