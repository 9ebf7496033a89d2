package csi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	statsapi "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
	"k8s.io/utils/ptr"
)

const (
	testNode   = "node-1"
	testDriver = "fake.csi.berth.dev"
)

func TestPaths(t *testing.T) {
	if got, want := StagingPath("/d", "drv", "vol-1"), "/d/plugins/kubernetes.io/csi/drv/"+sha("vol-1")+"/globalmount"; got != want {
		t.Errorf("StagingPath = %s, want %s", got, want)
	}
	if got, want := PublishPath("/d", "uid-1", "data", false), "/d/pods/uid-1/volumes/kubernetes.io~csi/data/mount"; got != want {
		t.Errorf("PublishPath = %s, want %s", got, want)
	}
	if got, want := PublishPath("/d", "uid-1", "pv-1", true), "/d/pods/uid-1/volumeDevices/kubernetes.io~csi/pv-1"; got != want {
		t.Errorf("PublishPath block = %s, want %s", got, want)
	}
	if got, want := EphemeralHandle("uid-1", "scratch"), "csi-"+sha("uid-1scratch"); got != want {
		t.Errorf("EphemeralHandle = %s, want %s", got, want)
	}
	if got, want := UniqueName("drv", "vol-1"), corev1.UniqueVolumeName("kubernetes.io/csi/drv^vol-1"); got != want {
		t.Errorf("UniqueName = %s, want %s", got, want)
	}
	if got, want := AttachmentName("drv", "vol-1", "n1"), "csi-"+sha("vol-1drvn1"); got != want {
		t.Errorf("AttachmentName = %s, want %s", got, want)
	}
}

func sha(s string) string {
	return strings.TrimPrefix(EphemeralHandle(types.UID(s), ""), "csi-")
}

func TestAccessMode(t *testing.T) {
	cases := []struct {
		modes []corev1.PersistentVolumeAccessMode
		want  csipb.VolumeCapability_AccessMode_Mode
	}{
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany}, csipb.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY},
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}, csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER},
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod}, csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER},
		{[]corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany, corev1.ReadWriteOnce}, csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
		{nil, csipb.VolumeCapability_AccessMode_UNKNOWN},
	}
	for _, c := range cases {
		if got := accessMode(c.modes); got != c.want {
			t.Errorf("accessMode(%v) = %v, want %v", c.modes, got, c.want)
		}
	}
}

// rig is a manager on a fake API with a fake driver registered.
type rig struct {
	m       *Manager
	kube    kubernetes.Interface
	drv     *FakeDriver
	dataDir string
	plugins string
	socket  string
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newRig(t *testing.T, drv *FakeDriver, objects ...runtime.Object) *rig {
	t.Helper()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: testNode, UID: "node-uid", Labels: map[string]string{"a": "b"}}}
	kube := fake.NewClientset(append([]runtime.Object{node}, objects...)...)
	// Unix socket paths are limited to 108 bytes: keep the plugins dir short.
	plugins, err := os.MkdirTemp("", "csi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(plugins) })
	r := &rig{kube: kube, dataDir: t.TempDir(), plugins: plugins, socket: filepath.Join(plugins, "fake.sock")}
	r.m = r.newManager(t)
	if drv != nil {
		r.drv = StartFakeDriver(t, r.socket, drv)
		r.m.scan(context.Background(), true)
		if !r.m.Registered(drv.Name) {
			t.Fatalf("driver %s not registered", drv.Name)
		}
	}
	return r
}

// newManager is a manager on the rig's data and plugins dirs, as a restarted agent makes.
func (r *rig) newManager(t *testing.T) *Manager {
	m, err := New(Config{Kube: r.kube, NodeName: testNode, DataDir: r.dataDir, PluginsDir: r.plugins, Log: quietLog()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.closeDrivers)
	return m
}

// boundClaim is a PVC bound to a CSI PV of testDriver.
func boundClaim(name, handle string, mode corev1.PersistentVolumeMode) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume) {
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name)},
		Spec:       corev1.PersistentVolumeClaimSpec{VolumeName: "pv-" + name, VolumeMode: &mode},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound,
			Capacity: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-" + name},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:     corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:  []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			MountOptions: []string{"noatime"},
			VolumeMode:   &mode,
			ClaimRef:     &corev1.ObjectReference{Name: name, Namespace: "default", UID: pvc.UID},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: testDriver, VolumeHandle: handle, FSType: "ext4", VolumeAttributes: map[string]string{"k": "v"},
			}},
		},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound},
	}
	return pvc, pv
}

