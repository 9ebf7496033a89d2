package csi

// Setting up and tearing down pods' volumes through their drivers, as the kubelet's CSI
// plugin does: a persistent volume is staged once per node (NodeStageVolume, when the
// driver has STAGE_UNSTAGE_VOLUME) and published per pod (NodePublishVolume); when the
// last pod using it goes, it is unpublished and unstaged. Every call is recorded on disk
// before it is made, so that an interrupted one is undone later all the same.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
)

// Keys of the volume_context the kubelet adds (CSI's pod info on mount).
const (
	ctxPodName        = "csi.storage.k8s.io/pod.name"
	ctxPodNamespace   = "csi.storage.k8s.io/pod.namespace"
	ctxPodUID         = "csi.storage.k8s.io/pod.uid"
	ctxServiceAccount = "csi.storage.k8s.io/serviceAccount.name"
	ctxEphemeral      = "csi.storage.k8s.io/ephemeral"
)

// Handles tells whether v is a volume this package sets up: persistentVolumeClaim,
// ephemeral or csi.
func Handles(v *corev1.Volume) bool {
	return v.PersistentVolumeClaim != nil || v.Ephemeral != nil || v.CSI != nil
}

// Mount is a volume set up for a pod.
type Mount struct {
	// Path is the node's path to give the runtime: a directory, or for Block a device
	// file for the containers' volumeDevices.
	Path     string
	ReadOnly bool
	Block    bool
	// HostPath: the claim is bound to a hostPath PV, to be used (and its type checked)
	// as a hostPath volume.
	HostPath     bool
	HostPathType *corev1.HostPathType
}

// MountError is a volume that could not be set up, worded as the kubelet's FailedMount
// events are: `MountVolume.MountDevice failed for volume "pvc-1" : rpc error: ...`.
type MountError struct {
	// Op is the kubelet's operation: MountVolume.SetUp, MountVolume.MountDevice,
	// MountVolume.WaitForAttach.
	Op string
	// Volume is the volume's name in the message: the PV's name, or the pod's name of
	// the volume before a PV is known.
	Volume string
	Err    error
}

func (e *MountError) Error() string {
	return fmt.Sprintf("%s failed for volume %q : %v", e.Op, e.Volume, e.Err)
}

func (e *MountError) Unwrap() error { return e.Err }

// request is one pod volume resolved to what its driver is asked.
type request struct {
	pub        publication
	stage      bool // persistent: staged when the driver can
	capability *csipb.VolumeCapability
	volumeCtx  map[string]string
	// specName is the volume's name in messages (the PV's, or the pod's volume name).
	specName string
	// attachCheck: the volume may need a VolumeAttachment (persistent volumes).
	attachCheck bool
	// stageSecret and publishSecret are the secrets' references, when given.
	stageSecret, publishSecret *corev1.SecretReference
}

