package plugins

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"

	"berth.dev/berth/core/scheduler/framework"
)

// NodeUnschedulableName is the name of the NodeUnschedulable plugin.
const NodeUnschedulableName = "NodeUnschedulable"

// ErrReasonUnschedulable is NodeUnschedulable's Filter reason.
const ErrReasonUnschedulable = "node(s) were unschedulable"

// NodeUnschedulable keeps pods off cordoned nodes (spec.unschedulable), unless they
// tolerate the node.kubernetes.io/unschedulable:NoSchedule taint (as DaemonSet pods do).
type NodeUnschedulable struct{}

// Name returns NodeUnschedulableName.
func (NodeUnschedulable) Name() string { return NodeUnschedulableName }

// Filter rejects a cordoned node unless the pod tolerates it.
func (NodeUnschedulable) Filter(_ context.Context, _ *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) *framework.Status {
	if !node.Node().Spec.Unschedulable {
		return nil
	}
	cordon := &corev1.Taint{Key: corev1.TaintNodeUnschedulable, Effect: corev1.TaintEffectNoSchedule}
	if corev1helpers.TolerationsTolerateTaint(pod.Spec.Tolerations, cordon) {
		return nil
	}
	return framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonUnschedulable)
}
