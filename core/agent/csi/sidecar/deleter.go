package sidecar

import (
	"context"
	"fmt"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"

	"berth.dev/berth/core/controllers/reconcile"
)

// deleter is the external-provisioner's deleting half: DeleteVolume for the released
// volumes it provisioned whose reclaim policy is Delete, then the PV goes.
type deleter struct {
	s        *sidecar
	recorder record.EventRecorder
	volumes  corelisters.PersistentVolumeLister
}

// wants reports whether the PV is this sidecar's to watch: provisioned by the driver and
// (node scoped) on this node.
func (d *deleter) wants(pv *corev1.PersistentVolume) bool {
	if pv.Annotations[annProvisionedBy] != d.s.cfg.DriverName {
		return false
	}
	return !d.s.cfg.NodeScoped || onNode(pv, d.s.cfg.Topology)
}

func (d *deleter) sync(ctx context.Context, name string) (reconcile.Result, error) {
	pv, err := d.volumes.Get(name)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if !d.wants(pv) {
		return reconcile.Result{}, nil
	}
	deleting := pv.DeletionTimestamp != nil
	if pv.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
		// Retained: the volume stays, but a deleted PV must not hang on our finalizer.
		if deleting && hasFinalizer(pv.Finalizers, provisionerFinalizer) {
			return reconcile.Result{}, d.removeFinalizer(ctx, pv)
		}
		return reconcile.Result{}, nil
	}
	// A released volume, or a PV deleted by hand that no claim holds (a deleted bound PV
	// waits for its claim to go, as with the pv-protection finalizer).
	if pv.Status.Phase != corev1.VolumeReleased && (!deleting || pv.Status.Phase == corev1.VolumeBound) {
		return reconcile.Result{}, nil
	}
	if deleting && !hasFinalizer(pv.Finalizers, provisionerFinalizer) {
		// Already handled (or never ours to wait for): nothing holds the PV on our side.
		return reconcile.Result{}, nil
	}
	if pv.Spec.CSI == nil {
		return reconcile.Result{}, reconcile.Terminal(fmt.Errorf("PV %s has no CSI source", pv.Name))
	}
	cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	_, err = d.s.ctrl.DeleteVolume(cctx, &csi.DeleteVolumeRequest{VolumeId: pv.Spec.CSI.VolumeHandle})
	cancel()
	if err != nil && status.Code(err) != codes.NotFound {
		d.recorder.Event(pv, corev1.EventTypeWarning, "VolumeFailedDelete", err.Error())
		return reconcile.Result{}, fmt.Errorf("DeleteVolume %s of PV %s: %w", pv.Spec.CSI.VolumeHandle, pv.Name, err)
	}
	d.s.log.Info("deleted volume", "pv", pv.Name, "volume", pv.Spec.CSI.VolumeHandle)
	pvs := d.s.cfg.Client.CoreV1().PersistentVolumes()
	if !deleting {
		uid := pv.UID
		err := pvs.Delete(ctx, pv.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return reconcile.Result{}, fmt.Errorf("delete PV %s: %w", pv.Name, err)
		}
	}
	return reconcile.Result{}, d.removeFinalizer(ctx, pv)
}

// removeFinalizer takes provisionerFinalizer off the PV, rereading it on conflicts.
func (d *deleter) removeFinalizer(ctx context.Context, pv *corev1.PersistentVolume) error {
	pvs := d.s.cfg.Client.CoreV1().PersistentVolumes()
	for range 5 {
		fresh, err := pvs.Get(ctx, pv.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get PV %s: %w", pv.Name, err)
		}
		if fresh.UID != pv.UID || !hasFinalizer(fresh.Finalizers, provisionerFinalizer) {
			return nil
		}
		fresh.Finalizers = withoutFinalizer(fresh.Finalizers, provisionerFinalizer)
		_, err = pvs.Update(ctx, fresh, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("remove finalizer %s from PV %s: %w", provisionerFinalizer, pv.Name, err)
		}
		return nil
	}
	return fmt.Errorf("remove finalizer %s from PV %s: conflicts", provisionerFinalizer, pv.Name)
}
