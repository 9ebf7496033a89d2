package replicaset

import (
	"errors"
	"math/rand"
	"slices"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

func TestDeletionRanking(t *testing.T) {
	now := time.Now()
	ago := func(d time.Duration) metav1.Time { return metav1.NewTime(now.Add(-d)) }
	pod := func(name string, edit func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID(name), CreationTimestamp: ago(time.Hour)}}
		p.Spec.NodeName = "n1"
		p.Status.Phase = corev1.PodRunning
		if edit != nil {
			edit(p)
		}
		return p
	}
	readyFor := func(d time.Duration) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: ago(d)}}
		}
	}
	tests := []struct {
		name        string
		first, then *corev1.Pod // first is deleted before then
	}{
		{"unassigned before assigned", pod("a", func(p *corev1.Pod) { p.Spec.NodeName = "" }), pod("b", nil)},
		{"pending before unknown", pod("a", func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }), pod("b", func(p *corev1.Pod) { p.Status.Phase = corev1.PodUnknown })},
		{"unknown before running", pod("a", func(p *corev1.Pod) { p.Status.Phase = corev1.PodUnknown }), pod("b", nil)},
		{"not ready before ready", pod("a", nil), pod("b", readyFor(time.Hour))},
		{"lower deletion cost first", pod("a", func(p *corev1.Pod) {
			readyFor(time.Hour)(p)
			p.Annotations = map[string]string{corev1.PodDeletionCost: "-5"}
		}), pod("b", readyFor(time.Minute))},
		{"ready for less time first", pod("a", readyFor(time.Minute)), pod("b", readyFor(time.Hour))},
		{"more restarts first", pod("a", func(p *corev1.Pod) {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "c", RestartCount: 3}}
		}), pod("b", func(p *corev1.Pod) {
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "c", RestartCount: 1}}
		})},
		{"newer before older", pod("a", func(p *corev1.Pod) { p.CreationTimestamp = ago(time.Minute) }), pod("b", nil)},
		{"no creation time before any", pod("a", func(p *corev1.Pod) { p.CreationTimestamp = metav1.Time{} }), pod("b", nil)},
		{"assignment outranks phase", pod("a", func(p *corev1.Pod) { p.Spec.NodeName = "" }), pod("b", func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending })},
		{"readiness outranks restarts", pod("a", nil), pod("b", func(p *corev1.Pod) {
			readyFor(time.Hour)(p)
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "c", RestartCount: 9}}
		})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !deleteFirst(tt.first, tt.then, now) {
				t.Errorf("%s is not deleted before %s", tt.first.Name, tt.then.Name)
			}
			if deleteFirst(tt.then, tt.first, now) {
				t.Errorf("%s is also deleted before %s", tt.then.Name, tt.first.Name)
			}
		})
	}
}

func TestPodsToDeleteOrder(t *testing.T) {
	now := time.Now()
	mk := func(name, node string, phase corev1.PodPhase, ready bool) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID(name), CreationTimestamp: metav1.NewTime(now.Add(-time.Hour))}}
		p.Spec.NodeName, p.Status.Phase = node, phase
		if ready {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(now.Add(-time.Hour))}}
		}
		return p
	}
	want := []string{"unassigned", "pending", "unknown", "running", "ready"}
	pods := []*corev1.Pod{
		mk("ready", "n", corev1.PodRunning, true),
		mk("running", "n", corev1.PodRunning, false),
		mk("unknown", "n", corev1.PodUnknown, false),
		mk("pending", "n", corev1.PodPending, false),
		mk("unassigned", "", corev1.PodPending, false),
	}
	for i := range 5 {
		rand.New(rand.NewSource(int64(i))).Shuffle(len(pods), func(a, b int) { pods[a], pods[b] = pods[b], pods[a] })
		var got []string
		for _, p := range podsToDelete(pods, 4) {
			got = append(got, p.Name)
		}
		if !slices.Equal(got, want[:4]) {
			t.Errorf("podsToDelete = %v, want %v", got, want[:4])
		}
	}
}

func TestDeletionCost(t *testing.T) {
	for v, want := range map[string]int32{"": 0, "7": 7, "-3": -3, "0": 0, "+1": 0, "007": 0, "x": 0, "99999999999": 0} {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{corev1.PodDeletionCost: v}}}
		if got := deletionCost(p); got != want {
			t.Errorf("deletionCost(%q) = %d, want %d", v, got, want)
		}
	}
}

func TestSlowStartBatch(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	failed := errors.New("failed")
	ok, err := slowStartBatch(10, func() error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 4 { // in the third batch (1, 2, 4)
			return failed
		}
		return nil
	})
	if err != failed || calls != 7 || ok != 6 {
		t.Errorf("slowStartBatch: %d successes of %d calls, err %v; want 6 of 7 (batches 1, 2, 4) and the error", ok, calls, err)
	}
	calls = 0
	if ok, err := slowStartBatch(10, func() error { mu.Lock(); calls++; mu.Unlock(); return nil }); ok != 10 || err != nil || calls != 10 {
		t.Errorf("slowStartBatch: %d successes of %d calls, err %v; want all 10", ok, calls, err)
	}
}
