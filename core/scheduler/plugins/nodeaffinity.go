package plugins

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"

	"berth.dev/berth/core/scheduler/framework"
)

// NodeAffinityName is the name of the NodeAffinity plugin.
const NodeAffinityName = "NodeAffinity"

// NodeAffinity's Filter reasons.
const (
	ErrReasonNodeAffinity = "node(s) didn't match Pod's node affinity/selector"
	errReasonConflict     = "pod affinity terms conflict"
)

// NodeAffinity enforces spec.nodeSelector and the required node affinity, and prefers the
// nodes that match more of the preferred terms' weight.
type NodeAffinity struct{}

// Name returns NodeAffinityName.
func (NodeAffinity) Name() string { return NodeAffinityName }

const (
	nodeAffinityFilterKey framework.StateKey = "PreFilter" + NodeAffinityName
	nodeAffinityScoreKey  framework.StateKey = "PreScore" + NodeAffinityName
)

type requiredAffinity struct {
	nodeaffinity.RequiredNodeAffinity
}

func (r *requiredAffinity) Clone() framework.StateData { return r }

type preferredAffinity struct {
	*nodeaffinity.PreferredSchedulingTerms
}

func (p *preferredAffinity) Clone() framework.StateData { return p }

// PreFilter skips the plugin for a pod without selector or required affinity, and narrows
// the nodes to those named by metadata.name match fields.
func (NodeAffinity) PreFilter(_ context.Context, state *framework.CycleState, pod *corev1.Pod) (*framework.PreFilterResult, *framework.Status) {
	a := pod.Spec.Affinity
	noAffinity := a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil
	if noAffinity && pod.Spec.NodeSelector == nil {
		return nil, framework.NewStatus(framework.Skip)
	}
	state.Write(nodeAffinityFilterKey, &requiredAffinity{nodeaffinity.GetRequiredNodeAffinity(pod)})
	if noAffinity {
		return nil, nil
	}
	var names sets.Set[string]
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		var termNames sets.Set[string]
		for _, r := range term.MatchFields {
			if r.Key == metav1.ObjectNameField && r.Operator == corev1.NodeSelectorOpIn {
				if termNames == nil {
					termNames = sets.New(r.Values...)
				} else {
					termNames = termNames.Intersection(sets.New(r.Values...))
				}
			}
		}
		if termNames == nil {
			return nil, nil // terms are ORed: this one allows any node name
		}
		names = names.Union(termNames)
	}
	if names != nil && names.Len() == 0 {
		return nil, framework.NewStatus(framework.UnschedulableAndUnresolvable, errReasonConflict)
	}
	if names.Len() > 0 {
		return &framework.PreFilterResult{NodeNames: names}, nil
	}
	return nil, nil
}

// Filter rejects a node that the selector or the required affinity does not match.
func (NodeAffinity) Filter(_ context.Context, state *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) *framework.Status {
	var req nodeaffinity.RequiredNodeAffinity
	if d, err := state.Read(nodeAffinityFilterKey); err == nil {
		req = d.(*requiredAffinity).RequiredNodeAffinity
	} else {
		req = nodeaffinity.GetRequiredNodeAffinity(pod)
	}
	// Match errs only on selectors that validation would have refused; such a
	// selector matches nothing.
	if ok, _ := req.Match(node.Node()); !ok {
		return framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonNodeAffinity)
	}
	return nil
}

// PreScore parses the preferred terms once; a pod without them skips Score.
func (NodeAffinity) PreScore(_ context.Context, state *framework.CycleState, pod *corev1.Pod, _ []*framework.NodeInfo) *framework.Status {
	a := pod.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || len(a.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution) == 0 {
		return framework.NewStatus(framework.Skip)
	}
	terms, err := nodeaffinity.NewPreferredSchedulingTerms(a.NodeAffinity.PreferredDuringSchedulingIgnoredDuringExecution)
	if err != nil {
		return framework.AsStatus(fmt.Errorf("parse the preferred node affinity of pod %s/%s: %w", pod.Namespace, pod.Name, err))
	}
	state.Write(nodeAffinityScoreKey, &preferredAffinity{terms})
	return nil
}

// Score sums the weights of the preferred terms the node matches.
func (NodeAffinity) Score(_ context.Context, state *framework.CycleState, _ *corev1.Pod, node *framework.NodeInfo) (int64, *framework.Status) {
	d, err := state.Read(nodeAffinityScoreKey)
	if err != nil {
		return 0, framework.AsStatus(err)
	}
	return d.(*preferredAffinity).Score(node.Node()), nil
}

// ScoreExtensions returns the plugin itself: weights are rescaled to the best node.
func (p NodeAffinity) ScoreExtensions() framework.ScoreExtensions { return p }

// NormalizeScore rescales the sums so that the best node scores MaxNodeScore.
func (NodeAffinity) NormalizeScore(_ context.Context, _ *framework.CycleState, _ *corev1.Pod, scores []framework.NodeScore) *framework.Status {
	normalize(scores, false)
	return nil
}
