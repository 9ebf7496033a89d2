package external

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"

	"berth.dev/berth/core/scheduler/framework"
	"berth.dev/berth/plugins/scheduler"
)

// Plugin is one external plugin as the framework sees it. It implements every extension
// interface; at the points its process does not implement, it does nothing (PreFilter and
// PreScore, which it uses to batch Filter and Score and to refuse pods while the plugin is
// down, excepted). ExtensionPoints says where a profile should place it.
type Plugin struct {
	f       *Factory
	name    string
	path    string
	args    []byte
	timeout time.Duration
	log     *slog.Logger

	mu     sync.RWMutex
	cur    *instance // nil while down
	down   string    // why it is down
	info   scheduler.Info
	cycles atomic.Int64
	// cycleMu makes creating a pod's cycleState atomic (finding one takes no lock).
	cycleMu sync.Mutex
	// serving mirrors cur for the calls of the cycle, which read it for every node:
	// an atomic load rather than a read lock that Filter and Score workers contend on.
	serving atomic.Pointer[instance]
	key     framework.StateKey

	sync     nodeSync
	restarts atomic.Int64
	calls    atomic.Int64

	cancel context.CancelFunc
	done   chan struct{}
}

var (
	_ framework.PreFilterPlugin  = (*Plugin)(nil)
	_ framework.FilterPlugin     = (*Plugin)(nil)
	_ framework.PostFilterPlugin = (*Plugin)(nil)
	_ framework.PreScorePlugin   = (*Plugin)(nil)
	_ framework.ScorePlugin      = (*Plugin)(nil)
	_ framework.ReservePlugin    = (*Plugin)(nil)
	_ framework.PermitPlugin     = (*Plugin)(nil)
	_ framework.PreBindPlugin    = (*Plugin)(nil)
	_ framework.Signer           = (*Plugin)(nil)
)

func newPlugin(f *Factory, name, path string, args []byte, timeout time.Duration) *Plugin {
	return &Plugin{
		f: f, name: name, path: path, args: args, timeout: timeout,
		log:  f.o.Log.With("plugin", name),
		done: make(chan struct{}),
		key:  framework.StateKey("external/" + name),
	}
}

// Name returns the plugin's name.
func (p *Plugin) Name() string { return p.name }

// Info returns what the plugin's process said of itself at its last start.
func (p *Plugin) Info() scheduler.Info {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.info
}

// ExtensionPoints names the points of a profile (as the configuration spells them) where
// this plugin belongs: those its process implements, plus preFilter always (it refuses
// pods there while the plugin is down, and batches Filter) and preScore when it scores
// (it batches Score there). Placed only at filter or score it still works, batching in
// the first call of each pod when the factory has the scheduler's nodes, one call per node
// when not.
func (p *Plugin) ExtensionPoints() []string {
	info := p.Info()
	out := []string{"preFilter"}
	if info.Implements(scheduler.FilterPoint) {
		out = append(out, "filter")
	}
	if info.Implements(scheduler.PostFilterPoint) {
		out = append(out, "postFilter")
	}
	if info.Implements(scheduler.PreScorePoint) || info.Implements(scheduler.ScorePoint) {
		out = append(out, "preScore")
	}
	if info.Implements(scheduler.ScorePoint) {
		out = append(out, "score")
	}
	if info.Implements(scheduler.ReservePoint) {
		out = append(out, "reserve")
	}
	if info.Implements(scheduler.PermitPoint) {
		out = append(out, "permit")
	}
	if info.Implements(scheduler.PreBindPoint) {
		out = append(out, "preBind")
	}
	return out
}

// SignPod is the plugin's part of a pod's signature, for the framework's opportunistic
// batching: ok false while the plugin is down or when its process declared no pod
// signature in PluginInfo (its answers are never reused across pods); otherwise "" when
// the signature names no pod field, or the values of the fields it names, JSON-encoded in
// the order of the declaration (an absent field is null): pods with equal fragments get
// equal answers from the plugin. The pod is encoded to JSON once per call.
func (p *Plugin) SignPod(pod *corev1.Pod) (string, bool) {
	in := p.serving.Load()
	if in == nil || in.info.PodSignature == nil {
		return "", false
	}
	if len(in.signature) == 0 {
		return "", true
	}
	return signPod(pod, in.signature)
}

