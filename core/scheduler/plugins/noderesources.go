package plugins

import (
	"context"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"

	"berth.dev/berth/core/scheduler/framework"
)

// NodeResourcesFitName is the name of the NodeResourcesFit plugin.
const NodeResourcesFitName = "NodeResourcesFit"

// ScoringStrategy is how NodeResourcesFit ranks the nodes a pod fits.
type ScoringStrategy string

// The scoring strategies.
const (
	// LeastAllocated prefers the emptiest nodes, spreading pods (Kubernetes' default).
	LeastAllocated ScoringStrategy = "LeastAllocated"
	// MostAllocated prefers the fullest nodes, packing pods.
	MostAllocated ScoringStrategy = "MostAllocated"
)

// ResourceWeight is one resource the score looks at, with its weight.
type ResourceWeight struct {
	Name   corev1.ResourceName
	Weight int64
}

// NodeResourcesFit keeps pods off nodes whose allocatable resources (and pod count) the
// pod's requests would exceed, and scores nodes by how allocated they would be.
type NodeResourcesFit struct {
	strategy  ScoringStrategy
	resources []ResourceWeight
}

// NewNodeResourcesFit returns the plugin with a strategy (LeastAllocated when empty) and
// the resources it scores (cpu and memory, weight 1 each, when none).
func NewNodeResourcesFit(strategy ScoringStrategy, resources ...ResourceWeight) (*NodeResourcesFit, error) {
	switch strategy {
	case "":
		strategy = LeastAllocated
	case LeastAllocated, MostAllocated:
	default:
		return nil, fmt.Errorf("NodeResourcesFit: unknown scoring strategy %q, want %s or %s", strategy, LeastAllocated, MostAllocated)
	}
	if len(resources) == 0 {
		resources = []ResourceWeight{{corev1.ResourceCPU, 1}, {corev1.ResourceMemory, 1}}
	}
	for _, r := range resources {
		if r.Weight <= 0 {
			return nil, fmt.Errorf("NodeResourcesFit: resource %s has weight %d, want a positive weight", r.Name, r.Weight)
		}
	}
	return &NodeResourcesFit{strategy: strategy, resources: resources}, nil
}

// Name returns NodeResourcesFitName.
func (*NodeResourcesFit) Name() string { return NodeResourcesFitName }

const (
	fitFilterKey framework.StateKey = "PreFilter" + NodeResourcesFitName
	fitScoreKey  framework.StateKey = "PreScore" + NodeResourcesFitName
)

type podRequests struct{ *framework.PodInfo }

func (p podRequests) Clone() framework.StateData { return p }

// PreFilter computes the pod's requests once: containers summed, each init container
// (with the sidecars started before it) as a floor, plus the pod overhead.
func (*NodeResourcesFit) PreFilter(_ context.Context, state *framework.CycleState, pod *corev1.Pod) (*framework.PreFilterResult, *framework.Status) {
	state.Write(fitFilterKey, podRequests{framework.NewPodInfo(pod)})
	return nil, nil
}

// InsufficientResource is one resource a node lacks for a pod.
type InsufficientResource struct {
	Name      corev1.ResourceName
	Reason    string
	Requested int64
	Used      int64
	Capacity  int64
}

// Insufficient lists what the node lacks for a pod with these requests, pods first, then
// cpu, memory, ephemeral storage and extended resources (sorted by name).
func Insufficient(req *framework.Resource, node *framework.NodeInfo) []InsufficientResource {
	var out []InsufficientResource
	if len(node.Pods)+1 > node.Allocatable.AllowedPodNumber {
		out = append(out, InsufficientResource{corev1.ResourcePods, "Too many pods", 1, int64(len(node.Pods)), int64(node.Allocatable.AllowedPodNumber)})
	}
	if req.MilliCPU == 0 && req.Memory == 0 && req.EphemeralStorage == 0 && len(req.Scalar) == 0 {
		return out
	}
	// No closure over out: it would move out to the heap on every call, and this runs
	// for every node of every cycle.
	out = appendInsufficient(out, corev1.ResourceCPU, req.MilliCPU, node.Requested.MilliCPU, node.Allocatable.MilliCPU)
	out = appendInsufficient(out, corev1.ResourceMemory, req.Memory, node.Requested.Memory, node.Allocatable.Memory)
	out = appendInsufficient(out, corev1.ResourceEphemeralStorage, req.EphemeralStorage, node.Requested.EphemeralStorage, node.Allocatable.EphemeralStorage)
	if len(req.Scalar) == 0 {
		return out
	}
	names := make([]corev1.ResourceName, 0, len(req.Scalar))
	for name := range req.Scalar {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool { return names[i] < names[j] })
	for _, name := range names {
		out = appendInsufficient(out, name, req.Scalar[name], node.Requested.Scalar[name], node.Allocatable.Scalar[name])
	}
	return out
}

