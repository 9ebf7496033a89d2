package scheduler

import (
	"context"
	"errors"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"berth.dev/berth/core/scheduler/framework"
)

// Queue timings, Kubernetes' defaults.
const (
	// DefaultInitialBackoff is the wait after a pod's first failed attempt.
	DefaultInitialBackoff = 1 * time.Second
	// DefaultMaxBackoff caps the doubling backoff.
	DefaultMaxBackoff = 10 * time.Second
	// DefaultUnschedulableTimeout is how long a pod waits for a helpful cluster event
	// before it is retried anyway.
	DefaultUnschedulableTimeout = 5 * time.Minute
)

// ErrQueueClosed is returned by Pop once the queue is closed.
var ErrQueueClosed = errors.New("scheduling queue closed")

// Queue holds the pods waiting to be scheduled, in three places: activeQ (a heap in the
// QueueSort plugin's order, what Pop takes from), backoffQ (failed pods waiting out their
// exponential backoff) and the unschedulable pods (waiting for a cluster event that may
// help, or for the flush timeout). Pods held by scheduling gates wait apart.
type Queue struct {
	mu     sync.Mutex
	cond   *sync.Cond
	now    func() time.Time
	closed bool

	active        *podHeap
	backoff       *podHeap
	unschedulable map[types.UID]*framework.QueuedPodInfo
	gated         map[types.UID]*framework.QueuedPodInfo
	inFlight      map[types.UID]bool

	// schedulingCycle counts Pops; moveCycle is the cycle of the last move event. A pod
	// that failed in a cycle older than a move event goes to backoffQ rather than wait for
	// an event that already happened.
	schedulingCycle int64
	moveCycle       int64

	initialBackoff, maxBackoff, unschedulableTimeout time.Duration
}

// QueueOptions tune a Queue; zero values take Kubernetes' defaults.
type QueueOptions struct {
	InitialBackoff, MaxBackoff, UnschedulableTimeout time.Duration
	// Now is the clock (time.Now by default); tests move it.
	Now func() time.Time
}

// NewQueue returns an empty queue ordering active pods with less.
func NewQueue(less func(a, b *framework.QueuedPodInfo) bool, o QueueOptions) *Queue {
	if o.InitialBackoff == 0 {
		o.InitialBackoff = DefaultInitialBackoff
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.UnschedulableTimeout == 0 {
		o.UnschedulableTimeout = DefaultUnschedulableTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	q := &Queue{
		now:                  o.Now,
		active:               newPodHeap(less),
		unschedulable:        map[types.UID]*framework.QueuedPodInfo{},
		gated:                map[types.UID]*framework.QueuedPodInfo{},
		inFlight:             map[types.UID]bool{},
		initialBackoff:       o.InitialBackoff,
		maxBackoff:           o.MaxBackoff,
		unschedulableTimeout: o.UnschedulableTimeout,
	}
	q.backoff = newPodHeap(func(a, b *framework.QueuedPodInfo) bool {
		return q.backoffExpiry(a).Before(q.backoffExpiry(b))
	})
	q.cond = sync.NewCond(&q.mu)
	return q
}

// backoffDuration doubles from the initial backoff with each attempt, up to the maximum.
func (q *Queue) backoffDuration(pi *framework.QueuedPodInfo) time.Duration {
	d := q.initialBackoff
	for i := 1; i < pi.Attempts; i++ {
		if d >= q.maxBackoff/2 {
			return q.maxBackoff
		}
		d *= 2
	}
	return min(d, q.maxBackoff)
}

func (q *Queue) backoffExpiry(pi *framework.QueuedPodInfo) time.Time {
	return pi.Timestamp.Add(q.backoffDuration(pi))
}

func (q *Queue) isBackingOff(pi *framework.QueuedPodInfo) bool {
	return pi.Attempts > 0 && q.backoffExpiry(pi).After(q.now())
}

// Add queues a new pending pod (or updates it if it is queued already).
func (q *Queue) Add(pod *corev1.Pod) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if pi := q.findLocked(pod.UID); pi != nil {
		q.updateLocked(pi, pod)
		return
	}
	pi := &framework.QueuedPodInfo{PodInfo: &framework.PodInfo{Pod: pod}, Timestamp: q.now()}
	q.enqueueLocked(pi)
}

// enqueueLocked puts a pod in activeQ, or apart while scheduling gates hold it.
func (q *Queue) enqueueLocked(pi *framework.QueuedPodInfo) {
	if len(pi.Pod.Spec.SchedulingGates) > 0 {
		q.gated[pi.Pod.UID] = pi
		return
	}
	q.active.addOrUpdate(pi)
	q.cond.Broadcast()
}

func (q *Queue) findLocked(uid types.UID) *framework.QueuedPodInfo {
	if pi := q.active.get(uid); pi != nil {
		return pi
	}
	if pi := q.backoff.get(uid); pi != nil {
		return pi
	}
	if pi := q.unschedulable[uid]; pi != nil {
		return pi
	}
	return q.gated[uid]
}

// Update replaces a queued pod. When its spec or metadata changed (not only its status),
// an unschedulable pod is retried after its backoff, since the change may be what it
// needed, and a pod whose gates are gone becomes active.
func (q *Queue) Update(pod *corev1.Pod, changed bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	pi := q.findLocked(pod.UID)
	if pi != nil && !changed {
		// Only the status moved (the scheduler's own condition, say): keep its place.
		pi.PodInfo = &framework.PodInfo{Pod: pod}
		return
	}
	if pi == nil {
		if q.inFlight[pod.UID] {
			return // being scheduled: its outcome decides where it goes
		}
		pi = &framework.QueuedPodInfo{PodInfo: &framework.PodInfo{Pod: pod}, Timestamp: q.now()}
		q.enqueueLocked(pi)
		return
	}
	q.updateLocked(pi, pod)
}

func (q *Queue) updateLocked(pi *framework.QueuedPodInfo, pod *corev1.Pod) {
	uid := pod.UID
	np := *pi
	np.PodInfo = &framework.PodInfo{Pod: pod}
	switch {
	case q.active.get(uid) != nil:
		q.active.addOrUpdate(&np)
	case q.backoff.get(uid) != nil:
		q.backoff.addOrUpdate(&np)
	case q.gated[uid] != nil:
		delete(q.gated, uid)
		q.enqueueLocked(&np)
	case q.unschedulable[uid] != nil:
		delete(q.unschedulable, uid)
		if q.isBackingOff(&np) {
			q.backoff.addOrUpdate(&np)
		} else {
			q.enqueueLocked(&np)
		}
	}
}

// Delete removes a pod wherever it waits.
func (q *Queue) Delete(uid types.UID) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.active.remove(uid)
	q.backoff.remove(uid)
	delete(q.unschedulable, uid)
	delete(q.gated, uid)
}

