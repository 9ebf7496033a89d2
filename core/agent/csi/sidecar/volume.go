package sidecar

import (
	"fmt"
	"maps"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
)

// volumeCapabilities turns access modes and a volume mode into CSI capabilities, one per
// access mode, as external-provisioner does: ReadWriteOnce is SINGLE_NODE_MULTI_WRITER
// when the driver knows that mode (pods on one node may share it), ReadWriteOncePod is
// SINGLE_NODE_SINGLE_WRITER when it does.
func volumeCapabilities(modes []corev1.PersistentVolumeAccessMode, volumeMode *corev1.PersistentVolumeMode, fsType string, mountFlags []string, caps capabilities) ([]*csi.VolumeCapability, error) {
	if len(modes) == 0 {
		return nil, fmt.Errorf("no access modes")
	}
	block := volumeMode != nil && *volumeMode == corev1.PersistentVolumeBlock
	var out []*csi.VolumeCapability
	for _, m := range modes {
		c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{}}
		switch m {
		case corev1.ReadWriteOnce:
			c.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
			if caps.singleNodeMultiWriter {
				c.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER
			}
		case corev1.ReadWriteOncePod:
			c.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER
			if caps.singleNodeMultiWriter {
				c.AccessMode.Mode = csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
			}
		case corev1.ReadOnlyMany:
			c.AccessMode.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_READER_ONLY
		case corev1.ReadWriteMany:
			c.AccessMode.Mode = csi.VolumeCapability_AccessMode_MULTI_NODE_MULTI_WRITER
		default:
			return nil, fmt.Errorf("unknown access mode %q", m)
		}
		if block {
			c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
		} else {
			c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: fsType, MountFlags: mountFlags}}
		}
		out = append(out, c)
	}
	return out, nil
}

// pvCapability is the one capability of an existing PV that ControllerExpandVolume and
// ControllerPublishVolume get: its first access mode, as external-attacher sends.
func pvCapability(pv *corev1.PersistentVolume, caps capabilities) (*csi.VolumeCapability, error) {
	fsType := ""
	if pv.Spec.CSI != nil {
		fsType = pv.Spec.CSI.FSType
	}
	modes := pv.Spec.AccessModes
	if len(modes) > 1 {
		modes = modes[:1]
	}
	c, err := volumeCapabilities(modes, pv.Spec.VolumeMode, fsType, pv.Spec.MountOptions, caps)
	if err != nil {
		return nil, fmt.Errorf("capability of PV %s: %w", pv.Name, err)
	}
	return c[0], nil
}

// topologyNode is a stand-in Node that carries only the topology labels, to match node
// affinities and allowedTopologies against a segment with the scheduler's own helper.
func topologyNode(segment map[string]string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Labels: segment}}
}

// onNode reports whether pv's node affinity admits the topology segment. A PV without a
// node affinity is not tied to any one node: no node-scoped sidecar claims it.
func onNode(pv *corev1.PersistentVolume, segment map[string]string) bool {
	if pv.Spec.NodeAffinity == nil || pv.Spec.NodeAffinity.Required == nil || len(segment) == 0 {
		return false
	}
	ok, err := corev1helpers.MatchNodeSelectorTerms(topologyNode(segment), pv.Spec.NodeAffinity.Required)
	return err == nil && ok
}

// allowedTopologyAdmits reports whether the class's allowedTopologies (if any) admit the
// segment: any one term whose every expression the segment satisfies.
func allowedTopologyAdmits(terms []corev1.TopologySelectorTerm, segment map[string]string) bool {
	if len(terms) == 0 {
		return true
	}
	for _, t := range terms {
		ok := true
		for _, e := range t.MatchLabelExpressions {
			v, has := segment[e.Key]
			if !has || !slices.Contains(e.Values, v) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// nodeAffinity turns a volume's accessible topology into a PV node affinity: one term
// per segment, each requiring every key of it.
func nodeAffinity(topologies []*csi.Topology) *corev1.VolumeNodeAffinity {
	var terms []corev1.NodeSelectorTerm
	for _, t := range topologies {
		if len(t.GetSegments()) == 0 {
			continue
		}
		var exprs []corev1.NodeSelectorRequirement
		for _, k := range slices.Sorted(maps.Keys(t.GetSegments())) {
			exprs = append(exprs, corev1.NodeSelectorRequirement{Key: k, Operator: corev1.NodeSelectorOpIn, Values: []string{t.GetSegments()[k]}})
		}
		terms = append(terms, corev1.NodeSelectorTerm{MatchExpressions: exprs})
	}
	if len(terms) == 0 {
		return nil
	}
	return &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: terms}}
}

func hasFinalizer(finalizers []string, f string) bool { return slices.Contains(finalizers, f) }

func withoutFinalizer(finalizers []string, f string) []string {
	var out []string
	for _, x := range finalizers {
		if x != f {
			out = append(out, x)
		}
	}
	return out
}
