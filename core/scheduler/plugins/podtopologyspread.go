package plugins

import (
	"context"
	"fmt"
	"maps"
	"math"
	"sync/atomic"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/sets"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"

	"berth.dev/berth/core/scheduler/framework"
)

// PodTopologySpreadName is the name of the PodTopologySpread plugin.
const PodTopologySpreadName = "PodTopologySpread"

// PodTopologySpread's Filter reasons, worded as kube-scheduler 1.33 words them.
const (
	ErrReasonTopologySpreadNotMatch = "node(s) didn't match pod topology spread constraints"
	ErrReasonTopologyLabelMissing   = ErrReasonTopologySpreadNotMatch + " (missing required label)"
)

// DefaultingType says where the constraints of a pod that has none come from.
type DefaultingType string

// The defaulting types of kube-scheduler's PodTopologySpreadArgs.
const (
	// SystemDefaulting applies SystemDefaultConstraints.
	SystemDefaulting DefaultingType = "System"
	// ListDefaulting applies the args' DefaultConstraints.
	ListDefaulting DefaultingType = "List"
)

// SystemDefaultConstraints are kube-scheduler's cluster defaults for pods without
// constraints: spread softly over hosts (skew 3) and zones (skew 5).
var SystemDefaultConstraints = []corev1.TopologySpreadConstraint{
	{TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.ScheduleAnyway, MaxSkew: 3},
	{TopologyKey: corev1.LabelTopologyZone, WhenUnsatisfiable: corev1.ScheduleAnyway, MaxSkew: 5},
}

// PodTopologySpreadArgs are the plugin's arguments (kube-scheduler's PodTopologySpreadArgs).
type PodTopologySpreadArgs struct {
	// DefaultConstraints apply, with DefaultingType List, to pods that have none; their
	// selector is built from the pod's Services, ReplicaSet, StatefulSet or
	// ReplicationController.
	DefaultConstraints []corev1.TopologySpreadConstraint
	// DefaultingType is System (the default) or List.
	DefaultingType DefaultingType
}

// SpreadListers are what PodTopologySpread reads to build a default constraint's selector;
// any may be nil (no such owners then).
type SpreadListers struct {
	Services               corelisters.ServiceLister
	ReplicationControllers corelisters.ReplicationControllerLister
	ReplicaSets            appslisters.ReplicaSetLister
	StatefulSets           appslisters.StatefulSetLister
}

// PodTopologySpread spreads the pods that match a constraint's selector evenly over the
// topology domains of its key: a node is refused (DoNotSchedule) when placing the pod
// there would make the difference between its domain's count and the least loaded
// domain's exceed maxSkew, and nodes are scored by that count (ScheduleAnyway).
type PodTopologySpread struct {
	defaults        []corev1.TopologySpreadConstraint
	systemDefaulted bool
	snapshot        framework.NodeLister
	listers         SpreadListers
	parallel        int
}

// NewPodTopologySpread returns the plugin reading the cycle's nodes from snapshot.
func NewPodTopologySpread(args PodTopologySpreadArgs, snapshot framework.NodeLister, listers SpreadListers) (*PodTopologySpread, error) {
	pl := &PodTopologySpread{snapshot: snapshot, listers: listers, parallel: framework.DefaultParallelism}
	switch args.DefaultingType {
	case "", SystemDefaulting:
		if len(args.DefaultConstraints) > 0 {
			return nil, fmt.Errorf("PodTopologySpread: defaultConstraints must be empty with defaultingType %s", SystemDefaulting)
		}
		pl.defaults, pl.systemDefaulted = SystemDefaultConstraints, true
	case ListDefaulting:
		if err := validateDefaultConstraints(args.DefaultConstraints); err != nil {
			return nil, fmt.Errorf("PodTopologySpread: %w", err)
		}
		pl.defaults = args.DefaultConstraints
	default:
		return nil, fmt.Errorf("PodTopologySpread: unknown defaultingType %q, want %s or %s", args.DefaultingType, SystemDefaulting, ListDefaulting)
	}
	return pl, nil
}

