package sidecar

// Why not sigs.k8s.io/sig-storage-lib-external-provisioner: its v13 (the one the module
// proxy serves, v13.1.0) is built against k8s.io/* v0.37; adding it to berth's go.mod
// raises kube-openapi, klog, utils, grpc, protobuf, otel and prometheus, and with
// berth's k8s.io v0.33 pins the build breaks (kube-openapi's newer structured-merge-diff
// v6 against apimachinery v0.33's v4). So the provisioning protocol is written here on
// client-go informers and a work queue, following what the library does.

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"berth.dev/berth/core/controllers/reconcile"
)

// pvCreateAttempts is how often the PV object of a created volume is tried before the
// volume is deleted again (the library's createProvisionedPVRetryCount).
const pvCreateAttempts = 5

// provisioner is the external-provisioner's provisioning half: CreateVolume for the
// claims handed to this driver, and a pre-bound PV for each.
type provisioner struct {
	s        *sidecar
	recorder record.EventRecorder
	claims   corelisters.PersistentVolumeClaimLister
	volumes  corelisters.PersistentVolumeLister
	classes  storagelisters.StorageClassLister
}

// claimProvisioner is the driver a claim was handed to (the PV controller sets both
// annotations; older tools only the beta one).
func claimProvisioner(c *corev1.PersistentVolumeClaim) string {
	if p := c.Annotations[annStorageProvisioner]; p != "" {
		return p
	}
	return c.Annotations[annBetaStorageProvisioner]
}

// claimClass is the claim's StorageClass name, from the field or the beta annotation.
func claimClass(c *corev1.PersistentVolumeClaim) string {
	if c.Spec.StorageClassName != nil {
		return *c.Spec.StorageClassName
	}
	return c.Annotations[annBetaStorageClass]
}

// wants reports whether the claim waits for this sidecar: handed to the driver, not bound
// yet, and (node scoped) meant for this node.
func (p *provisioner) wants(c *corev1.PersistentVolumeClaim) bool {
	if c.Spec.VolumeName != "" || c.DeletionTimestamp != nil || claimProvisioner(c) != p.s.cfg.DriverName {
		return false
	}
	if p.s.cfg.NodeScoped {
		return c.Annotations[annSelectedNode] == p.s.cfg.NodeName
	}
	return true
}

func (p *provisioner) sync(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	claim, err := p.claims.PersistentVolumeClaims(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if !p.wants(claim) {
		return reconcile.Result{}, nil
	}
	pvName := "pvc-" + string(claim.UID)
	if exists, err := p.volumeExists(ctx, pvName); err != nil || exists {
		return reconcile.Result{}, err
	}
	className := claimClass(claim)
	class, err := p.classes.Get(className)
	if err != nil {
		p.failed(claim, className, err)
		return reconcile.Result{}, err
	}
	if class.Provisioner != p.s.cfg.DriverName {
		err := fmt.Errorf("StorageClass %q names provisioner %q, not %q", className, class.Provisioner, p.s.cfg.DriverName)
		p.failed(claim, className, err)
		return reconcile.Result{}, err
	}
	p.recorder.Eventf(claim, corev1.EventTypeNormal, "Provisioning", "External provisioner is provisioning volume for claim %q", key)

	req, fsType, err := p.request(claim, class, pvName)
	if err != nil {
		p.failed(claim, className, err)
		return reconcile.Result{}, err
	}
	cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	resp, err := p.s.ctrl.CreateVolume(cctx, req)
	cancel()
	if err != nil {
		// The driver's own error, unwrapped, as external-provisioner reports it.
		p.failed(claim, className, err)
		if status.Code(err) == codes.ResourceExhausted && isWaitForFirstConsumer(class) && claim.Annotations[annSelectedNode] != "" {
			// The selected node has no room: let the scheduler pick another.
			if rerr := p.reschedule(ctx, claim); rerr != nil {
				return reconcile.Result{}, rerr
			}
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, err
	}
	pv := p.persistentVolume(claim, class, req, resp.GetVolume(), fsType)
	if err := p.createPV(ctx, claim, pv); err != nil {
		if ctx.Err() != nil {
			// The agent stops: CreateVolume is idempotent by name, the next run finds the volume again.
			return reconcile.Result{}, err
		}
		p.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningFailed", "Error creating provisioned PV object for claim %s: %v. Deleting the volume.", key, err)
		dctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		_, derr := p.s.ctrl.DeleteVolume(dctx, &csi.DeleteVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle})
		cancel()
		if derr != nil {
			// The claim is retried: CreateVolume returns the same volume, and the PV is tried again.
			p.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningCleanupFailed", "Error cleaning provisioned volume for claim %s: %v. Please delete manually.", key, derr)
		}
		return reconcile.Result{}, fmt.Errorf("create PV %s for claim %s: %w", pv.Name, key, err)
	}
	p.s.log.Info("provisioned volume", "claim", key, "pv", pv.Name, "volume", pv.Spec.CSI.VolumeHandle)
	p.recorder.Eventf(claim, corev1.EventTypeNormal, "ProvisioningSucceeded", "Successfully provisioned volume %s", pv.Name)
	return reconcile.Result{}, nil
}

// failed records external-provisioner's ProvisioningFailed event.
func (p *provisioner) failed(claim *corev1.PersistentVolumeClaim, className string, err error) {
	p.recorder.Eventf(claim, corev1.EventTypeWarning, "ProvisioningFailed", "failed to provision volume with StorageClass %q: %v", className, err)
}

func isWaitForFirstConsumer(class *storagev1.StorageClass) bool {
	return class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer
}

// volumeExists looks for the claim's PV in the cache, then in the API (the cache may not
// have seen a PV this sidecar created a moment ago).
func (p *provisioner) volumeExists(ctx context.Context, name string) (bool, error) {
	if _, err := p.volumes.Get(name); err == nil {
		return true, nil
	}
	_, err := p.s.cfg.Client.CoreV1().PersistentVolumes().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get PV %s: %w", name, err)
	}
	return true, nil
}