// Pop takes the first active pod, waiting for one until ctx ends or the queue closes.
func (q *Queue) Pop(ctx context.Context) (*framework.QueuedPodInfo, error) {
	stop := context.AfterFunc(ctx, func() {
		q.mu.Lock()
		defer q.mu.Unlock()
		q.cond.Broadcast()
	})
	defer stop()
	q.mu.Lock()
	defer q.mu.Unlock()
	for q.active.len() == 0 && !q.closed && ctx.Err() == nil {
		q.cond.Wait()
	}
	if q.closed {
		return nil, ErrQueueClosed
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	pi := q.active.pop()
	pi.Attempts++
	if pi.InitialAttemptTimestamp.IsZero() {
		pi.InitialAttemptTimestamp = q.now()
	}
	q.schedulingCycle++
	q.inFlight[pi.Pod.UID] = true
	return pi, nil
}

// SchedulingCycle returns the number of the last Pop's cycle.
func (q *Queue) SchedulingCycle() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.schedulingCycle
}

// Done marks the end of a pod's scheduling attempt (bound, requeued or gone).
func (q *Queue) Done(uid types.UID) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.inFlight, uid)
}

// AddUnschedulable returns a pod whose attempt in cycle failed. A pod that failed with an
// error, or whose attempt raced a move event, goes to backoffQ; the others wait among the
// unschedulable pods for a cluster event.
func (q *Queue) AddUnschedulable(pi *framework.QueuedPodInfo, cycle int64, errored bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.inFlight, pi.Pod.UID)
	if q.findLocked(pi.Pod.UID) != nil {
		return // re-added meanwhile by an update
	}
	pi.Timestamp = q.now()
	if errored || q.moveCycle >= cycle {
		q.backoff.addOrUpdate(pi)
		return
	}
	q.unschedulable[pi.Pod.UID] = pi
}

// MoveAllToActiveOrBackoff moves the unschedulable pods for which helps returns true (all
// when nil) back: to backoffQ while they back off, to activeQ otherwise. The scheduler
// calls it on cluster events that may make pods schedulable.
func (q *Queue) MoveAllToActiveOrBackoff(helps func(*framework.QueuedPodInfo) bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for uid, pi := range q.unschedulable {
		if helps != nil && !helps(pi) {
			continue
		}
		delete(q.unschedulable, uid)
		if q.isBackingOff(pi) {
			q.backoff.addOrUpdate(pi)
		} else {
			q.active.addOrUpdate(pi)
		}
	}
	q.moveCycle = q.schedulingCycle
	q.cond.Broadcast()
}

// flushBackoffCompleted moves the pods whose backoff has expired to activeQ.
func (q *Queue) flushBackoffCompleted() {
	q.mu.Lock()
	defer q.mu.Unlock()
	moved := false
	for {
		pi := q.backoff.peek()
		if pi == nil || q.isBackingOff(pi) {
			break
		}
		q.backoff.pop()
		q.active.addOrUpdate(pi)
		moved = true
	}
	if moved {
		q.cond.Broadcast()
	}
}

// flushUnschedulableLeftover retries the pods that waited for an event too long.
func (q *Queue) flushUnschedulableLeftover() {
	q.mu.Lock()
	now := q.now()
	var stale []types.UID
	for uid, pi := range q.unschedulable {
		if now.Sub(pi.Timestamp) > q.unschedulableTimeout {
			stale = append(stale, uid)
		}
	}
	q.mu.Unlock()
	if len(stale) == 0 {
		return
	}
	set := map[types.UID]bool{}
	for _, uid := range stale {
		set[uid] = true
	}
	q.MoveAllToActiveOrBackoff(func(pi *framework.QueuedPodInfo) bool { return set[pi.Pod.UID] })
}

// Run flushes backoffQ every second and the stale unschedulable pods every 30 s until ctx
// ends, then closes the queue.
func (q *Queue) Run(ctx context.Context) {
	backoff := time.NewTicker(time.Second)
	defer backoff.Stop()
	leftover := time.NewTicker(30 * time.Second)
	defer leftover.Stop()
	for {
		select {
		case <-ctx.Done():
			q.Close()
			return
		case <-backoff.C:
			q.flushBackoffCompleted()
		case <-leftover.C:
			q.flushUnschedulableLeftover()
		}
	}
}

// Close wakes every Pop with ErrQueueClosed.
func (q *Queue) Close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	q.cond.Broadcast()
}

// Lengths returns how many pods are in activeQ, backoffQ, unschedulable and gated.
func (q *Queue) Lengths() (active, backoff, unschedulable, gated int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.active.len(), q.backoff.len(), len(q.unschedulable), len(q.gated)
}
