package plugin

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"

	schedulerv1 "berth.dev/berth/specs/scheduler/v1"
)

// MaxNodeScore and MinNodeScore bound the scores a host accepts (Score's without
// NormalizeScore, NormalizeScore's otherwise), as in specs/scheduler/v1.
const (
	MaxNodeScore int64 = 100
	MinNodeScore int64 = 0
)

// allPoints are the extension points of the protocol, in the order a host calls them.
var allPoints = []schedulerv1.ExtensionPoint{
	schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_FILTER,
	schedulerv1.ExtensionPoint_EXTENSION_POINT_FILTER,
	schedulerv1.ExtensionPoint_EXTENSION_POINT_POST_FILTER,
	schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_SCORE,
	schedulerv1.ExtensionPoint_EXTENSION_POINT_SCORE,
	schedulerv1.ExtensionPoint_EXTENSION_POINT_NORMALIZE_SCORE,
	schedulerv1.ExtensionPoint_EXTENSION_POINT_RESERVE,
	schedulerv1.ExtensionPoint_EXTENSION_POINT_PERMIT,
	schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_BIND,
}

// pointName names an extension point as the scheduler configuration spells it.
func pointName(pt schedulerv1.ExtensionPoint) string {
	name := strings.TrimPrefix(pt.String(), "EXTENSION_POINT_")
	parts := strings.Split(strings.ToLower(name), "_")
	for i := 1; i < len(parts); i++ {
		parts[i] = strings.ToUpper(parts[i][:1]) + parts[i][1:]
	}
	return strings.Join(parts, "")
}

// rpcName is the RPC of an extension point (Reserve for RESERVE, which has Unreserve too).
func rpcName(pt schedulerv1.ExtensionPoint) string {
	n := pointName(pt)
	return strings.ToUpper(n[:1]) + n[1:]
}

// validCodes are the status codes each extension point may answer.
var validCodes = map[schedulerv1.ExtensionPoint][]schedulerv1.Code{
	schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_FILTER:      {schedulerv1.Code_CODE_SUCCESS, schedulerv1.Code_CODE_ERROR, schedulerv1.Code_CODE_UNSCHEDULABLE, schedulerv1.Code_CODE_UNSCHEDULABLE_AND_UNRESOLVABLE, schedulerv1.Code_CODE_SKIP},
	schedulerv1.ExtensionPoint_EXTENSION_POINT_FILTER:          {schedulerv1.Code_CODE_SUCCESS, schedulerv1.Code_CODE_ERROR, schedulerv1.Code_CODE_UNSCHEDULABLE, schedulerv1.Code_CODE_UNSCHEDULABLE_AND_UNRESOLVABLE},
	schedulerv1.ExtensionPoint_EXTENSION_POINT_POST_FILTER:     {schedulerv1.Code_CODE_SUCCESS, schedulerv1.Code_CODE_ERROR, schedulerv1.Code_CODE_UNSCHEDULABLE, schedulerv1.Code_CODE_UNSCHEDULABLE_AND_UNRESOLVABLE},
	schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_SCORE:       {schedulerv1.Code_CODE_SUCCESS, schedulerv1.Code_CODE_ERROR, schedulerv1.Code_CODE_SKIP},
	schedulerv1.ExtensionPoint_EXTENSION_POINT_SCORE:           {schedulerv1.Code_CODE_SUCCESS, schedulerv1.Code_CODE_ERROR},
	schedulerv1.ExtensionPoint_EXTENSION_POINT_NORMALIZE_SCORE: {schedulerv1.Code_CODE_SUCCESS, schedulerv1.Code_CODE_ERROR},
	schedulerv1.ExtensionPoint_EXTENSION_POINT_RESERVE:         {schedulerv1.Code_CODE_SUCCESS, schedulerv1.Code_CODE_ERROR, schedulerv1.Code_CODE_UNSCHEDULABLE, schedulerv1.Code_CODE_UNSCHEDULABLE_AND_UNRESOLVABLE},
	schedulerv1.ExtensionPoint_EXTENSION_POINT_PERMIT:          {schedulerv1.Code_CODE_SUCCESS, schedulerv1.Code_CODE_ERROR, schedulerv1.Code_CODE_UNSCHEDULABLE, schedulerv1.Code_CODE_UNSCHEDULABLE_AND_UNRESOLVABLE, schedulerv1.Code_CODE_WAIT},
	schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_BIND:        {schedulerv1.Code_CODE_SUCCESS, schedulerv1.Code_CODE_ERROR, schedulerv1.Code_CODE_UNSCHEDULABLE, schedulerv1.Code_CODE_UNSCHEDULABLE_AND_UNRESOLVABLE},
}