// reschedule removes the selected-node annotation, as external-provisioner does when the
// node the scheduler chose cannot hold the volume, so that the scheduler chooses again.
func (p *provisioner) reschedule(ctx context.Context, claim *corev1.PersistentVolumeClaim) error {
	claims := p.s.cfg.Client.CoreV1().PersistentVolumeClaims(claim.Namespace)
	for range 5 {
		fresh, err := claims.Get(ctx, claim.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get claim %s/%s: %w", claim.Namespace, claim.Name, err)
		}
		if fresh.UID != claim.UID || fresh.Annotations[annSelectedNode] == "" {
			return nil
		}
		delete(fresh.Annotations, annSelectedNode)
		_, err = claims.Update(ctx, fresh, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("remove %s from claim %s/%s: %w", annSelectedNode, claim.Namespace, claim.Name, err)
		}
		p.s.log.Info("the selected node has no room for the claim: handed back to the scheduler", "claim", claim.Namespace+"/"+claim.Name)
		return nil
	}
	return fmt.Errorf("remove %s from claim %s/%s: conflicts", annSelectedNode, claim.Namespace, claim.Name)
}

// request builds CreateVolume's request for the claim; it returns the file system type too.
func (p *provisioner) request(claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass, name string) (*csi.CreateVolumeRequest, string, error) {
	params := map[string]string{}
	fsType := ""
	for k, v := range class.Parameters {
		if strings.HasPrefix(k, csiParamPrefix) {
			if k == paramFSType {
				fsType = v
			}
			continue
		}
		params[k] = v
	}
	block := claim.Spec.VolumeMode != nil && *claim.Spec.VolumeMode == corev1.PersistentVolumeBlock
	switch {
	case block:
		fsType = ""
	case fsType == "":
		fsType = defaultFSType
	}
	caps, err := volumeCapabilities(claim.Spec.AccessModes, claim.Spec.VolumeMode, fsType, class.MountOptions, p.s.caps)
	if err != nil {
		return nil, "", fmt.Errorf("claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	size, ok := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok {
		return nil, "", fmt.Errorf("claim %s/%s requests no storage", claim.Namespace, claim.Name)
	}
	capRange := &csi.CapacityRange{RequiredBytes: size.Value()}
	if limit, ok := claim.Spec.Resources.Limits[corev1.ResourceStorage]; ok {
		capRange.LimitBytes = limit.Value()
	}
	req := &csi.CreateVolumeRequest{Name: name, CapacityRange: capRange, VolumeCapabilities: caps, Parameters: params}
	if p.s.cfg.NodeScoped && len(p.s.cfg.Topology) > 0 {
		if !allowedTopologyAdmits(class.AllowedTopologies, p.s.cfg.Topology) {
			return nil, "", fmt.Errorf("node %s (topology %v) is outside the allowedTopologies of StorageClass %q", p.s.cfg.NodeName, p.s.cfg.Topology, class.Name)
		}
		// The claim was given to this node: the volume must be reachable from it.
		segment := &csi.Topology{Segments: maps.Clone(p.s.cfg.Topology)}
		req.AccessibilityRequirements = &csi.TopologyRequirement{Requisite: []*csi.Topology{segment}, Preferred: []*csi.Topology{segment}}
	}
	src, err := p.contentSource(claim, size)
	if err != nil {
		return nil, "", err
	}
	req.VolumeContentSource = src
	return req, fsType, nil
}

// contentSource is the source volume of a clone (a claim whose dataSource is another
// claim); berth's sidecar knows no snapshots or populators yet.
func (p *provisioner) contentSource(claim *corev1.PersistentVolumeClaim, size resource.Quantity) (*csi.VolumeContentSource, error) {
	ds := claim.Spec.DataSource
	if ds == nil {
		return nil, nil
	}
	if ds.Kind != "PersistentVolumeClaim" || (ds.APIGroup != nil && *ds.APIGroup != "") {
		return nil, fmt.Errorf("data source %s %q is not supported: only PersistentVolumeClaim (clone)", ds.Kind, ds.Name)
	}
	if !p.s.caps.clone {
		return nil, fmt.Errorf("driver %s does not support cloning (no CLONE_VOLUME capability)", p.s.cfg.DriverName)
	}
	src, err := p.claims.PersistentVolumeClaims(claim.Namespace).Get(ds.Name)
	if err != nil {
		return nil, fmt.Errorf("source claim %s/%s of the clone: %w", claim.Namespace, ds.Name, err)
	}
	if src.Status.Phase != corev1.ClaimBound || src.Spec.VolumeName == "" {
		return nil, fmt.Errorf("source claim %s/%s of the clone is not bound", claim.Namespace, ds.Name)
	}
	if claimClass(src) != claimClass(claim) {
		return nil, fmt.Errorf("the source claim %s and the clone must be in the same storage class", ds.Name)
	}
	pv, err := p.volumes.Get(src.Spec.VolumeName)
	if err != nil {
		return nil, fmt.Errorf("volume %s of source claim %s: %w", src.Spec.VolumeName, ds.Name, err)
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != p.s.cfg.DriverName {
		return nil, fmt.Errorf("source claim %s is not a volume of %s", ds.Name, p.s.cfg.DriverName)
	}
	if srcSize, ok := src.Status.Capacity[corev1.ResourceStorage]; ok && size.Cmp(srcSize) < 0 {
		return nil, fmt.Errorf("requested volume size %d is less than the size %d of the source claim %s", size.Value(), srcSize.Value(), ds.Name)
	}
	return &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: pv.Spec.CSI.VolumeHandle}}}, nil
}