// SetUp makes volume v of pod ready: for a claim, the PVC must be Bound, and its PV is
// staged (once per node) and published at the pod's path; an inline csi volume is
// published only. A volume already set up by this process is returned at once.
func (m *Manager) SetUp(ctx context.Context, pod *corev1.Pod, v *corev1.Volume) (Mount, error) {
	// Every sync of the pod comes here: a volume this process published already costs
	// no API request and no call to its driver.
	if mount, ok := m.published(pod.UID, v.Name); ok {
		return mount, nil
	}
	if v.CSI != nil {
		return m.setUp(ctx, inlineRequest(m.cfg.DataDir, pod, v))
	}
	var claim string
	var claimRO, generic bool
	switch {
	case v.PersistentVolumeClaim != nil:
		claim, claimRO = v.PersistentVolumeClaim.ClaimName, v.PersistentVolumeClaim.ReadOnly
	case v.Ephemeral != nil:
		// The claim of a generic ephemeral volume, made for the pod by the ephemeral
		// volume controller.
		claim, generic = pod.Name+"-"+v.Name, true
	default:
		return Mount{}, &MountError{Op: "MountVolume.SetUp", Volume: v.Name, Err: errors.New("not a CSI, persistentVolumeClaim or ephemeral volume")}
	}
	pvc, pv, err := m.boundVolume(ctx, pod, claim, generic)
	if err != nil {
		return Mount{}, &MountError{Op: "MountVolume.SetUp", Volume: v.Name, Err: err}
	}
	block := pv.Spec.VolumeMode != nil && *pv.Spec.VolumeMode == corev1.PersistentVolumeBlock
	switch {
	case pv.Spec.HostPath != nil:
		return Mount{Path: pv.Spec.HostPath.Path, ReadOnly: claimRO, HostPath: true, HostPathType: pv.Spec.HostPath.Type}, nil
	case pv.Spec.Local != nil:
		if _, err := os.Stat(pv.Spec.Local.Path); err != nil {
			return Mount{}, &MountError{Op: "MountVolume.SetUp", Volume: pv.Name, Err: fmt.Errorf("local volume path: %w", err)}
		}
		return Mount{Path: pv.Spec.Local.Path, ReadOnly: claimRO, Block: block}, nil
	case pv.Spec.CSI == nil:
		return Mount{}, &MountError{Op: "MountVolume.SetUp", Volume: pv.Name, Err: errors.New("berth's agent supports only CSI, hostPath and local persistent volumes")}
	}
	src := pv.Spec.CSI
	pubName := v.Name
	if block {
		pubName = pv.Name
	}
	volCtx := map[string]string{}
	for k, val := range src.VolumeAttributes {
		volCtx[k] = val
	}
	req := request{
		pub: publication{
			PodUID: pod.UID, PodNamespace: pod.Namespace, PodName: pod.Name, VolumeName: v.Name,
			Driver: src.Driver, VolumeHandle: src.VolumeHandle, PVName: pv.Name,
			PVCNamespace: pvc.Namespace, PVCName: pvc.Name,
			TargetPath: PublishPath(m.cfg.DataDir, pod.UID, pubName, block),
			Block:      block, ReadOnly: claimRO || src.ReadOnly,
		},
		stage:         true,
		capability:    volumeCapability(block, src.FSType, pv.Spec.MountOptions, pv.Spec.AccessModes),
		volumeCtx:     volCtx,
		specName:      pv.Name,
		attachCheck:   true,
		stageSecret:   src.NodeStageSecretRef,
		publishSecret: src.NodePublishSecretRef,
	}
	return m.setUp(ctx, req)
}

// published is the pod's volume named name when this process has published it (or
// found it published after a restart).
func (m *Manager) published(uid types.UID, name string) (Mount, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	key := string(uid) + "~" + name
	for _, vs := range m.vols {
		if p, ok := vs.pubs[key]; ok && p.Published && vs.verified {
			return Mount{Path: p.TargetPath, ReadOnly: p.ReadOnly, Block: p.Block}, true
		}
	}
	return Mount{}, false
}

// boundVolume is the claim and its PV, when the claim is bound.
func (m *Manager) boundVolume(ctx context.Context, pod *corev1.Pod, claim string, generic bool) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume, error) {
	pvc, err := m.cfg.Kube.CoreV1().PersistentVolumeClaims(pod.Namespace).Get(ctx, claim, metav1.GetOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("error processing PVC %s/%s: %w", pod.Namespace, claim, err)
	}
	if generic && !metav1.IsControlledBy(pvc, pod) {
		return nil, nil, fmt.Errorf("error processing PVC %s/%s: PVC was not created for pod %s/%s (pod is not owner)", pod.Namespace, claim, pod.Namespace, pod.Name)
	}
	if pvc.Status.Phase != corev1.ClaimBound || pvc.Spec.VolumeName == "" {
		return nil, nil, fmt.Errorf("error processing PVC %s/%s: PVC is not bound", pod.Namespace, claim)
	}
	pv, err := m.cfg.Kube.CoreV1().PersistentVolumes().Get(ctx, pvc.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return nil, nil, fmt.Errorf("error processing PVC %s/%s: %w", pod.Namespace, claim, err)
	}
	if ref := pv.Spec.ClaimRef; ref == nil || ref.Name != pvc.Name || ref.Namespace != pvc.Namespace || (ref.UID != "" && ref.UID != pvc.UID) {
		return nil, nil, fmt.Errorf("error processing PVC %s/%s: the volume %q is bound to a different claim", pod.Namespace, claim, pv.Name)
	}
	return pvc, pv, nil
}

