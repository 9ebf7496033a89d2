package sidecar

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/reconcile"
)

// attacher is the external-attacher: ControllerPublishVolume for the VolumeAttachments of
// the driver (the attach-detach controller makes them), ControllerUnpublishVolume when
// they are deleted. Like external-attacher, it holds both the VolumeAttachment and the PV
// with its finalizer while the volume is published, so that the volume handle and the node
// ID are still known when it must be unpublished.
type attacher struct {
	s           *sidecar
	attachments storagelisters.VolumeAttachmentLister
	volumes     corelisters.PersistentVolumeLister
}

func attachmentHandler(q workqueue.TypedRateLimitingInterface[string], wants func(*storagev1.VolumeAttachment) bool) cache.ResourceEventHandlerFuncs {
	enqueue := func(obj any) {
		if va, ok := obj.(*storagev1.VolumeAttachment); ok && wants(va) {
			q.Add(va.Name)
		}
	}
	return cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, obj any) { enqueue(obj) }}
}

func (a *attacher) wants(va *storagev1.VolumeAttachment) bool {
	return va.Spec.Attacher == a.s.cfg.DriverName && (!a.s.cfg.NodeScoped || va.Spec.NodeName == a.s.cfg.NodeName)
}

func (a *attacher) sync(ctx context.Context, name string) (reconcile.Result, error) {
	va, err := a.attachments.Get(name)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if !a.wants(va) {
		return reconcile.Result{}, nil
	}
	if va.DeletionTimestamp != nil {
		if !hasFinalizer(va.Finalizers, attacherFinalizer(a.s.cfg.DriverName)) {
			return reconcile.Result{}, nil
		}
		return reconcile.Result{}, a.detach(ctx, va)
	}
	if va.Status.Attached {
		return reconcile.Result{}, nil
	}
	return reconcile.Result{}, a.attach(ctx, va)
}

// volume is the PV a VolumeAttachment names (or its inline spec).
func (a *attacher) volume(ctx context.Context, va *storagev1.VolumeAttachment) (*corev1.PersistentVolume, error) {
	if name := va.Spec.Source.PersistentVolumeName; name != nil {
		pv, err := a.volumes.Get(*name)
		if apierrors.IsNotFound(err) {
			pv, err = a.s.cfg.Client.CoreV1().PersistentVolumes().Get(ctx, *name, metav1.GetOptions{})
		}
		if err != nil {
			return nil, fmt.Errorf("PV %s of VolumeAttachment %s: %w", *name, va.Name, err)
		}
		if pv.Spec.CSI == nil {
			return nil, fmt.Errorf("PV %s of VolumeAttachment %s is not a CSI volume", *name, va.Name)
		}
		return pv, nil
	}
	if spec := va.Spec.Source.InlineVolumeSpec; spec != nil && spec.CSI != nil {
		return &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: va.Name}, Spec: *spec}, nil
	}
	return nil, fmt.Errorf("VolumeAttachment %s names no CSI volume", va.Name)
}

// nodeID is the driver's ID of the node: the CSINode entry, else the Node annotation the
// agent writes.
func (a *attacher) nodeID(ctx context.Context, node string) (string, error) {
	csiNode, err := a.s.cfg.Client.StorageV1().CSINodes().Get(ctx, node, metav1.GetOptions{})
	if err == nil {
		for _, d := range csiNode.Spec.Drivers {
			if d.Name == a.s.cfg.DriverName && d.NodeID != "" {
				return d.NodeID, nil
			}
		}
	} else if !apierrors.IsNotFound(err) {
		return "", fmt.Errorf("get CSINode %s: %w", node, err)
	}
	n, err := a.s.cfg.Client.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("node ID of %s for %s: %w", node, a.s.cfg.DriverName, err)
	}
	ids := map[string]string{}
	if raw := n.Annotations[annNodeID]; raw != "" {
		if err := json.Unmarshal([]byte(raw), &ids); err != nil {
			return "", fmt.Errorf("annotation %s of node %s: %w", annNodeID, node, err)
		}
	}
	if id := ids[a.s.cfg.DriverName]; id != "" {
		return id, nil
	}
	return "", fmt.Errorf("node %s has no ID for driver %s (neither in its CSINode nor in its %s annotation)", node, a.s.cfg.DriverName, annNodeID)
}

