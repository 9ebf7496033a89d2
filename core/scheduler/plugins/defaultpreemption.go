package plugins

import (
	"context"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"

	"berth.dev/berth/core/scheduler/framework"
)

// DefaultPreemptionName is the name of the DefaultPreemption plugin.
const DefaultPreemptionName = "DefaultPreemption"

// Preemption's reasons, worded as Kubernetes words them.
const (
	ErrReasonPreemptionNotHelpful = "Preemption is not helpful for scheduling"
	ErrReasonNoVictims            = "No preemption victims found for incoming pod"
)

// PreemptionHandle is what preemption needs of the scheduler: the snapshot of the cycle,
// a way to re-run the profile's filters on a changed node, and to evict the victims.
type PreemptionHandle interface {
	Snapshot() framework.NodeLister
	RunFilter(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) *framework.Status
	// Evict deletes a victim to make room for the preemptor on node.
	Evict(ctx context.Context, victim, preemptor *corev1.Pod, node string) error
	// RunPreFilterExtensionAddPod and RunPreFilterExtensionRemovePod keep the PreFilter
	// plugins' cycle state in step with the dry run's changes to a node.
	RunPreFilterExtensionAddPod(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, add *framework.PodInfo, node *framework.NodeInfo) *framework.Status
	RunPreFilterExtensionRemovePod(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, remove *framework.PodInfo, node *framework.NodeInfo) *framework.Status
}

// DefaultPreemption makes room for a pod that fits no node by evicting pods of lower
// priority from the node where that costs least. PodDisruptionBudgets and the nominated
// pods' reservations are not honoured yet.
type DefaultPreemption struct {
	handle PreemptionHandle
}

// NewDefaultPreemption returns the plugin working through handle.
func NewDefaultPreemption(h PreemptionHandle) *DefaultPreemption {
	return &DefaultPreemption{handle: h}
}

// Name returns DefaultPreemptionName.
func (*DefaultPreemption) Name() string { return DefaultPreemptionName }

type preemptionCandidate struct {
	node    string
	victims []*corev1.Pod
}

// PostFilter looks for a node where evicting lower-priority pods lets the pod fit; it
// evicts them and nominates the node, or explains why no node would do.
func (p *DefaultPreemption) PostFilter(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, statuses *framework.NodeToStatus) (*framework.PostFilterResult, *framework.Status) {
	if pod.Spec.PreemptionPolicy != nil && *pod.Spec.PreemptionPolicy == corev1.PreemptNever {
		return nil, framework.NewStatus(framework.Unschedulable, "preemption: not eligible due to preemptionPolicy=Never.")
	}
	all := p.handle.Snapshot().List()
	// Only nodes that rejected the pod as Unschedulable (not Unresolvable) may change
	// their mind once pods leave them.
	potential := statuses.NodesWithCode(all, framework.Unschedulable)
	result := framework.NewNodeToStatus()
	var candidates []preemptionCandidate
	for _, n := range potential {
		victims, s := p.selectVictims(ctx, state, pod, n)
		if s.IsSuccess() {
			candidates = append(candidates, preemptionCandidate{node: n.Name(), victims: victims})
		} else {
			result.Set(n.Name(), s)
		}
	}
	if len(candidates) == 0 {
		result.SetAbsentStatus(framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonPreemptionNotHelpful))
		fit := &framework.FitError{Pod: pod, NumAllNodes: len(all), Diagnosis: framework.Diagnosis{NodeToStatus: result}}
		return &framework.PostFilterResult{}, framework.NewStatus(framework.Unschedulable, "preemption: "+fit.Error())
	}
	best := pickCandidate(candidates)
	for _, v := range best.victims {
		if err := p.handle.Evict(ctx, v, pod, best.node); err != nil && !apierrors.IsNotFound(err) {
			return nil, framework.AsStatus(fmt.Errorf("preemption: evict pod %s/%s: %w", v.Namespace, v.Name, err))
		}
	}
	return &framework.PostFilterResult{NominatedNodeName: best.node}, nil
}

// selectVictims removes every lower-priority pod from a copy of the node, checks that the
// pod then fits, and gives back as many of them as still leave room, most important first.
func (p *DefaultPreemption) selectVictims(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, n *framework.NodeInfo) ([]*corev1.Pod, *framework.Status) {
	node := n.Clone()
	// The dry run changes the plugins' precomputed state (inter-pod counts ...) along
	// with the node, on a copy.
	state = state.Clone()
	prio := corev1helpers.PodPriority(pod)
	var lower []*framework.PodInfo
	for _, pi := range n.Pods {
		if corev1helpers.PodPriority(pi.Pod) < prio {
			lower = append(lower, pi)
			node.RemovePod(pi.Pod)
			if s := p.handle.RunPreFilterExtensionRemovePod(ctx, state, pod, pi, node); !s.IsSuccess() {
				return nil, s
			}
		}
	}
	if len(lower) == 0 {
		return nil, framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonNoVictims)
	}
	if s := p.handle.RunFilter(ctx, state, pod, node); !s.IsSuccess() {
		return nil, s
	}
	sort.SliceStable(lower, func(i, j int) bool { return moreImportant(lower[i].Pod, lower[j].Pod) })
	var victims []*corev1.Pod
	for _, pi := range lower {
		node.AddPodInfo(pi)
		if s := p.handle.RunPreFilterExtensionAddPod(ctx, state, pod, pi, node); !s.IsSuccess() {
			return nil, s
		}
		if !p.handle.RunFilter(ctx, state, pod, node).IsSuccess() {
			node.RemovePod(pi.Pod)
			if s := p.handle.RunPreFilterExtensionRemovePod(ctx, state, pod, pi, node); !s.IsSuccess() {
				return nil, s
			}
			victims = append(victims, pi.Pod)
		}
	}
	return victims, nil
}

// moreImportant orders pods by priority, then the earlier started first.
func moreImportant(a, b *corev1.Pod) bool {
	pa, pb := corev1helpers.PodPriority(a), corev1helpers.PodPriority(b)
	if pa != pb {
		return pa > pb
	}
	return startTime(a).Before(startTime(b))
}

func startTime(p *corev1.Pod) *metav1.Time {
	if p.Status.StartTime != nil {
		return p.Status.StartTime
	}
	return &p.CreationTimestamp
}

// pickCandidate prefers the node whose most important victim matters least, then the
// lowest sum of victim priorities, then the fewest victims.
func pickCandidate(cs []preemptionCandidate) preemptionCandidate {
	key := func(c preemptionCandidate) (int32, int64, int) {
		highest := int32(-1 << 31)
		var sum int64
		for _, v := range c.victims {
			pr := corev1helpers.PodPriority(v)
			highest = max(highest, pr)
			// Shift so negative priorities still add up to a positive amount, as Kubernetes does.
			sum += int64(pr) + (1 << 31) + 1
		}
		return highest, sum, len(c.victims)
	}
	best := cs[0]
	bh, bs, bn := key(best)
	for _, c := range cs[1:] {
		h, s, n := key(c)
		if h < bh || (h == bh && (s < bs || (s == bs && n < bn))) {
			best, bh, bs, bn = c, h, s, n
		}
	}
	return best
}
