package history

import (
	"context"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func webSet(image string) *appsv1.StatefulSet {
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", UID: "set-uid"},
		Spec: appsv1.StatefulSetSpec{Template: corev1.PodTemplateSpec{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "nginx", Image: image}}},
		}},
	}
}

var kind = appsv1.SchemeGroupVersion.WithKind("StatefulSet")

// The expected patch and hashes were computed with Kubernetes 1.33's own code
// (pkg/controller/statefulset getPatch and history.HashControllerRevision) for this set:
// berth must name revisions exactly as Kubernetes does.
func TestPatchAndHashMatchKubernetes(t *testing.T) {
	patch, err := TemplatePatch(webSet("nginx:1.27"))
	if err != nil {
		t.Fatal(err)
	}
	const wantPatch = `{"spec":{"template":{"$patch":"replace","metadata":{"creationTimestamp":null,"labels":{"app":"web"}},"spec":{"containers":[{"image":"nginx:1.27","name":"nginx","resources":{}}]}}}}`
	if string(patch) != wantPatch {
		t.Fatalf("patch\n got %s\nwant %s", patch, wantPatch)
	}
	one := int32(1)
	for _, tc := range []struct {
		collisions *int32
		want       string
	}{{nil, "766c8795c7"}, {new(int32), "648f968b67"}, {&one, "648f968b66"}} {
		if got := Hash(patch, tc.collisions); got != tc.want {
			t.Errorf("Hash(collisions %v) = %s, want %s", tc.collisions, got, tc.want)
		}
	}
	other, _ := TemplatePatch(webSet("nginx:1.28"))
	if Hash(other, nil) == Hash(patch, nil) {
		t.Error("a different template hashes the same")
	}
}

func TestNameIsCut(t *testing.T) {
	long := make([]byte, 300)
	for i := range long {
		long[i] = 'a'
	}
	if got := Name(string(long), "abc"); len(got) != 223+4 {
		t.Errorf("len(Name) = %d, want 227", len(got))
	}
	if got := Name("web", "abc"); got != "web-abc" {
		t.Errorf("Name = %s", got)
	}
}

func TestCreateBumpsCollisionCount(t *testing.T) {
	set := webSet("nginx:1.27")
	patch, _ := TemplatePatch(set)
	var collisions int32
	rev := New(set, kind, set.Spec.Template.Labels, patch, 1, &collisions)
	// A revision with the same name but other data is in the way.
	squatter := rev.DeepCopy()
	squatter.Data.Raw = []byte(`{"other":true}`)
	kube := fake.NewClientset(squatter)

	got, err := Create(context.Background(), kube, set, rev, &collisions)
	if err != nil {
		t.Fatal(err)
	}
	if collisions != 1 || got.Name != "web-"+Hash(patch, &collisions) || got.Labels[HashLabel] != Hash(patch, &collisions) {
		t.Errorf("created %s (collisions %d), want the next name", got.Name, collisions)
	}
	// Creating the same revision again returns the existing one.
	again, err := Create(context.Background(), kube, set, rev, &collisions)
	if err != nil || again.Name != got.Name || collisions != 1 {
		t.Errorf("second Create = %v, %v (collisions %d)", again.Name, err, collisions)
	}
}

func TestApplyRestoresTemplate(t *testing.T) {
	old := webSet("nginx:1.27")
	patch, _ := TemplatePatch(old)
	rev := New(old, kind, nil, patch, 1, nil)
	cur := webSet("nginx:1.28")
	cur.Spec.Template.Labels["extra"] = "yes"
	got, err := Apply(cur, rev)
	if err != nil {
		t.Fatal(err)
	}
	if got.Spec.Template.Spec.Containers[0].Image != "nginx:1.27" || got.Spec.Template.Labels["extra"] != "" {
		t.Errorf("applied template %+v, want the old one replacing the new wholesale", got.Spec.Template)
	}
	if got.Name != "web" {
		t.Errorf("the rest of the object changed: %+v", got.ObjectMeta)
	}
}

func TestTruncateKeepsLiveAndNewest(t *testing.T) {
	var revs []*appsv1.ControllerRevision
	kube := fake.NewClientset()
	for i, name := range []string{"r1", "r2", "r3", "r4"} {
		r := &appsv1.ControllerRevision{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Revision: int64(i + 1)}
		if _, err := kube.AppsV1().ControllerRevisions("default").Create(context.Background(), r, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		revs = append(revs, r)
	}
	if err := Truncate(context.Background(), kube, revs, map[string]bool{"r1": true, "r4": true}, 1); err != nil {
		t.Fatal(err)
	}
	left, _ := kube.AppsV1().ControllerRevisions("default").List(context.Background(), metav1.ListOptions{})
	var names []string
	for _, r := range left.Items {
		names = append(names, r.Name)
	}
	if len(names) != 3 || names[0] != "r1" || names[1] != "r3" || names[2] != "r4" {
		t.Errorf("left %v, want r1 r3 r4 (r2 is the oldest non-live)", names)
	}
}
