package framework

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Opportunistic batching, as Kubernetes has it since 1.35 (KEP-5598, with rescoring): a
// workload's pods arrive one after another and are alike for every plugin. After a full
// cycle, the framework keeps the feasible nodes with their scores; the next pod with the
// same signature, in the very next scheduling cycle and within maxBatchAge, reuses them.
// Only the node the previous pod went to has changed: it is filtered and scored again
// (by the plugins without NormalizeScore, whose scores follow a node's own pods; the
// normalized ones, such as taints and node affinity, do not move when an alike pod is
// added), and the best node of the list is checked with every Filter plugin on the
// current snapshot before the pod goes there. So the pod lands only on a node that fits
// it now, and its scores are at most maxBatchAge old, as in Kubernetes. An out-of-process
// plugin takes part when it declared a pod signature; its scores then cost nothing for
// the batched pods.

// maxBatchAge bounds how long one full cycle's filtering and scoring are reused
// (Kubernetes' value).
const maxBatchAge = 500 * time.Millisecond

// maxBatchMisses is how many cached nodes a batched cycle may find no longer fitting
// before it gives up and runs a full cycle.
const maxBatchMisses = 3

// batchNode is a feasible node of the batch's full cycle with its weighted scores.
type batchNode struct {
	name   string
	scores []int64 // weighted, one per Score plugin of batchState.plugins
	total  int64
}

// batchState is what a full cycle left for the pods after it.
type batchState struct {
	signature string
	created   time.Time
	cycle     int64  // the scheduling cycle of the last pod placed from it
	host      string // where that pod went
	changes   int64  // the cluster's count of others' changes in that cycle
	plugins   []WeightedScorePlugin
	// totals and flat (weighted scores, node-major) are the full cycle's, as scored; ready
	// turns them into nodes, best total first, when an alike pod comes.
	totals []NodeTotalScore
	flat   []int64
	nodes  []batchNode
}

// ready sorts the full cycle's nodes, best first, the first time the batch is used.
func (b *batchState) ready() {
	if b.totals == nil {
		return
	}
	order := make([]int32, len(b.totals))
	for i := range order {
		order[i] = int32(i)
	}
	// An index sort: moving the nodes themselves (a string and a slice each) cost a
	// third of a millisecond a cycle at 500 nodes.
	slices.SortStableFunc(order, func(x, y int32) int { return cmp.Compare(b.totals[y].Score, b.totals[x].Score) })
	k := len(b.plugins)
	b.nodes = make([]batchNode, len(order))
	for j, i := range order {
		b.nodes[j] = batchNode{name: b.totals[i].Name, total: b.totals[i].Score, scores: b.flat[int(i)*k : int(i+1)*k : int(i+1)*k]}
	}
	b.totals, b.flat = nil, nil
}

// baseSignature is what of a pod the in-tree plugins read; pods that agree on it (and on
// the plugins' fragments) are alike for scheduling.
type baseSignature struct {
	Namespace        string                            `json:"ns,omitempty"`
	Labels           map[string]string                 `json:"labels,omitempty"`
	NodeName         string                            `json:"nodeName,omitempty"`
	NodeSelector     map[string]string                 `json:"nodeSelector,omitempty"`
	Affinity         *corev1.Affinity                  `json:"affinity,omitempty"`
	Tolerations      []corev1.Toleration               `json:"tolerations,omitempty"`
	Containers       []containerSignature              `json:"containers,omitempty"`
	InitContainers   []containerSignature              `json:"initContainers,omitempty"`
	Overhead         corev1.ResourceList               `json:"overhead,omitempty"`
	Resources        *corev1.ResourceRequirements      `json:"resources,omitempty"`
	Priority         *int32                            `json:"priority,omitempty"`
	PreemptionPolicy *corev1.PreemptionPolicy          `json:"preemptionPolicy,omitempty"`
	HostNetwork      bool                              `json:"hostNetwork,omitempty"`
	Volumes          []corev1.Volume                   `json:"volumes,omitempty"`
	TopologySpread   []corev1.TopologySpreadConstraint `json:"spread,omitempty"`
	RuntimeClassName *string                           `json:"runtimeClass,omitempty"`
	SchedulingGates  []corev1.PodSchedulingGate        `json:"gates,omitempty"`
}

type containerSignature struct {
	Resources     corev1.ResourceRequirements    `json:"resources"`
	Ports         []corev1.ContainerPort         `json:"ports,omitempty"`
	RestartPolicy *corev1.ContainerRestartPolicy `json:"restartPolicy,omitempty"`
}