func noAttach() *storagev1.CSIDriver {
	return &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: testDriver}, Spec: storagev1.CSIDriverSpec{AttachRequired: ptr.To(false)}}
}

func claimPod(name, uid string, claims ...string) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID(uid)}}
	for _, c := range claims {
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "vol-" + c, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: c}}})
	}
	return p
}

// TestStagePublishRefcount: two pods on one volume stage it once and publish it twice,
// with the PV's capability and context; the first pod's teardown only unpublishes, the
// last one's unstages too and removes the records.
func TestStagePublishRefcount(t *testing.T) {
	pvc, pv := boundClaim("data", "vol-1", corev1.PersistentVolumeFilesystem)
	r := newRig(t, &FakeDriver{Name: testDriver, NodeID: "n1", Stage: true}, pvc, pv, noAttach())
	ctx := context.Background()
	p1, p2 := claimPod("a", "uid-a", "data"), claimPod("b", "uid-b", "data")
	p2.Spec.Volumes[0].PersistentVolumeClaim.ReadOnly = true
	m1, err := r.m.SetUp(ctx, p1, &p1.Spec.Volumes[0])
	if err != nil {
		t.Fatal(err)
	}
	m2, err := r.m.SetUp(ctx, p2, &p2.Spec.Volumes[0])
	if err != nil {
		t.Fatal(err)
	}
	if want := PublishPath(r.dataDir, "uid-a", "vol-data", false); m1.Path != want || m1.ReadOnly || m1.Block {
		t.Errorf("pod a's mount = %+v, want path %s read-write", m1, want)
	}
	if !m2.ReadOnly {
		t.Errorf("pod b's claim is readOnly, its mount is not: %+v", m2)
	}
	// Again: set up already, no more calls.
	if _, err := r.m.SetUp(ctx, p1, &p1.Spec.Volumes[0]); err != nil {
		t.Fatal(err)
	}
	stages, pubs := r.drv.Calls("NodeStageVolume"), r.drv.Calls("NodePublishVolume")
	if len(stages) != 1 || len(pubs) != 2 {
		t.Fatalf("%d stages and %d publishes, want 1 and 2", len(stages), len(pubs))
	}
	st := stages[0].(*csipb.NodeStageVolumeRequest)
	staging := StagingPath(r.dataDir, testDriver, "vol-1")
	if st.VolumeId != "vol-1" || st.StagingTargetPath != staging || st.VolumeContext["k"] != "v" ||
		st.VolumeCapability.GetMount().GetFsType() != "ext4" || st.VolumeCapability.GetMount().GetMountFlags()[0] != "noatime" ||
		st.VolumeCapability.GetAccessMode().GetMode() != csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER {
		t.Errorf("NodeStageVolume = %v", st)
	}
	pb := pubs[1].(*csipb.NodePublishVolumeRequest)
	if pb.StagingTargetPath != staging || pb.TargetPath != m2.Path || !pb.Readonly {
		t.Errorf("NodePublishVolume of pod b = %v", pb)
	}
	if got := r.m.VolumesInUse(); len(got) != 1 || got[0] != UniqueName(testDriver, "vol-1") {
		t.Errorf("VolumesInUse = %v", got)
	}

	if err := r.m.TearDownPod(ctx, "uid-a"); err != nil {
		t.Fatal(err)
	}
	if n, m := len(r.drv.Calls("NodeUnpublishVolume")), len(r.drv.Calls("NodeUnstageVolume")); n != 1 || m != 0 {
		t.Fatalf("after pod a: %d unpublishes and %d unstages, want 1 and 0", n, m)
	}
	if err := r.m.TearDownPod(ctx, "uid-b"); err != nil {
		t.Fatal(err)
	}
	if n, m := len(r.drv.Calls("NodeUnpublishVolume")), len(r.drv.Calls("NodeUnstageVolume")); n != 2 || m != 1 {
		t.Fatalf("after pod b: %d unpublishes and %d unstages, want 2 and 1", n, m)
	}
	if got := r.m.VolumesInUse(); len(got) != 0 {
		t.Errorf("VolumesInUse after both pods = %v", got)
	}
	if _, err := os.Stat(filepath.Dir(staging)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("volume record dir left: %v", err)
	}
}