// persistentVolume is the PV of a created volume, pre-bound to the claim as
// external-provisioner makes it.
func (p *provisioner) persistentVolume(claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass, req *csi.CreateVolumeRequest, vol *csi.Volume, fsType string) *corev1.PersistentVolume {
	capBytes := vol.GetCapacityBytes()
	if capBytes == 0 {
		// CSI: zero means unknown; the volume is at least what was required.
		capBytes = req.GetCapacityRange().GetRequiredBytes()
	}
	reclaim := corev1.PersistentVolumeReclaimDelete
	if class.ReclaimPolicy != nil {
		reclaim = *class.ReclaimPolicy
	}
	volumeMode := corev1.PersistentVolumeFilesystem
	if claim.Spec.VolumeMode != nil {
		volumeMode = *claim.Spec.VolumeMode
	}
	affinity := nodeAffinity(vol.GetAccessibleTopology())
	if affinity == nil && p.s.cfg.NodeScoped && len(p.s.cfg.Topology) > 0 {
		// A node-scoped driver that names no topology made the volume here all the same;
		// the affinity also lets this node's deleter and resizer find it.
		affinity = nodeAffinity([]*csi.Topology{{Segments: p.s.cfg.Topology}})
	}
	return &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{
			Name:        req.GetName(),
			Annotations: map[string]string{annProvisionedBy: p.s.cfg.DriverName},
			Finalizers:  []string{provisionerFinalizer},
		},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:    corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(capBytes, resource.BinarySI)},
			AccessModes: claim.Spec.AccessModes,
			ClaimRef: &corev1.ObjectReference{
				Kind: "PersistentVolumeClaim", APIVersion: "v1",
				Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID, ResourceVersion: claim.ResourceVersion,
			},
			PersistentVolumeReclaimPolicy: reclaim,
			StorageClassName:              class.Name,
			MountOptions:                  class.MountOptions,
			VolumeMode:                    &volumeMode,
			NodeAffinity:                  affinity,
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver:           p.s.cfg.DriverName,
				VolumeHandle:     vol.GetVolumeId(),
				FSType:           fsType,
				VolumeAttributes: vol.GetVolumeContext(),
			}},
		},
	}
}

// createPV creates the PV, retrying a few times: the volume exists now, and giving up
// means deleting it again.
func (p *provisioner) createPV(ctx context.Context, claim *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume) error {
	pvs := p.s.cfg.Client.CoreV1().PersistentVolumes()
	var lastErr error
	for i := range pvCreateAttempts {
		if i > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Duration(1<<(i-1)) * time.Second):
			}
		}
		_, err := pvs.Create(ctx, pv, metav1.CreateOptions{})
		if err == nil {
			return nil
		}
		if apierrors.IsAlreadyExists(err) {
			existing, gerr := pvs.Get(ctx, pv.Name, metav1.GetOptions{})
			if gerr == nil && existing.Spec.ClaimRef != nil && existing.Spec.ClaimRef.UID == claim.UID {
				return nil
			}
		}
		lastErr = err
		p.s.log.Info("create PV failed, will retry", "pv", pv.Name, "attempt", i+1, "err", err)
	}
	return lastErr
}
