package plugins

import (
	"k8s.io/client-go/kubernetes"

	"berth.dev/berth/core/scheduler/framework"
)

// DefaultSchedulerName is the profile pods get when spec.schedulerName is empty.
const DefaultSchedulerName = "default-scheduler"

// DefaultOptions is what the default plugins need from the scheduler.
type DefaultOptions struct {
	// Client binds pods (DefaultBinder).
	Client kubernetes.Interface
	// Preemption lets DefaultPreemption re-run filters and evict; nil leaves it out.
	Preemption PreemptionHandle
	// Scoring is NodeResourcesFit's strategy (LeastAllocated when empty).
	Scoring ScoringStrategy
}

// DefaultProfile returns Kubernetes' default profile as far as berth has its plugins, in
// Kubernetes' order and with its Score weights (TaintToleration 3, NodeAffinity 2,
// NodeResourcesFit 1).
func DefaultProfile(name string, o DefaultOptions) (framework.Profile, error) {
	fit, err := NewNodeResourcesFit(o.Scoring)
	if err != nil {
		return framework.Profile{}, err
	}
	list := []framework.Plugin{
		PrioritySort{},
		NodeUnschedulable{},
		NodeName{},
		TaintToleration{},
		NodeAffinity{},
		NodePorts{},
		fit,
	}
	if o.Preemption != nil {
		list = append(list, NewDefaultPreemption(o.Preemption))
	}
	list = append(list, NewDefaultBinder(o.Client))
	weights := map[string]int64{TaintTolerationName: 3, NodeAffinityName: 2, NodeResourcesFitName: 1}
	return framework.ProfileFromPlugins(name, list, weights), nil
}