// checkCode records a failure when a status's code is not one pt may answer.
func (t *T) checkCode(pt schedulerv1.ExtensionPoint, where string, st *schedulerv1.Status) {
	if c := st.GetCode(); !slices.Contains(validCodes[pt], c) {
		t.Errorf("%s answered code %s, which %s may not answer", where, c, pointName(pt))
	}
}

// cycle is one scheduling attempt's identity and encoded pod.
func (t *T) cycle(id string, pod *corev1.Pod) *schedulerv1.Cycle {
	if pod == nil {
		return &schedulerv1.Cycle{Id: id}
	}
	b, err := pod.Marshal()
	if err != nil {
		t.Fatalf("encode pod: %v", err)
	}
	return &schedulerv1.Cycle{Id: id, Pod: b}
}

// callPoint makes the call (or, for RESERVE, the calls) of one extension point with the
// cycle and nodes, and returns the answer's status (nil for Unreserve).
func (t *T) callPoint(ctx context.Context, sess *session, pt schedulerv1.ExtensionPoint, cy *schedulerv1.Cycle, names []string) (*schedulerv1.Status, error) {
	var st *schedulerv1.Status
	c := sess.sched
	node := ""
	if len(names) > 0 {
		node = names[0]
	}
	err := t.call(ctx, rpcName(pt), func(ctx context.Context) error {
		switch pt {
		case schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_FILTER:
			r, err := c.PreFilter(ctx, &schedulerv1.PreFilterRequest{Cycle: cy})
			st = r.GetStatus()
			return err
		case schedulerv1.ExtensionPoint_EXTENSION_POINT_FILTER:
			r, err := c.Filter(ctx, &schedulerv1.FilterRequest{Cycle: cy, NodeGeneration: 1, NodeNames: names})
			if err == nil && len(r.GetStatuses()) != len(names) {
				return fmt.Errorf("Filter of %d nodes answered %d statuses", len(names), len(r.GetStatuses()))
			}
			for _, s := range r.GetStatuses() {
				if s.GetCode() != schedulerv1.Code_CODE_SUCCESS {
					st = s
				}
			}
			return err
		case schedulerv1.ExtensionPoint_EXTENSION_POINT_POST_FILTER:
			var rejected []*schedulerv1.NodeStatus
			for _, n := range names {
				rejected = append(rejected, &schedulerv1.NodeStatus{NodeName: n, Status: &schedulerv1.Status{Code: schedulerv1.Code_CODE_UNSCHEDULABLE, Reasons: []string{"conformance: rejected"}}})
			}
			r, err := c.PostFilter(ctx, &schedulerv1.PostFilterRequest{Cycle: cy, NodeGeneration: 1, Rejected: rejected})
			st = r.GetStatus()
			return err
		case schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_SCORE:
			r, err := c.PreScore(ctx, &schedulerv1.PreScoreRequest{Cycle: cy, NodeGeneration: 1, NodeNames: names})
			st = r.GetStatus()
			return err
		case schedulerv1.ExtensionPoint_EXTENSION_POINT_SCORE:
			r, err := c.Score(ctx, &schedulerv1.ScoreRequest{Cycle: cy, NodeGeneration: 1, NodeNames: names})
			if err == nil && len(r.GetScores()) != len(names) && r.GetStatus().GetCode() == schedulerv1.Code_CODE_SUCCESS {
				return fmt.Errorf("Score of %d nodes answered %d scores", len(names), len(r.GetScores()))
			}
			st = r.GetStatus()
			return err
		case schedulerv1.ExtensionPoint_EXTENSION_POINT_NORMALIZE_SCORE:
			r, err := c.NormalizeScore(ctx, &schedulerv1.NormalizeScoreRequest{Cycle: cy, NodeNames: names, Scores: make([]int64, len(names))})
			st = r.GetStatus()
			return err
		case schedulerv1.ExtensionPoint_EXTENSION_POINT_RESERVE:
			r, err := c.Reserve(ctx, &schedulerv1.ReserveRequest{Cycle: cy, NodeName: node})
			if err != nil {
				return err
			}
			st = r.GetStatus()
			_, err = c.Unreserve(ctx, &schedulerv1.UnreserveRequest{Cycle: cy, NodeName: node})
			return err
		case schedulerv1.ExtensionPoint_EXTENSION_POINT_PERMIT:
			r, err := c.Permit(ctx, &schedulerv1.PermitRequest{Cycle: cy, NodeName: node})
			st = r.GetStatus()
			return err
		case schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_BIND:
			r, err := c.PreBind(ctx, &schedulerv1.PreBindRequest{Cycle: cy, NodeName: node})
			st = r.GetStatus()
			return err
		}
		return fmt.Errorf("no call for extension point %s", pt)
	})
	return st, err
}