// TestRestartKeepsState: a new manager on the same data dir knows the staged and
// published volume, republishes it for the pod (nothing is mounted, so it cannot reuse
// it) and unstages it when the pod goes.
func TestRestartKeepsState(t *testing.T) {
	pvc, pv := boundClaim("data", "vol-1", corev1.PersistentVolumeFilesystem)
	r := newRig(t, &FakeDriver{Name: testDriver, NodeID: "n1", Stage: true}, pvc, pv, noAttach())
	ctx := context.Background()
	p := claimPod("a", "uid-a", "data")
	if _, err := r.m.SetUp(ctx, p, &p.Spec.Volumes[0]); err != nil {
		t.Fatal(err)
	}
	r.m.closeDrivers()

	m2 := r.newManager(t)
	if got := m2.VolumesInUse(); len(got) != 1 {
		t.Fatalf("restarted manager's VolumesInUse = %v", got)
	}
	if got := m2.PodUIDs(); len(got) != 1 || got[0] != "uid-a" {
		t.Fatalf("restarted manager's PodUIDs = %v", got)
	}
	// Without its driver, nothing can be torn down: an error, the records stay.
	if err := m2.TearDownPod(ctx, "uid-a"); err == nil || !strings.Contains(err.Error(), "not found in the list of registered CSI drivers") {
		t.Fatalf("teardown without the driver: %v", err)
	}
	m2.scan(ctx, true)
	if _, err := m2.SetUp(ctx, p, &p.Spec.Volumes[0]); err != nil {
		t.Fatal(err)
	}
	if err := m2.TearDownPod(ctx, "uid-a"); err != nil {
		t.Fatal(err)
	}
	if n := len(r.drv.Calls("NodeUnstageVolume")); n != 1 {
		t.Fatalf("%d unstages, want 1", n)
	}
	if got := m2.VolumesInUse(); len(got) != 0 {
		t.Errorf("VolumesInUse = %v", got)
	}
}

// TestStageFailure: the driver's error reaches the FailedMount message in the kubelet's
// words, and the staging is undone (unstaged) once nothing uses it.
func TestStageFailure(t *testing.T) {
	pvc, pv := boundClaim("data", "vol-1", corev1.PersistentVolumeFilesystem)
	r := newRig(t, &FakeDriver{Name: testDriver, NodeID: "n1", Stage: true}, pvc, pv, noAttach())
	r.drv.Fail("NodeStageVolume", status.Error(codes.Internal, "disk on fire"))
	p := claimPod("a", "uid-a", "data")
	_, err := r.m.SetUp(context.Background(), p, &p.Spec.Volumes[0])
	want := `MountVolume.MountDevice failed for volume "pv-data" : rpc error: code = Internal desc = disk on fire`
	if err == nil || err.Error() != want {
		t.Fatalf("SetUp error = %v, want %s", err, want)
	}
	r.drv.Fail("NodeStageVolume", nil)
	r.drv.Fail("NodePublishVolume", status.Error(codes.Internal, "no"))
	_, err = r.m.SetUp(context.Background(), p, &p.Spec.Volumes[0])
	if want := `MountVolume.SetUp failed for volume "pv-data" : rpc error: code = Internal desc = no`; err == nil || err.Error() != want {
		t.Fatalf("SetUp error = %v, want %s", err, want)
	}
	// The pod goes before its volume ever worked: unpublished and unstaged all the same.
	if err := r.m.TearDownPod(context.Background(), "uid-a"); err != nil {
		t.Fatal(err)
	}
	if n, m := len(r.drv.Calls("NodeUnpublishVolume")), len(r.drv.Calls("NodeUnstageVolume")); n != 1 || m != 1 {
		t.Fatalf("%d unpublishes and %d unstages, want 1 and 1", n, m)
	}
}

