package framework

import (
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// WaitingPods are the pods Permit plugins hold, by UID, shared by every profile of one
// scheduler so that any plugin can release a pod through the Handle.
type WaitingPods struct {
	mu   sync.Mutex
	pods map[string]*waitingPod
}

// NewWaitingPods returns an empty set.
func NewWaitingPods() *WaitingPods { return &WaitingPods{pods: map[string]*waitingPod{}} }

// Get returns the held pod with this UID, or nil.
func (w *WaitingPods) Get(uid string) WaitingPod {
	w.mu.Lock()
	defer w.mu.Unlock()
	if p, ok := w.pods[uid]; ok {
		return p
	}
	return nil
}

func (w *WaitingPods) add(p *waitingPod) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.pods[string(p.pod.UID)] = p
}

func (w *WaitingPods) remove(uid string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.pods, uid)
}

// waitingPod is one held pod: the plugins still holding it, each with its own timeout.
type waitingPod struct {
	pod    *corev1.Pod
	mu     sync.Mutex
	holds  map[string]*time.Timer
	result chan *Status // receives exactly one status, buffered
	done   bool
}

func newWaitingPod(pod *corev1.Pod, holds map[string]time.Duration) *waitingPod {
	p := &waitingPod{pod: pod, holds: map[string]*time.Timer{}, result: make(chan *Status, 1)}
	p.mu.Lock()
	defer p.mu.Unlock()
	for plugin, d := range holds {
		p.holds[plugin] = time.AfterFunc(d, func() {
			p.Reject(plugin, fmt.Sprintf("rejected due to timeout after waiting %v at plugin %v", d, plugin))
		})
	}
	return p
}

// Pod returns the held pod.
func (p *waitingPod) Pod() *corev1.Pod { return p.pod }

// Allow releases one plugin's hold; the last release lets the pod bind.
func (p *waitingPod) Allow(plugin string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if t, ok := p.holds[plugin]; ok {
		t.Stop()
		delete(p.holds, plugin)
	}
	if len(p.holds) == 0 {
		p.finishLocked(NewStatus(Success))
	}
}

// Reject fails the pod's binding cycle.
func (p *waitingPod) Reject(plugin, msg string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.finishLocked(NewStatus(Unschedulable, msg).WithPlugin(plugin))
}

func (p *waitingPod) finishLocked(s *Status) {
	if p.done {
		return
	}
	p.done = true
	for _, t := range p.holds {
		t.Stop()
	}
	p.result <- s
}