// inlineRequest is an inline (ephemeral) csi volume: published only, with the pod's
// information in its volume_context, as the kubelet passes it.
func inlineRequest(dataDir string, pod *corev1.Pod, v *corev1.Volume) request {
	src := v.CSI
	volCtx := map[string]string{}
	for k, val := range src.VolumeAttributes {
		volCtx[k] = val
	}
	volCtx[ctxEphemeral] = "true"
	addPodInfo(volCtx, pod)
	fsType := ""
	if src.FSType != nil {
		fsType = *src.FSType
	}
	req := request{
		pub: publication{
			PodUID: pod.UID, PodNamespace: pod.Namespace, PodName: pod.Name, VolumeName: v.Name,
			Driver: src.Driver, VolumeHandle: EphemeralHandle(pod.UID, v.Name),
			TargetPath: PublishPath(dataDir, pod.UID, v.Name, false),
			Ephemeral:  true, ReadOnly: src.ReadOnly != nil && *src.ReadOnly,
		},
		capability: volumeCapability(false, fsType, nil, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}),
		volumeCtx:  volCtx,
		specName:   v.Name,
	}
	if src.NodePublishSecretRef != nil {
		req.publishSecret = &corev1.SecretReference{Name: src.NodePublishSecretRef.Name, Namespace: pod.Namespace}
	}
	return req
}

func addPodInfo(volCtx map[string]string, pod *corev1.Pod) {
	volCtx[ctxPodName] = pod.Name
	volCtx[ctxPodNamespace] = pod.Namespace
	volCtx[ctxPodUID] = string(pod.UID)
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	volCtx[ctxServiceAccount] = sa
}

// volumeCapability is the CSI capability of a volume: block, or mount with its file
// system type and mount options, and the access mode of its PV's access modes.
func volumeCapability(block bool, fsType string, mountFlags []string, modes []corev1.PersistentVolumeAccessMode) *csipb.VolumeCapability {
	c := &csipb.VolumeCapability{AccessMode: &csipb.VolumeCapability_AccessMode{Mode: accessMode(modes)}}
	if block {
		c.AccessType = &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{FsType: fsType, MountFlags: mountFlags}}
	}
	return c
}

// accessMode maps a PV's access modes to CSI's, the most demanding first: RWOP, RWX,
// RWO, then ROX.
func accessMode(modes []corev1.PersistentVolumeAccessMode) csipb.VolumeCapability_AccessMode_Mode {
	has := map[corev1.PersistentVolumeAccessMode]bool{}
	for _, m := range modes {
		has[m] = true
	}
	switch {
	case has[corev1.ReadWriteOncePod]:
		return csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	case has[corev1.ReadWriteMany]:
		return csipb.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
	case has[corev1.ReadWriteOnce]:
		return csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
	case has[corev1.ReadOnlyMany]:
		return csipb.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
	}
	return csipb.VolumeCapability_AccessMode_UNKNOWN
}

// AttachmentName is the VolumeAttachment of a volume on a node, named as Kubernetes names
// it (getAttachmentName of its CSI plugin): csi-SHA256(handle+driver+node).
func AttachmentName(driver, handle, node string) string {
	sum := sha256.Sum256([]byte(handle + driver + node))
	return "csi-" + hex.EncodeToString(sum[:])
}