func TestUnboundAndMissingClaims(t *testing.T) {
	pvc, pv := boundClaim("data", "vol-1", corev1.PersistentVolumeFilesystem)
	pvc.Status.Phase = corev1.ClaimPending
	r := newRig(t, &FakeDriver{Name: testDriver, NodeID: "n1"}, pvc, pv, noAttach())
	p := claimPod("a", "uid-a", "data", "nope")
	_, err := r.m.SetUp(context.Background(), p, &p.Spec.Volumes[0])
	if want := `MountVolume.SetUp failed for volume "vol-data" : error processing PVC default/data: PVC is not bound`; err == nil || err.Error() != want {
		t.Errorf("unbound: %v, want %s", err, want)
	}
	_, err = r.m.SetUp(context.Background(), p, &p.Spec.Volumes[1])
	if err == nil || !strings.Contains(err.Error(), `persistentvolumeclaims "nope" not found`) {
		t.Errorf("missing: %v", err)
	}
	// A generic ephemeral volume's claim must belong to the pod.
	eph := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "default", UID: "uid-a"},
		Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{Ephemeral: &corev1.EphemeralVolumeSource{}}}}}}
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "a-data", Namespace: "default"}}
	if _, err := r.kube.CoreV1().PersistentVolumeClaims("default").Create(context.Background(), claim, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = r.m.SetUp(context.Background(), eph, &eph.Spec.Volumes[0])
	if err == nil || !strings.Contains(err.Error(), "pod is not owner") {
		t.Errorf("foreign ephemeral claim: %v", err)
	}
}

// TestInlineVolume: an inline csi volume is published only, with the kubelet's volume id
// and the pod's information in its context.
func TestInlineVolume(t *testing.T) {
	r := newRig(t, &FakeDriver{Name: testDriver, NodeID: "n1", Stage: true})
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "ns", UID: "uid-a"},
		Spec: corev1.PodSpec{ServiceAccountName: "sa", Volumes: []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{
			CSI: &corev1.CSIVolumeSource{Driver: testDriver, ReadOnly: ptr.To(true), VolumeAttributes: map[string]string{"size": "1Mi"}}}}}}}
	m, err := r.m.SetUp(context.Background(), p, &p.Spec.Volumes[0])
	if err != nil {
		t.Fatal(err)
	}
	if !m.ReadOnly || m.Path != PublishPath(r.dataDir, "uid-a", "scratch", false) {
		t.Errorf("mount = %+v", m)
	}
	if n := len(r.drv.Calls("NodeStageVolume")); n != 0 {
		t.Errorf("inline volume staged %d times", n)
	}
	pb := r.drv.Calls("NodePublishVolume")[0].(*csipb.NodePublishVolumeRequest)
	want := map[string]string{"size": "1Mi", ctxEphemeral: "true", ctxPodName: "a", ctxPodNamespace: "ns", ctxPodUID: "uid-a", ctxServiceAccount: "sa"}
	for k, v := range want {
		if pb.VolumeContext[k] != v {
			t.Errorf("volume_context[%s] = %q, want %q", k, pb.VolumeContext[k], v)
		}
	}
	if pb.VolumeId != EphemeralHandle("uid-a", "scratch") || pb.StagingTargetPath != "" || !pb.Readonly {
		t.Errorf("NodePublishVolume = %v", pb)
	}
	if err := r.m.TearDownPod(context.Background(), "uid-a"); err != nil {
		t.Fatal(err)
	}
	if n, m := len(r.drv.Calls("NodeUnpublishVolume")), len(r.drv.Calls("NodeUnstageVolume")); n != 1 || m != 0 {
		t.Fatalf("%d unpublishes and %d unstages, want 1 and 0", n, m)
	}
}

