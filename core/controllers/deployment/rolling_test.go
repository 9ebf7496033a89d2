package deployment

import (
	"maps"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestResolveFenceposts(t *testing.T) {
	pct, num := intstr.FromString, intstr.FromInt32
	tests := []struct {
		surge, unavailable intstr.IntOrString
		desired            int32
		wantSurge, wantUn  int32
	}{
		{pct("25%"), pct("25%"), 3, 1, 0},  // surge 0.75 rounds up, unavailable rounds down
		{pct("25%"), pct("25%"), 10, 3, 2}, // 2.5 -> 3 and 2
		{pct("25%"), pct("25%"), 4, 1, 1},
		{num(0), num(0), 3, 0, 1},        // both 0: one may be unavailable
		{pct("0%"), pct("10%"), 5, 0, 1}, // 0.5 rounds down to 0, then the floor of 1
		{num(2), num(1), 5, 2, 1},
		{pct("100%"), pct("0%"), 3, 3, 0},
		{pct("50%"), pct("50%"), 1, 1, 0},
	}
	for _, tt := range tests {
		s, u, err := resolveFenceposts(&tt.surge, &tt.unavailable, tt.desired)
		if err != nil {
			t.Fatal(err)
		}
		if s != tt.wantSurge || u != tt.wantUn {
			t.Errorf("surge %s unavailable %s of %d: got %d/%d, want %d/%d", tt.surge.String(), tt.unavailable.String(), tt.desired, s, u, tt.wantSurge, tt.wantUn)
		}
	}
}

func TestMaxUnavailableCappedAndZeroReplicas(t *testing.T) {
	d := newDeployment("web", 2, "a")
	d.Spec.Strategy.RollingUpdate.MaxUnavailable = ptr(intstr.FromInt32(5))
	if got := maxUnavailable(d); got != 2 {
		t.Errorf("maxUnavailable %d, want it capped at replicas (2)", got)
	}
	*d.Spec.Replicas = 0
	if got := maxUnavailable(d); got != 0 {
		t.Errorf("maxUnavailable of 0 replicas = %d, want 0", got)
	}
	d.Spec.Strategy = appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType}
	if maxSurge(d) != 0 || maxUnavailable(d) != 0 {
		t.Error("Recreate has a surge or unavailability")
	}
}

func TestNewRSReplicas(t *testing.T) {
	tests := []struct {
		name                       string
		replicas                   int32
		surge                      intstr.IntOrString
		oldSize, newSize, wantSize int32
	}{
		{"surge 1 of 3", 3, intstr.FromInt32(1), 3, 0, 1},
		{"at the surge limit", 3, intstr.FromInt32(1), 3, 1, 1},
		{"old shrunk", 3, intstr.FromInt32(1), 1, 2, 3},
		{"never beyond replicas", 3, intstr.FromInt32(3), 0, 1, 3},
		{"percent rounds up", 10, intstr.FromString("25%"), 10, 0, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := newDeployment("web", tt.replicas, "b")
			d.Spec.Strategy.RollingUpdate.MaxSurge = &tt.surge
			old, cur := newRS(d, "a", 1, 0, tt.oldSize), newRS(d, "b", 2, 1, tt.newSize)
			got, err := newRSReplicas(d, []*appsv1.ReplicaSet{old, cur}, cur)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.wantSize {
				t.Errorf("new replica set size %d, want %d", got, tt.wantSize)
			}
		})
	}
}

