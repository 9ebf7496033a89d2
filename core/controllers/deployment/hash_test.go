package deployment

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// TestTemplateHashMatchesKubernetes pins hashes produced by Kubernetes 1.33's
// controller.ComputeHash for the same templates, so that ReplicaSet names agree.
func TestTemplateHashMatchesKubernetes(t *testing.T) {
	web := template("web", "nginx:1.27")
	one := int32(1)
	tests := []struct {
		name      string
		template  corev1.PodTemplateSpec
		collision *int32
		want      string
	}{
		{"web", web, nil, "54dcc5c5b5"},
		{"web with collisionCount 1", web, &one, "84f9459fcb"},
		{"empty", corev1.PodTemplateSpec{}, nil, "6f75fc469d"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := templateHash(&tt.template, tt.collision); got != tt.want {
				t.Errorf("templateHash = %s, want %s", got, tt.want)
			}
			// Stable: the same template hashes the same every time.
			if again := templateHash(tt.template.DeepCopy(), tt.collision); again != tt.want {
				t.Errorf("second templateHash = %s, want %s", again, tt.want)
			}
		})
	}
}

func TestEqualIgnoreHash(t *testing.T) {
	a := template("web", "nginx:1.27")
	b := a.DeepCopy()
	b.Labels = withLabel(b.Labels, hashLabel, "abc")
	if !equalIgnoreHash(&a, b) {
		t.Error("templates differing only in pod-template-hash compare unequal")
	}
	b.Spec.Containers[0].Image = "nginx:1.28"
	if equalIgnoreHash(&a, b) {
		t.Error("templates with different images compare equal")
	}
}

// TestNewReplicaSetCreated checks the first pass of a fresh deployment: one ReplicaSet
// named <deployment>-<hash>, labelled and selected by the hash, owned by the deployment,
// at revision 1 with the replicas annotations and the change-cause copied, and the
// deployment's revision and Progressing=NewReplicaSetCreated written.
func TestNewReplicaSetCreated(t *testing.T) {
	d := newDeployment("web", 3, "nginx:1.27")
	d.Annotations = map[string]string{"kubernetes.io/change-cause": "first", "kubectl.kubernetes.io/last-applied-configuration": "{}"}
	f := newFixture(t, d)
	f.sync(d)

	rss := f.replicaSets()
	rs := rss["web-54dcc5c5b5"]
	if len(rss) != 1 || rs == nil {
		t.Fatalf("replica sets %v, want just web-54dcc5c5b5", f.sizes())
	}
	if *rs.Spec.Replicas != 3 {
		t.Errorf("replicas %d, want 3", *rs.Spec.Replicas)
	}
	if rs.Labels[hashLabel] != "54dcc5c5b5" || rs.Spec.Template.Labels[hashLabel] != "54dcc5c5b5" || rs.Spec.Selector.MatchLabels[hashLabel] != "54dcc5c5b5" {
		t.Errorf("hash label missing: labels %v, template %v, selector %v", rs.Labels, rs.Spec.Template.Labels, rs.Spec.Selector)
	}
	if ref := rs.OwnerReferences; len(ref) != 1 || ref[0].UID != d.UID || ref[0].Controller == nil || !*ref[0].Controller {
		t.Errorf("ownerReferences %+v, want the deployment as controller", ref)
	}
	want := map[string]string{
		revisionAnnotation: "1", desiredReplicasAnnotation: "3", maxReplicasAnnotation: "4",
		"kubernetes.io/change-cause": "first",
	}
	for k, v := range want {
		if rs.Annotations[k] != v {
			t.Errorf("annotation %s = %q, want %q", k, rs.Annotations[k], v)
		}
	}
	if _, ok := rs.Annotations["kubectl.kubernetes.io/last-applied-configuration"]; ok {
		t.Error("last-applied-configuration was copied to the replica set")
	}
	got := f.deployment("web")
	if got.Annotations[revisionAnnotation] != "1" {
		t.Errorf("deployment revision %q, want 1", got.Annotations[revisionAnnotation])
	}
	cond := getCondition(got.Status, "Progressing")
	if cond == nil || cond.Reason != reasonNewRSCreated || cond.Message != `Created new replica set "web-54dcc5c5b5"` {
		t.Errorf("Progressing %+v, want NewReplicaSetCreated", cond)
	}
	if ev := f.drainEvents(); !hasEvent(ev, "Normal ScalingReplicaSet Scaled up replica set web-54dcc5c5b5 from 0 to 3") {
		t.Errorf("events %q lack the scale-up", ev)
	}
}

// TestHashCollision: a ReplicaSet of the new name with another template bumps
// collisionCount and fails the pass, so the next one hashes differently.
func TestHashCollision(t *testing.T) {
	d := newDeployment("web", 3, "nginx:1.27")
	squatter := newRS(d, "other", 1, 0, 0)
	squatter.Name = "web-54dcc5c5b5"
	squatter.OwnerReferences = nil
	squatter.Labels = map[string]string{"unrelated": "yes"} // not selected, so not claimed
	f := newFixture(t, d, squatter)
	if _, err := f.c.Reconcile(t.Context(), "ns/web"); err == nil {
		t.Fatal("reconcile succeeded despite the name collision")
	}
	got := f.deployment("web")
	if got.Status.CollisionCount == nil || *got.Status.CollisionCount != 1 {
		t.Fatalf("collisionCount %v, want 1", got.Status.CollisionCount)
	}
}
