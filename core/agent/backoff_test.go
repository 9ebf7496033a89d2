package agent

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

func TestBackoffDoublesToCapAndResets(t *testing.T) {
	b := newBackoff(backoffInitial, backoffMax)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if d := b.Remaining("k", now, now); d != 0 {
		t.Fatalf("a key never seen waits %s", d)
	}
	var got []time.Duration
	for range 8 {
		got = append(got, b.Next("k", now))
		now = now.Add(time.Second)
	}
	want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second,
		160 * time.Second, 300 * time.Second, 300 * time.Second, 300 * time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("windows %v, want %v", got, want)
		}
	}
	// Quiet for more than twice the cap: the next failure starts over at 10 s.
	now = now.Add(2*backoffMax + time.Second)
	if d := b.Remaining("k", now.Add(-time.Second), now); d != 0 {
		t.Errorf("an expired key still waits %s", d)
	}
	if d := b.Next("k", now); d != backoffInitial {
		t.Errorf("after a quiet spell the window is %s, want %s", d, backoffInitial)
	}
}

func TestBackoffRemaining(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		windows    int           // Next calls at start
		since, now time.Duration // offsets from start
		want       time.Duration
	}{
		{"no entry", 0, 0, 0, 0},
		{"just failed", 1, 0, 0, 10 * time.Second},
		{"half way", 1, 0, 4 * time.Second, 6 * time.Second},
		{"window over", 1, 0, 11 * time.Second, 0},
		{"second window counts from the exit", 2, 5 * time.Second, 10 * time.Second, 15 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackoff(backoffInitial, backoffMax)
			for range tt.windows {
				b.Next("k", start)
			}
			if got := b.Remaining("k", start.Add(tt.since), start.Add(tt.now)); got != tt.want {
				t.Errorf("Remaining = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestBackoffSinceLastAndForget(t *testing.T) {
	b := newBackoff(backoffInitial, backoffMax)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b.Next("img", now)
	if got := b.RemainingSinceLast("img", now.Add(3*time.Second)); got != 7*time.Second {
		t.Errorf("RemainingSinceLast = %s, want 7s", got)
	}
	b.Forget("img")
	if got := b.RemainingSinceLast("img", now); got != 0 {
		t.Errorf("after Forget: %s", got)
	}
	b.Next("old", now)
	b.GC(now.Add(2*backoffMax + time.Second))
	if b.Delay("old") != 0 {
		t.Error("GC kept an expired entry")
	}
}

func TestShouldRestart(t *testing.T) {
	tests := []struct {
		policy corev1.RestartPolicy
		code   int32
		want   bool
	}{
		{corev1.RestartPolicyAlways, 0, true},
		{corev1.RestartPolicyAlways, 1, true},
		{corev1.RestartPolicyOnFailure, 0, false},
		{corev1.RestartPolicyOnFailure, 137, true},
		{corev1.RestartPolicyNever, 1, false},
	}
	for _, tt := range tests {
		if got := shouldRestart(tt.policy, tt.code); got != tt.want {
			t.Errorf("shouldRestart(%s, %d) = %v, want %v", tt.policy, tt.code, got, tt.want)
		}
	}
}

func TestPullPolicy(t *testing.T) {
	tests := []struct {
		image string
		set   corev1.PullPolicy
		want  corev1.PullPolicy
	}{
		{"busybox", "", corev1.PullAlways},
		{"busybox:latest", "", corev1.PullAlways},
		{"busybox:1.36", "", corev1.PullIfNotPresent},
		{"localhost:5000/busybox", "", corev1.PullAlways},
		{"busybox@sha256:abc", "", corev1.PullIfNotPresent},
		{"busybox:latest", corev1.PullNever, corev1.PullNever},
	}
	for _, tt := range tests {
		if got := pullPolicy(&corev1.Container{Image: tt.image, ImagePullPolicy: tt.set}); got != tt.want {
			t.Errorf("pullPolicy(%q, %q) = %s, want %s", tt.image, tt.set, got, tt.want)
		}
	}
}
