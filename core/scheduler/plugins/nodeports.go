package plugins

import (
	"context"

	corev1 "k8s.io/api/core/v1"

	"berth.dev/berth/core/scheduler/framework"
)

// NodePortsName is the name of the NodePorts plugin.
const NodePortsName = "NodePorts"

// ErrReasonNodePorts is NodePorts' Filter reason.
const ErrReasonNodePorts = "node(s) didn't have free ports for the requested pod ports"

// NodePorts keeps a pod off nodes where one of its host ports is taken.
type NodePorts struct{}

// Name returns NodePortsName.
func (NodePorts) Name() string { return NodePortsName }

const nodePortsKey framework.StateKey = "PreFilter" + NodePortsName

type hostPorts []corev1.ContainerPort

func (h hostPorts) Clone() framework.StateData { return h }

// podHostPorts lists the host ports of the pod's containers, sidecars included.
func podHostPorts(pod *corev1.Pod) hostPorts { return framework.HostPorts(pod) }

// PreFilter collects the pod's host ports; a pod without any skips Filter.
func (NodePorts) PreFilter(_ context.Context, state *framework.CycleState, pod *corev1.Pod) (*framework.PreFilterResult, *framework.Status) {
	ports := podHostPorts(pod)
	if len(ports) == 0 {
		return nil, framework.NewStatus(framework.Skip)
	}
	state.Write(nodePortsKey, ports)
	return nil, nil
}

// Filter rejects a node where a host port the pod wants is in use.
func (NodePorts) Filter(_ context.Context, state *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) *framework.Status {
	var ports hostPorts
	if d, err := state.Read(nodePortsKey); err == nil {
		ports = d.(hostPorts)
	} else {
		ports = podHostPorts(pod)
	}
	for _, p := range ports {
		if node.UsedPorts.Conflicts(p.HostIP, string(p.Protocol), p.HostPort) {
			return framework.NewStatus(framework.Unschedulable, ErrReasonNodePorts)
		}
	}
	return nil
}
