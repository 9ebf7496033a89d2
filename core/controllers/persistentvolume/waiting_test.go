package persistentvolume

import (
	"testing"
	"time"
)

// The waiting event repeats per claim once per period, not on every update.
func TestWaitingSaidOncePerPeriod(t *testing.T) {
	var w waitingSaid
	t0 := time.Unix(1000, 0)
	if !w.due("a", t0, 15*time.Second) {
		t.Fatal("first time: want due")
	}
	if w.due("a", t0.Add(time.Second), 15*time.Second) {
		t.Error("a second later: want not due")
	}
	if !w.due("b", t0.Add(time.Second), 15*time.Second) {
		t.Error("another claim: want due")
	}
	if !w.due("a", t0.Add(16*time.Second), 15*time.Second) {
		t.Error("a period later: want due again")
	}
}
