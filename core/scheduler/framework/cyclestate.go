package framework

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// StateData is what a plugin keeps in the CycleState between its extension points.
type StateData interface {
	// Clone copies the data so that a preemption dry run can change it safely; data that
	// is never changed after it is written may return itself.
	Clone() StateData
}

// StateKey names one plugin's entry in the CycleState.
type StateKey string

// CycleState is the scratch space of one scheduling cycle, shared by the plugins for one
// pod. Filter and Score run in parallel over nodes, so it is safe for concurrent use; the
// data is a sync.Map (written a few times per cycle, read for every node) so that those
// reads do not contend on a lock, as in Kubernetes.
type CycleState struct {
	data    sync.Map        // StateKey -> StateData
	mu      sync.Mutex      // guards skipped
	skipped map[string]bool // plugins that returned Skip at PreFilter or PreScore
	// filters are the Filter plugins not skipped this cycle, fixed once PreFilter has run
	// (nil before), so that filtering thousands of nodes does not look each one up.
	filters atomic.Pointer[[]FilterPlugin]
}

// NewCycleState returns an empty CycleState.
func NewCycleState() *CycleState {
	return &CycleState{skipped: map[string]bool{}}
}

// Read returns the data stored under key, or an error naming the key if there is none.
func (c *CycleState) Read(key StateKey) (StateData, error) {
	if d, ok := c.data.Load(key); ok {
		return d.(StateData), nil
	}
	return nil, fmt.Errorf("reading %q from the cycle state: not found", key)
}

// Write stores data under key.
func (c *CycleState) Write(key StateKey, d StateData) {
	c.data.Store(key, d)
}

// Delete removes key.
func (c *CycleState) Delete(key StateKey) {
	c.data.Delete(key)
}

// Clone returns a copy whose entries are the entries' clones.
func (c *CycleState) Clone() *CycleState {
	out := NewCycleState()
	c.data.Range(func(k, v any) bool {
		out.data.Store(k, v.(StateData).Clone())
		return true
	})
	c.mu.Lock()
	for k, v := range c.skipped {
		out.skipped[k] = v
	}
	c.mu.Unlock()
	out.filters.Store(c.filters.Load())
	return out
}

func (c *CycleState) setSkipped(plugin string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.skipped[plugin] = true
}

func (c *CycleState) isSkipped(plugin string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.skipped[plugin]
}

// reset empties the state for a fresh start of the same cycle (a batched cycle that fell
// back to a full one).
func (c *CycleState) reset() {
	c.data.Clear()
	c.mu.Lock()
	clear(c.skipped)
	c.mu.Unlock()
	c.filters.Store(nil)
}
