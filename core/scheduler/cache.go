package scheduler

import (
	"fmt"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"berth.dev/berth/core/scheduler/framework"
)

// podState is a pod the cache accounts for on a node; an assumed pod is one the scheduler
// placed and whose binding the informer has not confirmed yet.
type podState struct {
	pod     *corev1.Pod
	assumed bool
	// deadline is set once the binding call returned: past it, an unconfirmed assumed pod
	// is dropped (the bind was lost somewhere).
	deadline *time.Time
}

// Cache is the scheduler's picture of the cluster: nodes and the pods bound, or assumed,
// on them. The informers feed it; the scheduling cycle reads it through a Snapshot.
type Cache struct {
	mu    sync.Mutex
	ttl   time.Duration
	nodes map[string]*nodeItem
	// head is the most recently changed node; the list runs in falling generation, so
	// that a snapshot walks only the nodes changed since it was taken, not all of them
	// (at 5,000 nodes a walk of the whole map took a third of the scheduling cycle).
	head *nodeItem
	pods map[types.UID]*podState
	// generation numbers every change, so that a snapshot copies only changed nodes.
	generation int64
	// setVersion changes when a node appears or goes, so that a snapshot relists.
	setVersion int64
	// changes counts what changed in the cluster other than by the scheduler's own
	// assumptions and their confirmations: an opportunistic batch serves only while it
	// stays the same.
	changes int64
}

// nodeItem is a node of the cache in the list ordered by generation.
type nodeItem struct {
	name       string
	info       *framework.NodeInfo
	prev, next *nodeItem
}

// NewCache returns an empty cache; assumed pods whose binding is not confirmed within ttl
// after the bind call returned are dropped.
func NewCache(ttl time.Duration) *Cache {
	return &Cache{ttl: ttl, nodes: map[string]*nodeItem{}, pods: map[types.UID]*podState{}}
}

// touch gives a changed node the next generation and moves it to the head of the list.
func (c *Cache) touch(it *nodeItem) {
	c.generation++
	it.info.Generation = c.generation
	if c.head == it {
		return
	}
	c.unlink(it)
	it.next = c.head
	if c.head != nil {
		c.head.prev = it
	}
	c.head = it
}

// unlink takes a node out of the list.
func (c *Cache) unlink(it *nodeItem) {
	if it.prev != nil {
		it.prev.next = it.next
	}
	if it.next != nil {
		it.next.prev = it.prev
	}
	if c.head == it {
		c.head = it.next
	}
	it.prev, it.next = nil, nil
}

// deleteNode forgets a node entry altogether.
func (c *Cache) deleteNode(it *nodeItem) {
	c.unlink(it)
	delete(c.nodes, it.name)
}

// nodeFor returns the node entry for a name, creating one (without Node) when a pod's node
// is not known yet; a new entry joins the list when it is touched.
func (c *Cache) nodeFor(name string) *nodeItem {
	it, ok := c.nodes[name]
	if !ok {
		it = &nodeItem{name: name, info: framework.NewNodeInfo()}
		c.nodes[name] = it
	}
	return it
}

// AddNode adds or updates a node.
func (c *Cache) AddNode(node *corev1.Node) {
	c.mu.Lock()
	defer c.mu.Unlock()
	it := c.nodeFor(node.Name)
	if it.info.Node() == nil {
		c.setVersion++
	}
	it.info.SetNode(node)
	c.touch(it)
	c.changes++
}

// UpdateNode updates a node (an update of an unknown node adds it).
func (c *Cache) UpdateNode(node *corev1.Node) { c.AddNode(node) }

// RemoveNode forgets a node; its pods stay accounted until their deletions arrive.
func (c *Cache) RemoveNode(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	it, ok := c.nodes[name]
	if !ok {
		return
	}
	if it.info.Node() != nil {
		c.setVersion++
	}
	c.changes++
	it.info.RemoveNode()
	if len(it.info.Pods) == 0 {
		c.deleteNode(it)
	} else {
		c.touch(it)
	}
}

func (c *Cache) addPodLocked(pod *corev1.Pod) {
	it := c.nodeFor(pod.Spec.NodeName)
	it.info.AddPod(pod)
	c.touch(it)
}

func (c *Cache) removePodLocked(pod *corev1.Pod) {
	it, ok := c.nodes[pod.Spec.NodeName]
	if !ok {
		return
	}
	if it.info.RemovePod(pod) {
		c.touch(it)
	}
	if it.info.Node() == nil && len(it.info.Pods) == 0 {
		c.deleteNode(it)
	}
}

// AssumePod accounts a pod on the node the scheduler chose (pod.Spec.NodeName) before the
// binding is confirmed, so that the next pods see the room it takes.
func (c *Cache) AssumePod(pod *corev1.Pod) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.pods[pod.UID]; ok {
		return fmt.Errorf("assume pod %s/%s: already in the cache", pod.Namespace, pod.Name)
	}
	c.addPodLocked(pod)
	c.pods[pod.UID] = &podState{pod: pod, assumed: true}
	return nil
}

// FinishBinding starts the expiry clock of an assumed pod: the bind call has returned.
func (c *Cache) FinishBinding(pod *corev1.Pod, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ps, ok := c.pods[pod.UID]; ok && ps.assumed {
		d := now.Add(c.ttl)
		ps.deadline = &d
	}
}

// ForgetPod drops an assumed pod whose binding failed.
func (c *Cache) ForgetPod(pod *corev1.Pod) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ps, ok := c.pods[pod.UID]; ok && ps.assumed {
		c.removePodLocked(ps.pod)
		delete(c.pods, pod.UID)
		c.changes++
	}
}

