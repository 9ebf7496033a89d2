package plugins

import (
	"context"

	corev1 "k8s.io/api/core/v1"

	"berth.dev/berth/core/scheduler/framework"
)

// NodeNameName is the name of the NodeName plugin.
const NodeNameName = "NodeName"

// ErrReasonNodeName is NodeName's Filter reason.
const ErrReasonNodeName = "node(s) didn't match the requested node name"

// NodeName keeps a pod that names its node (spec.nodeName) off every other node.
type NodeName struct{}

// Name returns NodeNameName.
func (NodeName) Name() string { return NodeNameName }

// Filter rejects every node but the one the pod names.
func (NodeName) Filter(_ context.Context, _ *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) *framework.Status {
	if pod.Spec.NodeName != "" && pod.Spec.NodeName != node.Name() {
		return framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonNodeName)
	}
	return nil
}