// signPod encodes the values at paths of the pod's JSON as one compact JSON array; ok
// false when the pod does not encode (never for a valid pod).
func signPod(pod *corev1.Pod, paths [][]string) (string, bool) {
	raw, err := json.Marshal(pod)
	if err != nil {
		return "", false
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber() // numbers stay as written: no float64 rounding of large integers
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return "", false
	}
	values := make([]any, len(paths))
	for i, path := range paths {
		values[i] = lookup(doc, path)
	}
	// encoding/json writes object keys sorted: equal values encode equally.
	out, err := json.Marshal(values)
	if err != nil {
		return "", false
	}
	return string(out), true
}

// lookup returns the value at path in v (nil when absent); through a list it returns the
// list of each element's value at the rest of the path.
func lookup(v any, path []string) any {
	for i, seg := range path {
		switch x := v.(type) {
		case map[string]any:
			v = x[seg]
		case []any:
			out := make([]any, len(x))
			for j, e := range x {
				out[j] = lookup(e, path[i:])
			}
			return out
		default:
			return nil
		}
	}
	return v
}

// Stats are counters of the plugin's life, for tests and metrics.
type Stats struct {
	// Restarts counts the processes started after a failure.
	Restarts int64
	// SyncCalls and NodesSent count SyncNodes calls and the nodes they carried.
	SyncCalls, NodesSent int64
	// Calls counts the calls made to the plugin's processes, SyncNodes included.
	Calls int64
	// Up reports whether a process is serving.
	Up bool
	// Pid is the serving process' id (0 while down).
	Pid int
	// DownReason says why the plugin is down.
	DownReason string
}

// Stats returns the plugin's counters.
func (p *Plugin) Stats() Stats {
	p.mu.RLock()
	defer p.mu.RUnlock()
	s := Stats{
		Restarts:   p.restarts.Load(),
		SyncCalls:  p.sync.calls.Load(),
		NodesSent:  p.sync.sent.Load(),
		Calls:      p.calls.Load(),
		Up:         p.cur != nil,
		DownReason: p.down,
	}
	if p.cur != nil {
		s.Pid = p.cur.PID
	}
	return s
}

func (p *Plugin) setUp(in *instance) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur, p.down, p.info = in, "", in.info
	p.serving.Store(in)
}

func (p *Plugin) setDown(reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur, p.down = nil, reason
	p.serving.Store(nil)
}

// current returns the serving instance, or the rejection that stands for the
// plugin while it is down.
func (p *Plugin) current() (*instance, *framework.Status) {
	if in := p.serving.Load(); in != nil {
		return in, nil
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.cur == nil {
		return nil, p.unavailable(p.down)
	}
	return p.cur, nil
}

// The code is UnschedulableAndUnresolvable (the pod's condition still says Unschedulable):
// preemption cannot bring a plugin back, so it must not evict pods for it.
func (p *Plugin) unavailable(reason string) *framework.Status {
	return framework.NewStatus(framework.UnschedulableAndUnresolvable, fmt.Sprintf("scheduler plugin %s is unavailable: %s; restarting", p.name, reason))
}

// callCtx bounds one call by the plugin's deadline.
func (p *Plugin) callCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	p.calls.Add(1)
	return context.WithTimeout(ctx, p.timeout)
}

// failed turns a call's error into a status. Errors that show the process cannot be
// trusted (a missed deadline, a malformed answer, a broken connection) fail the instance,
// which gets it killed and restarted, and the pod gets the rejection of a plugin that is
// down; other errors are the pod's Error.
func (p *Plugin) failed(ctx context.Context, in *instance, call string, err error) *framework.Status {
	var pe *scheduler.ProtocolError
	switch {
	case errors.As(err, &pe):
		reason := fmt.Sprintf("it answered %s with garbage (%s)", call, pe.Msg)
		in.Fail(reason)
		return p.unavailable(reason)
	case ctx.Err() == nil && status.Code(err) == codes.DeadlineExceeded:
		reason := fmt.Sprintf("it did not answer %s within %s", call, p.timeout)
		in.Fail(reason)
		return p.unavailable(reason)
	case ctx.Err() == nil && status.Code(err) == codes.Unavailable:
		reason := "its connection broke: " + status.Convert(errors.Unwrap(err)).Message()
		if in.WaitExited(500 * time.Millisecond) {
			reason = in.ExitReason()
		}
		in.Fail(reason)
		return p.unavailable(reason)
	}
	return framework.AsStatus(fmt.Errorf("scheduler plugin %s: %s: %w", p.name, call, err))
}