// IsAssumed reports whether a pod is assumed and not yet confirmed.
func (c *Cache) IsAssumed(uid types.UID) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ps, ok := c.pods[uid]
	return ok && ps.assumed
}

// AddPod accounts a bound pod; for an assumed pod it is the confirmation of the binding.
func (c *Cache) AddPod(pod *corev1.Pod) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ps, ok := c.pods[pod.UID]; ok {
		// Confirmed (or seen twice): account the API's version, on the node the API says.
		if !ps.assumed || ps.pod.Spec.NodeName != pod.Spec.NodeName {
			c.changes++
		}
		c.removePodLocked(ps.pod)
	} else {
		c.changes++
	}
	c.addPodLocked(pod)
	c.pods[pod.UID] = &podState{pod: pod}
}

// UpdatePod replaces a bound pod's accounting.
func (c *Cache) UpdatePod(pod *corev1.Pod) { c.AddPod(pod) }

// RemovePod forgets a bound (or assumed) pod.
func (c *Cache) RemovePod(pod *corev1.Pod) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ps, ok := c.pods[pod.UID]; ok {
		c.removePodLocked(ps.pod)
		delete(c.pods, pod.UID)
		c.changes++
	}
}

// CleanupExpired drops the assumed pods whose binding was never confirmed in time, and
// returns them.
func (c *Cache) CleanupExpired(now time.Time) []*corev1.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*corev1.Pod
	for uid, ps := range c.pods {
		if ps.assumed && ps.deadline != nil && now.After(*ps.deadline) {
			c.removePodLocked(ps.pod)
			delete(c.pods, uid)
			out = append(out, ps.pod)
			c.changes++
		}
	}
	return out
}

// NodeCount returns the number of nodes with a Node object.
func (c *Cache) NodeCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, it := range c.nodes {
		if it.info.Node() != nil {
			n++
		}
	}
	return n
}

// Snapshot is a consistent copy of the cache's nodes for one scheduling cycle. It is
// updated in place, copying only the nodes that changed since the last cycle.
type Snapshot struct {
	nodes      map[string]*framework.NodeInfo
	list       []*framework.NodeInfo
	generation int64
	setVersion int64
	// changes is the cache's count of others' changes when the snapshot was taken.
	changes int64
	// podsWithAffinity and podsWithRequiredAnti total the nodes' counters, so that the
	// inter-pod plugins skip at once in a cluster without such pods.
	podsWithAffinity, podsWithRequiredAnti int
}

func (s *Snapshot) countAffinity(n *framework.NodeInfo, sign int) {
	s.podsWithAffinity += sign * n.PodsWithAffinity
	s.podsWithRequiredAnti += sign * n.PodsWithRequiredAntiAffinity
}

// NumPodsWithAffinity counts the pods with inter-pod affinity or anti-affinity terms.
func (s *Snapshot) NumPodsWithAffinity() int { return s.podsWithAffinity }

// NumPodsWithRequiredAntiAffinity counts the pods with required anti-affinity terms.
func (s *Snapshot) NumPodsWithRequiredAntiAffinity() int { return s.podsWithRequiredAnti }

// NewSnapshot returns an empty snapshot.
func NewSnapshot() *Snapshot {
	return &Snapshot{nodes: map[string]*framework.NodeInfo{}, setVersion: -1}
}

// List returns the nodes with a Node object, sorted by name.
func (s *Snapshot) List() []*framework.NodeInfo { return s.list }

// Get returns a node, or nil.
func (s *Snapshot) Get(name string) *framework.NodeInfo {
	n := s.nodes[name]
	if n == nil || n.Node() == nil {
		return nil
	}
	return n
}

// UpdateSnapshot brings s up to date with the cache, copying only the nodes changed since
// the last update (the cache lists them first).
func (c *Cache) UpdateSnapshot(s *Snapshot) {
	c.mu.Lock()
	defer c.mu.Unlock()
	relist := s.setVersion != c.setVersion
	for it := c.head; it != nil && it.info.Generation > s.generation; it = it.next {
		n := it.info
		if cur, ok := s.nodes[it.name]; ok {
			s.countAffinity(cur, -1)
			// Copy into the existing value: the list points at it.
			*cur = *n.Clone()
			s.countAffinity(cur, 1)
		} else {
			cl := n.Clone()
			s.nodes[it.name] = cl
			s.countAffinity(cl, 1)
			relist = true
		}
	}
	if relist || len(s.nodes) != len(c.nodes) {
		// A node gone (perhaps while another came) leaves the snapshot too.
		for name, n := range s.nodes {
			if _, ok := c.nodes[name]; !ok {
				s.countAffinity(n, -1)
				delete(s.nodes, name)
				relist = true
			}
		}
	}
	if relist {
		s.list = s.list[:0]
		for _, n := range s.nodes {
			if n.Node() != nil {
				s.list = append(s.list, n)
			}
		}
		sort.Slice(s.list, func(i, j int) bool { return s.list[i].Name() < s.list[j].Name() })
	}
	s.generation = c.generation
	s.setVersion = c.setVersion
	s.changes = c.changes
}

// Changes counts, up to this snapshot, the cluster's changes other than the scheduler's
// own assumptions and their confirmations (nodes, pods bound by others, deletions,
// forgotten assumptions): equal counts in two snapshots mean only the scheduler's own
// placements came between them.
func (s *Snapshot) Changes() int64 { return s.changes }
