package framework

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/util/workqueue"
)

// DefaultParallelism is how many goroutines filter and score nodes, as in Kubernetes.
const DefaultParallelism = 16

// Node sampling, as Kubernetes does it: in a large cluster the search for feasible nodes
// stops once enough are found, but never below these floors.
const (
	// MinFeasibleNodesToFind is the number of feasible nodes always looked for.
	MinFeasibleNodesToFind = 100
	// MinFeasibleNodesPercentageToFind is the floor of the adaptive percentage.
	MinFeasibleNodesPercentageToFind = 5
)

// WeightedScorePlugin is a Score plugin with its weight in the profile.
type WeightedScorePlugin struct {
	Plugin ScorePlugin
	Weight int64
}

// Profile is one scheduler profile: a name pods choose with spec.schedulerName and the
// plugins at each extension point, in order.
type Profile struct {
	Name       string
	QueueSort  QueueSortPlugin
	PreFilter  []PreFilterPlugin
	Filter     []FilterPlugin
	PostFilter []PostFilterPlugin
	PreScore   []PreScorePlugin
	Score      []WeightedScorePlugin
	Reserve    []ReservePlugin
	Permit     []PermitPlugin
	PreBind    []PreBindPlugin
	Bind       []BindPlugin
	// PercentageOfNodesToScore: 0 means adaptive (50% minus 1% per 125 nodes, at least 5%).
	PercentageOfNodesToScore int32
	// Parallelism is how many goroutines filter and score (DefaultParallelism when 0).
	Parallelism int
}

// ProfileFromPlugins places each plugin at every extension point it implements, in the
// given order; weights name the Score plugins' weights (1 when absent).
func ProfileFromPlugins(name string, plugins []Plugin, weights map[string]int64) Profile {
	p := Profile{Name: name}
	for _, pl := range plugins {
		if q, ok := pl.(QueueSortPlugin); ok && p.QueueSort == nil {
			p.QueueSort = q
		}
		if x, ok := pl.(PreFilterPlugin); ok {
			p.PreFilter = append(p.PreFilter, x)
		}
		if x, ok := pl.(FilterPlugin); ok {
			p.Filter = append(p.Filter, x)
		}
		if x, ok := pl.(PostFilterPlugin); ok {
			p.PostFilter = append(p.PostFilter, x)
		}
		if x, ok := pl.(PreScorePlugin); ok {
			p.PreScore = append(p.PreScore, x)
		}
		if x, ok := pl.(ScorePlugin); ok {
			w := weights[pl.Name()]
			if w == 0 {
				w = 1
			}
			p.Score = append(p.Score, WeightedScorePlugin{Plugin: x, Weight: w})
		}
		if x, ok := pl.(ReservePlugin); ok {
			p.Reserve = append(p.Reserve, x)
		}
		if x, ok := pl.(PermitPlugin); ok {
			p.Permit = append(p.Permit, x)
		}
		if x, ok := pl.(PreBindPlugin); ok {
			p.PreBind = append(p.PreBind, x)
		}
		if x, ok := pl.(BindPlugin); ok {
			p.Bind = append(p.Bind, x)
		}
	}
	return p
}

// Framework runs one profile's plugins for one pod at a time (the scheduling cycle), and
// for the pods in their binding cycles.
type Framework struct {
	profile Profile
	waiting *WaitingPods
	// nextStart is where the next search for feasible nodes begins, so that with sampling
	// every node gets its turn across pods.
	nextStart atomic.Int64

	// Opportunistic batching (batch.go): the plugins that sign pods (nil: the profile
	// never batches), the last full cycle's results, and how many pods they placed.
	signers []Signer
	batchMu sync.Mutex
	batch   *batchState
	batched atomic.Int64
	now     func() time.Time
}

// New returns a Framework for a profile; waiting is shared by the scheduler's profiles.
func New(p Profile, waiting *WaitingPods) (*Framework, error) {
	if p.Name == "" {
		return nil, fmt.Errorf("profile without a name")
	}
	if p.QueueSort == nil {
		return nil, fmt.Errorf("profile %s: no QueueSort plugin", p.Name)
	}
	if len(p.Bind) == 0 {
		return nil, fmt.Errorf("profile %s: no Bind plugin", p.Name)
	}
	for _, s := range p.Score {
		if s.Weight <= 0 {
			return nil, fmt.Errorf("profile %s: Score plugin %s has weight %d, want a positive weight", p.Name, s.Plugin.Name(), s.Weight)
		}
	}
	if p.Parallelism <= 0 {
		p.Parallelism = DefaultParallelism
	}
	if waiting == nil {
		waiting = NewWaitingPods()
	}
	return &Framework{profile: p, waiting: waiting, signers: signers(p), now: time.Now}, nil
}