func (a *attacher) attach(ctx context.Context, va *storagev1.VolumeAttachment) error {
	pv, err := a.volume(ctx, va)
	if err != nil {
		return a.attachFailed(ctx, va, err)
	}
	nodeID, err := a.nodeID(ctx, va.Spec.NodeName)
	if err != nil {
		return a.attachFailed(ctx, va, err)
	}
	fin := attacherFinalizer(a.s.cfg.DriverName)
	// The finalizers first: from now on the volume may be published, and it must be
	// possible to unpublish it.
	va, err = a.updateAttachment(ctx, va, func(v *storagev1.VolumeAttachment) bool {
		changed := false
		if !hasFinalizer(v.Finalizers, fin) {
			v.Finalizers = append(v.Finalizers, fin)
			changed = true
		}
		if v.Annotations[annVANodeID] != nodeID {
			if v.Annotations == nil {
				v.Annotations = map[string]string{}
			}
			v.Annotations[annVANodeID] = nodeID
			changed = true
		}
		return changed
	})
	if err != nil || va == nil {
		return err
	}
	if va.Spec.Source.PersistentVolumeName != nil {
		if err := a.setPVFinalizer(ctx, pv.Name, true); err != nil {
			return a.attachFailed(ctx, va, err)
		}
	}
	capability, err := pvCapability(pv, a.s.caps)
	if err != nil {
		return a.attachFailed(ctx, va, err)
	}
	cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	resp, err := a.s.ctrl.ControllerPublishVolume(cctx, &csi.ControllerPublishVolumeRequest{
		VolumeId:         pv.Spec.CSI.VolumeHandle,
		NodeId:           nodeID,
		VolumeCapability: capability,
		Readonly:         pv.Spec.CSI.ReadOnly,
		VolumeContext:    pv.Spec.CSI.VolumeAttributes,
	})
	cancel()
	if err != nil {
		return a.attachFailed(ctx, va, err)
	}
	if err := a.updateStatus(ctx, va, func(st *storagev1.VolumeAttachmentStatus) {
		st.Attached = true
		st.AttachmentMetadata = resp.GetPublishContext()
		st.AttachError = nil
	}); err != nil {
		return err
	}
	a.s.log.Info("attached volume", "volumeAttachment", va.Name, "volume", pv.Spec.CSI.VolumeHandle, "node", va.Spec.NodeName)
	return nil
}

// attachFailed records the error in status.attachError (where kubectl describe and the
// agent see it) and returns it so that the attachment is retried with backoff.
func (a *attacher) attachFailed(ctx context.Context, va *storagev1.VolumeAttachment, cause error) error {
	if err := a.updateStatus(ctx, va, func(st *storagev1.VolumeAttachmentStatus) {
		st.AttachError = &storagev1.VolumeError{Time: metav1.Now(), Message: cause.Error()}
	}); err != nil {
		a.s.log.Info("cannot record the attach error", "volumeAttachment", va.Name, "err", err)
	}
	return fmt.Errorf("attach VolumeAttachment %s: %w", va.Name, cause)
}

func (a *attacher) detach(ctx context.Context, va *storagev1.VolumeAttachment) error {
	pv, err := a.volume(ctx, va)
	switch {
	case err != nil && va.Spec.Source.PersistentVolumeName != nil && apierrors.IsNotFound(err):
		// The PV is gone in spite of our finalizer (removed by hand): nothing is left to
		// unpublish by.
		a.s.log.Warn("PV of a VolumeAttachment is gone; releasing the attachment without ControllerUnpublishVolume", "volumeAttachment", va.Name)
	case err != nil:
		return a.detachFailed(ctx, va, err)
	default:
		nodeID := va.Annotations[annVANodeID]
		if nodeID == "" {
			if nodeID, err = a.nodeID(ctx, va.Spec.NodeName); err != nil {
				return a.detachFailed(ctx, va, err)
			}
		}
		cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		_, err = a.s.ctrl.ControllerUnpublishVolume(cctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle, NodeId: nodeID})
		cancel()
		if err != nil && status.Code(err) != codes.NotFound {
			return a.detachFailed(ctx, va, err)
		}
	}
	if err := a.updateStatus(ctx, va, func(st *storagev1.VolumeAttachmentStatus) {
		st.Attached = false
		st.AttachmentMetadata = nil
		st.DetachError = nil
	}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	fin := attacherFinalizer(a.s.cfg.DriverName)
	if _, err := a.updateAttachment(ctx, va, func(v *storagev1.VolumeAttachment) bool {
		if !hasFinalizer(v.Finalizers, fin) {
			return false
		}
		v.Finalizers = withoutFinalizer(v.Finalizers, fin)
		return true
	}); err != nil {
		return err
	}
	a.s.log.Info("detached volume", "volumeAttachment", va.Name, "node", va.Spec.NodeName)
	if name := va.Spec.Source.PersistentVolumeName; name != nil && !a.stillAttached(*name, va.Name) {
		return a.setPVFinalizer(ctx, *name, false)
	}
	return nil
}