// validateDefaultConstraints applies kube-scheduler's rules for default constraints.
func validateDefaultConstraints(cs []corev1.TopologySpreadConstraint) error {
	seen := map[[2]string]bool{}
	for i, c := range cs {
		switch {
		case c.MaxSkew <= 0:
			return fmt.Errorf("defaultConstraints[%d]: maxSkew %d, want a positive number", i, c.MaxSkew)
		case c.TopologyKey == "":
			return fmt.Errorf("defaultConstraints[%d]: topologyKey is required", i)
		case c.WhenUnsatisfiable != corev1.DoNotSchedule && c.WhenUnsatisfiable != corev1.ScheduleAnyway:
			return fmt.Errorf("defaultConstraints[%d]: whenUnsatisfiable %q, want %s or %s", i, c.WhenUnsatisfiable, corev1.DoNotSchedule, corev1.ScheduleAnyway)
		case c.LabelSelector != nil:
			return fmt.Errorf("defaultConstraints[%d]: labelSelector must not be set: it is built from the pod's owners", i)
		}
		k := [2]string{c.TopologyKey, string(c.WhenUnsatisfiable)}
		if seen[k] {
			return fmt.Errorf("defaultConstraints[%d]: {%s, %s} given twice", i, c.TopologyKey, c.WhenUnsatisfiable)
		}
		seen[k] = true
	}
	return nil
}

// Name returns PodTopologySpreadName.
func (*PodTopologySpread) Name() string { return PodTopologySpreadName }

// spreadConstraint is a TopologySpreadConstraint with its selector parsed and its
// defaults applied.
type spreadConstraint struct {
	maxSkew            int32
	topologyKey        string
	selector           labels.Selector
	minDomains         int32
	nodeAffinityPolicy corev1.NodeInclusionPolicy
	nodeTaintsPolicy   corev1.NodeInclusionPolicy
}

// includes reports whether a node counts for the constraint under its node inclusion
// policies: by default nodes the pod's node affinity excludes do not count, tainted ones do.
func (c *spreadConstraint) includes(pod *corev1.Pod, node *corev1.Node, req nodeaffinity.RequiredNodeAffinity) bool {
	if c.nodeAffinityPolicy == corev1.NodeInclusionPolicyHonor {
		if ok, _ := req.Match(node); !ok {
			return false
		}
	}
	if c.nodeTaintsPolicy == corev1.NodeInclusionPolicyHonor {
		_, untolerated := corev1helpers.FindMatchingUntoleratedTaint(node.Spec.Taints, pod.Spec.Tolerations, func(t *corev1.Taint) bool {
			return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
		})
		if untolerated {
			return false
		}
	}
	return true
}

// constraintsFor returns the pod's constraints of one action; with none of its own at all,
// the defaults' with a selector from its owners.
func (pl *PodTopologySpread) constraintsFor(pod *corev1.Pod, action corev1.UnsatisfiableConstraintAction) ([]spreadConstraint, error) {
	if len(pod.Spec.TopologySpreadConstraints) > 0 {
		return convertConstraints(pod.Spec.TopologySpreadConstraints, pod.Labels, action)
	}
	var wanted bool
	for _, c := range pl.defaults {
		wanted = wanted || c.WhenUnsatisfiable == action
	}
	if !wanted {
		return nil, nil
	}
	cs, err := convertConstraints(pl.defaults, pod.Labels, action)
	if err != nil || len(cs) == 0 {
		return nil, err
	}
	sel := defaultSelector(pod, pl.listers)
	if sel.Empty() {
		return nil, nil
	}
	for i := range cs {
		cs[i].selector = sel
	}
	return cs, nil
}

