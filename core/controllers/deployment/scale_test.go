package deployment

import (
	"maps"
	"testing"

	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestProportionalScaling changes spec.replicas mid-rollout and checks that the change is
// shared by size, leftovers to the largest, with the replicas annotations renewed.
func TestProportionalScaling(t *testing.T) {
	tests := []struct {
		name                 string
		from, to             int32
		oldSize, newSize     int32
		wantOld, wantNew     int32
		wantDesired, wantMax string
	}{
		// 3 -> 5 with 25% surge: allowed 5+2 = 7; old 3*7/4 = 5.25 -> 5, new 1*7/4 -> 2.
		{"scale up", 3, 5, 3, 1, 5, 2, "5", "7"},
		// 5 -> 3: allowed 4; old 5*4/7 = 2.86 -> 3, new 2*4/7 = 1.14 -> 1.
		{"scale down", 5, 3, 5, 2, 3, 1, "3", "4"},
		// 10 -> 20, surge 25%: allowed 25 from 13; 8*25/13 = 15.38 -> 15, 5*25/13 = 9.6 -> 10.
		{"rounding", 10, 20, 8, 5, 15, 10, "20", "25"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := newDeployment("web", tt.from, "v2")
			old := newRS(before, "v1", 1, 0, tt.oldSize)
			cur := withAvailable(newRS(before, "v2", 2, 1, tt.newSize), tt.newSize, 0)
			d := before.DeepCopy()
			*d.Spec.Replicas = tt.to
			d.Generation = 2
			f := newFixture(t, d, old, cur)
			f.sync(d)
			want := map[string]int32{old.Name: tt.wantOld, cur.Name: tt.wantNew}
			if got := f.sizes(); !maps.Equal(got, want) {
				t.Errorf("sizes %v, want %v", got, want)
			}
			for _, rs := range f.replicaSets() {
				if rs.Annotations[desiredReplicasAnnotation] != tt.wantDesired || rs.Annotations[maxReplicasAnnotation] != tt.wantMax {
					t.Errorf("%s: desired/max annotations %s/%s, want %s/%s", rs.Name,
						rs.Annotations[desiredReplicasAnnotation], rs.Annotations[maxReplicasAnnotation], tt.wantDesired, tt.wantMax)
				}
			}
			if got := f.deployment("web").Status.ObservedGeneration; got != 2 {
				t.Errorf("observedGeneration %d, want 2", got)
			}
		})
	}
}

// TestScalingSingleActiveSet: with one active ReplicaSet the whole new size goes to it.
func TestScalingSingleActiveSet(t *testing.T) {
	before := newDeployment("web", 3, "v1")
	rs := newRS(before, "v1", 1, 0, 3)
	d := before.DeepCopy()
	*d.Spec.Replicas = 6
	d.Spec.Strategy.RollingUpdate.MaxSurge = ptr(intstr.FromInt32(0))
	f := newFixture(t, d, rs)
	f.sync(d)
	if got := f.sizes()[rs.Name]; got != 6 {
		t.Errorf("size %d, want 6", got)
	}
	if ev := f.drainEvents(); !hasEvent(ev, "Scaled up replica set "+rs.Name+" from 3 to 6") {
		t.Errorf("events %q lack the scale-up", ev)
	}
}

// TestProportionalLeftover: three sets of 1 grow by 1 in total; every share rounds to 0,
// so the leftover goes to the first in order, the newest of the equally large.
func TestProportionalLeftover(t *testing.T) {
	before := newDeployment("web", 3, "v3")
	before.Spec.Strategy.RollingUpdate.MaxSurge = ptr(intstr.FromInt32(0))
	before.Spec.Strategy.RollingUpdate.MaxUnavailable = ptr(intstr.FromInt32(1))
	a, b, c := newRS(before, "v1", 1, 0, 1), newRS(before, "v2", 2, 1, 1), newRS(before, "v3", 3, 2, 1)
	d := before.DeepCopy()
	*d.Spec.Replicas = 4
	f := newFixture(t, d, a, b, c)
	f.sync(d)
	want := map[string]int32{a.Name: 1, b.Name: 1, c.Name: 2}
	if got := f.sizes(); !maps.Equal(got, want) {
		t.Errorf("sizes %v, want %v", got, want)
	}
}
