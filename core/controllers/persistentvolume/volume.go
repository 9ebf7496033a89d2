package persistentvolume

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	storagehelpers "k8s.io/component-helpers/storage/volume"

	"berth.dev/berth/core/controllers/reconcile"
)

// recycleUnsupported is the message of a volume whose claim went while its reclaim policy was
// Recycle: Kubernetes deprecated it and berth has no recycler.
const recycleUnsupported = "Recycle reclaim policy is not supported by berth (Kubernetes deprecated it): " +
	"the data is still on the volume; delete the PersistentVolume, or clear its claimRef to offer it again"

// reconcileVolume makes one volume right: its phase from its claim, its reclaim policy once
// that claim is gone, its protection finalizer gone once it is not bound while being deleted.
func (c *Controller) reconcileVolume(ctx context.Context, name string) (reconcile.Result, error) {
	volume, err := c.volumes.Get(name)
	if apierrors.IsNotFound(err) {
		// Its claim was queued by the delete handler and becomes Lost there.
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if volume.DeletionTimestamp != nil && slices.Contains(volume.Finalizers, PVProtectionFinalizer) && volume.Status.Phase != corev1.VolumeBound {
		clone := volume.DeepCopy()
		clone.Finalizers = slices.DeleteFunc(clone.Finalizers, func(f string) bool { return f == PVProtectionFinalizer })
		if _, err := c.kube.CoreV1().PersistentVolumes().Update(ctx, clone, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return reconcile.Result{}, fmt.Errorf("remove %s from volume %s: %w", PVProtectionFinalizer, name, err)
		}
		return reconcile.Result{}, nil
	}
	return reconcile.Result{}, c.syncVolume(ctx, volume)
}

// syncVolume is Kubernetes' syncVolume: the volume's phase follows its claimRef and the claim
// it names.
func (c *Controller) syncVolume(ctx context.Context, volume *corev1.PersistentVolume) error {
	ref := volume.Spec.ClaimRef
	if ref == nil || ref.UID == "" {
		// Unused, or pre-bound to a claim that has not bound yet (the claim's pass does it).
		_, err := c.updateVolumePhase(ctx, volume, corev1.VolumeAvailable, "")
		return err
	}
	claim, err := c.claims.PersistentVolumeClaims(ref.Namespace).Get(ref.Name)
	switch {
	case apierrors.IsNotFound(err):
		claim = nil
		if volume.Status.Phase != corev1.VolumeReleased && volume.Status.Phase != corev1.VolumeFailed {
			// A volume created by a provisioner may name a claim the informer has not shown
			// yet: ask the API server before releasing it.
			if claim, err = c.liveClaim(ctx, ref.Namespace, ref.Name); err != nil {
				return err
			}
		}
	case err != nil:
		return err
	}
	if claim != nil && claim.UID != ref.UID {
		// The claim was deleted and one of the same name made, or the cache is behind.
		if claim, err = c.liveClaim(ctx, ref.Namespace, ref.Name); err != nil {
			return err
		}
		if claim != nil && claim.UID != ref.UID {
			claim = nil
		}
	}
	switch {
	case claim == nil:
		if volume.Status.Phase != corev1.VolumeReleased && volume.Status.Phase != corev1.VolumeFailed {
			c.opts.Log.Info("volume released, applying its reclaim policy", "volume", volume.Name, "policy", volume.Spec.PersistentVolumeReclaimPolicy)
			if volume, err = c.updateVolumePhase(ctx, volume, corev1.VolumeReleased, ""); err != nil {
				return err
			}
		}
		return c.reclaim(ctx, volume)
	case claim.Spec.VolumeName == "":
		if storagehelpers.CheckVolumeModeMismatches(&claim.Spec, &volume.Spec) {
			c.recorder.Event(volume, corev1.EventTypeWarning, reasonVolumeMismatch, fmt.Sprintf("Cannot bind PersistentVolume to requested PersistentVolumeClaim %q due to incompatible volumeMode.", claim.Name))
			c.recorder.Event(claim, corev1.EventTypeWarning, reasonVolumeMismatch, fmt.Sprintf("Cannot bind PersistentVolume %q to requested PersistentVolumeClaim due to incompatible volumeMode.", volume.Name))
			return nil
		}
		// Half bound (the claim's pass was interrupted, or a provisioner just made this
		// volume for the claim): the claim's pass completes it.
		c.claimQueue.Add(claim.Namespace + "/" + claim.Name)
		return nil
	case claim.Spec.VolumeName == volume.Name:
		_, err := c.updateVolumePhase(ctx, volume, corev1.VolumeBound, "")
		return err
	case metav1.HasAnnotation(volume.ObjectMeta, storagehelpers.AnnDynamicallyProvisioned) && volume.Spec.PersistentVolumeReclaimPolicy == corev1.PersistentVolumeReclaimDelete:
		// Provisioned for a claim that got another volume meanwhile: not needed.
		if volume.Status.Phase != corev1.VolumeReleased && volume.Status.Phase != corev1.VolumeFailed {
			if volume, err = c.updateVolumePhase(ctx, volume, corev1.VolumeReleased, ""); err != nil {
				return err
			}
		}
		return c.reclaim(ctx, volume)
	default:
		// The claim is bound to another volume: give this one back.
		return c.unbindVolume(ctx, volume)
	}
}

// liveClaim reads a claim from the API server; nil when it does not exist.
func (c *Controller) liveClaim(ctx context.Context, ns, name string) (*corev1.PersistentVolumeClaim, error) {
	claim, err := c.kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read claim %s/%s: %w", ns, name, err)
	}
	return claim, nil
}