func (m *Manager) setUp(ctx context.Context, req request) (Mount, error) {
	p := &req.pub
	name := UniqueName(p.Driver, p.VolumeHandle)
	mount := Mount{Path: p.TargetPath, ReadOnly: p.ReadOnly, Block: p.Block}
	m.mu.Lock()
	if vs, ok := m.vols[name]; ok && vs.verified {
		if old, ok := vs.pubs[p.key()]; ok && old.Published {
			m.mu.Unlock()
			return mount, nil
		}
	}
	m.inflight[name]++
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		if m.inflight[name]--; m.inflight[name] <= 0 {
			delete(m.inflight, name)
		}
		m.mu.Unlock()
	}()

	mountOp := "MountVolume.SetUp"
	if req.stage {
		mountOp = "MountVolume.MountDevice"
	}
	drv, ok := m.drivers.get(p.Driver)
	if !ok {
		return mount, &MountError{Op: mountOp, Volume: req.specName,
			Err: fmt.Errorf("kubernetes.io/csi: driver name %s not found in the list of registered CSI drivers", p.Driver)}
	}
	var publishCtx map[string]string
	if req.attachCheck {
		var err error
		if publishCtx, err = m.waitAttached(ctx, p.Driver, p.VolumeHandle, p.PVName); err != nil {
			return mount, &MountError{Op: "MountVolume.WaitForAttach", Volume: req.specName, Err: err}
		}
	}
	if err := m.podInfoOnMount(ctx, p, req.volumeCtx); err != nil {
		return mount, &MountError{Op: "MountVolume.SetUp", Volume: req.specName, Err: err}
	}
	var stageSecrets, publishSecrets map[string]string
	var err error
	if stageSecrets, err = m.secret(ctx, req.stageSecret); err != nil {
		return mount, &MountError{Op: mountOp, Volume: req.specName, Err: err}
	}
	if publishSecrets, err = m.secret(ctx, req.publishSecret); err != nil {
		return mount, &MountError{Op: "MountVolume.SetUp", Volume: req.specName, Err: err}
	}

	lock := m.lockVolume(name)
	defer lock.Unlock()
	m.mu.Lock()
	vs, ok := m.vols[name]
	if !ok {
		vs = &volumeState{rec: volumeRecord{Driver: p.Driver, VolumeHandle: p.VolumeHandle, PVName: p.PVName, Block: p.Block},
			pubs: map[string]*publication{}}
		m.vols[name] = vs
	}
	m.mu.Unlock()

	stage := req.stage && drv.has(csipb.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME)
	if stage && !(vs.rec.Staged && vs.verified) {
		if err := m.stage(ctx, drv, vs, req, publishCtx, stageSecrets); err != nil {
			return mount, &MountError{Op: "MountVolume.MountDevice", Volume: req.specName, Err: err}
		}
	} else if !stage {
		// A home for the publications' records, which unstaging will not be due for.
		if err := m.saveVolume(vs); err != nil {
			return mount, &MountError{Op: mountOp, Volume: req.specName, Err: err}
		}
	}
	if stage {
		p.StagingPath = vs.rec.StagingPath
	}
	if old, ok := vs.pubs[p.key()]; ok && old.Published && isPublished(old) {
		m.mu.Lock()
		vs.verified = true
		m.mu.Unlock()
		return mount, nil
	}
	if err := m.publish(ctx, drv, vs, req, publishCtx, publishSecrets); err != nil {
		return mount, &MountError{Op: "MountVolume.SetUp", Volume: req.specName, Err: err}
	}
	m.mu.Lock()
	vs.verified = true
	m.mu.Unlock()
	return mount, nil
}

// saveVolume writes the volume's record.
func (m *Manager) saveVolume(vs *volumeState) error {
	m.mu.Lock()
	rec := vs.rec
	m.mu.Unlock()
	return writeJSON(rec.file(m.cfg.DataDir), rec)
}

