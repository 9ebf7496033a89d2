package deployment

import (
	"fmt"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestRollbackReusesOldReplicaSet: the template set back to an old one's makes that
// ReplicaSet the new one again, with revision max+1 and its old revision in history.
func TestRollbackReusesOldReplicaSet(t *testing.T) {
	d := newDeployment("web", 3, "v1") // back to v1
	d.Generation = 3
	d.Annotations = map[string]string{revisionAnnotation: "2"}
	first := newRS(d, "v1", 1, 0, 0)
	second := newRS(d, "v2", 2, 1, 3)
	f := newFixture(t, d, first, second)
	f.sync(d)

	rss := f.replicaSets()
	if len(rss) != 2 {
		t.Fatalf("replica sets %v, want the two existing ones (no new one)", f.sizes())
	}
	got := rss[first.Name]
	if got.Annotations[revisionAnnotation] != "3" || got.Annotations[revisionHistoryAnnotation] != "1" {
		t.Errorf("rolled-back set: revision %q history %q, want 3 and 1",
			got.Annotations[revisionAnnotation], got.Annotations[revisionHistoryAnnotation])
	}
	if *got.Spec.Replicas != 1 {
		t.Errorf("rolled-back set size %d, want 1 (the surge)", *got.Spec.Replicas)
	}
	if rev := f.deployment("web").Annotations[revisionAnnotation]; rev != "3" {
		t.Errorf("deployment revision %q, want 3", rev)
	}
}

func TestRevisionHistoryAppends(t *testing.T) {
	d := newDeployment("web", 1, "v1")
	rs := newRS(d, "v1", 3, 0, 1)
	rs.Annotations[revisionHistoryAnnotation] = "1"
	if !setNewReplicaSetAnnotations(d, rs, 5, true) {
		t.Fatal("no change reported")
	}
	if rs.Annotations[revisionAnnotation] != "5" || rs.Annotations[revisionHistoryAnnotation] != "1,3" {
		t.Errorf("revision %q history %q, want 5 and 1,3", rs.Annotations[revisionAnnotation], rs.Annotations[revisionHistoryAnnotation])
	}
	if setNewReplicaSetAnnotations(d, rs, 5, true) {
		t.Error("a second identical call reported a change")
	}
}

// TestHistoryCleanup: a complete deployment deletes its oldest idle ReplicaSets beyond
// revisionHistoryLimit, sparing any that still has pods.
func TestHistoryCleanup(t *testing.T) {
	tests := []struct {
		limit       int32
		wantDeleted []string
	}{
		{10, nil},
		{2, []string{"rev1"}},
		{1, []string{"rev1", "rev2"}},
		{0, []string{"rev1", "rev2"}}, // rev3 still has a pod
	}
	for _, tt := range tests {
		d := newDeployment("web", 3, "v4")
		d.Spec.RevisionHistoryLimit = ptr(tt.limit)
		names := map[string]string{}
		var objs []runtime.Object
		for i, img := range []string{"v1", "v2", "v3"} {
			// rev3 is still terminating a pod: it reports one replica.
			rs := withAvailable(newRS(d, img, i+1, i, 0), int32(i/2), 0)
			names[rs.Name] = fmt.Sprintf("rev%d", i+1)
			objs = append(objs, rs)
		}
		cur := newRS(d, "v4", 4, 3, 3)
		d.Status = appsv1.DeploymentStatus{ObservedGeneration: 1, Replicas: 3, UpdatedReplicas: 3, ReadyReplicas: 3, AvailableReplicas: 3}
		f := newFixture(t, append(objs, d, cur)...)
		f.sync(d)
		var deleted []string
		left := f.replicaSets()
		for name, label := range names {
			if _, ok := left[name]; !ok {
				deleted = append(deleted, label)
			}
		}
		slices.Sort(deleted)
		if !slices.Equal(deleted, tt.wantDeleted) {
			t.Errorf("limit %d: deleted %v, want %v", tt.limit, deleted, tt.wantDeleted)
		}
	}
}