// fromSDK converts the SDK's status to the framework's.
func fromSDK(s *scheduler.Status) *framework.Status {
	if s.IsSuccess() {
		return nil
	}
	return framework.NewStatus(framework.Code(s.Code), s.Reasons...)
}

func toSDK(s *framework.Status) *scheduler.Status {
	if s.IsSuccess() {
		return nil
	}
	return scheduler.NewStatus(scheduler.Code(s.Code()), s.Reasons()...)
}

// cycleState is what the adapter keeps for one pod's scheduling cycle.
type cycleState struct {
	cycle scheduler.Cycle
	// filtered is the batched Filter's answer per node name (nil: not batched).
	filtered map[string]*framework.Status
	// scores is the batched (and normalized) Score's answer per node name.
	scores map[string]int64
	// synced is the generation of the plugin's copy of the nodes after PreFilter brought
	// it in step with every node of the cycle, in process syncedIn: PreScore's nodes are
	// some of those, so it need not check them again.
	synced   int64
	syncedIn *instance

	// When the plugin is not placed at PreFilter or PreScore, the first Filter or Score of
	// the cycle makes the batch, over every node of the scheduler, for all the others.
	lazyFilterOnce, lazyScoreOnce sync.Once
	lazyFiltered                  map[string]*framework.Status
	lazyScores                    map[string]int64
	lazyFilterErr, lazyScoreErr   *framework.Status
}

// Clone shares the data: it is written once per cycle before Filter or Score reads it.
func (c *cycleState) Clone() framework.StateData { return c }

// stateKey is where the plugin's cycleState lives in the CycleState (made once: it is
// looked up for every node).
func (p *Plugin) stateKey() framework.StateKey { return p.key }

// cycleOf returns the cycle of the pod, creating it when the plugin was not placed at
// PreFilter (or the pod changed: Reserve gets the pod with its node set).
func (p *Plugin) cycleOf(state *framework.CycleState, pod *corev1.Pod) (*cycleState, error) {
	// Filter and Score run on many goroutines, for every node: the cycle usually exists
	// (PreFilter made it), and reading it takes no lock. Otherwise one of them creates it.
	key := p.stateKey()
	if d, err := state.Read(key); err == nil {
		if c, ok := d.(*cycleState); ok {
			return c, nil
		}
	}
	p.cycleMu.Lock()
	defer p.cycleMu.Unlock()
	if d, err := state.Read(key); err == nil {
		if c, ok := d.(*cycleState); ok {
			return c, nil
		}
	}
	cy, err := scheduler.NewCycle(string(pod.UID)+"-"+strconv.FormatInt(p.cycles.Add(1), 10), pod)
	if err != nil {
		return nil, err
	}
	c := &cycleState{cycle: cy}
	state.Write(p.stateKey(), c)
	return c, nil
}

// PreFilter refuses the pod while the plugin is down, runs the plugin's PreFilter, and, when
// it filters and the scheduler's nodes are known, runs its Filter over all of them in one
// call.
func (p *Plugin) PreFilter(ctx context.Context, state *framework.CycleState, pod *corev1.Pod) (*framework.PreFilterResult, *framework.Status) {
	in, st := p.current()
	if st != nil {
		return nil, st
	}
	c, err := p.cycleOf(state, pod)
	if err != nil {
		return nil, framework.AsStatus(err)
	}
	// With the scheduler's nodes at hand, bring the plugin's copy up to date, removals
	// included, once per pod; Filter and Score then name nodes only.
	gen := p.sync.generation()
	var nodes []*framework.NodeInfo
	if list := p.f.nodeLister(); list != nil {
		nodes = list()
		if gen, st = p.syncNodes(ctx, in, nodes, true); st != nil {
			return nil, st
		}
		c.synced, c.syncedIn = gen, in
	}
	var result *framework.PreFilterResult
	if in.info.Implements(scheduler.PreFilterPoint) {
		cctx, cancel := p.callCtx(ctx)
		r, s, err := in.rpc.PreFilter(cctx, c.cycle)
		cancel()
		if err != nil {
			return nil, p.failed(ctx, in, "PreFilter", err)
		}
		if s != nil && s.Code == scheduler.Skip {
			return nil, framework.NewStatus(framework.Skip)
		}
		if st := fromSDK(s); st != nil {
			return nil, st
		}
		if r != nil {
			result = &framework.PreFilterResult{NodeNames: sets.New(r.NodeNames...)}
		}
	}
	if !in.info.Implements(scheduler.FilterPoint) {
		if result == nil {
			return nil, framework.NewStatus(framework.Skip)
		}
		return result, nil
	}
	if nodes == nil {
		return result, nil
	}
	names := make([]string, 0, len(nodes))
	for _, n := range nodes {
		if n.Node() != nil && (result == nil || result.NodeNames.Has(n.Name())) {
			names = append(names, n.Name())
		}
	}
	statuses, st := p.filter(ctx, in, c, gen, names)
	if st != nil {
		return nil, st
	}
	c.filtered = make(map[string]*framework.Status, len(names))
	for i, name := range names {
		c.filtered[name] = statuses[i]
	}
	return result, nil
}