func testDeclaredPoints(ctx context.Context, t *T) {
	t.requireKind(Scheduler)
	nodes := sampleNodes()
	sess := t.start(ctx, nodes)
	cy := t.cycle("conformance-declared", samplePod(t.Config().RunID))
	for _, pt := range t.s.sched.GetExtensionPoints() {
		st, err := t.callPoint(ctx, sess, pt, cy, nodeNames(nodes))
		switch {
		case status.Code(err) == codes.Unimplemented:
			t.Errorf("%s is declared but answers UNIMPLEMENTED: %v", pointName(pt), err)
		case err != nil:
			t.Errorf("%s is declared but failed on an ordinary pod and nodes: %v", pointName(pt), err)
		default:
			t.checkCode(pt, pointName(pt), st)
			t.Logf("%s: %s %v", pointName(pt), st.GetCode(), st.GetReasons())
		}
	}
	t.alive(ctx, sess, "the declared extension points")
}

func testUndeclaredPoints(ctx context.Context, t *T) {
	t.requireKind(Scheduler)
	nodes := sampleNodes()
	sess := t.start(ctx, nodes)
	cy := t.cycle("conformance-undeclared", samplePod(t.Config().RunID))
	n := 0
	for _, pt := range allPoints {
		if t.declares(pt) {
			continue
		}
		n++
		_, err := t.callPoint(ctx, sess, pt, cy, nodeNames(nodes))
		var slow errDeadline
		switch {
		case err == nil:
			t.Errorf("%s is not declared but answered a call (the host would never use it: declare it, or answer UNIMPLEMENTED)", pointName(pt))
		case errors.As(err, &slow):
			t.Errorf("%s is not declared: %v (want UNIMPLEMENTED at once)", pointName(pt), err)
		case status.Code(err) != codes.Unimplemented:
			t.Logf("%s is not declared and answers %v (UNIMPLEMENTED is expected)", pointName(pt), err)
		}
	}
	if n == 0 {
		t.Skipf("the plugin declares every extension point")
	}
	t.alive(ctx, sess, "calls of undeclared extension points")
}

func testFilterStatuses(ctx context.Context, t *T) {
	t.requireKind(Scheduler)
	if !t.declares(schedulerv1.ExtensionPoint_EXTENSION_POINT_FILTER) {
		t.Skipf("the plugin does not declare filter")
	}
	nodes := sampleNodes()
	sess := t.start(ctx, nodes)
	names := nodeNames(nodes)
	var r *schedulerv1.FilterResponse
	err := t.call(ctx, "Filter", func(ctx context.Context) (err error) {
		r, err = sess.sched.Filter(ctx, &schedulerv1.FilterRequest{Cycle: t.cycle("conformance-filter", samplePod(t.Config().RunID)), NodeGeneration: 1, NodeNames: names})
		return err
	})
	if err != nil {
		t.Fatalf("Filter: %v", err)
	}
	if len(r.GetStatuses()) != len(names) {
		t.Fatalf("Filter of %d nodes answered %d statuses (one per node, in order, is the contract)", len(names), len(r.GetStatuses()))
	}
	for i, st := range r.GetStatuses() {
		t.checkCode(schedulerv1.ExtensionPoint_EXTENSION_POINT_FILTER, "Filter for "+names[i], st)
		if st.GetCode() != schedulerv1.Code_CODE_SUCCESS && len(st.GetReasons()) == 0 {
			t.Logf("Filter rejects %s without a reason: users see none in the pod's events", names[i])
		}
	}
}