func convertConstraints(cs []corev1.TopologySpreadConstraint, podLabels map[string]string, action corev1.UnsatisfiableConstraintAction) ([]spreadConstraint, error) {
	var out []spreadConstraint
	for _, c := range cs {
		if c.WhenUnsatisfiable != action {
			continue
		}
		sel, err := metav1.LabelSelectorAsSelector(c.LabelSelector)
		if err != nil {
			return nil, fmt.Errorf("topology spread constraint on %s: labelSelector: %w", c.TopologyKey, err)
		}
		// matchLabelKeys: the pod's values of those keys narrow the selector, so that
		// (say) each rollout's pods spread on their own.
		if len(c.MatchLabelKeys) > 0 {
			set := labels.Set{}
			for _, k := range c.MatchLabelKeys {
				if v, ok := podLabels[k]; ok {
					set[k] = v
				}
			}
			if len(set) > 0 {
				if reqs, ok := sel.Requirements(); ok {
					sel = labels.SelectorFromSet(set).Add(reqs...)
				}
			}
		}
		sc := spreadConstraint{
			maxSkew: c.MaxSkew, topologyKey: c.TopologyKey, selector: sel, minDomains: 1,
			nodeAffinityPolicy: corev1.NodeInclusionPolicyHonor, nodeTaintsPolicy: corev1.NodeInclusionPolicyIgnore,
		}
		if c.MinDomains != nil {
			sc.minDomains = *c.MinDomains
		}
		if c.NodeAffinityPolicy != nil {
			sc.nodeAffinityPolicy = *c.NodeAffinityPolicy
		}
		if c.NodeTaintsPolicy != nil {
			sc.nodeTaintsPolicy = *c.NodeTaintsPolicy
		}
		out = append(out, sc)
	}
	return out, nil
}

var (
	rcKind = corev1.SchemeGroupVersion.WithKind("ReplicationController")
	rsKind = appsv1.SchemeGroupVersion.WithKind("ReplicaSet")
	ssKind = appsv1.SchemeGroupVersion.WithKind("StatefulSet")
)

// defaultSelector is the selector of a default constraint, as kube-scheduler builds it:
// the selectors of the Services that select the pod, and of its controlling
// ReplicationController, ReplicaSet or StatefulSet.
func defaultSelector(pod *corev1.Pod, l SpreadListers) labels.Selector {
	set := labels.Set{}
	if l.Services != nil {
		if svcs, err := l.Services.Services(pod.Namespace).List(labels.Everything()); err == nil {
			for _, svc := range svcs {
				if svc.Spec.Selector != nil && labels.Set(svc.Spec.Selector).AsSelectorPreValidated().Matches(labels.Set(pod.Labels)) {
					set = labels.Merge(set, svc.Spec.Selector)
				}
			}
		}
	}
	sel := set.AsSelector()
	owner := metav1.GetControllerOfNoCopy(pod)
	if owner == nil {
		return sel
	}
	gv, err := schema.ParseGroupVersion(owner.APIVersion)
	if err != nil {
		return sel
	}
	addSelector := func(ls *metav1.LabelSelector) {
		if other, err := metav1.LabelSelectorAsSelector(ls); err == nil {
			if reqs, ok := other.Requirements(); ok {
				sel = sel.Add(reqs...)
			}
		}
	}
	switch gv.WithKind(owner.Kind) {
	case rcKind:
		if l.ReplicationControllers != nil {
			if rc, err := l.ReplicationControllers.ReplicationControllers(pod.Namespace).Get(owner.Name); err == nil {
				sel = labels.Merge(set, rc.Spec.Selector).AsSelector()
			}
		}
	case rsKind:
		if l.ReplicaSets != nil {
			if rs, err := l.ReplicaSets.ReplicaSets(pod.Namespace).Get(owner.Name); err == nil {
				addSelector(rs.Spec.Selector)
			}
		}
	case ssKind:
		if l.StatefulSets != nil {
			if ss, err := l.StatefulSets.StatefulSets(pod.Namespace).Get(owner.Name); err == nil {
				addSelector(ss.Spec.Selector)
			}
		}
	}
	return sel
}

// hasAllKeys reports whether a node has every constraint's topology key.
func hasAllKeys(nodeLabels map[string]string, cs []spreadConstraint) bool {
	for _, c := range cs {
		if _, ok := nodeLabels[c.topologyKey]; !ok {
			return false
		}
	}
	return true
}

