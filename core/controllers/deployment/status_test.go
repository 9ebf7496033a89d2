package deployment

import (
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// TestStatusComplete: a deployment whose one ReplicaSet has all replicas available reports
// the counts kubectl rollout status waits for, Available and NewReplicaSetAvailable.
func TestStatusComplete(t *testing.T) {
	d := newDeployment("web", 3, "v1")
	rs := newRS(d, "v1", 1, 0, 3)
	f := newFixture(t, d, rs)
	f.sync(d)
	got := f.deployment("web")
	s := got.Status
	if s.ObservedGeneration != 1 || s.Replicas != 3 || s.UpdatedReplicas != 3 || s.ReadyReplicas != 3 || s.AvailableReplicas != 3 || s.UnavailableReplicas != 0 {
		t.Errorf("status %+v, want 3 of everything, observed generation 1", s)
	}
	if c := getCondition(s, appsv1.DeploymentAvailable); c == nil || c.Status != corev1.ConditionTrue || c.Reason != reasonMinAvailable || c.Message != "Deployment has minimum availability." {
		t.Errorf("Available %+v", c)
	}
	c := getCondition(s, appsv1.DeploymentProgressing)
	if c == nil || c.Status != corev1.ConditionTrue || c.Reason != reasonNewRSAvailable || c.Message != `ReplicaSet "`+rs.Name+`" has successfully progressed.` {
		t.Errorf("Progressing %+v", c)
	}
}

func TestStatusMinimumUnavailable(t *testing.T) {
	d := newDeployment("web", 4, "v1") // maxUnavailable 1: 3 must be available
	rs := withAvailable(newRS(d, "v1", 1, 0, 4), 4, 2)
	f := newFixture(t, d, rs)
	f.sync(d)
	s := f.deployment("web").Status
	if c := getCondition(s, appsv1.DeploymentAvailable); c == nil || c.Status != corev1.ConditionFalse || c.Reason != reasonMinUnavailable {
		t.Errorf("Available %+v, want False/MinimumReplicasUnavailable", c)
	}
	if s.UnavailableReplicas != 2 {
		t.Errorf("unavailableReplicas %d, want 2", s.UnavailableReplicas)
	}
	if c := getCondition(s, appsv1.DeploymentProgressing); c == nil || c.Reason != reasonRSUpdated {
		t.Errorf("Progressing %+v, want ReplicaSetUpdated (more ready replicas than last seen)", c)
	}
}

// stuck is a rollout that cannot move: the new ReplicaSet's only pod never becomes
// available, and the status already says so, with Progressing last updated at lastProgress.
func stuck(lastProgress time.Time) (*appsv1.Deployment, *appsv1.ReplicaSet, *appsv1.ReplicaSet) {
	d := newDeployment("web", 3, "v2")
	old := newRS(d, "v1", 1, 0, 3)
	cur := withAvailable(newRS(d, "v2", 2, 1, 1), 1, 0)
	at := metav1.NewTime(lastProgress)
	d.Annotations = map[string]string{revisionAnnotation: "2"}
	d.Status = appsv1.DeploymentStatus{
		ObservedGeneration: 1, Replicas: 4, UpdatedReplicas: 1, ReadyReplicas: 3, AvailableReplicas: 3, UnavailableReplicas: 1,
		Conditions: []appsv1.DeploymentCondition{
			{Type: appsv1.DeploymentAvailable, Status: corev1.ConditionTrue, Reason: reasonMinAvailable, Message: "Deployment has minimum availability.", LastUpdateTime: at, LastTransitionTime: at},
			{Type: appsv1.DeploymentProgressing, Status: corev1.ConditionTrue, Reason: reasonRSUpdated, Message: `ReplicaSet "` + cur.Name + `" is progressing.`, LastUpdateTime: at, LastTransitionTime: at},
		},
	}
	return d, old, cur
}

func TestProgressDeadline(t *testing.T) {
	now := epoch.Add(time.Hour)

	t.Run("requeued at the deadline", func(t *testing.T) {
		d, old, cur := stuck(now.Add(-4 * time.Minute))
		f := newFixture(t, d, old, cur)
		res := f.sync(d)
		if want := 6*time.Minute + time.Second; res.RequeueAfter != want {
			t.Errorf("requeue after %v, want %v", res.RequeueAfter, want)
		}
		if w := f.writes(); len(w) != 0 {
			t.Errorf("writes %v before the deadline, want none", w)
		}
	})

	t.Run("exceeded", func(t *testing.T) {
		d, old, cur := stuck(now.Add(-11 * time.Minute))
		f := newFixture(t, d, old, cur)
		f.sync(d)
		c := getCondition(f.deployment("web").Status, appsv1.DeploymentProgressing)
		if c == nil || c.Status != corev1.ConditionFalse || c.Reason != reasonTimedOut || c.Message != `ReplicaSet "`+cur.Name+`" has timed out progressing.` {
			t.Errorf("Progressing %+v, want False/ProgressDeadlineExceeded", c)
		}
	})

	t.Run("progress renews the deadline", func(t *testing.T) {
		d, old, cur := stuck(now.Add(-11 * time.Minute))
		withAvailable(cur, 1, 1) // the new pod became available
		f := newFixture(t, d, old, cur)
		f.sync(d)
		c := getCondition(f.deployment("web").Status, appsv1.DeploymentProgressing)
		if c == nil || c.Reason != reasonRSUpdated || !c.LastUpdateTime.Time.Equal(now) || !c.LastTransitionTime.Time.Equal(now.Add(-11*time.Minute)) {
			t.Errorf("Progressing %+v, want ReplicaSetUpdated updated now, transitioned then", c)
		}
	})
}

// TestPaused: a paused deployment with a new template creates nothing, says it is paused,
// still scales, and resumes where it stopped.
func TestPaused(t *testing.T) {
	d := newDeployment("web", 3, "v2")
	d.Spec.Paused = true
	old := newRS(d, "v1", 1, 0, 3)
	f := newFixture(t, d, old)
	f.sync(d)
	if got := f.sizes(); len(got) != 1 {
		t.Errorf("replica sets %v while paused, want only the old one", got)
	}
	c := getCondition(f.deployment("web").Status, appsv1.DeploymentProgressing)
	if c == nil || c.Status != corev1.ConditionUnknown || c.Reason != reasonPaused || c.Message != "Deployment is paused" {
		t.Fatalf("Progressing %+v, want Unknown/DeploymentPaused", c)
	}

	scaled := f.deployment("web")
	*scaled.Spec.Replicas = 5
	f = newFixture(t, scaled, old)
	f.sync(scaled)
	if got := f.sizes()[old.Name]; got != 5 {
		t.Errorf("paused deployment scaled to 5: old set has %d", got)
	}
	if len(f.sizes()) != 1 {
		t.Errorf("replica sets %v, want no new one while paused", f.sizes())
	}

	resumed := f.deployment("web")
	resumed.Spec.Paused = false
	f = newFixture(t, resumed, f.replicaSets()[old.Name])
	f.sync(resumed)
	if len(f.sizes()) != 2 {
		t.Errorf("replica sets %v after resume, want the new one created", f.sizes())
	}
	var sawResumed bool
	for _, a := range f.kube.Actions() {
		if u, ok := a.(interface{ GetObject() runtime.Object }); ok && a.GetSubresource() == "status" {
			if dd, ok := u.GetObject().(*appsv1.Deployment); ok {
				if c := getCondition(dd.Status, appsv1.DeploymentProgressing); c != nil && c.Reason == reasonResumed {
					sawResumed = true
				}
			}
		}
	}
	if !sawResumed {
		t.Error("no status update set Progressing to DeploymentResumed")
	}
}

func TestSelectingAll(t *testing.T) {
	d := newDeployment("web", 3, "v1")
	d.Spec.Selector = &metav1.LabelSelector{}
	f := newFixture(t, d)
	f.sync(d)
	if got := f.sizes(); len(got) != 0 {
		t.Errorf("replica sets %v for a select-all deployment, want none", got)
	}
	if ev := f.drainEvents(); !hasEvent(ev, "Warning SelectingAll This deployment is selecting all pods. A non-empty selector is required.") {
		t.Errorf("events %q lack SelectingAll", ev)
	}
	if got := f.deployment("web").Status.ObservedGeneration; got != 1 {
		t.Errorf("observedGeneration %d, want 1", got)
	}
}