// stage calls NodeStageVolume at the volume's staging path, recording first that it
// is due to be unstaged.
func (m *Manager) stage(ctx context.Context, drv *driver, vs *volumeState, req request, publishCtx, secrets map[string]string) error {
	staging := StagingPath(m.cfg.DataDir, drv.name, req.pub.VolumeHandle)
	m.mu.Lock()
	vs.rec.Stage, vs.rec.StagingPath = true, staging
	m.mu.Unlock()
	if err := m.saveVolume(vs); err != nil {
		return err
	}
	// The CO makes the staging directory (CSI: "the CO SHALL ensure that the path is
	// directory"), for block volumes too.
	if err := os.MkdirAll(staging, 0o750); err != nil {
		return fmt.Errorf("create staging path: %w", err)
	}
	_, err := drv.node.NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{
		VolumeId: req.pub.VolumeHandle, PublishContext: publishCtx, StagingTargetPath: staging,
		VolumeCapability: req.capability, Secrets: secrets, VolumeContext: req.volumeCtx,
	})
	if err != nil {
		return err
	}
	m.mu.Lock()
	vs.rec.Staged = true
	m.mu.Unlock()
	return m.saveVolume(vs)
}

// publish calls NodePublishVolume at the pod's target path, recording first that it is
// due to be unpublished.
func (m *Manager) publish(ctx context.Context, drv *driver, vs *volumeState, req request, publishCtx, secrets map[string]string) error {
	p := req.pub
	p.Published = false
	m.mu.Lock()
	vs.pubs[p.key()] = &p
	m.mu.Unlock()
	if err := writeJSON(p.file(m.cfg.DataDir), &p); err != nil {
		return err
	}
	// The CO makes the parent of the target path; the driver makes the path itself.
	if err := os.MkdirAll(filepath.Dir(p.TargetPath), 0o750); err != nil {
		return fmt.Errorf("create parent of target path: %w", err)
	}
	_, err := drv.node.NodePublishVolume(ctx, &csipb.NodePublishVolumeRequest{
		VolumeId: p.VolumeHandle, PublishContext: publishCtx, StagingTargetPath: p.StagingPath,
		TargetPath: p.TargetPath, VolumeCapability: req.capability, Readonly: p.ReadOnly,
		Secrets: secrets, VolumeContext: req.volumeCtx,
	})
	if err != nil {
		return err
	}
	done := p
	done.Published = true
	if err := writeJSON(done.file(m.cfg.DataDir), &done); err != nil {
		return err
	}
	m.mu.Lock()
	vs.pubs[p.key()] = &done
	m.mu.Unlock()
	return nil
}

// waitAttached returns the publish_context of the volume's VolumeAttachment on this node
// when the driver needs one (CSIDriver attachRequired; a driver without a CSIDriver object
// needs one, as in Kubernetes), and an error while it is not attached yet.
func (m *Manager) waitAttached(ctx context.Context, driverName, handle, pvName string) (map[string]string, error) {
	cd, err := m.cfg.Kube.StorageV1().CSIDrivers().Get(ctx, driverName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("get CSIDriver %s: %w", driverName, err)
	case cd.Spec.AttachRequired != nil && !*cd.Spec.AttachRequired:
		return nil, nil
	}
	vaName := AttachmentName(driverName, handle, m.cfg.NodeName)
	vas := m.cfg.Kube.StorageV1().VolumeAttachments()
	va, err := vas.Get(ctx, vaName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("timed out waiting for external-attacher of %s CSI driver to attach volume %s (no VolumeAttachment %s yet)", driverName, handle, vaName)
	} else if err != nil {
		return nil, fmt.Errorf("get VolumeAttachment %s: %w", vaName, err)
	}
	if va.DeletionTimestamp != nil {
		return nil, errors.New("volume attachment is being deleted")
	}
	if !va.Status.Attached {
		if e := va.Status.AttachError; e != nil {
			return nil, fmt.Errorf("attachment of volume %s (PV %s) failed: %s", handle, pvName, e.Message)
		}
		return nil, fmt.Errorf("timed out waiting for external-attacher of %s CSI driver to attach volume %s", driverName, handle)
	}
	return va.Status.AttachmentMetadata, nil
}