// TestAttachRequired: without a CSIDriver object the volume waits for its
// VolumeAttachment, whose attachmentMetadata becomes the publish_context.
func TestAttachRequired(t *testing.T) {
	pvc, pv := boundClaim("data", "vol-1", corev1.PersistentVolumeBlock)
	r := newRig(t, &FakeDriver{Name: testDriver, NodeID: "n1", Stage: true}, pvc, pv)
	// The manager made a CSIDriver at registration; the operator's absence of one is
	// what this test wants.
	_ = r.kube.StorageV1().CSIDrivers().Delete(context.Background(), testDriver, metav1.DeleteOptions{})
	p := claimPod("a", "uid-a", "data")
	_, err := r.m.SetUp(context.Background(), p, &p.Spec.Volumes[0])
	if err == nil || !strings.HasPrefix(err.Error(), `MountVolume.WaitForAttach failed for volume "pv-data"`) {
		t.Fatalf("SetUp before attach: %v", err)
	}
	va := &storagev1.VolumeAttachment{ObjectMeta: metav1.ObjectMeta{Name: AttachmentName(testDriver, "vol-1", testNode)},
		Status: storagev1.VolumeAttachmentStatus{Attached: true, AttachmentMetadata: map[string]string{"devicePath": "/dev/x"}}}
	if _, err := r.kube.StorageV1().VolumeAttachments().Create(context.Background(), va, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	m, err := r.m.SetUp(context.Background(), p, &p.Spec.Volumes[0])
	if err != nil {
		t.Fatal(err)
	}
	if !m.Block || m.Path != PublishPath(r.dataDir, "uid-a", "pv-data", true) {
		t.Errorf("block mount = %+v", m)
	}
	st := r.drv.Calls("NodeStageVolume")[0].(*csipb.NodeStageVolumeRequest)
	if st.PublishContext["devicePath"] != "/dev/x" || st.VolumeCapability.GetBlock() == nil {
		t.Errorf("NodeStageVolume = %v", st)
	}
}

// TestNodeInfo: registration publishes the driver on the CSINode (owned by the Node),
// the Node's labels and nodeid annotation, and a CSIDriver; a socket that goes away takes
// the driver out again.
func TestNodeInfo(t *testing.T) {
	r := newRig(t, &FakeDriver{Name: testDriver, NodeID: "n1", Controller: true, PublishUnpublish: true,
		Topology: map[string]string{"topology.fake/node": "n1"}})
	ctx := context.Background()
	cn, err := r.kube.StorageV1().CSINodes().Get(ctx, testNode, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(cn.Spec.Drivers) != 1 || cn.Spec.Drivers[0].NodeID != "n1" || cn.Spec.Drivers[0].TopologyKeys[0] != "topology.fake/node" ||
		*cn.Spec.Drivers[0].Allocatable.Count != 10 || cn.OwnerReferences[0].UID != "node-uid" {
		t.Errorf("CSINode = %+v", cn)
	}
	node, _ := r.kube.CoreV1().Nodes().Get(ctx, testNode, metav1.GetOptions{})
	if node.Labels["topology.fake/node"] != "n1" || node.Labels["a"] != "b" || node.Annotations[NodeIDAnnotation] != `{"`+testDriver+`":"n1"}` {
		t.Errorf("node labels %v annotations %v", node.Labels, node.Annotations)
	}
	cd, err := r.kube.StorageV1().CSIDrivers().Get(ctx, testDriver, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !*cd.Spec.AttachRequired || *cd.Spec.PodInfoOnMount || len(cd.Spec.VolumeLifecycleModes) != 2 ||
		*cd.Spec.FSGroupPolicy != storagev1.ReadWriteOnceWithFSTypeFSGroupPolicy {
		t.Errorf("CSIDriver = %+v", cd.Spec)
	}

	r.drv.Stop()
	r.m.scan(ctx, false)
	if r.m.Registered(testDriver) {
		t.Fatal("driver still registered after its socket went")
	}
	cn, _ = r.kube.StorageV1().CSINodes().Get(ctx, testNode, metav1.GetOptions{})
	node, _ = r.kube.CoreV1().Nodes().Get(ctx, testNode, metav1.GetOptions{})
	if len(cn.Spec.Drivers) != 0 || node.Annotations[NodeIDAnnotation] != "" {
		t.Errorf("after deregistration: CSINode drivers %v, annotation %q", cn.Spec.Drivers, node.Annotations[NodeIDAnnotation])
	}
}

// TestSidecarRunsPerControllerDriver: a driver with a controller service gets its
// sidecar, with its topology, until it is deregistered.
func TestSidecarRunsPerControllerDriver(t *testing.T) {
	started := make(chan SidecarConfig, 1)
	stopped := make(chan struct{})
	old := runSidecar
	runSidecar = func(ctx context.Context, cfg SidecarConfig) error {
		started <- cfg
		<-ctx.Done()
		close(stopped)
		return nil
	}
	t.Cleanup(func() { runSidecar = old })
	r := newRig(t, &FakeDriver{Name: testDriver, NodeID: "n1", Controller: true, Topology: map[string]string{"k": "n1"}})
	cfg := <-started
	if cfg.DriverName != testDriver || cfg.NodeName != testNode || !cfg.NodeScoped || cfg.Topology["k"] != "n1" || cfg.Conn == nil {
		t.Errorf("sidecar config = %+v", cfg)
	}
	r.drv.Stop()
	r.m.scan(context.Background(), false)
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("sidecar not stopped with its driver")
	}
}

// TestExpansionAndStats: a PVC waiting for the node's file system resize gets
// NodeExpandVolume and its status finished; stats come out in the summary API's shape.
func TestExpansionAndStats(t *testing.T) {
	pvc, pv := boundClaim("data", "vol-1", corev1.PersistentVolumeFilesystem)
	pv.Spec.Capacity[corev1.ResourceStorage] = resource.MustParse("2Gi")
	pvc.Status.AllocatedResourceStatuses = map[corev1.ResourceName]corev1.ClaimResourceStatus{
		corev1.ResourceStorage: corev1.PersistentVolumeClaimNodeResizePending}
	pvc.Status.Conditions = []corev1.PersistentVolumeClaimCondition{{Type: corev1.PersistentVolumeClaimFileSystemResizePending, Status: corev1.ConditionTrue}}
	r := newRig(t, &FakeDriver{Name: testDriver, NodeID: "n1", Stage: true, Stats: true, Expand: true}, pvc, pv, noAttach())
	ctx := context.Background()
	p := claimPod("a", "uid-a", "data")
	if _, err := r.m.SetUp(ctx, p, &p.Spec.Volumes[0]); err != nil {
		t.Fatal(err)
	}
	r.m.expandVolumes(ctx)
	ex := r.drv.Calls("NodeExpandVolume")
	if len(ex) != 1 {
		t.Fatalf("%d NodeExpandVolume calls, want 1", len(ex))
	}
	req := ex[0].(*csipb.NodeExpandVolumeRequest)
	if req.CapacityRange.RequiredBytes != 2<<30 || req.VolumePath != PublishPath(r.dataDir, "uid-a", "vol-data", false) ||
		req.StagingTargetPath != StagingPath(r.dataDir, testDriver, "vol-1") {
		t.Errorf("NodeExpandVolume = %v", req)
	}
	got, _ := r.kube.CoreV1().PersistentVolumeClaims("default").Get(ctx, "data", metav1.GetOptions{})
	if c := got.Status.Capacity[corev1.ResourceStorage]; c.String() != "2Gi" || len(got.Status.Conditions) != 0 || got.Status.AllocatedResourceStatuses != nil {
		t.Errorf("PVC status after expansion = %+v", got.Status)
	}
	r.m.expandVolumes(ctx)
	if n := len(r.drv.Calls("NodeExpandVolume")); n != 1 {
		t.Errorf("expanded again: %d calls", n)
	}

	r.m.collectStats(ctx)
	rec := httptest.NewRecorder()
	r.m.ServeSummary(rec, httptest.NewRequest("GET", "/stats/summary", nil))
	var sum statsapi.Summary
	if err := json.Unmarshal(rec.Body.Bytes(), &sum); err != nil {
		t.Fatal(err)
	}
	if sum.Node.NodeName != testNode || len(sum.Pods) != 1 || len(sum.Pods[0].VolumeStats) != 1 {
		t.Fatalf("summary = %s", rec.Body.String())
	}
	vs := sum.Pods[0].VolumeStats[0]
	if vs.Name != "vol-data" || *vs.CapacityBytes != 1000 || *vs.UsedBytes != 300 || *vs.AvailableBytes != 700 || *vs.Inodes != 100 ||
		vs.PVCRef == nil || vs.PVCRef.Name != "data" || sum.Pods[0].PodRef.UID != "uid-a" {
		t.Errorf("volume stats = %s", rec.Body.String())
	}
}