func TestScaleDownBudget(t *testing.T) {
	// 10 replicas, maxUnavailable 2, maxSurge 3 (Kubernetes' worked example).
	d := newDeployment("web", 10, "b")
	d.Spec.Strategy.RollingUpdate.MaxSurge = ptr(intstr.FromInt32(3))
	d.Spec.Strategy.RollingUpdate.MaxUnavailable = ptr(intstr.FromInt32(2))
	tests := []struct {
		name                    string
		allPods, newSize, newOK int32
		want                    int32
	}{
		{"new pods crash-loop", 13, 5, 0, 0},
		{"rolled back to a good set", 13, 1, 0, 4},
		{"rolled over, new set empty", 13, 0, 0, 5},
		{"new pods available", 13, 5, 5, 5},
	}
	for _, tt := range tests {
		rs := withAvailable(newRS(d, "b", 2, 0, tt.newSize), tt.newSize, tt.newOK)
		if got := scaleDownBudget(d, tt.allPods, rs); got != tt.want {
			t.Errorf("%s: budget %d, want %d", tt.name, got, tt.want)
		}
	}
}

// TestRollingSteps runs single passes from given states and checks the sizes written.
func TestRollingSteps(t *testing.T) {
	d := newDeployment("web", 3, "v2") // maxSurge 1, maxUnavailable 0
	oldName, newName := newRS(d, "v1", 1, 0, 0).Name, newRS(d, "v2", 2, 1, 0).Name
	tests := []struct {
		name   string
		modify func(d *appsv1.Deployment)
		rss    []*appsv1.ReplicaSet
		want   map[string]int32
	}{
		{"creates the new set within the surge", nil,
			[]*appsv1.ReplicaSet{newRS(d, "v1", 1, 0, 3)},
			map[string]int32{oldName: 3, newName: 1}},
		{"waits for the new pods before scaling down", nil,
			[]*appsv1.ReplicaSet{newRS(d, "v1", 1, 0, 3), withAvailable(newRS(d, "v2", 2, 1, 1), 1, 0)},
			map[string]int32{oldName: 3, newName: 1}},
		{"scales the old set down once new pods are available", nil,
			[]*appsv1.ReplicaSet{newRS(d, "v1", 1, 0, 3), newRS(d, "v2", 2, 1, 1)},
			map[string]int32{oldName: 2, newName: 1}},
		{"scales the new set up after the old shrank", nil,
			[]*appsv1.ReplicaSet{newRS(d, "v1", 1, 0, 2), newRS(d, "v2", 2, 1, 1)},
			map[string]int32{oldName: 2, newName: 2}},
		{"removes unhealthy old replicas first",
			func(d *appsv1.Deployment) { d.Spec.Strategy.RollingUpdate.MaxUnavailable = ptr(intstr.FromInt32(1)) },
			[]*appsv1.ReplicaSet{withAvailable(newRS(d, "v1", 1, 0, 3), 3, 2), newRS(d, "v2", 2, 1, 1)},
			// budget 4-2-0 = 2: one unhealthy replica, then one more of the 3 available above 2
			map[string]int32{oldName: 1, newName: 1}},
		{"does not count available replicas an old set was scaled down from", nil,
			// The old set went 3 -> 2 a pass ago and its status still shows 3 available: only
			// 2 + 2 are, so one more old replica may go, not two.
			[]*appsv1.ReplicaSet{staleScaleDown(newRS(d, "v1", 1, 0, 3), 2), newRS(d, "v2", 2, 1, 2)},
			map[string]int32{oldName: 1, newName: 2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dd := d.DeepCopy()
			if tt.modify != nil {
				tt.modify(dd)
			}
			objs := []any{dd}
			for _, rs := range tt.rss {
				objs = append(objs, rs)
			}
			f := newFixture(t, toObjects(objs)...)
			f.sync(dd)
			if got := f.sizes(); !maps.Equal(got, tt.want) {
				t.Errorf("sizes %v, want %v", got, tt.want)
			}
		})
	}
}

// staleScaleDown scales rs to replicas as a write the ReplicaSet controller has not yet
// acted on: the generation moves on, the status still describes the old size.
func staleScaleDown(rs *appsv1.ReplicaSet, replicas int32) *appsv1.ReplicaSet {
	*rs.Spec.Replicas = replicas
	rs.Generation++
	return rs
}
