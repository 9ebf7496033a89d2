package scheduler

import (
	"container/heap"

	"k8s.io/apimachinery/pkg/types"

	"berth.dev/berth/core/scheduler/framework"
)

// podHeap is a priority queue of pods with lookup by UID, so that a pod can be updated or
// removed where it stands.
type podHeap struct {
	items []*framework.QueuedPodInfo
	index map[types.UID]int
	less  func(a, b *framework.QueuedPodInfo) bool
}

func newPodHeap(less func(a, b *framework.QueuedPodInfo) bool) *podHeap {
	return &podHeap{index: map[types.UID]int{}, less: less}
}

// heap.Interface, on a private adapter so the exported-looking methods stay internal.
type podHeapImpl struct{ h *podHeap }

func (p podHeapImpl) Len() int           { return len(p.h.items) }
func (p podHeapImpl) Less(i, j int) bool { return p.h.less(p.h.items[i], p.h.items[j]) }
func (p podHeapImpl) Swap(i, j int) {
	h := p.h
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.index[h.items[i].Pod.UID] = i
	h.index[h.items[j].Pod.UID] = j
}
func (p podHeapImpl) Push(x any) {
	pi := x.(*framework.QueuedPodInfo)
	p.h.index[pi.Pod.UID] = len(p.h.items)
	p.h.items = append(p.h.items, pi)
}
func (p podHeapImpl) Pop() any {
	h := p.h
	last := len(h.items) - 1
	pi := h.items[last]
	h.items[last] = nil
	h.items = h.items[:last]
	delete(h.index, pi.Pod.UID)
	return pi
}

func (h *podHeap) len() int { return len(h.items) }

// get returns the queued pod with this UID, or nil.
func (h *podHeap) get(uid types.UID) *framework.QueuedPodInfo {
	if i, ok := h.index[uid]; ok {
		return h.items[i]
	}
	return nil
}

// addOrUpdate puts a pod in, or replaces it and restores the order.
func (h *podHeap) addOrUpdate(pi *framework.QueuedPodInfo) {
	if i, ok := h.index[pi.Pod.UID]; ok {
		h.items[i] = pi
		heap.Fix(podHeapImpl{h}, i)
		return
	}
	heap.Push(podHeapImpl{h}, pi)
}

// remove takes a pod out and reports whether it was there.
func (h *podHeap) remove(uid types.UID) bool {
	i, ok := h.index[uid]
	if !ok {
		return false
	}
	heap.Remove(podHeapImpl{h}, i)
	return true
}

// peek returns the first pod, or nil.
func (h *podHeap) peek() *framework.QueuedPodInfo {
	if len(h.items) == 0 {
		return nil
	}
	return h.items[0]
}

// pop takes the first pod out, or returns nil.
func (h *podHeap) pop() *framework.QueuedPodInfo {
	if len(h.items) == 0 {
		return nil
	}
	return heap.Pop(podHeapImpl{h}).(*framework.QueuedPodInfo)
}
