package attachdetach

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	apitypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

// The tests reconcile against fake informers over a fake clientset; the fake keeps no
// finalizers, so a deleted VolumeAttachment is gone at once.

func TestAttachmentName(t *testing.T) {
	// The contract's order: driver, then volume handle, then node (sha256sum of
	// "d.example.comh1node-a").
	if got, want := AttachmentName("d.example.com", "h1", "node-a"), "csi-56e96c2339834ad8f38ffcbd6ff5f142830c24d75cd610d967becb01de5d8fb1"; got != want {
		t.Fatalf("AttachmentName = %q, want %q", got, want)
	}
	if AttachmentName("d", "h1", "n") == AttachmentName("d", "h1", "m") {
		t.Error("the same name for two nodes")
	}
	if got := UniqueVolumeName("d.example.com", "h1"); got != "kubernetes.io/csi/d.example.com^h1" {
		t.Errorf("UniqueVolumeName = %q", got)
	}
}

func objects() []runtime.Object {
	claim := func(name, pv string) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name}, Spec: corev1.PersistentVolumeClaimSpec{VolumeName: pv}}
	}
	pv := func(name, driver string) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: name}}}}
	}
	pod := func(name, node string, phase corev1.PodPhase, vols ...corev1.Volume) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: apitypes.UID("uid-" + name)},
			Spec: corev1.PodSpec{NodeName: node, Volumes: vols}, Status: corev1.PodStatus{Phase: phase}}
	}
	claimVol := func(claim string) corev1.Volume {
		return corev1.Volume{Name: claim, VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}
	}
	return []runtime.Object{
		&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}},
		&storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: "noattach.example.com"}, Spec: storagev1.CSIDriverSpec{AttachRequired: ptr.To(false)}},
		claim("attach", "pv-attach"), pv("pv-attach", "nodriver.example.com"),
		claim("noattach", "pv-noattach"), pv("pv-noattach", "noattach.example.com"),
		claim("unbound", ""),
		claim("done", "pv-done"), pv("pv-done", "nodriver.example.com"),
		pod("runs", "n", corev1.PodRunning, claimVol("attach"), claimVol("noattach"), claimVol("unbound"),
			corev1.Volume{Name: "inline", VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{Driver: "nodriver.example.com"}}}),
		pod("finished", "n", corev1.PodSucceeded, claimVol("done")),
		// Left over from a pod that is gone; the node still uses one of them.
		&storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "old-unused"}, Spec: storagev1.VolumeAttachmentSpec{
			Attacher: "nodriver.example.com", NodeName: "n", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: ptr.To("pv-done")}}},
	}
}

func TestReconcile(t *testing.T) {
	ctx := context.Background()
	kube := fake.NewClientset(objects()...)
	factory := informers.NewSharedInformerFactory(kube, 0)
	c, err := New(kube, factory, Options{})
	if err != nil {
		t.Fatal(err)
	}
	stop, cancel := context.WithCancel(ctx)
	defer func() { cancel(); factory.Shutdown() }()
	factory.Start(stop.Done())
	factory.WaitForCacheSync(stop.Done())

	if _, err := c.Reconcile(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	list, err := kube.StorageV1().VolumeAttachments().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]storagev1.VolumeAttachmentSpec{}
	for _, va := range list.Items {
		names[va.Name] = va.Spec
	}
	want := AttachmentName("nodriver.example.com", "pv-attach", "n")
	if spec, ok := names[want]; !ok || spec.Attacher != "nodriver.example.com" || *spec.Source.PersistentVolumeName != "pv-attach" {
		t.Errorf("attachments %v: want %s for pv-attach (a driver without CSIDriver needs attaching)", names, want)
	}
	if _, ok := names["old-unused"]; ok {
		t.Error("the attachment no pod uses and the node does not list was kept")
	}
	if len(names) != 1 {
		t.Errorf("attachments %v, want only %s (no attach for attachRequired=false, unbound claims, inline volumes, finished pods)", names, want)
	}

	// The node lists the volume of a finished pod: its attachment stays until unmounted.
	va := &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: "old-used"}, Spec: storagev1.VolumeAttachmentSpec{
		Attacher: "nodriver.example.com", NodeName: "n", Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: ptr.To("pv-done")}}}
	if _, err := kube.StorageV1().VolumeAttachments().Create(ctx, va, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n"}, Status: corev1.NodeStatus{VolumesInUse: []corev1.UniqueVolumeName{UniqueVolumeName("nodriver.example.com", "pv-done")}}}
	if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitInformer(t, func() bool {
		n, err := c.nodes.Get("n")
		_, exists, _ := c.attachments.GetByKey("old-used")
		return err == nil && len(n.Status.VolumesInUse) == 1 && exists
	})
	if _, err := c.Reconcile(ctx, "n"); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.StorageV1().VolumeAttachments().Get(ctx, "old-used", metav1.GetOptions{}); err != nil {
		t.Errorf("the attachment of a volume the node still uses was deleted: %v", err)
	}
}

func waitInformer(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatal("the informers never caught up")
}
