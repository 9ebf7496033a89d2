package garbagecollector

import (
	"container/list"
	"sync"
)

// absentCache remembers owners the server said do not exist, so that the hundred pods of a
// deleted ReplicaSet cost one GET and not a hundred. UIDs are never reused, so an entry
// never goes stale; the cache is bounded only to cap memory.
type absentCache struct {
	mu    sync.Mutex
	max   int
	order *list.List // front = most recently used
	items map[objectRef]*list.Element
}

func newAbsentCache(max int) *absentCache {
	return &absentCache{max: max, order: list.New(), items: map[objectRef]*list.Element{}}
}

func (c *absentCache) add(r objectRef) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.items[r]; ok {
		c.order.MoveToFront(e)
		return
	}
	c.items[r] = c.order.PushFront(r)
	if c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.items, last.Value.(objectRef))
	}
}

func (c *absentCache) has(r objectRef) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.items[r]
	if ok {
		c.order.MoveToFront(e)
	}
	return ok
}
