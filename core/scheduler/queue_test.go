package scheduler

import (
	"context"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"berth.dev/berth/core/scheduler/framework"
	"berth.dev/berth/core/scheduler/plugins"
)

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func testPod(name string, priority int32) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID(name)},
		Spec:       corev1.PodSpec{Priority: &priority},
	}
}

func newTestQueue() (*Queue, *fakeClock) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	return NewQueue(plugins.PrioritySort{}.Less, QueueOptions{Now: clock.Now}), clock
}

func popName(t *testing.T, q *Queue) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	pi, err := q.Pop(ctx)
	if err != nil {
		t.Fatalf("Pop: %v", err)
	}
	return pi.Pod.Name
}

func TestQueueOrdersByPriorityThenTime(t *testing.T) {
	q, clock := newTestQueue()
	q.Add(testPod("low-old", 0))
	clock.Step(time.Second)
	q.Add(testPod("high", 100))
	clock.Step(time.Second)
	q.Add(testPod("low-new", 0))
	for _, want := range []string{"high", "low-old", "low-new"} {
		if got := popName(t, q); got != want {
			t.Errorf("popped %s, want %s", got, want)
		}
	}
}

func TestQueueBackoffDoublesToMax(t *testing.T) {
	q, _ := newTestQueue()
	for attempts, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 12: 10 * time.Second} {
		if got := q.backoffDuration(&framework.QueuedPodInfo{Attempts: attempts}); got != want {
			t.Errorf("backoff after %d attempts = %v, want %v", attempts, got, want)
		}
	}
}

func TestQueueErroredPodBacksOff(t *testing.T) {
	q, clock := newTestQueue()
	q.Add(testPod("p", 0))
	ctx := context.Background()
	pi, _ := q.Pop(ctx)
	q.AddUnschedulable(pi, q.SchedulingCycle(), true)
	if a, b, u, _ := q.Lengths(); a != 0 || b != 1 || u != 0 {
		t.Fatalf("lengths active %d backoff %d unschedulable %d, want the pod in backoffQ", a, b, u)
	}
	clock.Step(500 * time.Millisecond)
	q.flushBackoffCompleted()
	if a, _, _, _ := q.Lengths(); a != 0 {
		t.Fatalf("the pod left backoffQ before 1 s")
	}
	clock.Step(600 * time.Millisecond)
	q.flushBackoffCompleted()
	if got := popName(t, q); got != "p" {
		t.Errorf("popped %s", got)
	}
}

func TestQueueMovesUnschedulableOnEvent(t *testing.T) {
	q, clock := newTestQueue()
	q.Add(testPod("p", 0))
	pi, _ := q.Pop(context.Background())
	q.AddUnschedulable(pi, q.SchedulingCycle(), false)
	if _, b, u, _ := q.Lengths(); b != 0 || u != 1 {
		t.Fatalf("the pod is not among the unschedulable ones")
	}
	// Still backing off when the event comes: to backoffQ, then active once it expires.
	q.MoveAllToActiveOrBackoff(nil)
	if a, b, u, _ := q.Lengths(); a != 0 || b != 1 || u != 0 {
		t.Fatalf("after the event: active %d backoff %d unschedulable %d, want it in backoffQ", a, b, u)
	}
	clock.Step(2 * time.Second)
	q.flushBackoffCompleted()
	pi, _ = q.Pop(context.Background())
	if pi.Attempts != 2 {
		t.Errorf("attempts %d, want 2", pi.Attempts)
	}
	// An event after the backoff moves the pod straight to activeQ.
	q.AddUnschedulable(pi, q.SchedulingCycle(), false)
	clock.Step(3 * time.Second)
	q.MoveAllToActiveOrBackoff(nil)
	if a, _, _, _ := q.Lengths(); a != 1 {
		t.Errorf("an event after the backoff did not make the pod active")
	}
}

func TestQueueEventDuringCycleSendsToBackoff(t *testing.T) {
	q, _ := newTestQueue()
	q.Add(testPod("p", 0))
	pi, _ := q.Pop(context.Background())
	cycle := q.SchedulingCycle()
	q.MoveAllToActiveOrBackoff(nil) // a node came while the pod was being scheduled
	q.AddUnschedulable(pi, cycle, false)
	if _, b, u, _ := q.Lengths(); b != 1 || u != 0 {
		t.Errorf("backoff %d unschedulable %d: the pod must not wait for an event that already came", b, u)
	}
}

func TestQueueFlushesLeftoverAfterTimeout(t *testing.T) {
	q, clock := newTestQueue()
	q.Add(testPod("p", 0))
	pi, _ := q.Pop(context.Background())
	q.AddUnschedulable(pi, q.SchedulingCycle(), false)
	clock.Step(4 * time.Minute)
	q.flushUnschedulableLeftover()
	if _, _, u, _ := q.Lengths(); u != 1 {
		t.Fatalf("flushed before 5 minutes")
	}
	clock.Step(2 * time.Minute)
	q.flushUnschedulableLeftover()
	if a, _, u, _ := q.Lengths(); a != 1 || u != 0 {
		t.Errorf("active %d unschedulable %d after 6 minutes, want the pod active", a, u)
	}
}

func TestQueueUpdatesDeletesAndGates(t *testing.T) {
	q, _ := newTestQueue()
	gated := testPod("gated", 0)
	gated.Spec.SchedulingGates = []corev1.PodSchedulingGate{{Name: "example.com/wait"}}
	q.Add(gated)
	q.Add(testPod("gone", 0))
	q.Delete("gone")
	if a, _, _, g := q.Lengths(); a != 0 || g != 1 {
		t.Fatalf("active %d gated %d, want only the gated pod, held", a, g)
	}
	open := gated.DeepCopy()
	open.Spec.SchedulingGates = nil
	q.Update(open, true)
	if got := popName(t, q); got != "gated" {
		t.Errorf("popped %s, want the ungated pod", got)
	}

	// A status-only update of an unschedulable pod keeps it waiting.
	pi := &framework.QueuedPodInfo{PodInfo: &framework.PodInfo{Pod: open}, Attempts: 1}
	q.AddUnschedulable(pi, q.SchedulingCycle(), false)
	status := open.DeepCopy()
	status.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse}}
	q.Update(status, false)
	if _, _, u, _ := q.Lengths(); u != 1 {
		t.Errorf("a status update moved the unschedulable pod")
	}
}

func TestQueuePopStopsWithContext(t *testing.T) {
	q, _ := newTestQueue()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := q.Pop(ctx); err == nil {
		t.Errorf("Pop on an empty queue returned without an error")
	}
	q.Close()
	if _, err := q.Pop(context.Background()); err != ErrQueueClosed {
		t.Errorf("Pop after Close: %v, want ErrQueueClosed", err)
	}
}