// nodeNames returns the names of the nodes that have a Node object.
func nodeNames(nodes []*framework.NodeInfo) []string {
	names := make([]string, 0, len(nodes))
	for _, n := range nodes {
		if n.Node() != nil {
			names = append(names, n.Name())
		}
	}
	return names
}

// filter is one batched Filter call; a stale node copy is sent again once.
func (p *Plugin) filter(ctx context.Context, in *instance, c *cycleState, gen int64, names []string) ([]*framework.Status, *framework.Status) {
	for attempt := 0; ; attempt++ {
		cctx, cancel := p.callCtx(ctx)
		res, err := in.rpc.Filter(cctx, c.cycle, gen, names)
		cancel()
		if errors.Is(err, scheduler.ErrNodesStale) && attempt == 0 {
			var st *framework.Status
			if gen, st = p.resync(ctx, in); st != nil {
				return nil, st
			}
			continue
		}
		if err != nil {
			return nil, p.failed(ctx, in, "Filter", err)
		}
		out := make([]*framework.Status, len(res))
		for i, s := range res {
			out[i] = fromSDK(s)
		}
		return out, nil
	}
}

// Filter answers from the batch PreFilter made; not placed at PreFilter, the first Filter
// of the cycle makes the batch over the scheduler's nodes (SetNodeLister); without them it
// asks the plugin about this node alone.
func (p *Plugin) Filter(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) *framework.Status {
	in, st := p.current()
	if st != nil {
		return st
	}
	if !in.info.Implements(scheduler.FilterPoint) {
		return nil
	}
	c, err := p.cycleOf(state, pod)
	if err != nil {
		return framework.AsStatus(err)
	}
	if c.filtered != nil {
		if s, ok := c.filtered[node.Name()]; ok {
			return s
		}
	} else if list := p.f.nodeLister(); list != nil {
		c.lazyFilterOnce.Do(func() {
			nodes := list()
			gen, st := p.syncNodes(ctx, in, nodes, true)
			if st != nil {
				c.lazyFilterErr = st
				return
			}
			names := nodeNames(nodes)
			res, st := p.filter(ctx, in, c, gen, names)
			if st != nil {
				c.lazyFilterErr = st
				return
			}
			c.lazyFiltered = make(map[string]*framework.Status, len(names))
			for i, name := range names {
				c.lazyFiltered[name] = res[i]
			}
		})
		if c.lazyFilterErr != nil {
			return c.lazyFilterErr
		}
		if s, ok := c.lazyFiltered[node.Name()]; ok {
			return s
		}
	}
	gen, st := p.syncNodes(ctx, in, []*framework.NodeInfo{node}, false)
	if st != nil {
		return st
	}
	res, st := p.filter(ctx, in, c, gen, []string{node.Name()})
	if st != nil {
		return st
	}
	return res[0]
}

// PostFilter runs the plugin's PostFilter; a plugin without one changes nothing.
func (p *Plugin) PostFilter(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, statuses *framework.NodeToStatus) (*framework.PostFilterResult, *framework.Status) {
	in, st := p.current()
	if st != nil {
		return nil, st
	}
	if !in.info.Implements(scheduler.PostFilterPoint) {
		return nil, framework.NewStatus(framework.Unschedulable)
	}
	c, err := p.cycleOf(state, pod)
	if err != nil {
		return nil, framework.AsStatus(err)
	}
	rejected := map[string]*scheduler.Status{}
	statuses.Each(func(name string, s *framework.Status) {
		rejected[name] = toSDK(s)
	})
	cctx, cancel := p.callCtx(ctx)
	defer cancel()
	node, s, err := in.rpc.PostFilter(cctx, c.cycle, p.sync.generation(), rejected)
	if err != nil {
		return nil, p.failed(ctx, in, "PostFilter", err)
	}
	if st := fromSDK(s); st != nil {
		return nil, st
	}
	return &framework.PostFilterResult{NominatedNodeName: node}, nil
}

