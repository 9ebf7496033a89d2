package sidecar

import (
	"context"
	"fmt"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"berth.dev/berth/core/controllers/reconcile"
)

// fsResizePendingMessage is the FileSystemResizePending condition's message, as
// external-resizer writes it; the agent finishes the resize on the node.
const fsResizePendingMessage = "Waiting for user to (re-)start a pod to finish file system resize of volume on node."

// resizer is the external-resizer: ControllerExpandVolume when a bound claim of the
// driver asks for more than its PV holds, then the PV's capacity and the claim's status.
type resizer struct {
	s        *sidecar
	recorder record.EventRecorder
	claims   corelisters.PersistentVolumeClaimLister
	volumes  corelisters.PersistentVolumeLister
}

// pvLagRetry is how soon a Bound claim whose volume the cache does not show yet (or not
// yet bound back to it) is looked at again.
const pvLagRetry = time.Second

func (r *resizer) wants(c *corev1.PersistentVolumeClaim) bool {
	return c.Spec.VolumeName != "" && c.Status.Phase == corev1.ClaimBound
}

func hasCondition(c *corev1.PersistentVolumeClaim, t corev1.PersistentVolumeClaimConditionType) bool {
	for _, cond := range c.Status.Conditions {
		if cond.Type == t && cond.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func (r *resizer) sync(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	claim, err := r.claims.PersistentVolumeClaims(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if !r.wants(claim) {
		return reconcile.Result{}, nil
	}
	pv, err := r.volumes.Get(claim.Spec.VolumeName)
	if apierrors.IsNotFound(err) {
		// The claim's watch can run ahead of the volumes' on a busy node: look again soon
		// rather than wait for the next resync (the claim is Bound to it).
		return reconcile.Result{RequeueAfter: pvLagRetry}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != r.s.cfg.DriverName {
		return reconcile.Result{}, nil
	}
	if pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID != claim.UID {
		// Bound to this PV by the claim's word, not yet by the PV's as cached: the same lag.
		return reconcile.Result{RequeueAfter: pvLagRetry}, nil
	}
	if r.s.cfg.NodeScoped && !onNode(pv, r.s.cfg.Topology) {
		return reconcile.Result{}, nil
	}
	requested, ok := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	if !ok {
		return reconcile.Result{}, nil
	}
	pvSize := pv.Spec.Capacity[corev1.ResourceStorage]
	claimSize := claim.Status.Capacity[corev1.ResourceStorage]
	// Grow when the claim asks for more than the PV holds, or finish a resize that was
	// interrupted after the PV was updated (the claim still says Resizing).
	interrupted := hasCondition(claim, corev1.PersistentVolumeClaimResizing) && requested.Cmp(claimSize) > 0
	if requested.Cmp(pvSize) <= 0 && !interrupted {
		return reconcile.Result{}, nil
	}
	if !hasCondition(claim, corev1.PersistentVolumeClaimResizing) {
		// What kube-controller-manager's expand controller says of a CSI claim: berth has
		// no such controller, the sidecar is the external one.
		r.recorder.Event(claim, corev1.EventTypeNormal, "ExternalExpanding", "waiting for an external controller to expand this PVC")
	}
	r.recorder.Eventf(claim, corev1.EventTypeNormal, "Resizing", "External resizer is resizing volume %s", pv.Name)
	if err := r.updateClaimStatus(ctx, claim, func(c *corev1.PersistentVolumeClaim) {
		setCondition(c, corev1.PersistentVolumeClaimResizing, "")
		if c.Status.AllocatedResources == nil {
			c.Status.AllocatedResources = corev1.ResourceList{}
		}
		c.Status.AllocatedResources[corev1.ResourceStorage] = requested
		if c.Status.AllocatedResourceStatuses == nil {
			c.Status.AllocatedResourceStatuses = map[corev1.ResourceName]corev1.ClaimResourceStatus{}
		}
		c.Status.AllocatedResourceStatuses[corev1.ResourceStorage] = corev1.PersistentVolumeClaimControllerResizeInProgress
	}); err != nil {
		return reconcile.Result{}, err
	}

	capability, err := pvCapability(pv, r.s.caps)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	resp, err := r.s.ctrl.ControllerExpandVolume(cctx, &csi.ControllerExpandVolumeRequest{
		VolumeId:         pv.Spec.CSI.VolumeHandle,
		CapacityRange:    &csi.CapacityRange{RequiredBytes: requested.Value()},
		VolumeCapability: capability,
	})
	cancel()
	if err != nil {
		r.recorder.Eventf(claim, corev1.EventTypeWarning, "VolumeResizeFailed", "resize volume %q by resizer %q failed: %v", pv.Name, r.s.cfg.DriverName, err)
		return reconcile.Result{}, fmt.Errorf("ControllerExpandVolume of PV %s: %w", pv.Name, err)
	}
	newBytes := resp.GetCapacityBytes()
	if newBytes == 0 {
		newBytes = requested.Value()
	}
	newSize := *resource.NewQuantity(newBytes, resource.BinarySI)
	if err := r.setPVCapacity(ctx, pv, newSize); err != nil {
		return reconcile.Result{}, err
	}
	nodeExpansion := resp.GetNodeExpansionRequired()
	if err := r.updateClaimStatus(ctx, claim, func(c *corev1.PersistentVolumeClaim) {
		removeCondition(c, corev1.PersistentVolumeClaimResizing)
		if nodeExpansion {
			setCondition(c, corev1.PersistentVolumeClaimFileSystemResizePending, fsResizePendingMessage)
			if c.Status.AllocatedResourceStatuses == nil {
				c.Status.AllocatedResourceStatuses = map[corev1.ResourceName]corev1.ClaimResourceStatus{}
			}
			c.Status.AllocatedResourceStatuses[corev1.ResourceStorage] = corev1.PersistentVolumeClaimNodeResizePending
			return
		}
		removeCondition(c, corev1.PersistentVolumeClaimFileSystemResizePending)
		if c.Status.Capacity == nil {
			c.Status.Capacity = corev1.ResourceList{}
		}
		c.Status.Capacity[corev1.ResourceStorage] = newSize
		delete(c.Status.AllocatedResourceStatuses, corev1.ResourceStorage)
	}); err != nil {
		return reconcile.Result{}, err
	}
	r.s.log.Info("expanded volume", "claim", key, "pv", pv.Name, "size", newSize.String(), "nodeExpansionRequired", nodeExpansion)
	if nodeExpansion {
		r.recorder.Event(claim, corev1.EventTypeNormal, "FileSystemResizeRequired", "Require file system resize of volume on node")
	} else {
		r.recorder.Event(claim, corev1.EventTypeNormal, "VolumeResizeSuccessful", "Resize volume succeeded")
	}
	return reconcile.Result{}, nil
}

// setCondition sets a True condition of type t (keeping its transition time if it was
// already set).
func setCondition(c *corev1.PersistentVolumeClaim, t corev1.PersistentVolumeClaimConditionType, message string) {
	now := metav1.Now()
	for i := range c.Status.Conditions {
		if c.Status.Conditions[i].Type == t {
			c.Status.Conditions[i].LastProbeTime = now
			c.Status.Conditions[i].Message = message
			if c.Status.Conditions[i].Status != corev1.ConditionTrue {
				c.Status.Conditions[i].Status = corev1.ConditionTrue
				c.Status.Conditions[i].LastTransitionTime = now
			}
			return
		}
	}
	c.Status.Conditions = append(c.Status.Conditions, corev1.PersistentVolumeClaimCondition{
		Type: t, Status: corev1.ConditionTrue, LastProbeTime: now, LastTransitionTime: now, Message: message,
	})
}

func removeCondition(c *corev1.PersistentVolumeClaim, t corev1.PersistentVolumeClaimConditionType) {
	var out []corev1.PersistentVolumeClaimCondition
	for _, cond := range c.Status.Conditions {
		if cond.Type != t {
			out = append(out, cond)
		}
	}
	c.Status.Conditions = out
}

// updateClaimStatus applies change to a fresh copy of the claim and writes its status,
// rereading it on conflicts.
func (r *resizer) updateClaimStatus(ctx context.Context, claim *corev1.PersistentVolumeClaim, change func(*corev1.PersistentVolumeClaim)) error {
	claims := r.s.cfg.Client.CoreV1().PersistentVolumeClaims(claim.Namespace)
	for range 5 {
		fresh, err := claims.Get(ctx, claim.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get claim %s/%s: %w", claim.Namespace, claim.Name, err)
		}
		if fresh.UID != claim.UID {
			return fmt.Errorf("claim %s/%s was replaced", claim.Namespace, claim.Name)
		}
		change(fresh)
		_, err = claims.UpdateStatus(ctx, fresh, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("update status of claim %s/%s: %w", claim.Namespace, claim.Name, err)
		}
		return nil
	}
	return fmt.Errorf("update status of claim %s/%s: conflicts", claim.Namespace, claim.Name)
}

// setPVCapacity records the expanded size in the PV's spec.
func (r *resizer) setPVCapacity(ctx context.Context, pv *corev1.PersistentVolume, size resource.Quantity) error {
	pvs := r.s.cfg.Client.CoreV1().PersistentVolumes()
	for range 5 {
		fresh, err := pvs.Get(ctx, pv.Name, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("get PV %s: %w", pv.Name, err)
		}
		if cur, ok := fresh.Spec.Capacity[corev1.ResourceStorage]; ok && cur.Cmp(size) >= 0 {
			return nil
		}
		if fresh.Spec.Capacity == nil {
			fresh.Spec.Capacity = corev1.ResourceList{}
		}
		fresh.Spec.Capacity[corev1.ResourceStorage] = size
		_, err = pvs.Update(ctx, fresh, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("set capacity of PV %s to %s: %w", pv.Name, size.String(), err)
		}
		return nil
	}
	return fmt.Errorf("set capacity of PV %s: conflicts", pv.Name)
}