// ProfileName returns the profile's name (the schedulerName pods give).
func (f *Framework) ProfileName() string { return f.profile.Name }

// Less orders two queued pods with the profile's QueueSort plugin.
func (f *Framework) Less(a, b *QueuedPodInfo) bool { return f.profile.QueueSort.Less(a, b) }

// HasScorePlugins reports whether the profile scores nodes at all.
func (f *Framework) HasScorePlugins() bool { return len(f.profile.Score) > 0 }

// NumFeasibleNodesToFind is how many feasible nodes the search stops at, out of numAllNodes:
// all of them under 100, otherwise the percentage (adaptive when 0: 50% minus one point per
// 125 nodes, at least 5%), but never fewer than 100.
func NumFeasibleNodesToFind(percentage int32, numAllNodes int32) int32 {
	if numAllNodes < MinFeasibleNodesToFind {
		return numAllNodes
	}
	if percentage == 0 {
		percentage = 50 - numAllNodes/125
		if percentage < MinFeasibleNodesPercentageToFind {
			percentage = MinFeasibleNodesPercentageToFind
		}
	}
	n := numAllNodes * percentage / 100
	if n < MinFeasibleNodesToFind {
		return MinFeasibleNodesToFind
	}
	return n
}

// chunkSize splits n pieces among workers so that each takes a batch (about sqrt(n)) at
// a time rather than contending on every node.
func chunkSize(n, workers int) int {
	s := int(math.Sqrt(float64(n)))
	if r := n/workers + 1; s > r {
		s = r
	}
	if s < 1 {
		s = 1
	}
	return s
}

// parallelize runs fn(i) for i in [0, n) on the profile's workers until done or ctx ends.
func (f *Framework) parallelize(ctx context.Context, n int, fn func(i int)) {
	workqueue.ParallelizeUntil(ctx, f.profile.Parallelism, n, fn, workqueue.WithChunkSize(chunkSize(n, f.profile.Parallelism)))
}

// RunPreFilter runs the PreFilter plugins; a rejection stops them and stands for every node.
func (f *Framework) RunPreFilter(ctx context.Context, state *CycleState, pod *corev1.Pod) (*PreFilterResult, *Status) {
	var result *PreFilterResult
	var narrowedBy []string
	for _, pl := range f.profile.PreFilter {
		r, s := pl.PreFilter(ctx, state, pod)
		switch {
		case s.IsSkip():
			state.setSkipped("filter/" + pl.Name())
			continue
		case s.IsRejected():
			return nil, s.WithPlugin(pl.Name())
		case !s.IsSuccess():
			return nil, AsStatus(fmt.Errorf("running PreFilter plugin %q: %w", pl.Name(), s.AsError())).WithPlugin(pl.Name())
		}
		if r.AllNodes() {
			continue
		}
		narrowedBy = append(narrowedBy, pl.Name())
		if result == nil {
			result = &PreFilterResult{NodeNames: r.NodeNames.Clone()}
			result.narrowedBy = narrowedBy
		} else {
			result.NodeNames = result.NodeNames.Intersection(r.NodeNames)
			result.narrowedBy = narrowedBy
		}
		if result.NodeNames.Len() == 0 {
			msg := fmt.Sprintf("node(s) didn't satisfy plugin(s) %v simultaneously", narrowedBy)
			if len(narrowedBy) == 1 {
				msg = fmt.Sprintf("node(s) didn't satisfy plugin %v", narrowedBy[0])
			}
			return nil, NewStatus(UnschedulableAndUnresolvable, msg).WithPlugin(pl.Name())
		}
	}
	return result, nil
}

// activeFilters returns the Filter plugins PreFilter did not skip.
func (f *Framework) activeFilters(state *CycleState) []FilterPlugin {
	if fs := state.filters.Load(); fs != nil {
		return *fs
	}
	fs := make([]FilterPlugin, 0, len(f.profile.Filter))
	for _, pl := range f.profile.Filter {
		if !state.isSkipped("filter/" + pl.Name()) {
			fs = append(fs, pl)
		}
	}
	return fs
}

