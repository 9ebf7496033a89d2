package plugins

import (
	"fmt"
	"sort"

	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"

	"berth.dev/berth/core/scheduler/framework"
)

// DefaultSchedulerName is the profile pods get when spec.schedulerName is empty.
const DefaultSchedulerName = "default-scheduler"

// DefaultOptions is what the in-tree plugins need from the scheduler.
type DefaultOptions struct {
	// Client binds pods (DefaultBinder).
	Client kubernetes.Interface
	// Preemption lets DefaultPreemption re-run filters and evict; nil leaves it out of
	// DefaultProfile.
	Preemption PreemptionHandle
	// Snapshot is the nodes of the current cycle (InterPodAffinity, PodTopologySpread);
	// an empty cluster when nil.
	Snapshot framework.NodeLister
	// Namespaces resolve namespaceSelectors (InterPodAffinity); nil: no namespace has labels.
	Namespaces corelisters.NamespaceLister
	// Spread are what PodTopologySpread builds default selectors from.
	Spread SpreadListers
	// Scoring is NodeResourcesFit's strategy (LeastAllocated when empty); Args override it.
	Scoring ScoringStrategy
	// Volumes are what VolumeBinding reads; without them it rejects pods with claims.
	Volumes VolumeListers
}

// NodeResourcesFitArgs are NodeResourcesFit's arguments (kube-scheduler's scoringStrategy).
type NodeResourcesFitArgs struct {
	// Strategy is LeastAllocated (the default) or MostAllocated.
	Strategy ScoringStrategy
	// Resources are scored with their weights (cpu and memory, 1 each, when empty).
	Resources []ResourceWeight
}

// Factory makes one in-tree plugin from its arguments (nil for the defaults, else the
// plugin's *...Args type).
type Factory func(args any, o DefaultOptions) (framework.Plugin, error)

// emptyLister is the snapshot of plugins made without one: no nodes.
type emptyLister struct{}

func (emptyLister) List() []*framework.NodeInfo    { return nil }
func (emptyLister) Get(string) *framework.NodeInfo { return nil }
func snapshotOf(o DefaultOptions) framework.NodeLister {
	if o.Snapshot == nil {
		return emptyLister{}
	}
	return o.Snapshot
}

func noArgs(name string, make func(DefaultOptions) framework.Plugin) Factory {
	return func(args any, o DefaultOptions) (framework.Plugin, error) {
		if args != nil {
			return nil, fmt.Errorf("plugin %s takes no arguments", name)
		}
		return make(o), nil
	}
}

// registry lists every in-tree plugin by name.
var registry = map[string]Factory{
	PrioritySortName:      noArgs(PrioritySortName, func(DefaultOptions) framework.Plugin { return PrioritySort{} }),
	NodeUnschedulableName: noArgs(NodeUnschedulableName, func(DefaultOptions) framework.Plugin { return NodeUnschedulable{} }),
	NodeNameName:          noArgs(NodeNameName, func(DefaultOptions) framework.Plugin { return NodeName{} }),
	TaintTolerationName:   noArgs(TaintTolerationName, func(DefaultOptions) framework.Plugin { return TaintToleration{} }),
	NodeAffinityName:      noArgs(NodeAffinityName, func(DefaultOptions) framework.Plugin { return NodeAffinity{} }),
	NodePortsName:         noArgs(NodePortsName, func(DefaultOptions) framework.Plugin { return NodePorts{} }),
	NodeResourcesFitName: func(args any, o DefaultOptions) (framework.Plugin, error) {
		a := NodeResourcesFitArgs{Strategy: o.Scoring}
		if args != nil {
			p, ok := args.(*NodeResourcesFitArgs)
			if !ok {
				return nil, fmt.Errorf("plugin %s: arguments of type %T, want *NodeResourcesFitArgs", NodeResourcesFitName, args)
			}
			a = *p
		}
		return NewNodeResourcesFit(a.Strategy, a.Resources...)
	},
	PodTopologySpreadName: func(args any, o DefaultOptions) (framework.Plugin, error) {
		var a PodTopologySpreadArgs
		if args != nil {
			p, ok := args.(*PodTopologySpreadArgs)
			if !ok {
				return nil, fmt.Errorf("plugin %s: arguments of type %T, want *PodTopologySpreadArgs", PodTopologySpreadName, args)
			}
			a = *p
		}
		return NewPodTopologySpread(a, snapshotOf(o), o.Spread)
	},
	InterPodAffinityName: func(args any, o DefaultOptions) (framework.Plugin, error) {
		a := DefaultInterPodAffinityArgs()
		if args != nil {
			p, ok := args.(*InterPodAffinityArgs)
			if !ok {
				return nil, fmt.Errorf("plugin %s: arguments of type %T, want *InterPodAffinityArgs", InterPodAffinityName, args)
			}
			a = *p
		}
		return NewInterPodAffinity(a, snapshotOf(o), o.Namespaces)
	},
	DefaultPreemptionName: noArgs(DefaultPreemptionName, func(o DefaultOptions) framework.Plugin { return NewDefaultPreemption(o.Preemption) }),
	DefaultBinderName:     noArgs(DefaultBinderName, func(o DefaultOptions) framework.Plugin { return NewDefaultBinder(o.Client) }),
	VolumeBindingName:     noArgs(VolumeBindingName, func(o DefaultOptions) framework.Plugin { return NewVolumeBinding(o.Client, o.Volumes) }),
}

// New makes the in-tree plugin called name.
func New(name string, args any, o DefaultOptions) (framework.Plugin, error) {
	f, ok := registry[name]
	if !ok {
		return nil, fmt.Errorf("unknown plugin %q", name)
	}
	return f(args, o)
}

// Names lists the in-tree plugins, sorted.
func Names() []string {
	out := make([]string, 0, len(registry))
	for n := range registry {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// IsInTree reports whether name is an in-tree plugin.
func IsInTree(name string) bool {
	_, ok := registry[name]
	return ok
}

// PluginWeight is a plugin of the default profile with its Score weight (0 for a plugin
// that does not score).
type PluginWeight struct {
	Name   string
	Weight int64
}

// DefaultPlugins are kube-scheduler 1.33's default plugins as far as berth has them, in
// its order and with its Score weights.
func DefaultPlugins() []PluginWeight {
	return []PluginWeight{
		{PrioritySortName, 0},
		{NodeUnschedulableName, 0},
		{NodeNameName, 0},
		{TaintTolerationName, 3},
		{NodeAffinityName, 2},
		{NodePortsName, 0},
		{NodeResourcesFitName, 1},
		{VolumeBindingName, 0},
		{PodTopologySpreadName, 2},
		{InterPodAffinityName, 2},
		{DefaultPreemptionName, 0},
		{DefaultBinderName, 0},
	}
}

// DefaultProfile returns the default profile: DefaultPlugins at every extension point
// each implements (DefaultPreemption only when o.Preemption is set).
func DefaultProfile(name string, o DefaultOptions) (framework.Profile, error) {
	var list []framework.Plugin
	weights := map[string]int64{}
	for _, d := range DefaultPlugins() {
		if d.Name == DefaultPreemptionName && o.Preemption == nil {
			continue
		}
		pl, err := New(d.Name, nil, o)
		if err != nil {
			return framework.Profile{}, err
		}
		list = append(list, pl)
		if d.Weight > 0 {
			weights[d.Name] = d.Weight
		}
	}
	return framework.ProfileFromPlugins(name, list, weights), nil
}
