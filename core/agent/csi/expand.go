package csi

// File system expansion on the node: after the resizer grew a volume whose driver
// needs the node's help (the PVC has condition FileSystemResizePending, or
// allocatedResourceStatuses storage=NodeResizePending), the agent calls NodeExpandVolume
// on a publication of it and then writes the new capacity into the PVC's status, as the
// kubelet does for volumes in use (online expansion).

import (
	"context"
	"fmt"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
)

// expandVolumes finishes the pending file system resizes of published volumes.
func (m *Manager) expandVolumes(ctx context.Context) {
	var pubs []publication
	m.mu.Lock()
	for _, vs := range m.vols {
		for _, p := range vs.pubs {
			if p.Published && !p.Block && !p.Ephemeral && p.PVCName != "" {
				pubs = append(pubs, *p)
				break // one publication per volume is enough
			}
		}
	}
	m.mu.Unlock()
	for _, p := range pubs {
		if err := m.expandVolume(ctx, &p); err != nil && ctx.Err() == nil {
			m.log.Error("node expansion of a CSI volume", "pvc", p.PVCNamespace+"/"+p.PVCName, "err", err)
		}
	}
}

// resizePending tells whether the PVC waits for the node to grow its file system.
func resizePending(pvc *corev1.PersistentVolumeClaim) bool {
	if pvc.Status.AllocatedResourceStatuses[corev1.ResourceStorage] == corev1.PersistentVolumeClaimNodeResizePending {
		return true
	}
	for _, c := range pvc.Status.Conditions {
		if c.Type == corev1.PersistentVolumeClaimFileSystemResizePending && c.Status == corev1.ConditionTrue {
			return true
		}
	}
	return false
}

func (m *Manager) expandVolume(ctx context.Context, p *publication) error {
	pvcs := m.cfg.Kube.CoreV1().PersistentVolumeClaims(p.PVCNamespace)
	pvc, err := pvcs.Get(ctx, p.PVCName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get PVC: %w", err)
	}
	if !resizePending(pvc) || pvc.Spec.VolumeName != p.PVName {
		return nil
	}
	pv, err := m.cfg.Kube.CoreV1().PersistentVolumes().Get(ctx, p.PVName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get PV %s: %w", p.PVName, err)
	}
	size, ok := pv.Spec.Capacity[corev1.ResourceStorage]
	if !ok {
		return fmt.Errorf("PV %s has no storage capacity", pv.Name)
	}
	drv, ok := m.drivers.get(p.Driver)
	if !ok {
		return nil // tried again once the driver is back
	}
	lock := m.lockVolume(UniqueName(p.Driver, p.VolumeHandle))
	defer lock.Unlock()
	// A driver without EXPAND_VOLUME needs nothing on the node, as with the kubelet.
	if drv.has(csipb.NodeServiceCapability_RPC_EXPAND_VOLUME) {
		var fsType string
		var flags []string
		if pv.Spec.CSI != nil {
			fsType = pv.Spec.CSI.FSType
		}
		flags = pv.Spec.MountOptions
		_, err := drv.node.NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{
			VolumeId: p.VolumeHandle, VolumePath: p.TargetPath, StagingTargetPath: p.StagingPath,
			CapacityRange:    &csipb.CapacityRange{RequiredBytes: size.Value()},
			VolumeCapability: volumeCapability(false, fsType, flags, pv.Spec.AccessModes),
		})
		if err != nil {
			m.event(pvc, corev1.EventTypeWarning, "VolumeResizeFailed", fmt.Sprintf("MountVolume.NodeExpandVolume failed for volume %q : %v", pv.Name, err))
			return fmt.Errorf("NodeExpandVolume of %s: %w", pv.Name, err)
		}
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := pvcs.Get(ctx, p.PVCName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		markResizeFinished(cur, size)
		_, err = pvcs.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("update status of PVC %s/%s after expansion: %w", p.PVCNamespace, p.PVCName, err)
	}
	m.event(pvc, corev1.EventTypeNormal, "FileSystemResizeSuccessful",
		fmt.Sprintf("MountVolume.NodeExpandVolume succeeded for volume %q %s", pv.Name, m.cfg.NodeName))
	return nil
}

// markResizeFinished sets the PVC's capacity and drops the resize conditions and its
// allocatedResourceStatuses entry, as the kubelet's MarkFSResizeFinished does.
func markResizeFinished(pvc *corev1.PersistentVolumeClaim, size resource.Quantity) {
	if pvc.Status.Capacity == nil {
		pvc.Status.Capacity = corev1.ResourceList{}
	}
	pvc.Status.Capacity[corev1.ResourceStorage] = size
	var conds []corev1.PersistentVolumeClaimCondition
	for _, c := range pvc.Status.Conditions {
		if c.Type != corev1.PersistentVolumeClaimFileSystemResizePending && c.Type != corev1.PersistentVolumeClaimResizing {
			conds = append(conds, c)
		}
	}
	pvc.Status.Conditions = conds
	delete(pvc.Status.AllocatedResourceStatuses, corev1.ResourceStorage)
	if len(pvc.Status.AllocatedResourceStatuses) == 0 {
		pvc.Status.AllocatedResourceStatuses = nil
	}
}

func (m *Manager) event(obj *corev1.PersistentVolumeClaim, eventType, reason, message string) {
	if m.cfg.Recorder != nil {
		m.cfg.Recorder.Event(obj, eventType, reason, message)
	}
}