// podInfoOnMount adds the pod's information to a persistent volume's context when its
// CSIDriver asks for it (podInfoOnMount).
func (m *Manager) podInfoOnMount(ctx context.Context, p *publication, volCtx map[string]string) error {
	if p.Ephemeral {
		return nil // always there
	}
	cd, err := m.cfg.Kube.StorageV1().CSIDrivers().Get(ctx, p.Driver, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		return fmt.Errorf("get CSIDriver %s: %w", p.Driver, err)
	}
	if cd.Spec.PodInfoOnMount != nil && *cd.Spec.PodInfoOnMount {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: p.PodName, Namespace: p.PodNamespace, UID: p.PodUID}}
		if sa, err := m.podServiceAccount(ctx, p); err == nil {
			pod.Spec.ServiceAccountName = sa
		}
		addPodInfo(volCtx, pod)
		volCtx[ctxEphemeral] = "false"
	}
	return checkLifecycle(cd, p.Ephemeral)
}

func (m *Manager) podServiceAccount(ctx context.Context, p *publication) (string, error) {
	pod, err := m.cfg.Kube.CoreV1().Pods(p.PodNamespace).Get(ctx, p.PodName, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	return pod.Spec.ServiceAccountName, nil
}

// checkLifecycle refuses a persistent volume of a driver whose CSIDriver lists only the
// Ephemeral lifecycle mode.
func checkLifecycle(cd *storagev1.CSIDriver, ephemeral bool) error {
	modes := cd.Spec.VolumeLifecycleModes
	if len(modes) == 0 {
		modes = []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent}
	}
	want := storagev1.VolumeLifecyclePersistent
	if ephemeral {
		want = storagev1.VolumeLifecycleEphemeral
	}
	for _, mode := range modes {
		if mode == want {
			return nil
		}
	}
	return fmt.Errorf("volume mode %q not supported by driver %s (only supports %q)", want, cd.Name, modes)
}

// secret reads the data of a secret a PV or inline volume refers to.
func (m *Manager) secret(ctx context.Context, ref *corev1.SecretReference) (map[string]string, error) {
	if ref == nil || ref.Name == "" {
		return nil, nil
	}
	s, err := m.cfg.Kube.CoreV1().Secrets(ref.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("fetching secret %s/%s: %w", ref.Namespace, ref.Name, err)
	}
	out := make(map[string]string, len(s.Data))
	for k, v := range s.Data {
		out[k] = string(v)
	}
	return out, nil
}

// TearDownPod unpublishes every CSI volume of the pod, and unstages those no other pod
// on the node uses. A volume whose driver is not registered stays (with its record) and
// makes an error: the agent tries again, and the pod is not confirmed gone meanwhile.
func (m *Manager) TearDownPod(ctx context.Context, uid types.UID) error {
	type item struct {
		name corev1.UniqueVolumeName
		key  string
	}
	var items []item
	m.mu.Lock()
	for name, vs := range m.vols {
		for key, p := range vs.pubs {
			if p.PodUID == uid {
				items = append(items, item{name, key})
			}
		}
	}
	m.mu.Unlock()
	var errs []error
	for _, it := range items {
		if err := m.unpublish(ctx, it.name, it.key); err != nil {
			errs = append(errs, err)
		}
	}
	m.mu.Lock()
	for key := range m.stats {
		if strings.HasPrefix(key, string(uid)+"~") {
			delete(m.stats, key)
		}
	}
	m.mu.Unlock()
	return utilerrors.NewAggregate(errs)
}