// RunFilter runs the Filter plugins for one node and returns the first rejection.
func (f *Framework) RunFilter(ctx context.Context, state *CycleState, pod *corev1.Pod, node *NodeInfo) *Status {
	for _, pl := range f.activeFilters(state) {
		s := pl.Filter(ctx, state, pod, node)
		if s.IsSuccess() {
			continue
		}
		if !s.IsRejected() {
			return AsStatus(fmt.Errorf("running Filter plugin %q: %w", pl.Name(), s.AsError())).WithPlugin(pl.Name())
		}
		return s.WithPlugin(pl.Name())
	}
	return nil
}

// FindFeasibleNodes runs PreFilter, then Filter over the nodes in parallel, starting where
// the last search stopped and stopping once NumFeasibleNodesToFind nodes fit (one node when
// no plugin scores). Rejections are recorded in the diagnosis.
func (f *Framework) FindFeasibleNodes(ctx context.Context, state *CycleState, pod *corev1.Pod, all []*NodeInfo) ([]*NodeInfo, Diagnosis, error) {
	diag := Diagnosis{NodeToStatus: NewNodeToStatus()}
	pre, s := f.RunPreFilter(ctx, state, pod)
	if !s.IsSuccess() {
		if !s.IsRejected() {
			return nil, diag, s.AsError()
		}
		diag.NodeToStatus.SetAbsentStatus(s)
		diag.PreFilterMsg = s.Message()
		diag.AddPluginStatus(s)
		return nil, diag, nil
	}
	// The skipped plugins are known now: fix the list once for every node.
	filters := f.activeFilters(state)
	state.filters.Store(&filters)
	nodes := all
	if !pre.AllNodes() {
		nodes = make([]*NodeInfo, 0, pre.NodeNames.Len())
		for _, n := range all {
			if pre.NodeNames.Has(n.Name()) {
				nodes = append(nodes, n)
			}
		}
		diag.NodeToStatus.SetAbsentStatus(NewStatus(UnschedulableAndUnresolvable, "node(s) didn't satisfy plugin(s) "+fmt.Sprint(sets.List(sets.New(pre.narrowedBy...)))))
	}
	if len(nodes) == 0 {
		return nil, diag, nil
	}
	want := int(NumFeasibleNodesToFind(f.profile.PercentageOfNodesToScore, int32(len(nodes))))
	if !f.HasScorePlugins() {
		want = 1
	}
	start := int(f.nextStart.Load()) % len(nodes)

	feasible := make([]*NodeInfo, want)
	var found atomic.Int32
	// Rejections are kept apart, under a lock: in a large cluster most nodes fit, and a
	// slot per node would be thousands of pointers allocated in every cycle.
	type rejection struct {
		i int
		s *Status
	}
	var rejectedMu sync.Mutex
	var rejected []rejection
	var firstErr error
	var errOnce sync.Once
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	f.parallelize(ctx, len(nodes), func(i int) {
		node := nodes[(start+i)%len(nodes)]
		s := f.RunFilter(ctx, state, pod, node)
		switch {
		case s.IsSuccess():
			k := found.Add(1)
			if int(k) > want {
				found.Add(-1)
				cancel()
				return
			}
			feasible[k-1] = node
		case s.IsRejected():
			rejectedMu.Lock()
			rejected = append(rejected, rejection{i, s})
			rejectedMu.Unlock()
		default:
			errOnce.Do(func() { firstErr = s.AsError() })
			cancel()
		}
	})
	feasible = feasible[:found.Load()]
	// In the order of the search, as a slot per node would have given them.
	sort.Slice(rejected, func(a, b int) bool { return rejected[a].i < rejected[b].i })
	for _, r := range rejected {
		diag.NodeToStatus.Set(nodes[(start+r.i)%len(nodes)].Name(), r.s)
		diag.AddPluginStatus(r.s)
	}
	processed := len(feasible) + diag.NodeToStatus.Len()
	f.nextStart.Store(int64((start + processed) % len(all)))
	if firstErr != nil {
		return nil, diag, firstErr
	}
	return feasible, diag, nil
}