func testScoreRange(ctx context.Context, t *T) {
	t.requireKind(Scheduler)
	if !t.declares(schedulerv1.ExtensionPoint_EXTENSION_POINT_SCORE) {
		t.Skipf("the plugin does not declare score")
	}
	nodes := sampleNodes()
	sess := t.start(ctx, nodes)
	names := nodeNames(nodes)
	pod := samplePod(t.Config().RunID)
	cy := t.cycle("conformance-score", pod)
	var r *schedulerv1.ScoreResponse
	err := t.call(ctx, "Score", func(ctx context.Context) (err error) {
		r, err = sess.sched.Score(ctx, &schedulerv1.ScoreRequest{Cycle: cy, NodeGeneration: 1, NodeNames: names})
		return err
	})
	if err != nil {
		t.Fatalf("Score: %v", err)
	}
	if c := r.GetStatus().GetCode(); c != schedulerv1.Code_CODE_SUCCESS {
		t.Fatalf("Score of an ordinary pod answered %s %v", c, r.GetStatus().GetReasons())
	}
	scores := r.GetScores()
	if len(scores) != len(names) {
		t.Fatalf("Score of %d nodes answered %d scores (one per node, in order, is the contract)", len(names), len(scores))
	}
	t.Logf("Score: %v", scores)
	final, what := scores, "Score (the plugin has no normalizeScore)"
	if t.declares(schedulerv1.ExtensionPoint_EXTENSION_POINT_NORMALIZE_SCORE) {
		var n *schedulerv1.NormalizeScoreResponse
		err := t.call(ctx, "NormalizeScore", func(ctx context.Context) (err error) {
			n, err = sess.sched.NormalizeScore(ctx, &schedulerv1.NormalizeScoreRequest{Cycle: cy, NodeNames: names, Scores: scores})
			return err
		})
		if err != nil {
			t.Fatalf("NormalizeScore of Score's answer: %v", err)
		}
		if c := n.GetStatus().GetCode(); c != schedulerv1.Code_CODE_SUCCESS {
			t.Fatalf("NormalizeScore of Score's answer answered %s %v", c, n.GetStatus().GetReasons())
		}
		if len(n.GetScores()) != len(names) {
			t.Fatalf("NormalizeScore of %d scores answered %d", len(names), len(n.GetScores()))
		}
		final, what = n.GetScores(), "NormalizeScore"
		t.Logf("NormalizeScore: %v", final)
	}
	for i, v := range final {
		if v < MinNodeScore || v > MaxNodeScore {
			t.Errorf("%s gave node %s the score %d, outside [%d, %d]", what, names[i], v, MinNodeScore, MaxNodeScore)
		}
	}
	if r.GetNormalized() {
		t.Errorf("Score says its scores are normalized, but the request did not ask for it")
	}

	// Score with normalize set: a plugin with NormalizeScore may answer the normalized
	// scores at once, and they must be what NormalizeScore answered; one without must not
	// claim to have normalized.
	var rn *schedulerv1.ScoreResponse
	err = t.call(ctx, "Score", func(ctx context.Context) (err error) {
		rn, err = sess.sched.Score(ctx, &schedulerv1.ScoreRequest{Cycle: cy, NodeGeneration: 1, NodeNames: names, Normalize: true})
		return err
	})
	if err != nil {
		t.Fatalf("Score with normalize: %v", err)
	}
	switch {
	case !t.declares(schedulerv1.ExtensionPoint_EXTENSION_POINT_NORMALIZE_SCORE) && rn.GetNormalized():
		t.Errorf("Score with normalize says its scores are normalized, but the plugin does not declare normalizeScore")
	case rn.GetNormalized() && !slices.Equal(rn.GetScores(), final):
		t.Errorf("Score with normalize answered %v; Score then NormalizeScore answered %v", rn.GetScores(), final)
	case !rn.GetNormalized() && t.declares(schedulerv1.ExtensionPoint_EXTENSION_POINT_NORMALIZE_SCORE):
		t.Logf("Score with normalize answers raw scores (a plugin built before the field): the host calls NormalizeScore")
	}
}

// cycleAnswers are a plugin's answers to the stateless steps of one scheduling attempt.
type cycleAnswers struct {
	preFilter  *schedulerv1.PreFilterResponse
	filter     *schedulerv1.FilterResponse
	preScore   *schedulerv1.PreScoreResponse
	score      *schedulerv1.ScoreResponse
	normalized *schedulerv1.NormalizeScoreResponse
}