// reclaim applies a released volume's reclaim policy. berth deletes volumes only through a
// CSI driver's sidecar; the rest is Kubernetes' behaviour without in-tree plugins.
func (c *Controller) reclaim(ctx context.Context, volume *corev1.PersistentVolume) error {
	switch volume.Spec.PersistentVolumeReclaimPolicy {
	case corev1.PersistentVolumeReclaimRetain:
		return nil
	case corev1.PersistentVolumeReclaimRecycle:
		_, err := c.updateVolumePhaseWithEvent(ctx, volume, corev1.VolumeFailed, corev1.EventTypeWarning, reasonVolumeFailedRecycle, recycleUnsupported)
		return err
	case corev1.PersistentVolumeReclaimDelete:
		if p := volume.Annotations[storagehelpers.AnnDynamicallyProvisioned]; (p != "" && !strings.HasPrefix(p, "kubernetes.io/")) || volume.Spec.CSI != nil {
			// The provisioner's sidecar deletes the volume, then the PersistentVolume.
			return nil
		}
		msg := fmt.Sprintf("error getting deleter volume plugin for volume %q: no deletable volume plugin matched", volume.Name)
		_, err := c.updateVolumePhaseWithEvent(ctx, volume, corev1.VolumeFailed, corev1.EventTypeWarning, reasonVolumeFailedDelete, msg)
		return err
	default:
		_, err := c.updateVolumePhaseWithEvent(ctx, volume, corev1.VolumeFailed, corev1.EventTypeWarning, "VolumeUnknownReclaimPolicy", "Volume has unrecognized PersistentVolumeReclaimPolicy")
		return err
	}
}

// unbindVolume undoes a binding the claim does not share: a volume the controller bound
// loses its claimRef, one the user pre-bound keeps it without the claim's UID.
func (c *Controller) unbindVolume(ctx context.Context, volume *corev1.PersistentVolume) error {
	clone := volume.DeepCopy()
	if metav1.HasAnnotation(volume.ObjectMeta, storagehelpers.AnnBoundByController) {
		clone.Spec.ClaimRef = nil
		delete(clone.Annotations, storagehelpers.AnnBoundByController)
		if len(clone.Annotations) == 0 {
			clone.Annotations = nil
		}
	} else {
		clone.Spec.ClaimRef.UID = ""
	}
	updated, err := c.kube.CoreV1().PersistentVolumes().Update(ctx, clone, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("unbind volume %s: %w", volume.Name, err)
	}
	_, err = c.updateVolumePhase(ctx, updated, corev1.VolumeAvailable, "")
	return err
}

// updateVolumePhase sets a volume's phase and message through the status subresource.
func (c *Controller) updateVolumePhase(ctx context.Context, volume *corev1.PersistentVolume, phase corev1.PersistentVolumePhase, message string) (*corev1.PersistentVolume, error) {
	if volume.Status.Phase == phase {
		return volume, nil
	}
	clone := volume.DeepCopy()
	clone.Status.Phase, clone.Status.Message = phase, message
	updated, err := c.kube.CoreV1().PersistentVolumes().UpdateStatus(ctx, clone, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("set volume %s %s: %w", volume.Name, phase, err)
	}
	c.opts.Log.Debug("volume entered phase", "volume", volume.Name, "phase", phase)
	return updated, nil
}

// updateVolumePhaseWithEvent is updateVolumePhase with an event when the phase changes
// (not on every pass).
func (c *Controller) updateVolumePhaseWithEvent(ctx context.Context, volume *corev1.PersistentVolume, phase corev1.PersistentVolumePhase, eventType, reason, message string) (*corev1.PersistentVolume, error) {
	if volume.Status.Phase == phase {
		return volume, nil
	}
	updated, err := c.updateVolumePhase(ctx, volume, phase, message)
	if err != nil {
		return nil, err
	}
	c.recorder.Event(updated, eventType, reason, message)
	return updated, nil
}
