package framework

import (
	"fmt"
	"sync"
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
// pod. Filter and Score run in parallel over nodes, so it is safe for concurrent use.
type CycleState struct {
	mu      sync.RWMutex
	data    map[StateKey]StateData
	skipped map[string]bool // plugins that returned Skip at PreFilter or PreScore
	// filters are the Filter plugins not skipped this cycle, fixed once PreFilter has run
	// (nil before), so that filtering thousands of nodes does not look each one up.
	filters []FilterPlugin
}

// NewCycleState returns an empty CycleState.
func NewCycleState() *CycleState {
	return &CycleState{data: map[StateKey]StateData{}, skipped: map[string]bool{}}
}

// Read returns the data stored under key, or an error naming the key if there is none.
func (c *CycleState) Read(key StateKey) (StateData, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if d, ok := c.data[key]; ok {
		return d, nil
	}
	return nil, fmt.Errorf("reading %q from the cycle state: not found", key)
}

// Write stores data under key.
func (c *CycleState) Write(key StateKey, d StateData) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.data[key] = d
}

// Delete removes key.
func (c *CycleState) Delete(key StateKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.data, key)
}

// Clone returns a copy whose entries are the entries' clones.
func (c *CycleState) Clone() *CycleState {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := NewCycleState()
	for k, v := range c.data {
		out.data[k] = v.Clone()
	}
	for k, v := range c.skipped {
		out.skipped[k] = v
	}
	out.filters = c.filters
	return out
}

func (c *CycleState) setSkipped(plugin string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.skipped[plugin] = true
}

func (c *CycleState) isSkipped(plugin string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.skipped[plugin]
}