func (m *Manager) unpublish(ctx context.Context, name corev1.UniqueVolumeName, key string) error {
	lock := m.lockVolume(name)
	defer lock.Unlock()
	m.mu.Lock()
	vs, ok := m.vols[name]
	var p *publication
	if ok {
		p = vs.pubs[key]
	}
	m.mu.Unlock()
	if p == nil {
		return nil // done by someone else meanwhile
	}
	drv, ok := m.drivers.get(p.Driver)
	if !ok {
		return fmt.Errorf("UnmountVolume.TearDown failed for volume %q (pod %s): driver name %s not found in the list of registered CSI drivers", p.VolumeName, p.PodUID, p.Driver)
	}
	if _, err := drv.node.NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: p.VolumeHandle, TargetPath: p.TargetPath}); err != nil {
		return fmt.Errorf("UnmountVolume.TearDown failed for volume %q (pod %s): %w", p.VolumeName, p.PodUID, err)
	}
	if err := removeFile(p.file(m.cfg.DataDir)); err != nil {
		return err
	}
	m.mu.Lock()
	delete(vs.pubs, key)
	left := len(vs.pubs)
	m.mu.Unlock()
	if left > 0 {
		return nil
	}
	return m.release(ctx, drv, name, vs)
}

// release unstages a volume no pod uses any more and forgets it. The caller holds the
// volume's lock.
func (m *Manager) release(ctx context.Context, drv *driver, name corev1.UniqueVolumeName, vs *volumeState) error {
	m.mu.Lock()
	rec := vs.rec
	m.mu.Unlock()
	if rec.Stage {
		if _, err := drv.node.NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: rec.VolumeHandle, StagingTargetPath: rec.StagingPath}); err != nil {
			return fmt.Errorf("UnmountDevice failed for volume %q: %w", volumeLabel(rec), err)
		}
	}
	dir := volumeDir(m.cfg.DataDir, rec.Driver, rec.VolumeHandle)
	if rec.StagingPath != "" {
		if mounted(rec.StagingPath) {
			return fmt.Errorf("UnmountDevice failed for volume %q: %s is still mounted after NodeUnstageVolume", volumeLabel(rec), rec.StagingPath)
		}
		if err := os.Remove(rec.StagingPath); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove staging path of volume %q: %w", volumeLabel(rec), err)
		}
	}
	// Only what this package wrote is removed: nothing is followed, nothing mounted is left.
	for _, f := range []string{filepath.Join(dir, publicationsDir), rec.file(m.cfg.DataDir)} {
		if err := os.Remove(f); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove record of volume %q: %w", volumeLabel(rec), err)
		}
	}
	if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove record of volume %q: %w", volumeLabel(rec), err)
	}
	m.mu.Lock()
	delete(m.vols, name)
	m.mu.Unlock()
	return nil
}

func volumeLabel(rec volumeRecord) string {
	if rec.PVName != "" {
		return rec.PVName
	}
	return rec.VolumeHandle
}

// unstageUnused releases volumes that no pod publishes and none is setting up: a
// staging whose publication never came (the pod went first), or left by a run of the
// agent that stopped in between.
func (m *Manager) unstageUnused(ctx context.Context) {
	m.mu.Lock()
	var idle []corev1.UniqueVolumeName
	for name, vs := range m.vols {
		if len(vs.pubs) == 0 && m.inflight[name] == 0 {
			idle = append(idle, name)
		}
	}
	m.mu.Unlock()
	for _, name := range idle {
		lock := m.lockVolume(name)
		m.mu.Lock()
		vs, ok := m.vols[name]
		still := ok && len(vs.pubs) == 0 && m.inflight[name] == 0
		m.mu.Unlock()
		if still {
			if drv, ok := m.drivers.get(vs.rec.Driver); ok {
				if err := m.release(ctx, drv, name, vs); err != nil && ctx.Err() == nil {
					m.log.Error("release an unused CSI volume", "volume", name, "err", err)
				}
			}
		}
		lock.Unlock()
	}
}

// isPublished tells whether an earlier publication is still in place: a mount on the
// target path, or the block device file.
func isPublished(p *publication) bool {
	if p.Block {
		fi, err := os.Stat(p.TargetPath)
		return err == nil && fi.Mode()&fs.ModeDevice != 0
	}
	return mounted(p.TargetPath)
}

// mounted tells whether path is a mount point, from /proc/self/mountinfo.
func mounted(path string) bool {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && unescapeOctal(f[4]) == path {
			return true
		}
	}
	return false
}

// unescapeOctal undoes mountinfo's \040-style escapes.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
