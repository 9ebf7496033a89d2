package plugins

import (
	"context"
	"fmt"
	"math"
	"sync"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"

	"berth.dev/berth/core/scheduler/framework"
)

// InterPodAffinityName is the name of the InterPodAffinity plugin.
const InterPodAffinityName = "InterPodAffinity"

// InterPodAffinity's Filter reasons, worded as kube-scheduler 1.33 words them.
const (
	ErrReasonAffinityRulesNotMatch             = "node(s) didn't match pod affinity rules"
	ErrReasonAntiAffinityRulesNotMatch         = "node(s) didn't match pod anti-affinity rules"
	ErrReasonExistingAntiAffinityRulesNotMatch = "node(s) didn't satisfy existing pods anti-affinity rules"
)

// InterPodAffinityArgs are the plugin's arguments (kube-scheduler's InterPodAffinityArgs).
type InterPodAffinityArgs struct {
	// HardPodAffinityWeight is the score weight that an existing pod's required affinity
	// term gives the nodes of its domain when the incoming pod matches it (0 to 100; 1 by
	// default).
	HardPodAffinityWeight int32
	// IgnorePreferredTermsOfExistingPods scores only with the incoming pod's preferred terms.
	IgnorePreferredTermsOfExistingPods bool
}

// DefaultInterPodAffinityArgs are kube-scheduler's defaults.
func DefaultInterPodAffinityArgs() InterPodAffinityArgs {
	return InterPodAffinityArgs{HardPodAffinityWeight: 1}
}

// InterPodAffinity places pods by the labels of the pods already in a topology domain
// (a node, a zone ...): required affinity wants a matching pod in the node's domain,
// required anti-affinity wants none, both ways (an existing pod's anti-affinity keeps
// matching pods out of its domain too); preferred terms score.
type InterPodAffinity struct {
	args       InterPodAffinityArgs
	snapshot   framework.NodeLister
	namespaces corelisters.NamespaceLister
	parallel   int
}

// NewInterPodAffinity returns the plugin reading the cycle's nodes from snapshot and, for
// namespaceSelector, namespaces from the lister (nil: no namespace has labels).
func NewInterPodAffinity(args InterPodAffinityArgs, snapshot framework.NodeLister, namespaces corelisters.NamespaceLister) (*InterPodAffinity, error) {
	if args.HardPodAffinityWeight < 0 || args.HardPodAffinityWeight > 100 {
		return nil, fmt.Errorf("InterPodAffinity: hardPodAffinityWeight %d is out of range [0, 100]", args.HardPodAffinityWeight)
	}
	return &InterPodAffinity{args: args, snapshot: snapshot, namespaces: namespaces, parallel: framework.DefaultParallelism}, nil
}

// Name returns InterPodAffinityName.
func (*InterPodAffinity) Name() string { return InterPodAffinityName }

const (
	interPodFilterKey framework.StateKey = "PreFilter" + InterPodAffinityName
	interPodScoreKey  framework.StateKey = "PreScore" + InterPodAffinityName
)

type topologyPair struct{ key, value string }

// topologyCounts counts matching pods (or terms) per topology domain.
type topologyCounts map[topologyPair]int64

func (m topologyCounts) add(node *corev1.Node, key string, v int64) {
	if val, ok := node.Labels[key]; ok {
		p := topologyPair{key, val}
		m[p] += v
		if m[p] == 0 {
			delete(m, p)
		}
	}
}