func containerSignatures(cs []corev1.Container) []containerSignature {
	out := make([]containerSignature, len(cs))
	for i, c := range cs {
		out[i] = containerSignature{Resources: c.Resources, Ports: c.Ports, RestartPolicy: c.RestartPolicy}
	}
	return out
}

// signers returns the plugins a pod's signature asks, each once, or nil when one of the
// plugins that filter or score cannot sign pods: such a profile never batches.
func signers(p Profile) []Signer {
	seen := map[string]bool{}
	var out []Signer
	add := func(pl Plugin) bool {
		if seen[pl.Name()] {
			return true
		}
		seen[pl.Name()] = true
		s, ok := pl.(Signer)
		if ok {
			out = append(out, s)
		}
		return ok
	}
	for _, pl := range p.PreFilter {
		if !add(pl) {
			return nil
		}
	}
	for _, pl := range p.Filter {
		if !add(pl) {
			return nil
		}
	}
	for _, pl := range p.PreScore {
		if !add(pl) {
			return nil
		}
	}
	for _, pl := range p.Score {
		if !add(pl.Plugin) {
			return nil
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// SignPod returns the pod's scheduling signature in this profile, and false when the pod
// cannot be batched (the profile or one of its plugins does not allow it).
func (f *Framework) SignPod(pod *corev1.Pod) (string, bool) {
	if f.signers == nil {
		return "", false
	}
	base := baseSignature{
		Namespace:        pod.Namespace,
		Labels:           pod.Labels,
		NodeName:         pod.Spec.NodeName,
		NodeSelector:     pod.Spec.NodeSelector,
		Affinity:         pod.Spec.Affinity,
		Tolerations:      pod.Spec.Tolerations,
		Containers:       containerSignatures(pod.Spec.Containers),
		InitContainers:   containerSignatures(pod.Spec.InitContainers),
		Overhead:         pod.Spec.Overhead,
		Resources:        pod.Spec.Resources,
		Priority:         pod.Spec.Priority,
		PreemptionPolicy: pod.Spec.PreemptionPolicy,
		HostNetwork:      pod.Spec.HostNetwork,
		Volumes:          pod.Spec.Volumes,
		TopologySpread:   pod.Spec.TopologySpreadConstraints,
		RuntimeClassName: pod.Spec.RuntimeClassName,
		SchedulingGates:  pod.Spec.SchedulingGates,
	}
	b, err := json.Marshal(base)
	if err != nil {
		return "", false
	}
	var sig strings.Builder
	sig.Write(b)
	for _, s := range f.signers {
		frag, ok := s.SignPod(pod)
		if !ok {
			return "", false
		}
		if frag != "" {
			sig.WriteByte(0)
			sig.WriteString(s.(Plugin).Name())
			sig.WriteByte(0)
			sig.WriteString(frag)
		}
	}
	return sig.String(), true
}

// BatchedPods counts the pods placed from a batch rather than by a full cycle.
func (f *Framework) BatchedPods() int64 { return f.batched.Load() }

// ForgetBatch drops the batch: the pod placed last did not get its node after all.
func (f *Framework) ForgetBatch() {
	f.batchMu.Lock()
	f.batch = nil
	f.batchMu.Unlock()
}

// ScheduleInCycle is SchedulePod for the scheduler's cycle number cycle, over the nodes of
// snapshot, with opportunistic batching: a pod alike to the one placed in the previous
// cycle, with nothing changed in the cluster since but that placement (changes, the
// count of others' changes the snapshot was taken at, is the same), reuses that cycle's
// filtering and scoring (see the top of this file); any other pod gets a full cycle,
// which may start a batch.
func (f *Framework) ScheduleInCycle(ctx context.Context, state *CycleState, pod *corev1.Pod, snapshot NodeLister, cycle, changes int64) (ScheduleResult, error) {
	sig, ok := f.SignPod(pod)
	f.batchMu.Lock()
	defer f.batchMu.Unlock()
	b := f.batch
	f.batch = nil
	if ok && b != nil && b.signature == sig && b.cycle == cycle-1 && b.changes == changes && f.now().Sub(b.created) <= maxBatchAge {
		if r, done, err := f.fromBatch(ctx, state, pod, snapshot, b); err != nil || done {
			if done {
				b.cycle, b.host = cycle, r.SuggestedHost
				f.batch = b
				f.batched.Add(1)
			}
			return r, err
		}
		// The batch no longer answers: a full cycle on a fresh state.
		state.reset()
	}
	var keep *batchState
	if ok {
		keep = &batchState{signature: sig, created: f.now(), cycle: cycle, changes: changes}
	}
	r, err := f.schedule(ctx, state, pod, snapshot.List(), keep)
	if err == nil && keep != nil && keep.host != "" {
		// Scored (more than one node fit): the next alike pod starts from here.
		f.batch = keep
	}
	return r, err
}

// fromBatch places pod from the batch: the last host filtered and scored again, then the
// best node that passes every Filter plugin now. done is false when the batch cannot
// answer (the caller then runs a full cycle).
func (f *Framework) fromBatch(ctx context.Context, state *CycleState, pod *corev1.Pod, snapshot NodeLister, b *batchState) (ScheduleResult, bool, error) {
	pre, s := f.RunPreFilter(ctx, state, pod)
	if !s.IsSuccess() || !pre.AllNodes() {
		return ScheduleResult{}, false, nil
	}
	filters := f.activeFilters(state)
	state.filters.Store(&filters)
	b.ready()
	evaluated := 0
	if i := b.index(b.host); i >= 0 {
		evaluated++
		node := snapshot.Get(b.host)
		if node == nil || node.Node() == nil || !f.RunFilter(ctx, state, pod, node).IsSuccess() {
			b.remove(i)
		} else if err := f.rescore(ctx, state, pod, node, b, i); err != nil {
			return ScheduleResult{}, false, err
		}
	}
	for misses := 0; len(b.nodes) > 0 && misses < maxBatchMisses; {
		i := b.pick()
		name := b.nodes[i].name
		if name == b.host {
			return ScheduleResult{SuggestedHost: name, EvaluatedNodes: evaluated, FeasibleNodes: len(b.nodes)}, true, nil
		}
		evaluated++
		node := snapshot.Get(name)
		if node != nil && node.Node() != nil && f.RunFilter(ctx, state, pod, node).IsSuccess() {
			return ScheduleResult{SuggestedHost: name, EvaluatedNodes: evaluated, FeasibleNodes: len(b.nodes)}, true, nil
		}
		b.remove(i)
		misses++
	}
	return ScheduleResult{}, false, nil
}

// rescore scores node (the batch's i-th) again with the plugins whose scores follow the
// node's own pods: those without NormalizeScore. The normalized ones (and RelativeScorers)
// keep their scores.
func (f *Framework) rescore(ctx context.Context, state *CycleState, pod *corev1.Pod, node *NodeInfo, b *batchState, i int) error {
	again := map[string]bool{}
	for _, p := range b.plugins {
		if r, ok := p.Plugin.(RelativeScorer); ok && r.ScoresAreRelative() {
			continue
		}
		if p.Plugin.ScoreExtensions() == nil {
			again[p.Plugin.Name()] = true
		}
	}
	if len(again) == 0 {
		return nil
	}
	one := []*NodeInfo{node}
	for _, pl := range f.profile.PreScore {
		if !again[pl.Name()] {
			continue
		}
		if s := pl.PreScore(ctx, state, pod, one); !s.IsSuccess() && !s.IsSkip() {
			return fmt.Errorf("running PreScore plugin %q: %w", pl.Name(), s.AsError())
		}
	}
	n := b.nodes[i]
	for k, p := range b.plugins {
		if !again[p.Plugin.Name()] {
			continue
		}
		v, s := p.Plugin.Score(ctx, state, pod, node)
		if !s.IsSuccess() {
			return fmt.Errorf("running Score plugin %q: %w", p.Plugin.Name(), s.AsError())
		}
		if v < MinNodeScore || v > MaxNodeScore {
			return fmt.Errorf("plugin %q returned an invalid score %v for node %q, want [%d, %d]", p.Plugin.Name(), v, node.Name(), MinNodeScore, MaxNodeScore)
		}
		n.total += v*p.Weight - n.scores[k]
		n.scores[k] = v * p.Weight
	}
	b.remove(i)
	b.insert(n)
	return nil
}

// index returns the position of the named node in the list, or -1.
func (b *batchState) index(name string) int {
	for i := range b.nodes {
		if b.nodes[i].name == name {
			return i
		}
	}
	return -1
}

func (b *batchState) remove(i int) { b.nodes = append(b.nodes[:i], b.nodes[i+1:]...) }

// insert puts n after the nodes that score at least as high.
func (b *batchState) insert(n batchNode) {
	i := sort.Search(len(b.nodes), func(i int) bool { return b.nodes[i].total < n.total })
	b.nodes = append(b.nodes, batchNode{})
	copy(b.nodes[i+1:], b.nodes[i:])
	b.nodes[i] = n
}

// pick returns one of the best-scoring nodes, uniformly at random among ties, as
// SelectHost breaks them.
func (b *batchState) pick() int {
	ties := 1
	for ties < len(b.nodes) && b.nodes[ties].total == b.nodes[0].total {
		ties++
	}
	return rand.IntN(ties)
}
