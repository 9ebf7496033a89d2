package ephemeral

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"
)

// The test reconciles against fake informers over a fake clientset (no garbage collector:
// only the ownerReference the collector acts on is checked).
func TestReconcile(t *testing.T) {
	ctx := context.Background()
	template := func(class string) *corev1.EphemeralVolumeSource {
		return &corev1.EphemeralVolumeSource{VolumeClaimTemplate: &corev1.PersistentVolumeClaimTemplate{
			ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "x"}, Annotations: map[string]string{"a": "b"}},
			Spec:       corev1.PersistentVolumeClaimSpec{StorageClassName: ptr.To(class)},
		}}
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "uid-p"},
		Spec: corev1.PodSpec{Volumes: []corev1.Volume{
			{Name: "scratch", VolumeSource: corev1.VolumeSource{Ephemeral: template("fast")}},
			{Name: "taken", VolumeSource: corev1.VolumeSource{Ephemeral: template("fast")}},
			{Name: "plain", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		}},
	}
	squatter := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p-taken"}}
	kube := fake.NewClientset(pod, squatter)
	factory := informers.NewSharedInformerFactory(kube, 0)
	rec := record.NewFakeRecorder(10)
	c, err := New(kube, factory, Options{Recorder: rec})
	if err != nil {
		t.Fatal(err)
	}
	stop, cancel := context.WithCancel(ctx)
	defer func() { cancel(); factory.Shutdown() }()
	factory.Start(stop.Done())
	factory.WaitForCacheSync(stop.Done())

	_, err = c.Reconcile(ctx, "ns/p")
	if err == nil || !strings.Contains(err.Error(), "PVC ns/p-taken was not created for pod ns/p (pod is not owner)") {
		t.Errorf("Reconcile = %v, want the conflict with p-taken", err)
	}
	select {
	case e := <-rec.Events:
		if want := "Warning FailedBinding ephemeral volume taken: PVC ns/p-taken was not created for pod ns/p (pod is not owner)"; e != want {
			t.Errorf("event %q, want %q", e, want)
		}
	default:
		t.Error("no event about the conflicting claim")
	}
	got, err := kube.CoreV1().PersistentVolumeClaims("ns").Get(ctx, "p-scratch", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the claim p-scratch: %v", err)
	}
	ref := metav1.GetControllerOf(got)
	if ref == nil || ref.UID != pod.UID || ref.Kind != "Pod" || !ptr.Deref(ref.BlockOwnerDeletion, false) {
		t.Errorf("owner %+v, want the pod as controller, blocking deletion", ref)
	}
	if got.Labels["app"] != "x" || got.Annotations["a"] != "b" || ptr.Deref(got.Spec.StorageClassName, "") != "fast" {
		t.Errorf("claim %+v does not follow its template", got)
	}
	if _, err := kube.CoreV1().PersistentVolumeClaims("ns").Get(ctx, "p-plain", metav1.GetOptions{}); err == nil {
		t.Error("a claim was made for an emptyDir volume")
	}
}
