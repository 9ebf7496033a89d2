package csi

// What the cluster learns of a registered driver, as the kubelet's CSI node info
// manager publishes it: the CSINode's drivers[] entry, the Node's topology labels and its
// csi.volume.kubernetes.io/nodeid annotation, and a CSIDriver object when none exists.

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"

	storagev1 "k8s.io/api/storage/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

// NodeIDAnnotation is the Node annotation holding {driver: nodeID} of its CSI drivers.
const NodeIDAnnotation = "csi.volume.kubernetes.io/nodeid"

func (m *Manager) nodeInfoDone(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.nodeInfoOK[name]
}

// publishNodeInfo writes d into the CSINode and the Node; a failure is logged and
// retried at the next scan.
func (m *Manager) publishNodeInfo(ctx context.Context, d *driver) {
	err := m.updateNode(ctx, func(labels, ids map[string]string) {
		for k, v := range d.topology {
			labels[k] = v
		}
		ids[d.name] = d.nodeID
	})
	if err == nil {
		err = m.updateCSINode(ctx, func(drivers []storagev1.CSINodeDriver) []storagev1.CSINodeDriver {
			entry := storagev1.CSINodeDriver{Name: d.name, NodeID: d.nodeID}
			for k := range d.topology {
				entry.TopologyKeys = append(entry.TopologyKeys, k)
			}
			sort.Strings(entry.TopologyKeys)
			if d.maxVolumes > 0 {
				entry.Allocatable = &storagev1.VolumeNodeResources{Count: ptr.To(int32(d.maxVolumes))}
			}
			out := []storagev1.CSINodeDriver{entry}
			for _, e := range drivers {
				if e.Name != d.name {
					out = append(out, e)
				}
			}
			sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
			return out
		})
	}
	if err != nil {
		if ctx.Err() == nil {
			m.log.Error("publish CSI driver on the node (retried)", "driver", d.name, "err", err)
		}
		return
	}
	m.mu.Lock()
	if m.nodeInfoOK == nil {
		m.nodeInfoOK = map[string]bool{}
	}
	m.nodeInfoOK[d.name] = true
	m.mu.Unlock()
}

// removeNodeInfo takes driver name out of the CSINode and the Node's nodeid annotation.
// Its topology labels stay, as with the kubelet: other drivers may share the keys.
func (m *Manager) removeNodeInfo(ctx context.Context, name string) error {
	if err := m.updateNode(ctx, func(_, ids map[string]string) { delete(ids, name) }); err != nil {
		return err
	}
	return m.updateCSINode(ctx, func(drivers []storagev1.CSINodeDriver) []storagev1.CSINodeDriver {
		out := drivers[:0:0]
		for _, e := range drivers {
			if e.Name != name {
				out = append(out, e)
			}
		}
		return out
	})
}

// dropStaleDrivers removes from the CSINode the drivers registered by an earlier run
// of the agent that are not registered now.
func (m *Manager) dropStaleDrivers(ctx context.Context) {
	cn, err := m.cfg.Kube.StorageV1().CSINodes().Get(ctx, m.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return
	}
	for _, e := range cn.Spec.Drivers {
		if _, ok := m.drivers.get(e.Name); !ok {
			m.log.Info("CSI driver of an earlier run is gone", "driver", e.Name)
			if err := m.removeNodeInfo(ctx, e.Name); err != nil {
				m.log.Error("remove CSI driver from the node", "driver", e.Name, "err", err)
			}
		}
	}
}

// updateNode applies change to the Node's labels and its nodeid map, with a merge
// patch (so it never conflicts with the agent's status updates).
func (m *Manager) updateNode(ctx context.Context, change func(labels, ids map[string]string)) error {
	m.nodeMu.Lock()
	defer m.nodeMu.Unlock()
	node, err := m.cfg.Kube.CoreV1().Nodes().Get(ctx, m.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get node %s: %w", m.cfg.NodeName, err)
	}
	ids := map[string]string{}
	if v := node.Annotations[NodeIDAnnotation]; v != "" {
		if err := json.Unmarshal([]byte(v), &ids); err != nil {
			m.log.Warn("node's CSI nodeid annotation is not JSON; rewriting it", "value", v)
			ids = map[string]string{}
		}
	}
	labels := map[string]string{}
	for k, v := range node.Labels {
		labels[k] = v
	}
	oldIDs := map[string]string{}
	for k, v := range ids {
		oldIDs[k] = v
	}
	change(labels, ids)
	patchLabels := map[string]any{}
	for k, v := range labels {
		if node.Labels[k] != v {
			patchLabels[k] = v
		}
	}
	if len(patchLabels) == 0 && apiequality.Semantic.DeepEqual(ids, oldIDs) {
		return nil
	}
	meta := map[string]any{}
	if len(patchLabels) > 0 {
		meta["labels"] = patchLabels
	}
	var idsValue any // null removes the annotation
	if len(ids) > 0 {
		b, err := json.Marshal(ids)
		if err != nil {
			return fmt.Errorf("encode nodeid annotation: %w", err)
		}
		idsValue = string(b)
	}
	meta["annotations"] = map[string]any{NodeIDAnnotation: idsValue}
	patch, err := json.Marshal(map[string]any{"metadata": meta})
	if err != nil {
		return fmt.Errorf("encode node patch: %w", err)
	}
	if _, err := m.cfg.Kube.CoreV1().Nodes().Patch(ctx, m.cfg.NodeName, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("patch node %s with CSI driver info: %w", m.cfg.NodeName, err)
	}
	return nil
}

