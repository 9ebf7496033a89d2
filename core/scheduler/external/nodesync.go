package external

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"

	corev1 "k8s.io/api/core/v1"

	"berth.dev/berth/core/scheduler/framework"
	"berth.dev/berth/plugins/scheduler"
)

// nodeSync is what the host knows of a plugin process' copy of the nodes: the node objects
// it was sent and the generation it is at. Calls then name nodes only.
type nodeSync struct {
	mu   sync.Mutex
	inst *instance // the process the state below is about
	gen  int64
	have map[string]sentNode
	// complete is the last complete list of nodes found in step with the plugin, at
	// generation completeGen: while the scheduler hands the same node objects in the same
	// order, the next complete sync is a comparison of pointers, not a map lookup per node
	// (at 5,000 nodes that was a fifth of the plugin's cost in each cycle).
	complete    []*corev1.Node
	completeGen int64

	calls, sent atomic.Int64
}

// sameAsComplete reports whether nodes are, object for object, the last complete list.
func (s *nodeSync) sameAsComplete(nodes []*framework.NodeInfo) bool {
	if s.completeGen != s.gen || s.complete == nil {
		return false
	}
	i := 0
	for _, ni := range nodes {
		n := ni.Node()
		if n == nil {
			continue
		}
		if i >= len(s.complete) || s.complete[i] != n {
			return false
		}
		i++
	}
	return i == len(s.complete)
}

// rememberComplete records nodes as the complete list the plugin is in step with.
func (s *nodeSync) rememberComplete(nodes []*framework.NodeInfo) {
	s.complete = s.complete[:0]
	for _, ni := range nodes {
		if n := ni.Node(); n != nil {
			s.complete = append(s.complete, n)
		}
	}
	if s.complete == nil {
		s.complete = []*corev1.Node{}
	}
	s.completeGen = s.gen
}

// sentNode identifies the version of a node the plugin has.
type sentNode struct {
	node *corev1.Node
	rv   string
}

// same reports whether n is the version the plugin has: the same object, or the same
// resourceVersion (the scheduler's cache replaces a node's object on every update).
func (s sentNode) same(n *corev1.Node) bool {
	return s.node == n || (n.ResourceVersion != "" && n.ResourceVersion == s.rv && n.UID == s.node.UID)
}

func (s *nodeSync) generation() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.gen
}

// syncNodes brings the plugin's copy up to date with nodes and returns the generation the
// calls that follow name. complete says nodes are all the cluster's nodes, so that those
// missing from it are removed from the plugin's copy too.
func (p *Plugin) syncNodes(ctx context.Context, in *instance, nodes []*framework.NodeInfo, complete bool) (int64, *framework.Status) {
	s := &p.sync
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.inst != in {
		// A new process knows nothing yet.
		s.inst, s.gen, s.have = in, 0, map[string]sentNode{}
		s.complete, s.completeGen = nil, 0
	}
	full := s.gen == 0
	if complete && !full && s.sameAsComplete(nodes) {
		return s.gen, nil
	}
	var changed []*corev1.Node
	known := 0
	for _, ni := range nodes {
		n := ni.Node()
		if n == nil {
			continue
		}
		if prev, ok := s.have[n.Name]; ok {
			known++
			if prev.same(n) {
				continue
			}
		}
		changed = append(changed, n)
	}
	var removed []string
	if complete && len(s.have) > known {
		present := make(map[string]bool, len(nodes))
		for _, ni := range nodes {
			if ni.Node() != nil {
				present[ni.Name()] = true
			}
		}
		for name := range s.have {
			if !present[name] {
				removed = append(removed, name)
			}
		}
	}
	if len(changed) == 0 && len(removed) == 0 && !full {
		if complete {
			s.rememberComplete(nodes)
		}
		return s.gen, nil
	}
	d := scheduler.NodeDelta{Base: s.gen, Generation: s.gen + 1, Full: full, Nodes: changed, Removed: removed}
	if full {
		d.Base, d.Removed = 0, nil
	}
	if err := p.sendDelta(ctx, in, d); err != nil {
		if !errors.Is(err, scheduler.ErrNodesStale) {
			return 0, p.failed(ctx, in, "SyncNodes", err)
		}
		// The plugin lost track (it should not): send what we know plus this delta, whole.
		if st := p.resyncLocked(ctx, in); st != nil {
			return 0, st
		}
		return p.applyLocked(ctx, in, changed, removed)
	}
	for _, n := range changed {
		s.have[n.Name] = sentNode{node: n, rv: n.ResourceVersion}
	}
	for _, name := range removed {
		delete(s.have, name)
	}
	s.gen = d.Generation
	if complete {
		s.rememberComplete(nodes)
	}
	return s.gen, nil
}

// applyLocked sends one more delta after a resync.
func (p *Plugin) applyLocked(ctx context.Context, in *instance, changed []*corev1.Node, removed []string) (int64, *framework.Status) {
	s := &p.sync
	if len(changed) == 0 && len(removed) == 0 {
		return s.gen, nil
	}
	d := scheduler.NodeDelta{Base: s.gen, Generation: s.gen + 1, Nodes: changed, Removed: removed}
	if err := p.sendDelta(ctx, in, d); err != nil {
		return 0, p.failed(ctx, in, "SyncNodes", err)
	}
	for _, n := range changed {
		s.have[n.Name] = sentNode{node: n, rv: n.ResourceVersion}
	}
	for _, name := range removed {
		delete(s.have, name)
	}
	s.gen = d.Generation
	return s.gen, nil
}

// resync sends the plugin every node it should have, as one full delta.
func (p *Plugin) resync(ctx context.Context, in *instance) (int64, *framework.Status) {
	p.sync.mu.Lock()
	defer p.sync.mu.Unlock()
	if p.sync.inst != in {
		return 0, framework.AsStatus(errors.New("scheduler plugin " + p.name + " restarted during the call"))
	}
	if st := p.resyncLocked(ctx, in); st != nil {
		return 0, st
	}
	return p.sync.gen, nil
}

func (p *Plugin) resyncLocked(ctx context.Context, in *instance) *framework.Status {
	s := &p.sync
	all := make([]*corev1.Node, 0, len(s.have))
	for _, sn := range s.have {
		all = append(all, sn.node)
	}
	d := scheduler.NodeDelta{Generation: s.gen + 1, Full: true, Nodes: all}
	if err := p.sendDelta(ctx, in, d); err != nil {
		return p.failed(ctx, in, "SyncNodes", err)
	}
	s.gen = d.Generation
	return nil
}

// sendDelta is one SyncNodes call under the plugin's deadline.
func (p *Plugin) sendDelta(ctx context.Context, in *instance, d scheduler.NodeDelta) error {
	cctx, cancel := p.callCtx(ctx)
	defer cancel()
	p.sync.calls.Add(1)
	p.sync.sent.Add(int64(len(d.Nodes)))
	return in.rpc.SyncNodes(cctx, d)
}