// countMatching counts the pods of ns on a node that the selector matches, leaving out
// terminating ones.
func countMatching(pods []*framework.PodInfo, sel labels.Selector, ns string) int {
	if sel.Empty() {
		return 0
	}
	n := 0
	for _, p := range pods {
		if p.Pod.DeletionTimestamp != nil || p.Pod.Namespace != ns {
			continue
		}
		if sel.Matches(labels.Set(p.Pod.Labels)) {
			n++
		}
	}
	return n
}

const (
	spreadFilterKey framework.StateKey = "PreFilter" + PodTopologySpreadName
	spreadScoreKey  framework.StateKey = "PreScore" + PodTopologySpreadName
)

// criticalPaths are the two domains with the fewest matching pods, kept up to date as
// counts change so that the global minimum costs nothing to read.
type criticalPaths [2]struct {
	value string
	count int
}

func newCriticalPaths() *criticalPaths {
	return &criticalPaths{{count: math.MaxInt32}, {count: math.MaxInt32}}
}

func (p *criticalPaths) update(value string, count int) {
	i := -1
	if value == p[0].value {
		i = 0
	} else if value == p[1].value {
		i = 1
	}
	if i >= 0 {
		p[i].count = count
		if p[0].count > p[1].count {
			p[0], p[1] = p[1], p[0]
		}
		return
	}
	if count < p[0].count {
		p[1] = p[0]
		p[0].value, p[0].count = value, count
	} else if count < p[1].count {
		p[1].value, p[1].count = value, count
	}
}

// spreadFilterState holds, per hard constraint, the matching pods per domain.
type spreadFilterState struct {
	constraints []spreadConstraint
	paths       []*criticalPaths
	counts      []map[string]int
}

func (s *spreadFilterState) Clone() framework.StateData {
	c := &spreadFilterState{constraints: s.constraints, paths: make([]*criticalPaths, len(s.paths)), counts: make([]map[string]int, len(s.counts))}
	for i, p := range s.paths {
		cp := *p
		c.paths[i] = &cp
	}
	for i, m := range s.counts {
		c.counts[i] = maps.Clone(m)
	}
	return c
}

// minCount is the lowest count of a constraint's domains, 0 while fewer domains than
// minDomains exist (so that pods go to new domains first).
func (s *spreadFilterState) minCount(i int, minDomains int32) int {
	if len(s.counts[i]) < int(minDomains) {
		return 0
	}
	return s.paths[i][0].count
}

// PreFilter counts, for each DoNotSchedule constraint, the matching pods per domain over
// the nodes that count; a pod without such constraints skips the plugin.
func (pl *PodTopologySpread) PreFilter(ctx context.Context, state *framework.CycleState, pod *corev1.Pod) (*framework.PreFilterResult, *framework.Status) {
	cs, err := pl.constraintsFor(pod, corev1.DoNotSchedule)
	if err != nil {
		return nil, framework.AsStatus(fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err))
	}
	if len(cs) == 0 {
		return nil, framework.NewStatus(framework.Skip)
	}
	nodes := pl.snapshot.List()
	s := &spreadFilterState{constraints: cs, paths: make([]*criticalPaths, len(cs)), counts: make([]map[string]int, len(cs))}
	perNode := make([][]int, len(nodes)) // per node, per constraint: count, or -1 when the node does not count
	req := nodeaffinity.GetRequiredNodeAffinity(pod)
	parallelize(ctx, pl.parallel, len(nodes), func(n int) {
		node := nodes[n].Node()
		if !hasAllKeys(node.Labels, cs) {
			return
		}
		counts := make([]int, len(cs))
		for i := range cs {
			if !cs[i].includes(pod, node, req) {
				counts[i] = -1
				continue
			}
			counts[i] = countMatching(nodes[n].Pods, cs[i].selector, pod.Namespace)
		}
		perNode[n] = counts
	})
	for i := range cs {
		s.counts[i] = map[string]int{}
	}
	for n, counts := range perNode {
		for i, c := range counts {
			if c >= 0 {
				s.counts[i][nodes[n].Node().Labels[cs[i].topologyKey]] += c
			}
		}
	}
	for i := range cs {
		s.paths[i] = newCriticalPaths()
		for v, c := range s.counts[i] {
			s.paths[i].update(v, c)
		}
	}
	state.Write(spreadFilterKey, s)
	return nil, nil
}