func (m topologyCounts) clone() topologyCounts {
	out := make(topologyCounts, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// interPodFilterState is what PreFilter computes once per pod for Filter.
type interPodFilterState struct {
	pod   *corev1.Pod
	terms *framework.PodAffinityTerms
	// nsLabels are the labels of the incoming pod's namespace, for existing pods'
	// namespace selectors.
	nsLabels labels.Set
	// existingAnti counts, per domain, existing pods' required anti-affinity terms that
	// the incoming pod matches; affinity and anti count the existing pods that match the
	// incoming pod's required terms.
	existingAnti, affinity, anti topologyCounts
}

func (s *interPodFilterState) Clone() framework.StateData {
	c := *s
	c.existingAnti, c.affinity, c.anti = s.existingAnti.clone(), s.affinity.clone(), s.anti.clone()
	return &c
}

// matchesAll reports whether pod matches every term (and there is at least one): only then
// does it satisfy a pod's required affinity.
func matchesAll(terms []framework.AffinityTerm, pod *corev1.Pod) bool {
	if len(terms) == 0 {
		return false
	}
	for i := range terms {
		if !terms[i].Matches(pod, nil) {
			return false
		}
	}
	return true
}

// update accounts an existing pod joining (sign 1) or leaving (-1) node.
func (s *interPodFilterState) update(existing *framework.PodInfo, node *corev1.Node, sign int64) {
	if existing.Affinity != nil {
		for i := range existing.Affinity.RequiredAntiAffinity {
			t := &existing.Affinity.RequiredAntiAffinity[i]
			if t.Matches(s.pod, s.nsLabels) {
				s.existingAnti.add(node, t.TopologyKey, sign)
			}
		}
	}
	if matchesAll(s.terms.RequiredAffinity, existing.Pod) {
		for _, t := range s.terms.RequiredAffinity {
			s.affinity.add(node, t.TopologyKey, sign)
		}
	}
	for i := range s.terms.RequiredAntiAffinity {
		t := &s.terms.RequiredAntiAffinity[i]
		if t.Matches(existing.Pod, nil) {
			s.anti.add(node, t.TopologyKey, sign)
		}
	}
}

// incomingTerms parses the incoming pod's terms and resolves their namespace selectors
// into namespace names, once per cycle.
func (pl *InterPodAffinity) incomingTerms(pod *corev1.Pod) (*framework.PodAffinityTerms, error) {
	terms, err := framework.NewPodAffinityTerms(pod)
	if err != nil {
		return nil, err
	}
	if terms == nil {
		return &framework.PodAffinityTerms{}, nil
	}
	resolve := func(t *framework.AffinityTerm) error {
		// An empty selector ({}) selects every namespace and stays as it is; a real one is
		// turned into the names of the namespaces it selects now.
		if t.NamespaceSelector.Empty() {
			return nil
		}
		if pl.namespaces != nil {
			list, err := pl.namespaces.List(t.NamespaceSelector)
			if err != nil {
				return fmt.Errorf("list namespaces for a namespaceSelector: %w", err)
			}
			for _, ns := range list {
				t.Namespaces.Insert(ns.Name)
			}
		}
		t.NamespaceSelector = labels.Nothing()
		return nil
	}
	for i := range terms.RequiredAffinity {
		if err := resolve(&terms.RequiredAffinity[i]); err != nil {
			return nil, err
		}
	}
	for i := range terms.RequiredAntiAffinity {
		if err := resolve(&terms.RequiredAntiAffinity[i]); err != nil {
			return nil, err
		}
	}
	for i := range terms.PreferredAffinity {
		if err := resolve(&terms.PreferredAffinity[i].AffinityTerm); err != nil {
			return nil, err
		}
	}
	for i := range terms.PreferredAntiAffinity {
		if err := resolve(&terms.PreferredAntiAffinity[i].AffinityTerm); err != nil {
			return nil, err
		}
	}
	return terms, nil
}

func (pl *InterPodAffinity) namespaceLabels(ns string) labels.Set {
	if pl.namespaces == nil {
		return nil
	}
	n, err := pl.namespaces.Get(ns)
	if err != nil {
		return nil // as kube-scheduler: a namespace not (yet) known has no labels
	}
	return labels.Merge(n.Labels, nil)
}

// PreFilter counts, over the cluster, the existing pods that the incoming pod's required
// terms match and the existing anti-affinity terms the pod matches, per topology domain.
// A pod without required terms, in a cluster where no existing anti-affinity concerns
// it, skips the plugin: that costs one look at each node's counter.
func (pl *InterPodAffinity) PreFilter(ctx context.Context, state *framework.CycleState, pod *corev1.Pod) (*framework.PreFilterResult, *framework.Status) {
	terms, err := pl.incomingTerms(pod)
	if err != nil {
		return nil, framework.NewStatus(framework.UnschedulableAndUnresolvable, fmt.Sprintf("parsing pod: %v", err))
	}
	hasRequired := len(terms.RequiredAffinity) > 0 || len(terms.RequiredAntiAffinity) > 0
	if c, ok := pl.snapshot.(framework.AffinityCounter); ok && !hasRequired && c.NumPodsWithRequiredAntiAffinity() == 0 {
		return nil, framework.NewStatus(framework.Skip)
	}
	nodes := pl.snapshot.List()
	s := &interPodFilterState{pod: pod, terms: terms, existingAnti: topologyCounts{}, affinity: topologyCounts{}, anti: topologyCounts{}}
	var withAnti []*framework.NodeInfo
	for _, n := range nodes {
		if n.PodsWithRequiredAntiAffinity > 0 {
			withAnti = append(withAnti, n)
		}
	}
	if len(withAnti) == 0 && !hasRequired {
		return nil, framework.NewStatus(framework.Skip)
	}
	s.nsLabels = pl.namespaceLabels(pod.Namespace)
	var mu sync.Mutex
	for _, n := range withAnti {
		for _, pi := range n.Pods {
			if pi.Affinity == nil {
				continue
			}
			for i := range pi.Affinity.RequiredAntiAffinity {
				t := &pi.Affinity.RequiredAntiAffinity[i]
				if t.Matches(pod, s.nsLabels) {
					s.existingAnti.add(n.Node(), t.TopologyKey, 1)
				}
			}
		}
	}
	if hasRequired {
		parallelize(ctx, pl.parallel, len(nodes), func(i int) {
			n := nodes[i]
			local := &interPodFilterState{pod: pod, terms: terms, affinity: topologyCounts{}, anti: topologyCounts{}}
			for _, pi := range n.Pods {
				if matchesAll(terms.RequiredAffinity, pi.Pod) {
					for _, t := range terms.RequiredAffinity {
						local.affinity.add(n.Node(), t.TopologyKey, 1)
					}
				}
				for j := range terms.RequiredAntiAffinity {
					if t := &terms.RequiredAntiAffinity[j]; t.Matches(pi.Pod, nil) {
						local.anti.add(n.Node(), t.TopologyKey, 1)
					}
				}
			}
			if len(local.affinity) == 0 && len(local.anti) == 0 {
				return
			}
			mu.Lock()
			defer mu.Unlock()
			for k, v := range local.affinity {
				s.affinity[k] += v
			}
			for k, v := range local.anti {
				s.anti[k] += v
			}
		})
	}
	if len(s.existingAnti) == 0 && !hasRequired {
		return nil, framework.NewStatus(framework.Skip)
	}
	state.Write(interPodFilterKey, s)
	return nil, nil
}

// AddPod accounts a pod that preemption's dry run puts on a node.
func (pl *InterPodAffinity) AddPod(_ context.Context, state *framework.CycleState, _ *corev1.Pod, add *framework.PodInfo, node *framework.NodeInfo) *framework.Status {
	d, err := state.Read(interPodFilterKey)
	if err != nil {
		return framework.AsStatus(err)
	}
	d.(*interPodFilterState).update(add, node.Node(), 1)
	return nil
}

// RemovePod forgets a pod that preemption's dry run takes off a node.
func (pl *InterPodAffinity) RemovePod(_ context.Context, state *framework.CycleState, _ *corev1.Pod, remove *framework.PodInfo, node *framework.NodeInfo) *framework.Status {
	d, err := state.Read(interPodFilterKey)
	if err != nil {
		return framework.AsStatus(err)
	}
	d.(*interPodFilterState).update(remove, node.Node(), -1)
	return nil
}

// Filter checks, against the counts of PreFilter, the pod's required affinity, its required
// anti-affinity, and the existing pods' anti-affinity, in that order.
func (pl *InterPodAffinity) Filter(_ context.Context, state *framework.CycleState, _ *corev1.Pod, node *framework.NodeInfo) *framework.Status {
	d, err := state.Read(interPodFilterKey)
	if err != nil {
		return framework.AsStatus(err)
	}
	s := d.(*interPodFilterState)
	labels := node.Node().Labels
	if !s.satisfiesAffinity(labels) {
		return framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonAffinityRulesNotMatch)
	}
	if len(s.anti) > 0 {
		for _, t := range s.terms.RequiredAntiAffinity {
			if v, ok := labels[t.TopologyKey]; ok && s.anti[topologyPair{t.TopologyKey, v}] > 0 {
				return framework.NewStatus(framework.Unschedulable, ErrReasonAntiAffinityRulesNotMatch)
			}
		}
	}
	if len(s.existingAnti) > 0 {
		for k, v := range labels {
			if s.existingAnti[topologyPair{k, v}] > 0 {
				return framework.NewStatus(framework.Unschedulable, ErrReasonExistingAntiAffinityRulesNotMatch)
			}
		}
	}
	return nil
}

// satisfiesAffinity: every required term has a matching pod in the node's domain of its
// topology key; or, as Kubernetes allows so that the first pod of a group can start,
// no pod anywhere matches and the pod matches its own terms.
func (s *interPodFilterState) satisfiesAffinity(nodeLabels map[string]string) bool {
	found := true
	for _, t := range s.terms.RequiredAffinity {
		v, ok := nodeLabels[t.TopologyKey]
		if !ok {
			return false
		}
		if s.affinity[topologyPair{t.TopologyKey, v}] <= 0 {
			found = false
		}
	}
	if found {
		return true
	}
	return len(s.affinity) == 0 && matchesAll(s.terms.RequiredAffinity, s.pod)
}

// interPodScoreState holds, per topology key and value, the summed weights of the terms
// that tie the incoming pod to the existing pods there.
type interPodScoreState struct {
	scores map[string]map[string]int64
}

func (s *interPodScoreState) Clone() framework.StateData { return s }

func (s *interPodScoreState) add(node *corev1.Node, key string, w int64) {
	v, ok := node.Labels[key]
	if !ok {
		return
	}
	m := s.scores[key]
	if m == nil {
		m = map[string]int64{}
		s.scores[key] = m
	}
	m[v] += w
}

// PreScore sums the weights of the preferred terms (the pod's, both ways, and the
// existing pods' required affinity at hardPodAffinityWeight) per topology domain. It
// skips when nothing ties the pod to any existing pod.
func (pl *InterPodAffinity) PreScore(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, _ []*framework.NodeInfo) *framework.Status {
	a := pod.Spec.Affinity
	hasPreferred := a != nil && ((a.PodAffinity != nil && len(a.PodAffinity.PreferredDuringSchedulingIgnoredDuringExecution) > 0) ||
		(a.PodAntiAffinity != nil && len(a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution) > 0))
	if pl.args.IgnorePreferredTermsOfExistingPods && !hasPreferred {
		return framework.NewStatus(framework.Skip)
	}
	if c, ok := pl.snapshot.(framework.AffinityCounter); ok && !hasPreferred && c.NumPodsWithAffinity() == 0 {
		return framework.NewStatus(framework.Skip)
	}
	var nodes []*framework.NodeInfo
	for _, n := range pl.snapshot.List() {
		if hasPreferred || n.PodsWithAffinity > 0 {
			nodes = append(nodes, n)
		}
	}
	if len(nodes) == 0 {
		return framework.NewStatus(framework.Skip)
	}
	terms, err := pl.incomingTerms(pod)
	if err != nil {
		return framework.AsStatus(fmt.Errorf("parse the pod affinity of pod %s/%s: %w", pod.Namespace, pod.Name, err))
	}
	nsLabels := pl.namespaceLabels(pod.Namespace)
	total := &interPodScoreState{scores: map[string]map[string]int64{}}
	var mu sync.Mutex
	parallelize(ctx, pl.parallel, len(nodes), func(i int) {
		n := nodes[i]
		node := n.Node()
		if len(node.Labels) == 0 {
			return
		}
		local := &interPodScoreState{scores: map[string]map[string]int64{}}
		for _, pi := range n.Pods {
			if !hasPreferred && pi.Affinity == nil {
				continue
			}
			pl.scoreExisting(local, terms, nsLabels, pod, pi, node)
		}
		if len(local.scores) == 0 {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for k, m := range local.scores {
			for v, w := range m {
				if total.scores[k] == nil {
					total.scores[k] = map[string]int64{}
				}
				total.scores[k][v] += w
			}
		}
	})
	if len(total.scores) == 0 {
		return framework.NewStatus(framework.Skip)
	}
	state.Write(interPodScoreKey, total)
	return nil
}

// scoreExisting adds what one existing pod contributes to its node's domains.
func (pl *InterPodAffinity) scoreExisting(s *interPodScoreState, terms *framework.PodAffinityTerms, nsLabels labels.Set, pod *corev1.Pod, existing *framework.PodInfo, node *corev1.Node) {
	for _, t := range terms.PreferredAffinity {
		if t.Matches(existing.Pod, nil) {
			s.add(node, t.TopologyKey, int64(t.Weight))
		}
	}
	for _, t := range terms.PreferredAntiAffinity {
		if t.Matches(existing.Pod, nil) {
			s.add(node, t.TopologyKey, -int64(t.Weight))
		}
	}
	e := existing.Affinity
	if e == nil {
		return
	}
	if pl.args.HardPodAffinityWeight > 0 {
		for i := range e.RequiredAffinity {
			if t := &e.RequiredAffinity[i]; t.Matches(pod, nsLabels) {
				s.add(node, t.TopologyKey, int64(pl.args.HardPodAffinityWeight))
			}
		}
	}
	if pl.args.IgnorePreferredTermsOfExistingPods {
		return
	}
	for _, t := range e.PreferredAffinity {
		if t.Matches(pod, nsLabels) {
			s.add(node, t.TopologyKey, int64(t.Weight))
		}
	}
	for _, t := range e.PreferredAntiAffinity {
		if t.Matches(pod, nsLabels) {
			s.add(node, t.TopologyKey, -int64(t.Weight))
		}
	}
}

// Score sums the weights of the node's domains.
func (pl *InterPodAffinity) Score(_ context.Context, state *framework.CycleState, _ *corev1.Pod, node *framework.NodeInfo) (int64, *framework.Status) {
	d, err := state.Read(interPodScoreKey)
	if err != nil {
		return 0, framework.AsStatus(err)
	}
	var score int64
	for key, values := range d.(*interPodScoreState).scores {
		if v, ok := node.Node().Labels[key]; ok {
			score += values[v]
		}
	}
	return score, nil
}

// ScoreExtensions returns the plugin itself: the sums are rescaled between the lowest and
// the highest.
func (pl *InterPodAffinity) ScoreExtensions() framework.ScoreExtensions { return pl }

// NormalizeScore maps the lowest sum to 0 and the highest to MaxNodeScore (all 0 when equal).
func (pl *InterPodAffinity) NormalizeScore(_ context.Context, _ *framework.CycleState, _ *corev1.Pod, scores []framework.NodeScore) *framework.Status {
	lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
	for _, s := range scores {
		lo, hi = min(lo, s.Score), max(hi, s.Score)
	}
	for i := range scores {
		if hi > lo {
			scores[i].Score = int64(float64(framework.MaxNodeScore) * float64(scores[i].Score-lo) / float64(hi-lo))
		} else {
			scores[i].Score = 0
		}
	}
	return nil
}