// updateCSINode applies change to the CSINode's drivers, creating the CSINode (owned by
// the Node, as the kubelet makes it) when it is missing.
func (m *Manager) updateCSINode(ctx context.Context, change func([]storagev1.CSINodeDriver) []storagev1.CSINodeDriver) error {
	m.nodeMu.Lock()
	defer m.nodeMu.Unlock()
	client := m.cfg.Kube.StorageV1().CSINodes()
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cn, err := client.Get(ctx, m.cfg.NodeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			node, err := m.cfg.Kube.CoreV1().Nodes().Get(ctx, m.cfg.NodeName, metav1.GetOptions{})
			if err != nil {
				return fmt.Errorf("get node %s: %w", m.cfg.NodeName, err)
			}
			cn = &storagev1.CSINode{
				ObjectMeta: metav1.ObjectMeta{Name: m.cfg.NodeName, OwnerReferences: []metav1.OwnerReference{{
					APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
				}}},
				Spec: storagev1.CSINodeSpec{Drivers: change(nil)},
			}
			if cn.Spec.Drivers == nil {
				cn.Spec.Drivers = []storagev1.CSINodeDriver{}
			}
			if _, err := client.Create(ctx, cn, metav1.CreateOptions{}); err != nil {
				if apierrors.IsAlreadyExists(err) {
					return apierrors.NewConflict(storagev1.Resource("csinodes"), m.cfg.NodeName, err)
				}
				return fmt.Errorf("create CSINode %s: %w", m.cfg.NodeName, err)
			}
			return nil
		} else if err != nil {
			return fmt.Errorf("get CSINode %s: %w", m.cfg.NodeName, err)
		}
		drivers := change(cn.Spec.Drivers)
		if drivers == nil {
			drivers = []storagev1.CSINodeDriver{}
		}
		if apiequality.Semantic.DeepEqual(drivers, cn.Spec.Drivers) {
			return nil
		}
		cn.Spec.Drivers = drivers
		if _, err := client.Update(ctx, cn, metav1.UpdateOptions{}); err != nil {
			if apierrors.IsConflict(err) {
				return err
			}
			return fmt.Errorf("update CSINode %s: %w", m.cfg.NodeName, err)
		}
		return nil
	})
}

// ensureCSIDriver creates the CSIDriver object of d when there is none; an existing one
// is the operator's and is never changed.
func (m *Manager) ensureCSIDriver(ctx context.Context, d *driver) {
	client := m.cfg.Kube.StorageV1().CSIDrivers()
	if _, err := client.Get(ctx, d.name, metav1.GetOptions{}); err == nil || !apierrors.IsNotFound(err) {
		return
	}
	policy := storagev1.ReadWriteOnceWithFSTypeFSGroupPolicy
	obj := &storagev1.CSIDriver{
		ObjectMeta: metav1.ObjectMeta{Name: d.name},
		Spec: storagev1.CSIDriverSpec{
			AttachRequired:       ptr.To(d.publishUnpublish),
			PodInfoOnMount:       ptr.To(false),
			VolumeLifecycleModes: []storagev1.VolumeLifecycleMode{storagev1.VolumeLifecyclePersistent, storagev1.VolumeLifecycleEphemeral},
			RequiresRepublish:    ptr.To(false),
			StorageCapacity:      ptr.To(false),
			FSGroupPolicy:        &policy,
		},
	}
	if _, err := client.Create(ctx, obj, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		m.log.Error("create CSIDriver", "driver", d.name, "err", err)
	}
}
