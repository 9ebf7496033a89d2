package sidecar

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"berth.dev/berth/core/internal/testserver"
)

const (
	testDriver  = "fake.csi.berth.dev"
	topologyKey = "topology.fake.csi.berth.dev/node"
	ns          = "default"
)

// runSidecar runs Run until the test ends or stop is called.
func runSidecar(t *testing.T, cfg Config) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func nodeConfig(srv *testserver.Server, conn *grpc.ClientConn, node string) Config {
	return Config{
		Client: srv.Kube, Conn: conn, DriverName: testDriver, NodeName: node,
		Topology: map[string]string{topologyKey: node}, NodeScoped: true,
		Logger: srv.Log.With("component", "sidecar", "node", node),
	}
}

func ensureNamespace(t *testing.T, kube kubernetes.Interface) {
	t.Helper()
	_, err := kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func createClass(t *testing.T, kube kubernetes.Interface, name string, mode storagev1.VolumeBindingMode) {
	t.Helper()
	reclaim := corev1.PersistentVolumeReclaimDelete
	expand := true
	_, err := kube.StorageV1().StorageClasses().Create(context.Background(), &storagev1.StorageClass{
		ObjectMeta:           metav1.ObjectMeta{Name: name},
		Provisioner:          testDriver,
		Parameters:           map[string]string{"kind": "thin", "csi.storage.k8s.io/fstype": "xfs"},
		ReclaimPolicy:        &reclaim,
		MountOptions:         []string{"noatime"},
		VolumeBindingMode:    &mode,
		AllowVolumeExpansion: &expand,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

// handedClaim is a claim as the PV controller hands it to the driver (and, with node set,
// as the scheduler or the PV controller chose its node).
func handedClaim(t *testing.T, kube kubernetes.Interface, name, class, node string) *corev1.PersistentVolumeClaim {
	t.Helper()
	ann := map[string]string{annStorageProvisioner: testDriver, annBetaStorageProvisioner: testDriver}
	if node != "" {
		ann[annSelectedNode] = node
	}
	c, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(context.Background(), &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &class,
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("128Mi")},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitEvent waits for an event of reason on the object named name whose message contains want.
func waitEvent(t *testing.T, kube kubernetes.Interface, namespace, name, reason, want string) {
	t.Helper()
	var seen []string
	testserver.WaitFor(t, fmt.Sprintf("event %s %q on %s", reason, want, name), func() (bool, error) {
		evs, err := kube.CoreV1().Events(namespace).List(context.Background(), metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("involvedObject.name", name).String(),
		})
		if err != nil {
			return false, err
		}
		seen = seen[:0]
		for _, e := range evs.Items {
			seen = append(seen, e.Reason+": "+e.Message)
			if e.Reason == reason && strings.Contains(e.Message, want) {
				return true, nil
			}
		}
		return false, fmt.Errorf("events so far: %q", seen)
	})
}

func getPV(kube kubernetes.Interface, name string) (*corev1.PersistentVolume, error) {
	return kube.CoreV1().PersistentVolumes().Get(context.Background(), name, metav1.GetOptions{})
}

// TestProvisionAndDelete: a claim handed to the driver for this node gets a volume and a
// pre-bound PV with every field external-provisioner sets; a claim for another node is
// left alone; once released, the volume is deleted and the PV goes.
func TestProvisionAndDelete(t *testing.T) {
	srv := testserver.Start(t)
	kube := srv.Kube
	ctx := context.Background()
	ensureNamespace(t, kube)
	createClass(t, kube, "fast", storagev1.VolumeBindingImmediate)
	fake := newFakeDriver()
	runSidecar(t, nodeConfig(srv, fake.serve(t), "node1"))

	other := handedClaim(t, kube, "elsewhere", "fast", "node2")
	claim := handedClaim(t, kube, "data", "fast", "node1")
	pvName := "pvc-" + string(claim.UID)
	var pv *corev1.PersistentVolume
	testserver.WaitFor(t, "PV "+pvName, func() (bool, error) {
		var err error
		pv, err = getPV(kube, pvName)
		return err == nil, err
	})

	// The PV, field by field.
	if got := pv.Annotations[annProvisionedBy]; got != testDriver {
		t.Errorf("annotation %s = %q", annProvisionedBy, got)
	}
	if !slices.Contains(pv.Finalizers, provisionerFinalizer) {
		t.Errorf("finalizers %v lack %s", pv.Finalizers, provisionerFinalizer)
	}
	if ref := pv.Spec.ClaimRef; ref == nil || ref.UID != claim.UID || ref.Name != "data" || ref.Namespace != ns || ref.Kind != "PersistentVolumeClaim" {
		t.Errorf("claimRef = %+v, want pre-bound to %s/data uid %s", ref, ns, claim.UID)
	}
	if pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete || pv.Spec.StorageClassName != "fast" ||
		!slices.Equal(pv.Spec.MountOptions, []string{"noatime"}) || pv.Spec.VolumeMode == nil || *pv.Spec.VolumeMode != corev1.PersistentVolumeFilesystem ||
		!slices.Equal(pv.Spec.AccessModes, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}) {
		t.Errorf("PV spec = reclaim %s class %q mountOptions %v volumeMode %v accessModes %v", pv.Spec.PersistentVolumeReclaimPolicy, pv.Spec.StorageClassName, pv.Spec.MountOptions, pv.Spec.VolumeMode, pv.Spec.AccessModes)
	}
	if got := pv.Spec.Capacity[corev1.ResourceStorage]; got.Value() != 64<<20 {
		t.Errorf("capacity = %s, want 64Mi", got.String())
	}
	if c := pv.Spec.CSI; c == nil || c.Driver != testDriver || c.VolumeHandle != pvName || c.FSType != "xfs" || c.VolumeAttributes["fake"] != "yes" {
		t.Errorf("csi source = %+v", c)
	}
	if !onNode(pv, map[string]string{topologyKey: "node1"}) || onNode(pv, map[string]string{topologyKey: "node2"}) {
		t.Errorf("node affinity %+v should admit node1 only", pv.Spec.NodeAffinity)
	}

	// What the driver was asked.
	fake.mu.Lock()
	if len(fake.created) == 0 {
		t.Fatal("no CreateVolume")
	}
	req := fake.created[0]
	fake.mu.Unlock()
	if req.GetName() != pvName || len(req.GetParameters()) != 1 || req.GetParameters()["kind"] != "thin" {
		t.Errorf("CreateVolume name %q parameters %v, want %s and only kind=thin", req.GetName(), req.GetParameters(), pvName)
	}
	if r := req.GetCapacityRange(); r.GetRequiredBytes() != 64<<20 || r.GetLimitBytes() != 128<<20 {
		t.Errorf("capacity range = %v, want 64Mi..128Mi", r)
	}
	if caps := req.GetVolumeCapabilities(); len(caps) != 1 || caps[0].GetAccessMode().GetMode() != csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER ||
		caps[0].GetMount().GetFsType() != "xfs" || !slices.Equal(caps[0].GetMount().GetMountFlags(), []string{"noatime"}) {
		t.Errorf("capabilities = %v", caps)
	}
	if r := req.GetAccessibilityRequirements(); len(r.GetRequisite()) != 1 || r.GetRequisite()[0].GetSegments()[topologyKey] != "node1" || len(r.GetPreferred()) != 1 {
		t.Errorf("accessibility requirements = %v", r)
	}
	waitEvent(t, kube, ns, "data", "Provisioning", `External provisioner is provisioning volume for claim "default/data"`)
	waitEvent(t, kube, ns, "data", "ProvisioningSucceeded", "Successfully provisioned volume "+pvName)
	if _, err := getPV(kube, "pvc-"+string(other.UID)); !apierrors.IsNotFound(err) {
		t.Errorf("the claim for node2 was provisioned on node1 (err %v)", err)
	}

	// Released (the PV controller's doing once the claim is deleted): the volume goes.
	pv.Status.Phase = corev1.VolumeReleased
	if _, err := kube.CoreV1().PersistentVolumes().UpdateStatus(ctx, pv, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testserver.WaitFor(t, "PV "+pvName+" deleted", func() (bool, error) {
		pv, err := getPV(kube, pvName)
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if pv.DeletionTimestamp != nil && !slices.Contains(pv.Finalizers, provisionerFinalizer) && len(pv.Finalizers) > 0 {
			// Someone else's finalizer (kubernetes.io/pv-protection, which the PV
			// controller removes from an unbound PV): take its part.
			pv.Finalizers = nil
			_, err := kube.CoreV1().PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{})
			return false, err
		}
		return false, fmt.Errorf("PV still there: deletion %v finalizers %v", pv.DeletionTimestamp, pv.Finalizers)
	})
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if !slices.Contains(fake.deleted, pvName) {
		t.Errorf("DeleteVolume calls %v lack %s", fake.deleted, pvName)
	}
}

// TestProvisionResourceExhausted: a driver without room reports ResourceExhausted in a
// ProvisioningFailed event; a WaitForFirstConsumer claim goes back to the scheduler (its
// selected-node annotation is removed), an Immediate one stays and is retried.
func TestProvisionResourceExhausted(t *testing.T) {
	srv := testserver.Start(t)
	kube := srv.Kube
	ctx := context.Background()
	ensureNamespace(t, kube)
	createClass(t, kube, "late", storagev1.VolumeBindingWaitForFirstConsumer)
	createClass(t, kube, "now", storagev1.VolumeBindingImmediate)
	fake := newFakeDriver()
	fake.setExhausted(true)
	runSidecar(t, nodeConfig(srv, fake.serve(t), "node1"))

	handedClaim(t, kube, "wffc", "late", "node1")
	handedClaim(t, kube, "immediate", "now", "node1")
	waitEvent(t, kube, ns, "wffc", "ProvisioningFailed", `failed to provision volume with StorageClass "late": rpc error: code = ResourceExhausted desc = requested 67108864 bytes`)
	testserver.WaitFor(t, "selected-node removed from the WaitForFirstConsumer claim", func() (bool, error) {
		c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "wffc", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		_, has := c.Annotations[annSelectedNode]
		return !has, nil
	})
	waitEvent(t, kube, ns, "immediate", "ProvisioningFailed", `failed to provision volume with StorageClass "now": rpc error: code = ResourceExhausted`)
	c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "immediate", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if c.Annotations[annSelectedNode] != "node1" {
		t.Errorf("the Immediate claim lost its node: annotations %v", c.Annotations)
	}

	// Room again: the retry (with backoff) provisions the Immediate claim.
	fake.setExhausted(false)
	testserver.WaitFor(t, "the Immediate claim provisioned on retry", func() (bool, error) {
		_, err := getPV(kube, "pvc-"+string(c.UID))
		return err == nil, err
	})
}

// boundPair makes a PV of the driver on node1 and a claim bound to it, as after
// provisioning and binding.
func boundPair(t *testing.T, kube kubernetes.Interface, name, handle string) (*corev1.PersistentVolume, *corev1.PersistentVolumeClaim) {
	t.Helper()
	ctx := context.Background()
	class := "fast"
	size := resource.MustParse("64Mi")
	claim, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &class,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pv, err := kube.CoreV1().PersistentVolumes().Create(ctx, &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-" + name, Annotations: map[string]string{annProvisionedBy: testDriver}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: ns, Name: name, UID: claim.UID},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			StorageClassName:              class,
			NodeAffinity:                  nodeAffinity([]*csi.Topology{{Segments: map[string]string{topologyKey: "node1"}}}),
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: testDriver, VolumeHandle: handle, FSType: "ext4",
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	claim.Spec.VolumeName = pv.Name
	if claim, err = kube.CoreV1().PersistentVolumeClaims(ns).Update(ctx, claim, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	claim.Status.Phase = corev1.ClaimBound
	claim.Status.AccessModes = claim.Spec.AccessModes
	claim.Status.Capacity = corev1.ResourceList{corev1.ResourceStorage: size}
	if claim, err = kube.CoreV1().PersistentVolumeClaims(ns).UpdateStatus(ctx, claim, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return pv, claim
}

// TestResize: a bound claim grows; the driver expands the volume, the PV records the
// new size, and the claim either waits for the node (FileSystemResizePending) or is done.
func TestResize(t *testing.T) {
	srv := testserver.Start(t)
	kube := srv.Kube
	ctx := context.Background()
	ensureNamespace(t, kube)
	createClass(t, kube, "fast", storagev1.VolumeBindingImmediate)
	fake := newFakeDriver()
	runSidecar(t, nodeConfig(srv, fake.serve(t), "node1"))

	grow := func(claim *corev1.PersistentVolumeClaim) {
		t.Helper()
		claim, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		claim.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse("128Mi")
		if _, err := kube.CoreV1().PersistentVolumeClaims(ns).Update(ctx, claim, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	waitPVSize := func(pv *corev1.PersistentVolume) {
		t.Helper()
		testserver.WaitFor(t, "PV "+pv.Name+" at 128Mi", func() (bool, error) {
			pv, err := getPV(kube, pv.Name)
			if err != nil {
				return false, err
			}
			got := pv.Spec.Capacity[corev1.ResourceStorage]
			return got.Value() == 128<<20, fmt.Errorf("capacity %s", got.String())
		})
	}

	// A file system volume: the node must finish.
	pv, claim := boundPair(t, kube, "fs", "nodefs-1")
	grow(claim)
	waitPVSize(pv)
	testserver.WaitFor(t, "claim fs FileSystemResizePending", func() (bool, error) {
		c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "fs", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cond := range c.Status.Conditions {
			if cond.Type == corev1.PersistentVolumeClaimFileSystemResizePending && cond.Status == corev1.ConditionTrue && cond.Message == fsResizePendingMessage &&
				c.Status.AllocatedResourceStatuses[corev1.ResourceStorage] == corev1.PersistentVolumeClaimNodeResizePending {
				capNow := c.Status.Capacity[corev1.ResourceStorage]
				if capNow.Value() != 64<<20 {
					return false, fmt.Errorf("status.capacity %s changed before the node expanded", capNow.String())
				}
				return true, nil
			}
		}
		return false, fmt.Errorf("conditions %+v allocatedResourceStatuses %v", c.Status.Conditions, c.Status.AllocatedResourceStatuses)
	})
	waitEvent(t, kube, ns, "fs", "ExternalExpanding", "waiting for an external controller")
	waitEvent(t, kube, ns, "fs", "Resizing", "External resizer is resizing volume pv-fs")
	waitEvent(t, kube, ns, "fs", "FileSystemResizeRequired", "Require file system resize of volume on node")

	// A volume the controller alone expands: the claim is done.
	pv, claim = boundPair(t, kube, "raw", "ctrl-1")
	grow(claim)
	waitPVSize(pv)
	testserver.WaitFor(t, "claim raw at 128Mi", func() (bool, error) {
		c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "raw", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		got := c.Status.Capacity[corev1.ResourceStorage]
		return got.Value() == 128<<20 && len(c.Status.Conditions) == 0 && len(c.Status.AllocatedResourceStatuses) == 0,
			fmt.Errorf("capacity %s conditions %+v allocatedResourceStatuses %v", got.String(), c.Status.Conditions, c.Status.AllocatedResourceStatuses)
	})
	waitEvent(t, kube, ns, "raw", "VolumeResizeSuccessful", "Resize volume succeeded")
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if len(fake.expanded) < 2 || fake.expanded[0].GetCapacityRange().GetRequiredBytes() != 128<<20 || fake.expanded[0].GetVolumeCapability().GetMount().GetFsType() != "ext4" {
		t.Errorf("ControllerExpandVolume calls = %v", fake.expanded)
	}
}

// TestAttach: a VolumeAttachment for this node is published to the node ID of its
// CSINode and marked attached with the publish context; deleted, it is unpublished and
// its finalizers go. One for another node is left to that node's sidecar.
func TestAttach(t *testing.T) {
	srv := testserver.Start(t)
	kube := srv.Kube
	ctx := context.Background()
	ensureNamespace(t, kube)
	createClass(t, kube, "fast", storagev1.VolumeBindingImmediate)
	fake := newFakeDriver()
	runSidecar(t, nodeConfig(srv, fake.serve(t), "node1"))

	if _, err := kube.StorageV1().CSINodes().Create(ctx, &storagev1.CSINode{
		ObjectMeta: metav1.ObjectMeta{Name: "node1"},
		Spec:       storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: testDriver, NodeID: "fake-node1", TopologyKeys: []string{topologyKey}}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pv, _ := boundPair(t, kube, "disk", "vol-1")
	newVA := func(name, node string) {
		t.Helper()
		pvName := pv.Name
		if _, err := kube.StorageV1().VolumeAttachments().Create(ctx, &storagev1.VolumeAttachment{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       storagev1.VolumeAttachmentSpec{Attacher: testDriver, NodeName: node, Source: storagev1.VolumeAttachmentSource{PersistentVolumeName: &pvName}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	newVA("csi-node1", "node1")
	newVA("csi-node2", "node2")
	fin := attacherFinalizer(testDriver)
	if fin != "external-attacher/fake-csi-berth-dev" {
		t.Errorf("finalizer = %q", fin)
	}
	testserver.WaitFor(t, "csi-node1 attached", func() (bool, error) {
		va, err := kube.StorageV1().VolumeAttachments().Get(ctx, "csi-node1", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return va.Status.Attached && va.Status.AttachmentMetadata["devicePath"] == "/dev/fake/vol-1" && slices.Contains(va.Finalizers, fin),
			fmt.Errorf("status %+v finalizers %v", va.Status, va.Finalizers)
	})
	p, err := getPV(kube, pv.Name)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(p.Finalizers, fin) {
		t.Errorf("PV finalizers %v lack %s", p.Finalizers, fin)
	}
	fake.mu.Lock()
	if fake.published["vol-1"] != "fake-node1" {
		t.Errorf("published = %v, want vol-1 on fake-node1", fake.published)
	}
	fake.mu.Unlock()
	va2, err := kube.StorageV1().VolumeAttachments().Get(ctx, "csi-node2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if va2.Status.Attached || len(va2.Finalizers) > 0 {
		t.Errorf("node2's attachment was handled on node1: %+v %v", va2.Status, va2.Finalizers)
	}

	// The PV keeps the attacher's finalizer while any attachment of the driver holds it:
	// node2's goes first (no sidecar of node2 runs, so nothing holds it back), then node1's.
	for _, name := range []string{"csi-node2", "csi-node1"} {
		if err := kube.StorageV1().VolumeAttachments().Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, name+" gone", func() (bool, error) {
			_, err := kube.StorageV1().VolumeAttachments().Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), err
		})
	}
	testserver.WaitFor(t, "PV finalizer removed", func() (bool, error) {
		p, err := getPV(kube, pv.Name)
		if err != nil {
			return false, err
		}
		return !slices.Contains(p.Finalizers, fin), fmt.Errorf("finalizers %v", p.Finalizers)
	})
	fake.mu.Lock()
	defer fake.mu.Unlock()
	if _, still := fake.published["vol-1"]; still || !slices.Contains(fake.unpublished, "vol-1") {
		t.Errorf("vol-1 not unpublished: published %v unpublished %v", fake.published, fake.unpublished)
	}
}

// TestLeaderElected: a driver that is not node scoped gets one active sidecar among the
// agents, the holder of its Lease; it provisions claims whatever their node.
func TestLeaderElected(t *testing.T) {
	srv := testserver.Start(t)
	kube := srv.Kube
	ctx := context.Background()
	ensureNamespace(t, kube)
	createClass(t, kube, "fast", storagev1.VolumeBindingImmediate)
	fake := newFakeDriver()
	conn := fake.serve(t)
	stops := map[string]func(){}
	for _, node := range []string{"node1", "node2"} {
		cfg := nodeConfig(srv, conn, node)
		cfg.NodeScoped, cfg.Topology = false, nil
		stops[node] = runSidecar(t, cfg)
	}
	holder := func() string {
		lease, err := kube.CoordinationV1().Leases(metav1.NamespaceSystem).Get(ctx, "csi-sidecar-fake-csi-berth-dev", metav1.GetOptions{})
		if err != nil || lease.Spec.HolderIdentity == nil {
			return ""
		}
		node, _, _ := strings.Cut(*lease.Spec.HolderIdentity, "_")
		return node
	}
	provisioned := func(name string) {
		t.Helper()
		claim := handedClaim(t, kube, name, "fast", "")
		testserver.WaitFor(t, "claim "+name+" provisioned", func() (bool, error) {
			_, err := getPV(kube, "pvc-"+string(claim.UID))
			return err == nil, err
		})
	}
	provisioned("shared")
	first := holder()
	if first != "node1" && first != "node2" {
		t.Fatalf("lease holder = %q", first)
	}
	fake.mu.Lock()
	if len(fake.created) != 1 {
		t.Errorf("CreateVolume called %d times, want once (one active sidecar)", len(fake.created))
	}
	if r := fake.created[0].GetAccessibilityRequirements(); r != nil {
		t.Errorf("accessibility requirements %v for a driver without topology", r)
	}
	fake.mu.Unlock()

	// The leader stops (and gives the Lease up): the other agent takes over.
	stops[first]()
	provisioned("after-failover")
	if second := holder(); second == first || second == "" {
		t.Errorf("lease holder after the leader stopped = %q (was %q)", second, first)
	}
}

func TestAttacherFinalizer(t *testing.T) {
	for driver, want := range map[string]string{
		"local.csi.berth.dev": "external-attacher/local-csi-berth-dev",
		"a/b_c":               "external-attacher/a-b-c",
		"ends.":               "external-attacher/ends-X",
	} {
		if got := attacherFinalizer(driver); got != want {
			t.Errorf("attacherFinalizer(%q) = %q, want %q", driver, got, want)
		}
	}
	if got := LeaseName("local.csi.berth.dev"); got != "csi-sidecar-local-csi-berth-dev" {
		t.Errorf("LeaseName = %q", got)
	}
}

func TestVolumeCapabilities(t *testing.T) {
	block := corev1.PersistentVolumeBlock
	for _, tc := range []struct {
		name  string
		modes []corev1.PersistentVolumeAccessMode
		mode  *corev1.PersistentVolumeMode
		caps  capabilities
		want  []csi.VolumeCapability_AccessMode_Mode
		block bool
	}{
		{"rwo", []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, nil, capabilities{}, []csi.VolumeCapability_AccessMode_Mode{csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}, false},
		{"rwo multi writer", []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, nil, capabilities{singleNodeMultiWriter: true}, []csi.VolumeCapability_AccessMode_Mode{csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER}, false},
		{"rwop", []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOncePod}, nil, capabilities{singleNodeMultiWriter: true}, []csi.VolumeCapability_AccessMode_Mode{csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER}, false},
		{"rox rwx block", []corev1.PersistentVolumeAccessMode{corev1.ReadOnlyMany, corev1.ReadWriteMany}, &block, capabilities{}, []csi.VolumeCapability_AccessMode_Mode{csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY, csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := volumeCapabilities(tc.modes, tc.mode, "ext4", nil, tc.caps)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %v", got)
			}
			for i, c := range got {
				if c.GetAccessMode().GetMode() != tc.want[i] || (c.GetBlock() != nil) != tc.block {
					t.Errorf("capability %d = %v", i, c)
				}
			}
		})
	}
	if _, err := volumeCapabilities(nil, nil, "ext4", nil, capabilities{}); err == nil {
		t.Error("no access modes: no error")
	}
}