func (a *attacher) detachFailed(ctx context.Context, va *storagev1.VolumeAttachment, cause error) error {
	if err := a.updateStatus(ctx, va, func(st *storagev1.VolumeAttachmentStatus) {
		st.DetachError = &storagev1.VolumeError{Time: metav1.Now(), Message: cause.Error()}
	}); err != nil {
		a.s.log.Info("cannot record the detach error", "volumeAttachment", va.Name, "err", err)
	}
	return fmt.Errorf("detach VolumeAttachment %s: %w", va.Name, cause)
}

// stillAttached reports whether another live VolumeAttachment of the driver holds the PV.
func (a *attacher) stillAttached(pvName, except string) bool {
	all, err := a.attachments.List(labels.Everything())
	if err != nil {
		return true
	}
	for _, v := range all {
		if v.Name != except && v.Spec.Attacher == a.s.cfg.DriverName && v.DeletionTimestamp == nil &&
			v.Spec.Source.PersistentVolumeName != nil && *v.Spec.Source.PersistentVolumeName == pvName {
			return true
		}
	}
	return false
}

// setPVFinalizer adds (or removes) the attacher's finalizer on the PV.
func (a *attacher) setPVFinalizer(ctx context.Context, name string, present bool) error {
	fin := attacherFinalizer(a.s.cfg.DriverName)
	pvs := a.s.cfg.Client.CoreV1().PersistentVolumes()
	for range 5 {
		pv, err := pvs.Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) && !present {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get PV %s: %w", name, err)
		}
		if hasFinalizer(pv.Finalizers, fin) == present {
			return nil
		}
		if present {
			pv.Finalizers = append(pv.Finalizers, fin)
		} else {
			pv.Finalizers = withoutFinalizer(pv.Finalizers, fin)
		}
		_, err = pvs.Update(ctx, pv, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if apierrors.IsNotFound(err) && !present {
			return nil
		}
		if err != nil {
			return fmt.Errorf("finalizer %s on PV %s: %w", fin, name, err)
		}
		return nil
	}
	return fmt.Errorf("finalizer %s on PV %s: conflicts", fin, name)
}

// updateAttachment applies change to a fresh copy of the VolumeAttachment and writes it
// when change reports a change; it returns the attachment as written (nil if it is gone).
func (a *attacher) updateAttachment(ctx context.Context, va *storagev1.VolumeAttachment, change func(*storagev1.VolumeAttachment) bool) (*storagev1.VolumeAttachment, error) {
	vas := a.s.cfg.Client.StorageV1().VolumeAttachments()
	for range 5 {
		fresh, err := vas.Get(ctx, va.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("get VolumeAttachment %s: %w", va.Name, err)
		}
		if fresh.UID != va.UID {
			return nil, nil
		}
		if !change(fresh) {
			return fresh, nil
		}
		out, err := vas.Update(ctx, fresh, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("update VolumeAttachment %s: %w", va.Name, err)
		}
		return out, nil
	}
	return nil, fmt.Errorf("update VolumeAttachment %s: conflicts", va.Name)
}

// updateStatus applies change to the status of a fresh copy of the VolumeAttachment.
func (a *attacher) updateStatus(ctx context.Context, va *storagev1.VolumeAttachment, change func(*storagev1.VolumeAttachmentStatus)) error {
	vas := a.s.cfg.Client.StorageV1().VolumeAttachments()
	for range 5 {
		fresh, err := vas.Get(ctx, va.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get VolumeAttachment %s: %w", va.Name, err)
		}
		if fresh.UID != va.UID {
			return nil
		}
		change(&fresh.Status)
		_, err = vas.UpdateStatus(ctx, fresh, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("update status of VolumeAttachment %s: %w", va.Name, err)
		}
		return nil
	}
	return fmt.Errorf("update status of VolumeAttachment %s: conflicts", va.Name)
}