// RunPostFilter runs the PostFilter plugins until one succeeds or says preemption cannot
// help (UnschedulableAndUnresolvable).
func (f *Framework) RunPostFilter(ctx context.Context, state *CycleState, pod *corev1.Pod, statuses *NodeToStatus) (*PostFilterResult, *Status) {
	last := NewStatus(Unschedulable)
	var result *PostFilterResult
	for _, pl := range f.profile.PostFilter {
		r, s := pl.PostFilter(ctx, state, pod, statuses)
		switch {
		case s.IsSuccess():
			return r, s
		case s.Code() == UnschedulableAndUnresolvable:
			return r, s.WithPlugin(pl.Name())
		case !s.IsRejected():
			return nil, AsStatus(fmt.Errorf("running PostFilter plugin %q: %w", pl.Name(), s.AsError()))
		}
		last, result = s.WithPlugin(pl.Name()), r
	}
	return result, last
}

// NodeTotalScore is a node's weighted score summed over the Score plugins.
type NodeTotalScore struct {
	Name  string
	Score int64
}

// ScoreNodes runs PreScore, then every Score plugin over the nodes in parallel, normalizes
// each plugin's scores, weights and sums them.
func (f *Framework) ScoreNodes(ctx context.Context, state *CycleState, pod *corev1.Pod, nodes []*NodeInfo) ([]NodeTotalScore, error) {
	return f.scoreNodes(ctx, state, pod, nodes, nil)
}

// scoreNodes is ScoreNodes; with keep, it also keeps the totals and weighted scores
// for the pods batched after this one.
func (f *Framework) scoreNodes(ctx context.Context, state *CycleState, pod *corev1.Pod, nodes []*NodeInfo, keep *batchState) ([]NodeTotalScore, error) {
	for _, pl := range f.profile.PreScore {
		s := pl.PreScore(ctx, state, pod, nodes)
		if s.IsSkip() {
			state.setSkipped("score/" + pl.Name())
			continue
		}
		if !s.IsSuccess() {
			return nil, fmt.Errorf("running PreScore plugin %q: %w", pl.Name(), s.AsError())
		}
	}
	var plugins []WeightedScorePlugin
	for _, p := range f.profile.Score {
		if !state.isSkipped("score/" + p.Plugin.Name()) {
			plugins = append(plugins, p)
		}
	}
	// One buffer for every plugin's scores, reused across cycles: at 5,000 nodes each cycle
	// scores hundreds of nodes per plugin, and fresh slices every time fed the GC.
	buf := getScoreBuffer(len(plugins) * len(nodes))
	defer scoreBuffers.Put(buf)
	scores := make([][]NodeScore, len(plugins))
	for i := range plugins {
		scores[i] = (*buf)[i*len(nodes) : (i+1)*len(nodes) : (i+1)*len(nodes)]
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var firstErr error
	var errOnce sync.Once
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		cancel()
	}
	f.parallelize(ctx, len(nodes), func(n int) {
		for i, p := range plugins {
			v, s := p.Plugin.Score(ctx, state, pod, nodes[n])
			if !s.IsSuccess() {
				fail(fmt.Errorf("running Score plugin %q: %w", p.Plugin.Name(), s.AsError()))
				return
			}
			scores[i][n] = NodeScore{Name: nodes[n].Name(), Score: v}
		}
	})
	if firstErr != nil {
		return nil, firstErr
	}
	f.parallelize(ctx, len(plugins), func(i int) {
		ext := plugins[i].Plugin.ScoreExtensions()
		if ext == nil {
			return
		}
		if s := ext.NormalizeScore(ctx, state, pod, scores[i]); !s.IsSuccess() {
			fail(fmt.Errorf("running NormalizeScore of plugin %q: %w", plugins[i].Plugin.Name(), s.AsError()))
		}
	})
	if firstErr != nil {
		return nil, firstErr
	}
	totals := make([]NodeTotalScore, len(nodes))
	for n := range nodes {
		totals[n].Name = nodes[n].Name()
	}
	for i, p := range plugins {
		for n, s := range scores[i] {
			if s.Score < MinNodeScore || s.Score > MaxNodeScore {
				return nil, fmt.Errorf("plugin %q returned an invalid score %v for node %q, want [%d, %d] after normalizing", p.Plugin.Name(), s.Score, s.Name, MinNodeScore, MaxNodeScore)
			}
			totals[n].Score += s.Score * p.Weight
		}
	}
	if keep != nil {
		// Copied as they are: most full cycles are followed by no alike pod, so the batch
		// sorts them only when one comes (batchState.ready).
		keep.plugins = plugins
		keep.totals = totals
		keep.flat = make([]int64, len(nodes)*len(plugins))
		for i, p := range plugins {
			for n := range nodes {
				keep.flat[n*len(plugins)+i] = scores[i][n].Score * p.Weight
			}
		}
	}
	return totals, nil
}