func (pl *PodTopologySpread) updateWithPod(state *framework.CycleState, changed, pod *corev1.Pod, node *corev1.Node, delta int) *framework.Status {
	d, err := state.Read(spreadFilterKey)
	if err != nil {
		return framework.AsStatus(err)
	}
	s := d.(*spreadFilterState)
	if changed.Namespace != pod.Namespace || node == nil || !hasAllKeys(node.Labels, s.constraints) {
		return nil
	}
	req := nodeaffinity.GetRequiredNodeAffinity(pod)
	for i := range s.constraints {
		c := &s.constraints[i]
		if !c.selector.Matches(labels.Set(changed.Labels)) || !c.includes(pod, node, req) {
			continue
		}
		v := node.Labels[c.topologyKey]
		s.counts[i][v] += delta
		s.paths[i].update(v, s.counts[i][v])
	}
	return nil
}

// AddPod accounts a pod that preemption's dry run puts on a node.
func (pl *PodTopologySpread) AddPod(_ context.Context, state *framework.CycleState, pod *corev1.Pod, add *framework.PodInfo, node *framework.NodeInfo) *framework.Status {
	return pl.updateWithPod(state, add.Pod, pod, node.Node(), 1)
}

// RemovePod forgets a pod that preemption's dry run takes off a node.
func (pl *PodTopologySpread) RemovePod(_ context.Context, state *framework.CycleState, pod *corev1.Pod, remove *framework.PodInfo, node *framework.NodeInfo) *framework.Status {
	return pl.updateWithPod(state, remove.Pod, pod, node.Node(), -1)
}

// Filter refuses a node without a constraint's topology key, and one whose domain would
// then hold more than maxSkew matching pods above the least loaded domain.
func (pl *PodTopologySpread) Filter(_ context.Context, state *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) *framework.Status {
	d, err := state.Read(spreadFilterKey)
	if err != nil {
		return framework.AsStatus(err)
	}
	s := d.(*spreadFilterState)
	podLabels := labels.Set(pod.Labels)
	for i, c := range s.constraints {
		v, ok := node.Node().Labels[c.topologyKey]
		if !ok {
			return framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonTopologyLabelMissing)
		}
		self := 0
		if c.selector.Matches(podLabels) {
			self = 1
		}
		if skew := s.counts[i][v] + self - s.minCount(i, c.minDomains); skew > int(c.maxSkew) {
			return framework.NewStatus(framework.Unschedulable, ErrReasonTopologySpreadNotMatch)
		}
	}
	return nil
}

// spreadScoreState holds, per soft constraint, the matching pods per domain (hostname
// domains are counted at Score) and each constraint's weight.
type spreadScoreState struct {
	constraints []spreadConstraint
	ignored     sets.Set[string]
	counts      []map[string]*int64
	weights     []float64
}

func (s *spreadScoreState) Clone() framework.StateData { return s }