// PreScore runs the plugin's PreScore, then its Score over all the feasible nodes in one
// call (and NormalizeScore, when it has it), keeping the scores for Score.
func (p *Plugin) PreScore(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, nodes []*framework.NodeInfo) *framework.Status {
	in, st := p.current()
	if st != nil {
		return st
	}
	hasPre, hasScore := in.info.Implements(scheduler.PreScorePoint), in.info.Implements(scheduler.ScorePoint)
	if !hasPre && !hasScore {
		return framework.NewStatus(framework.Skip)
	}
	c, err := p.cycleOf(state, pod)
	if err != nil {
		return framework.AsStatus(err)
	}
	gen := c.synced
	if c.syncedIn != in || gen == 0 || gen != p.sync.generation() {
		if gen, st = p.syncNodes(ctx, in, nodes, false); st != nil {
			return st
		}
	}
	names := make([]string, len(nodes))
	for i, n := range nodes {
		names[i] = n.Name()
	}
	if hasPre {
		cctx, cancel := p.callCtx(ctx)
		s, err := in.rpc.PreScore(cctx, c.cycle, gen, names)
		cancel()
		if err != nil {
			return p.failed(ctx, in, "PreScore", err)
		}
		if s != nil && s.Code == scheduler.Skip {
			return framework.NewStatus(framework.Skip)
		}
		if st := fromSDK(s); st != nil {
			return st
		}
	}
	if !hasScore {
		return nil
	}
	scores, st := p.score(ctx, in, c, gen, names)
	if st != nil {
		return st
	}
	c.scores = make(map[string]int64, len(names))
	for i, name := range names {
		c.scores[name] = scores[i]
	}
	return nil
}

// score is one batched Score call, normalized when the plugin normalizes.
func (p *Plugin) score(ctx context.Context, in *instance, c *cycleState, gen int64, names []string) ([]int64, *framework.Status) {
	normalize := in.info.Implements(scheduler.NormalizeScorePoint)
	var scores []int64
	for attempt := 0; ; attempt++ {
		cctx, cancel := p.callCtx(ctx)
		var res []int64
		var s *scheduler.Status
		var err error
		done := false
		if normalize {
			// One round trip where the plugin's SDK knows how; an older one answers
			// raw scores and NormalizeScore follows as its own call.
			res, done, s, err = in.rpc.ScoreAndNormalize(cctx, c.cycle, gen, names)
		} else {
			res, s, err = in.rpc.Score(cctx, c.cycle, gen, names, true)
		}
		cancel()
		if errors.Is(err, scheduler.ErrNodesStale) && attempt == 0 {
			var st *framework.Status
			if gen, st = p.resync(ctx, in); st != nil {
				return nil, st
			}
			continue
		}
		if err != nil {
			return nil, p.failed(ctx, in, "Score", err)
		}
		if st := fromSDK(s); st != nil {
			return nil, st
		}
		if done {
			return res, nil
		}
		scores = res
		break
	}
	if !normalize {
		return scores, nil
	}
	cctx, cancel := p.callCtx(ctx)
	defer cancel()
	res, s, err := in.rpc.NormalizeScore(cctx, c.cycle, names, scores)
	if err != nil {
		return nil, p.failed(ctx, in, "NormalizeScore", err)
	}
	if st := fromSDK(s); st != nil {
		return nil, st
	}
	return res, nil
}

