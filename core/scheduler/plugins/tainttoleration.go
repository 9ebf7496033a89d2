package plugins

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"

	"berth.dev/berth/core/scheduler/framework"
)

// TaintTolerationName is the name of the TaintToleration plugin.
const TaintTolerationName = "TaintToleration"

// TaintToleration keeps pods off nodes with NoSchedule or NoExecute taints they do not
// tolerate, and prefers nodes with fewer untolerated PreferNoSchedule taints.
type TaintToleration struct{}

// Name returns TaintTolerationName.
func (TaintToleration) Name() string { return TaintTolerationName }

// Filter rejects a node with an untolerated NoSchedule or NoExecute taint, naming it.
func (TaintToleration) Filter(_ context.Context, _ *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) *framework.Status {
	taint, untolerated := corev1helpers.FindMatchingUntoleratedTaint(node.Node().Spec.Taints, pod.Spec.Tolerations, func(t *corev1.Taint) bool {
		return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
	})
	if !untolerated {
		return nil
	}
	return framework.NewStatus(framework.UnschedulableAndUnresolvable, fmt.Sprintf("node(s) had untolerated taint {%s: %s}", taint.Key, taint.Value))
}

const taintTolerationKey framework.StateKey = "PreScore" + TaintTolerationName

// preferTolerations are the pod's tolerations that can tolerate PreferNoSchedule taints.
type preferTolerations []corev1.Toleration

func (p preferTolerations) Clone() framework.StateData { return p }

// PreScore keeps the pod's tolerations with effect PreferNoSchedule or none.
func (TaintToleration) PreScore(_ context.Context, state *framework.CycleState, pod *corev1.Pod, _ []*framework.NodeInfo) *framework.Status {
	var tols preferTolerations
	for _, t := range pod.Spec.Tolerations {
		if t.Effect == "" || t.Effect == corev1.TaintEffectPreferNoSchedule {
			tols = append(tols, t)
		}
	}
	state.Write(taintTolerationKey, tols)
	return nil
}

// Score counts the node's untolerated PreferNoSchedule taints (NormalizeScore reverses it).
func (TaintToleration) Score(_ context.Context, state *framework.CycleState, _ *corev1.Pod, node *framework.NodeInfo) (int64, *framework.Status) {
	d, err := state.Read(taintTolerationKey)
	if err != nil {
		return 0, framework.AsStatus(err)
	}
	tols := d.(preferTolerations)
	var n int64
	for i := range node.Node().Spec.Taints {
		t := &node.Node().Spec.Taints[i]
		if t.Effect == corev1.TaintEffectPreferNoSchedule && !corev1helpers.TolerationsTolerateTaint(tols, t) {
			n++
		}
	}
	return n, nil
}

// ScoreExtensions returns the plugin itself: its counts need reversing.
func (p TaintToleration) ScoreExtensions() framework.ScoreExtensions { return p }

// NormalizeScore gives the node with the fewest untolerated taints the highest score.
func (TaintToleration) NormalizeScore(_ context.Context, _ *framework.CycleState, _ *corev1.Pod, scores []framework.NodeScore) *framework.Status {
	normalize(scores, true)
	return nil
}