// PreScore counts, for each ScheduleAnyway constraint (the system defaults for a pod with
// none of its own), the matching pods per domain of the feasible nodes. A pod with no such
// constraint, or whose defaults select nothing, skips the plugin.
func (pl *PodTopologySpread) PreScore(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, feasible []*framework.NodeInfo) *framework.Status {
	cs, err := pl.constraintsFor(pod, corev1.ScheduleAnyway)
	if err != nil {
		return framework.AsStatus(fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err))
	}
	if len(cs) == 0 {
		return framework.NewStatus(framework.Skip)
	}
	all := pl.snapshot.List()
	if len(all) == 0 {
		return framework.NewStatus(framework.Skip)
	}
	// The system defaults tolerate nodes without a zone label; explicit constraints do not.
	requireAll := len(pod.Spec.TopologySpreadConstraints) > 0 || !pl.systemDefaulted
	s := &spreadScoreState{constraints: cs, ignored: sets.New[string](), counts: make([]map[string]*int64, len(cs)), weights: make([]float64, len(cs))}
	sizes := make([]int, len(cs))
	for i := range cs {
		s.counts[i] = map[string]*int64{}
	}
	for _, n := range feasible {
		node := n.Node()
		if requireAll && !hasAllKeys(node.Labels, cs) {
			s.ignored.Insert(node.Name)
			continue
		}
		for i, c := range cs {
			if c.topologyKey == corev1.LabelHostname {
				continue
			}
			v := node.Labels[c.topologyKey]
			if s.counts[i][v] == nil {
				s.counts[i][v] = new(int64)
				sizes[i]++
			}
		}
	}
	for i, c := range cs {
		size := sizes[i]
		if c.topologyKey == corev1.LabelHostname {
			size = len(feasible) - s.ignored.Len()
		}
		// Fewer domains weigh less, so that a node's spread over many hosts is not
		// drowned by a spread over few zones.
		s.weights[i] = math.Log(float64(size + 2))
	}
	req := nodeaffinity.GetRequiredNodeAffinity(pod)
	parallelize(ctx, pl.parallel, len(all), func(n int) {
		node := all[n].Node()
		if requireAll && !hasAllKeys(node.Labels, cs) {
			return
		}
		for i := range cs {
			c := &cs[i]
			if c.topologyKey == corev1.LabelHostname || !c.includes(pod, node, req) {
				continue
			}
			cnt := s.counts[i][node.Labels[c.topologyKey]]
			if cnt == nil {
				continue
			}
			atomic.AddInt64(cnt, int64(countMatching(all[n].Pods, c.selector, pod.Namespace)))
		}
	})
	state.Write(spreadScoreKey, s)
	return nil
}

// Score sums, over the constraints, the matching pods of the node's domain times the
// constraint's weight, plus maxSkew-1 (NormalizeScore turns fewer into better).
func (pl *PodTopologySpread) Score(_ context.Context, state *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) (int64, *framework.Status) {
	d, err := state.Read(spreadScoreKey)
	if err != nil {
		return 0, framework.AsStatus(err)
	}
	s := d.(*spreadScoreState)
	n := node.Node()
	if s.ignored.Has(n.Name) {
		return 0, nil
	}
	var score float64
	for i, c := range s.constraints {
		v, ok := n.Labels[c.topologyKey]
		if !ok {
			continue
		}
		var cnt int64
		if c.topologyKey == corev1.LabelHostname {
			cnt = int64(countMatching(node.Pods, c.selector, pod.Namespace))
		} else if p := s.counts[i][v]; p != nil {
			cnt = *p
		}
		score += float64(cnt)*s.weights[i] + float64(c.maxSkew-1)
	}
	return int64(math.Round(score)), nil
}

// ScoreExtensions returns the plugin itself: scores are reversed and rescaled.
func (pl *PodTopologySpread) ScoreExtensions() framework.ScoreExtensions { return pl }

// NormalizeScore gives the node with the fewest matching pods around it MaxNodeScore,
// and ignored nodes (missing a topology key) 0.
func (pl *PodTopologySpread) NormalizeScore(_ context.Context, state *framework.CycleState, _ *corev1.Pod, scores []framework.NodeScore) *framework.Status {
	d, err := state.Read(spreadScoreKey)
	if err != nil {
		return framework.AsStatus(err)
	}
	s := d.(*spreadScoreState)
	lo, hi := int64(math.MaxInt64), int64(0)
	for _, sc := range scores {
		if s.ignored.Has(sc.Name) {
			continue
		}
		lo, hi = min(lo, sc.Score), max(hi, sc.Score)
	}
	for i := range scores {
		switch {
		case s.ignored.Has(scores[i].Name):
			scores[i].Score = 0
		case hi == 0:
			scores[i].Score = framework.MaxNodeScore
		default:
			scores[i].Score = framework.MaxNodeScore * (hi + lo - scores[i].Score) / hi
		}
	}
	return nil
}