// scoreBuffers holds *[]NodeScore buffers for ScoreNodes.
var scoreBuffers sync.Pool

// getScoreBuffer returns a buffer of n zeroed NodeScores from the pool.
func getScoreBuffer(n int) *[]NodeScore {
	if b, ok := scoreBuffers.Get().(*[]NodeScore); ok && cap(*b) >= n {
		*b = (*b)[:n]
		clear(*b)
		return b
	}
	b := make([]NodeScore, n)
	return &b
}

// SelectHost picks the node with the highest total score, breaking ties uniformly at
// random (reservoir sampling over the tied nodes).
func SelectHost(scores []NodeTotalScore) (string, error) {
	if len(scores) == 0 {
		return "", fmt.Errorf("no node scores to select from")
	}
	best, ties := 0, 1
	for i := 1; i < len(scores); i++ {
		switch {
		case scores[i].Score > scores[best].Score:
			best, ties = i, 1
		case scores[i].Score == scores[best].Score:
			ties++
			if rand.IntN(ties) == 0 {
				best = i
			}
		}
	}
	return scores[best].Name, nil
}

// ScheduleResult is where the scheduling algorithm put a pod.
type ScheduleResult struct {
	SuggestedHost  string
	EvaluatedNodes int
	FeasibleNodes  int
}

// SchedulePod finds the best node for the pod among nodes: filter, then score when more
// than one node fits. No fitting node gives a *FitError.
func (f *Framework) SchedulePod(ctx context.Context, state *CycleState, pod *corev1.Pod, nodes []*NodeInfo) (ScheduleResult, error) {
	return f.schedule(ctx, state, pod, nodes, nil)
}

// schedule is SchedulePod; with keep, the scores also go into keep for a batch.
func (f *Framework) schedule(ctx context.Context, state *CycleState, pod *corev1.Pod, nodes []*NodeInfo, keep *batchState) (ScheduleResult, error) {
	if len(nodes) == 0 {
		return ScheduleResult{}, &FitError{Pod: pod, NumAllNodes: 0, Diagnosis: Diagnosis{NodeToStatus: NewNodeToStatus()}}
	}
	feasible, diag, err := f.FindFeasibleNodes(ctx, state, pod, nodes)
	if err != nil {
		return ScheduleResult{}, err
	}
	if len(feasible) == 0 {
		return ScheduleResult{}, &FitError{Pod: pod, NumAllNodes: len(nodes), Diagnosis: diag}
	}
	evaluated := len(feasible) + diag.NodeToStatus.Len()
	if len(feasible) == 1 {
		return ScheduleResult{SuggestedHost: feasible[0].Name(), EvaluatedNodes: evaluated, FeasibleNodes: 1}, nil
	}
	scores, err := f.scoreNodes(ctx, state, pod, feasible, keep)
	if err != nil {
		return ScheduleResult{}, err
	}
	host, err := SelectHost(scores)
	if err != nil {
		return ScheduleResult{}, err
	}
	if keep != nil {
		keep.host = host
	}
	return ScheduleResult{SuggestedHost: host, EvaluatedNodes: evaluated, FeasibleNodes: len(feasible)}, nil
}

// RunReserve runs the Reserve plugins; on a failure it unreserves them all.
func (f *Framework) RunReserve(ctx context.Context, state *CycleState, pod *corev1.Pod, node string) *Status {
	for _, pl := range f.profile.Reserve {
		if s := pl.Reserve(ctx, state, pod, node); !s.IsSuccess() {
			f.RunUnreserve(ctx, state, pod, node)
			if s.IsRejected() {
				return s.WithPlugin(pl.Name())
			}
			return AsStatus(fmt.Errorf("running Reserve plugin %q: %w", pl.Name(), s.AsError())).WithPlugin(pl.Name())
		}
	}
	return nil
}

// RunUnreserve runs the Reserve plugins' Unreserve in reverse order.
func (f *Framework) RunUnreserve(ctx context.Context, state *CycleState, pod *corev1.Pod, node string) {
	for i := len(f.profile.Reserve) - 1; i >= 0; i-- {
		f.profile.Reserve[i].Unreserve(ctx, state, pod, node)
	}
}