// schedule runs the declared stateless steps for the pod on the nodes.
func (t *T) schedule(ctx context.Context, sess *session, id string, pod *corev1.Pod, names []string) cycleAnswers {
	var a cycleAnswers
	cy := t.cycle(id, pod)
	c := sess.sched
	must := func(what string, err error) {
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	if t.declares(schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_FILTER) {
		must("PreFilter", t.call(ctx, "PreFilter", func(ctx context.Context) (err error) {
			a.preFilter, err = c.PreFilter(ctx, &schedulerv1.PreFilterRequest{Cycle: cy})
			return err
		}))
	}
	if t.declares(schedulerv1.ExtensionPoint_EXTENSION_POINT_FILTER) {
		must("Filter", t.call(ctx, "Filter", func(ctx context.Context) (err error) {
			a.filter, err = c.Filter(ctx, &schedulerv1.FilterRequest{Cycle: cy, NodeGeneration: 1, NodeNames: names})
			return err
		}))
	}
	if t.declares(schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_SCORE) {
		must("PreScore", t.call(ctx, "PreScore", func(ctx context.Context) (err error) {
			a.preScore, err = c.PreScore(ctx, &schedulerv1.PreScoreRequest{Cycle: cy, NodeGeneration: 1, NodeNames: names})
			return err
		}))
	}
	if t.declares(schedulerv1.ExtensionPoint_EXTENSION_POINT_SCORE) {
		must("Score", t.call(ctx, "Score", func(ctx context.Context) (err error) {
			a.score, err = c.Score(ctx, &schedulerv1.ScoreRequest{Cycle: cy, NodeGeneration: 1, NodeNames: names})
			return err
		}))
		if t.declares(schedulerv1.ExtensionPoint_EXTENSION_POINT_NORMALIZE_SCORE) {
			must("NormalizeScore", t.call(ctx, "NormalizeScore", func(ctx context.Context) (err error) {
				a.normalized, err = c.NormalizeScore(ctx, &schedulerv1.NormalizeScoreRequest{Cycle: cy, NodeNames: names, Scores: a.score.GetScores()})
				return err
			}))
		}
	}
	return a
}

// diff names the steps whose answers differ.
func (a cycleAnswers) diff(b cycleAnswers) []string {
	var out []string
	for _, x := range []struct {
		what string
		a, b proto.Message
	}{
		{"PreFilter", a.preFilter, b.preFilter},
		{"Filter", a.filter, b.filter},
		{"PreScore", a.preScore, b.preScore},
		{"Score", a.score, b.score},
		{"NormalizeScore", a.normalized, b.normalized},
	} {
		if !proto.Equal(x.a, x.b) {
			out = append(out, fmt.Sprintf("%s answered %v, then %v", x.what, x.a, x.b))
		}
	}
	return out
}

func testSchedulerDeterminism(ctx context.Context, t *T) {
	nodes := sampleNodes()
	names := nodeNames(nodes)
	pod := samplePod(t.Config().RunID)
	sess := t.start(ctx, nodes)
	first := t.schedule(ctx, sess, "conformance-same-1", pod, names)
	for i, d := range first.diff(t.schedule(ctx, sess, "conformance-same-2", pod, names)) {
		if i == 0 {
			t.Errorf("the same pod and nodes, twice in one process, got different answers:")
		}
		t.Errorf("  %s", d)
	}
	other := t.start(ctx, nodes)
	for i, d := range first.diff(t.schedule(ctx, other, "conformance-same-3", pod, names)) {
		if i == 0 {
			t.Errorf("the same pod and nodes, in a second process, got different answers:")
		}
		t.Errorf("  %s", d)
	}
}

func testSchedulerNoNodes(ctx context.Context, t *T) {
	sess := t.start(ctx, nil)
	cy := t.cycle("conformance-no-nodes", samplePod(t.Config().RunID))
	for _, pt := range t.s.sched.GetExtensionPoints() {
		switch pt {
		case schedulerv1.ExtensionPoint_EXTENSION_POINT_RESERVE, schedulerv1.ExtensionPoint_EXTENSION_POINT_PERMIT, schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_BIND:
			continue // they name one node: there is none to name
		}
		if _, err := t.callPoint(ctx, sess, pt, cy, []string{}); err != nil {
			t.Errorf("%s with no nodes: %v", pointName(pt), err)
		}
	}
	t.alive(ctx, sess, "calls with no nodes")
}

func testSchedulerEmptyPod(ctx context.Context, t *T) {
	nodes := sampleNodes()
	sess := t.start(ctx, nodes)
	for _, c := range []struct {
		what string
		cy   *schedulerv1.Cycle
	}{
		{"an empty pod", t.cycle("conformance-empty-pod", &corev1.Pod{})},
		{"no pod bytes at all", t.cycle("", nil)},
	} {
		for _, pt := range t.s.sched.GetExtensionPoints() {
			_, err := t.callPoint(ctx, sess, pt, c.cy, nodeNames(nodes))
			var slow errDeadline
			if errors.As(err, &slow) {
				t.Errorf("%s with %s: %v", pointName(pt), c.what, err)
			} else if err != nil {
				// Refusing such a pod is fine; crashing on it is not (alive below).
				t.Logf("%s with %s: %v", pointName(pt), c.what, err)
			}
		}
		t.alive(ctx, sess, "calls with "+c.what)
	}
}