// Score answers from the batch PreScore made; not placed at PreScore, the first Score of the
// cycle makes the batch over the scheduler's nodes (SetNodeLister); without them it scores
// this node alone (and NormalizeScore sees that node only).
func (p *Plugin) Score(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) (int64, *framework.Status) {
	in, st := p.current()
	if st != nil {
		return 0, st
	}
	if !in.info.Implements(scheduler.ScorePoint) {
		return 0, nil
	}
	c, err := p.cycleOf(state, pod)
	if err != nil {
		return 0, framework.AsStatus(err)
	}
	if c.scores != nil {
		if v, ok := c.scores[node.Name()]; ok {
			return v, nil
		}
	} else if list := p.f.nodeLister(); list != nil {
		// Not placed at PreScore: scored over every node rather than the feasible ones,
		// which only widens the range NormalizeScore sees.
		c.lazyScoreOnce.Do(func() {
			nodes := list()
			gen, st := p.syncNodes(ctx, in, nodes, true)
			if st != nil {
				c.lazyScoreErr = st
				return
			}
			names := nodeNames(nodes)
			res, st := p.score(ctx, in, c, gen, names)
			if st != nil {
				c.lazyScoreErr = st
				return
			}
			c.lazyScores = make(map[string]int64, len(names))
			for i, name := range names {
				c.lazyScores[name] = res[i]
			}
		})
		if c.lazyScoreErr != nil {
			return 0, c.lazyScoreErr
		}
		if v, ok := c.lazyScores[node.Name()]; ok {
			return v, nil
		}
	}
	gen, st := p.syncNodes(ctx, in, []*framework.NodeInfo{node}, false)
	if st != nil {
		return 0, st
	}
	res, st := p.score(ctx, in, c, gen, []string{node.Name()})
	if st != nil {
		return 0, st
	}
	return res[0], nil
}

// ScoreExtensions is nil: the plugin's NormalizeScore runs in the batch.
func (p *Plugin) ScoreExtensions() framework.ScoreExtensions { return nil }

// ScoresAreRelative tells an opportunistic batch (framework.RelativeScorer) to keep the
// plugin's scores rather than ask it again for one node: they are normalized over the
// nodes scored together when it has NormalizeScore, and in API v1 a plugin sees nodes,
// never their pods, so adding an alike pod to a node cannot change its score anyway.
func (p *Plugin) ScoresAreRelative() bool { return true }

// Reserve runs the plugin's Reserve.
func (p *Plugin) Reserve(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, node string) *framework.Status {
	in, st := p.current()
	if st != nil {
		return st
	}
	if !in.info.Implements(scheduler.ReservePoint) {
		return nil
	}
	c, err := p.cycleOf(state, pod)
	if err != nil {
		return framework.AsStatus(err)
	}
	cctx, cancel := p.callCtx(ctx)
	defer cancel()
	s, err := in.rpc.Reserve(cctx, c.cycle, node)
	if err != nil {
		return p.failed(ctx, in, "Reserve", err)
	}
	return fromSDK(s)
}

// Unreserve runs the plugin's Unreserve; a plugin that is down has nothing to undo (its
// new process starts from nothing).
func (p *Plugin) Unreserve(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, node string) {
	in, st := p.current()
	if st != nil || !in.info.Implements(scheduler.ReservePoint) {
		return
	}
	c, err := p.cycleOf(state, pod)
	if err != nil {
		p.log.Error("unreserve", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		return
	}
	cctx, cancel := p.callCtx(ctx)
	defer cancel()
	if err := in.rpc.Unreserve(cctx, c.cycle, node); err != nil {
		p.log.Error("unreserve", "pod", pod.Namespace+"/"+pod.Name, "err", p.failed(ctx, in, "Unreserve", err).AsError())
	}
}

// Permit runs the plugin's Permit.
func (p *Plugin) Permit(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, node string) (*framework.Status, time.Duration) {
	in, st := p.current()
	if st != nil {
		return st, 0
	}
	if !in.info.Implements(scheduler.PermitPoint) {
		return nil, 0
	}
	c, err := p.cycleOf(state, pod)
	if err != nil {
		return framework.AsStatus(err), 0
	}
	cctx, cancel := p.callCtx(ctx)
	defer cancel()
	s, d, err := in.rpc.Permit(cctx, c.cycle, node)
	if err != nil {
		return p.failed(ctx, in, "Permit", err), 0
	}
	return fromSDK(s), d
}

// PreBind runs the plugin's PreBind.
func (p *Plugin) PreBind(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, node string) *framework.Status {
	in, st := p.current()
	if st != nil {
		return st
	}
	if !in.info.Implements(scheduler.PreBindPoint) {
		return nil
	}
	c, err := p.cycleOf(state, pod)
	if err != nil {
		return framework.AsStatus(err)
	}
	cctx, cancel := p.callCtx(ctx)
	defer cancel()
	s, err := in.rpc.PreBind(cctx, c.cycle, node)
	if err != nil {
		return p.failed(ctx, in, "PreBind", err)
	}
	return fromSDK(s)
}