// appendInsufficient adds a resource to out when want does not fit in capacity-used.
func appendInsufficient(out []InsufficientResource, name corev1.ResourceName, want, used, capacity int64) []InsufficientResource {
	if want > 0 && want > capacity-used {
		out = append(out, InsufficientResource{name, "Insufficient " + string(name), want, used, capacity})
	}
	return out
}

// Filter rejects a node that lacks any resource the pod requests, with every reason
// ("Insufficient cpu", "Too many pods" ...).
func (*NodeResourcesFit) Filter(_ context.Context, state *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) *framework.Status {
	var pi *framework.PodInfo
	if d, err := state.Read(fitFilterKey); err == nil {
		pi = d.(podRequests).PodInfo
	} else {
		pi = framework.NewPodInfo(pod)
	}
	missing := Insufficient(&pi.Requests, node)
	if len(missing) == 0 {
		return nil
	}
	reasons := make([]string, len(missing))
	for i, m := range missing {
		reasons[i] = m.Reason
	}
	return framework.NewStatus(framework.Unschedulable, reasons...)
}

// PreScore computes the requests the score uses: a container without a cpu or memory
// request counts as the scoring default (100m, 200Mi).
func (*NodeResourcesFit) PreScore(_ context.Context, state *framework.CycleState, pod *corev1.Pod, _ []*framework.NodeInfo) *framework.Status {
	state.Write(fitScoreKey, podRequests{framework.NewPodInfo(pod)})
	return nil
}

// Score rates the node by the weighted share of each resource that would be free
// (LeastAllocated) or used (MostAllocated) with the pod on it, from 0 to 100.
func (f *NodeResourcesFit) Score(_ context.Context, state *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) (int64, *framework.Status) {
	var pi *framework.PodInfo
	if d, err := state.Read(fitScoreKey); err == nil {
		pi = d.(podRequests).PodInfo
	} else {
		pi = framework.NewPodInfo(pod)
	}
	var total, weights int64
	for _, r := range f.resources {
		requested, allocatable := allocation(r.Name, pi, node)
		if allocatable == 0 {
			continue // the node does not have it, or the pod does not ask for an extended resource
		}
		var s int64
		if f.strategy == MostAllocated {
			s = min(requested, allocatable) * framework.MaxNodeScore / allocatable
		} else if requested <= allocatable {
			s = (allocatable - requested) * framework.MaxNodeScore / allocatable
		}
		total += s * r.Weight
		weights += r.Weight
	}
	if weights == 0 {
		return 0, nil
	}
	return total / weights, nil
}

// allocation returns what the node would have requested with the pod on it, and its
// allocatable; cpu and memory count requests with the scoring defaults.
func allocation(name corev1.ResourceName, pi *framework.PodInfo, node *framework.NodeInfo) (requested, allocatable int64) {
	switch name {
	case corev1.ResourceCPU:
		return node.NonZeroRequested.MilliCPU + pi.NonZeroRequests.MilliCPU, node.Allocatable.MilliCPU
	case corev1.ResourceMemory:
		return node.NonZeroRequested.Memory + pi.NonZeroRequests.Memory, node.Allocatable.Memory
	case corev1.ResourceEphemeralStorage:
		return node.Requested.EphemeralStorage + pi.Requests.EphemeralStorage, node.Allocatable.EphemeralStorage
	}
	want := pi.Requests.Scalar[name]
	if want == 0 {
		return 0, 0
	}
	if a, ok := node.Allocatable.Scalar[name]; ok {
		return node.Requested.Scalar[name] + want, a
	}
	return 0, 0
}

// ScoreExtensions returns nil: the scores are already in [0, 100].
func (*NodeResourcesFit) ScoreExtensions() framework.ScoreExtensions { return nil }