// RunPermit runs the Permit plugins. When some ask to wait it holds the pod and returns
// Wait; WaitOnPermit then waits for the outcome.
func (f *Framework) RunPermit(ctx context.Context, state *CycleState, pod *corev1.Pod, node string) *Status {
	holds := map[string]time.Duration{}
	for _, pl := range f.profile.Permit {
		s, timeout := pl.Permit(ctx, state, pod, node)
		switch {
		case s.IsSuccess():
		case s.IsWait():
			// Kubernetes caps a hold at 15 minutes.
			if timeout > 15*time.Minute || timeout <= 0 {
				timeout = 15 * time.Minute
			}
			holds[pl.Name()] = timeout
		case s.IsRejected():
			return s.WithPlugin(pl.Name())
		default:
			return AsStatus(fmt.Errorf("running Permit plugin %q: %w", pl.Name(), s.AsError())).WithPlugin(pl.Name())
		}
	}
	if len(holds) > 0 {
		f.waiting.add(newWaitingPod(pod, holds))
		return NewStatus(Wait, "one or more plugins asked to wait")
	}
	return nil
}

// WaitOnPermit blocks until a held pod is allowed or rejected (or ctx ends); a pod not
// held returns at once.
func (f *Framework) WaitOnPermit(ctx context.Context, pod *corev1.Pod) *Status {
	wp := f.waiting.Get(string(pod.UID))
	if wp == nil {
		return nil
	}
	p := wp.(*waitingPod)
	defer f.waiting.remove(string(pod.UID))
	select {
	case s := <-p.result:
		return s
	case <-ctx.Done():
		p.Reject("", "scheduler stopped")
		return AsStatus(ctx.Err())
	}
}

// RunPreBind runs the PreBind plugins.
func (f *Framework) RunPreBind(ctx context.Context, state *CycleState, pod *corev1.Pod, node string) *Status {
	for _, pl := range f.profile.PreBind {
		if s := pl.PreBind(ctx, state, pod, node); !s.IsSuccess() {
			if s.IsRejected() {
				return s.WithPlugin(pl.Name())
			}
			return AsStatus(fmt.Errorf("running PreBind plugin %q: %w", pl.Name(), s.AsError())).WithPlugin(pl.Name())
		}
	}
	return nil
}

// RunBind runs the Bind plugins until one does not Skip.
func (f *Framework) RunBind(ctx context.Context, state *CycleState, pod *corev1.Pod, node string) *Status {
	for _, pl := range f.profile.Bind {
		s := pl.Bind(ctx, state, pod, node)
		if s.IsSkip() {
			continue
		}
		if !s.IsSuccess() {
			if s.IsRejected() {
				return s.WithPlugin(pl.Name())
			}
			return AsStatus(fmt.Errorf("running Bind plugin %q: %w", pl.Name(), s.AsError())).WithPlugin(pl.Name())
		}
		return nil
	}
	return NewStatus(Skip, "every Bind plugin skipped the pod")
}

// RunPreFilterExtensionAddPod tells the PreFilter plugins that keep per-cycle state
// (PreFilterExtensions) that a pod joined node in a dry run, such as preemption's, so that
// their Filter sees it; plugins skipped for the cycle are left out.
func (f *Framework) RunPreFilterExtensionAddPod(ctx context.Context, state *CycleState, pod *corev1.Pod, add *PodInfo, node *NodeInfo) *Status {
	for _, pl := range f.profile.PreFilter {
		ext, ok := pl.(PreFilterExtensions)
		if !ok || state.isSkipped("filter/"+pl.Name()) {
			continue
		}
		if s := ext.AddPod(ctx, state, pod, add, node); !s.IsSuccess() {
			return AsStatus(fmt.Errorf("running AddPod of PreFilter plugin %q: %w", pl.Name(), s.AsError())).WithPlugin(pl.Name())
		}
	}
	return nil
}

// RunPreFilterExtensionRemovePod is RunPreFilterExtensionAddPod for a pod that left node.
func (f *Framework) RunPreFilterExtensionRemovePod(ctx context.Context, state *CycleState, pod *corev1.Pod, remove *PodInfo, node *NodeInfo) *Status {
	for _, pl := range f.profile.PreFilter {
		ext, ok := pl.(PreFilterExtensions)
		if !ok || state.isSkipped("filter/"+pl.Name()) {
			continue
		}
		if s := ext.RemovePod(ctx, state, pod, remove, node); !s.IsSuccess() {
			return AsStatus(fmt.Errorf("running RemovePod of PreFilter plugin %q: %w", pl.Name(), s.AsError())).WithPlugin(pl.Name())
		}
	}
	return nil
}
