package scheduler

import (
	"fmt"
	"sync"

	corev1 "k8s.io/api/core/v1"

	schedulerv1 "berth.dev/berth/specs/scheduler/v1"
)

// nodeCache is the plugin's copy of the cluster's nodes, kept by SyncNodes deltas, so that
// calls can name nodes and plugin authors still get whole *corev1.Node values.
type nodeCache struct {
	mu         sync.RWMutex
	generation int64
	nodes      map[string]*corev1.Node
}

func newNodeCache() *nodeCache {
	return &nodeCache{nodes: map[string]*corev1.Node{}}
}

// errStale says the cache is not at the generation a delta builds on; the host answers by
// sending every node.
type errStale struct{ have, want int64 }

func (e errStale) Error() string {
	return fmt.Sprintf("plugin's nodes are at generation %d, the delta builds on %d: send every node", e.have, e.want)
}

// apply decodes every node first and changes the cache only when all decode, so a bad
// delta leaves it as it was.
func (c *nodeCache) apply(req *schedulerv1.SyncNodesRequest) error {
	decoded := make([]*corev1.Node, 0, len(req.Nodes))
	for i, b := range req.Nodes {
		n := &corev1.Node{}
		if err := n.Unmarshal(b); err != nil {
			return fmt.Errorf("decode node %d of the delta: %w", i, err)
		}
		if n.Name == "" {
			return fmt.Errorf("node %d of the delta has no name", i)
		}
		decoded = append(decoded, n)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !req.Full && req.BaseGeneration != c.generation {
		return errStale{have: c.generation, want: req.BaseGeneration}
	}
	if req.Full {
		c.nodes = make(map[string]*corev1.Node, len(decoded))
	}
	for _, n := range decoded {
		c.nodes[n.Name] = n
	}
	for _, name := range req.Removed {
		delete(c.nodes, name)
	}
	c.generation = req.Generation
	return nil
}

// lookup returns the named nodes at generation gen or later; a missing node is nil in the
// result and named in missing.
func (c *nodeCache) lookup(gen int64, names []string) (nodes []*corev1.Node, missing []string, err error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if gen > c.generation {
		return nil, nil, errStale{have: c.generation, want: gen}
	}
	nodes = make([]*corev1.Node, len(names))
	for i, name := range names {
		n, ok := c.nodes[name]
		if !ok {
			missing = append(missing, name)
			continue
		}
		nodes[i] = n
	}
	return nodes, missing, nil
}

// len returns the number of nodes cached.
func (c *nodeCache) len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.nodes)
}
