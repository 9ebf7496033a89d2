package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	schedulerv1 "berth.dev/berth/specs/scheduler/v1"
)

// Client is the scheduler's side of the protocol: typed calls to one plugin process,
// which check that the answers are well formed. The scheduler's host (process launching,
// deadlines, restarts) is built on it.
type Client struct {
	rpc schedulerv1.SchedulerClient
}

// NewClient returns a Client over a gRPC connection to a plugin.
func NewClient(conn grpc.ClientConnInterface) *Client {
	return &Client{rpc: schedulerv1.NewSchedulerClient(conn)}
}

// ProtocolError is a malformed answer from a plugin (a wrong number of statuses or scores,
// a score out of range): the plugin cannot be trusted any more.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "malformed answer: " + e.Msg }

func garbage(format string, args ...any) error {
	return &ProtocolError{Msg: fmt.Sprintf(format, args...)}
}

// ErrNodesStale means the plugin's copy of the nodes is not what a call or a delta builds
// on (it restarted, or missed a delta): the host sends every node again.
var ErrNodesStale = errors.New("the plugin's nodes are stale")

// rpcErr maps FAILED_PRECONDITION (the protocol's "send every node") to ErrNodesStale.
func rpcErr(what string, err error) error {
	if status.Code(err) == codes.FailedPrecondition {
		return fmt.Errorf("%s: %w: %v", what, ErrNodesStale, status.Convert(err).Message())
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Info is what a plugin says of itself.
type Info struct {
	Name            string
	Version         string
	APIVersions     []string
	ExtensionPoints []ExtensionPoint
	// PodSignature is the pod signature the plugin declared (nil: none, never batch its
	// answers). Info does not check its paths; see PodSignature.Validate.
	PodSignature *PodSignature
}

// Implements reports whether the plugin announced the extension point.
func (i Info) Implements(p ExtensionPoint) bool {
	for _, x := range i.ExtensionPoints {
		if x == p {
			return true
		}
	}
	return false
}

// Info asks the plugin who it is.
func (c *Client) Info(ctx context.Context) (Info, error) {
	r, err := c.rpc.PluginInfo(ctx, &schedulerv1.PluginInfoRequest{HostApiVersions: APIVersions})
	if err != nil {
		return Info{}, rpcErr("PluginInfo", err)
	}
	info := Info{Name: r.Name, Version: r.Version, APIVersions: r.ApiVersions, ExtensionPoints: r.ExtensionPoints}
	if sig := r.GetPodSignature(); sig != nil {
		info.PodSignature = &PodSignature{Fields: sig.GetPodFields()}
	}
	return info, nil
}

// Configure gives the plugin the chosen API version and its arguments.
func (c *Client) Configure(ctx context.Context, apiVersion string, args []byte) error {
	if _, err := c.rpc.Configure(ctx, &schedulerv1.ConfigureRequest{ApiVersion: apiVersion, Args: args}); err != nil {
		return rpcErr("Configure", err)
	}
	return nil
}

// NodeDelta is one SyncNodes call: the nodes added or changed since Base (all nodes when
// Full) and the names of those removed.
type NodeDelta struct {
	Base, Generation int64
	Full             bool
	Nodes            []*corev1.Node
	Removed          []string
}

// SyncNodes sends a delta; ErrNodesStale (wrapped) asks for a full one.
func (c *Client) SyncNodes(ctx context.Context, d NodeDelta) error {
	req := &schedulerv1.SyncNodesRequest{BaseGeneration: d.Base, Generation: d.Generation, Full: d.Full, Removed: d.Removed}
	req.Nodes = make([][]byte, len(d.Nodes))
	for i, n := range d.Nodes {
		b, err := n.Marshal()
		if err != nil {
			return fmt.Errorf("encode node %s: %w", n.Name, err)
		}
		req.Nodes[i] = b
	}
	r, err := c.rpc.SyncNodes(ctx, req)
	if err != nil {
		return rpcErr("SyncNodes", err)
	}
	if r.Generation != d.Generation {
		return garbage("SyncNodes to generation %d answered generation %d", d.Generation, r.Generation)
	}
	return nil
}

// Cycle is one scheduling attempt of one pod, encoded once for all its calls.
type Cycle struct{ c *schedulerv1.Cycle }

// NewCycle encodes the pod of a scheduling attempt named id.
func NewCycle(id string, pod *corev1.Pod) (Cycle, error) {
	b, err := pod.Marshal()
	if err != nil {
		return Cycle{}, fmt.Errorf("encode pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return Cycle{c: &schedulerv1.Cycle{Id: id, Pod: b}}, nil
}

// PreFilter runs the plugin's PreFilter.
func (c *Client) PreFilter(ctx context.Context, cy Cycle) (*PreFilterResult, *Status, error) {
	r, err := c.rpc.PreFilter(ctx, &schedulerv1.PreFilterRequest{Cycle: cy.c})
	if err != nil {
		return nil, nil, rpcErr("PreFilter", err)
	}
	var res *PreFilterResult
	if r.Narrow {
		res = &PreFilterResult{NodeNames: r.NodeNames}
		if res.NodeNames == nil {
			res.NodeNames = []string{}
		}
	}
	return res, statusFromProto(r.Status), nil
}

// Filter asks, in one call, whether the pod fits each named node; one status per node.
func (c *Client) Filter(ctx context.Context, cy Cycle, gen int64, names []string) ([]*Status, error) {
	r, err := c.rpc.Filter(ctx, &schedulerv1.FilterRequest{Cycle: cy.c, NodeGeneration: gen, NodeNames: names})
	if err != nil {
		return nil, rpcErr("Filter", err)
	}
	if len(r.Statuses) != len(names) {
		return nil, garbage("Filter of %d nodes answered %d statuses", len(names), len(r.Statuses))
	}
	out := make([]*Status, len(names))
	for i, s := range r.Statuses {
		out[i] = statusFromProto(s)
		if c := out[i]; c != nil && c.Code != Unschedulable && c.Code != UnschedulableAndUnresolvable && c.Code != Error {
			return nil, garbage("Filter answered %s for node %s", c.Code, names[i])
		}
	}
	return out, nil
}

// PostFilter runs the plugin's PostFilter over the rejected nodes.
func (c *Client) PostFilter(ctx context.Context, cy Cycle, gen int64, rejected map[string]*Status) (string, *Status, error) {
	req := &schedulerv1.PostFilterRequest{Cycle: cy.c, NodeGeneration: gen}
	for name, s := range rejected {
		req.Rejected = append(req.Rejected, &schedulerv1.NodeStatus{NodeName: name, Status: s.toProto()})
	}
	r, err := c.rpc.PostFilter(ctx, req)
	if err != nil {
		return "", nil, rpcErr("PostFilter", err)
	}
	return r.NominatedNodeName, statusFromProto(r.Status), nil
}

// PreScore runs the plugin's PreScore with the feasible nodes.
func (c *Client) PreScore(ctx context.Context, cy Cycle, gen int64, names []string) (*Status, error) {
	r, err := c.rpc.PreScore(ctx, &schedulerv1.PreScoreRequest{Cycle: cy.c, NodeGeneration: gen, NodeNames: names})
	if err != nil {
		return nil, rpcErr("PreScore", err)
	}
	return statusFromProto(r.Status), nil
}

// Score scores every named node in one call. With checkRange (a plugin without
// NormalizeScore) every score must be in [MinNodeScore, MaxNodeScore].
func (c *Client) Score(ctx context.Context, cy Cycle, gen int64, names []string, checkRange bool) ([]int64, *Status, error) {
	r, err := c.rpc.Score(ctx, &schedulerv1.ScoreRequest{Cycle: cy.c, NodeGeneration: gen, NodeNames: names})
	if err != nil {
		return nil, nil, rpcErr("Score", err)
	}
	if st := statusFromProto(r.Status); st != nil {
		return nil, st, nil
	}
	if len(r.Scores) != len(names) {
		return nil, nil, garbage("Score of %d nodes answered %d scores", len(names), len(r.Scores))
	}
	if checkRange {
		if err := checkScores(names, r.Scores); err != nil {
			return nil, nil, err
		}
	}
	return r.Scores, nil, nil
}

// ScoreAndNormalize scores every named node and, when the plugin has NormalizeScore,
// normalizes the scores in the same call; normalized is false when it did not (a plugin
// without NormalizeScore, or built with an SDK older than this call): the caller then
// calls NormalizeScore itself when the plugin announces it. Normalized scores are checked
// to be in [MinNodeScore, MaxNodeScore].
func (c *Client) ScoreAndNormalize(ctx context.Context, cy Cycle, gen int64, names []string) (scores []int64, normalized bool, st *Status, err error) {
	r, err := c.rpc.Score(ctx, &schedulerv1.ScoreRequest{Cycle: cy.c, NodeGeneration: gen, NodeNames: names, Normalize: true})
	if err != nil {
		return nil, false, nil, rpcErr("Score", err)
	}
	if st := statusFromProto(r.Status); st != nil {
		return nil, false, st, nil
	}
	if len(r.Scores) != len(names) {
		return nil, false, nil, garbage("Score of %d nodes answered %d scores", len(names), len(r.Scores))
	}
	if r.Normalized {
		if err := checkScores(names, r.Scores); err != nil {
			return nil, false, nil, err
		}
	}
	return r.Scores, r.Normalized, nil, nil
}

func checkScores(names []string, scores []int64) error {
	for i, v := range scores {
		if v < MinNodeScore || v > MaxNodeScore {
			return garbage("score %d for node %s is outside [%d, %d]", v, names[i], MinNodeScore, MaxNodeScore)
		}
	}
	return nil
}

// NormalizeScore rescales the plugin's scores; the answer must be in range.
func (c *Client) NormalizeScore(ctx context.Context, cy Cycle, names []string, scores []int64) ([]int64, *Status, error) {
	r, err := c.rpc.NormalizeScore(ctx, &schedulerv1.NormalizeScoreRequest{Cycle: cy.c, NodeNames: names, Scores: scores})
	if err != nil {
		return nil, nil, rpcErr("NormalizeScore", err)
	}
	if st := statusFromProto(r.Status); st != nil {
		return nil, st, nil
	}
	if len(r.Scores) != len(names) {
		return nil, nil, garbage("NormalizeScore of %d nodes answered %d scores", len(names), len(r.Scores))
	}
	if err := checkScores(names, r.Scores); err != nil {
		return nil, nil, err
	}
	return r.Scores, nil, nil
}

// Reserve runs the plugin's Reserve.
func (c *Client) Reserve(ctx context.Context, cy Cycle, node string) (*Status, error) {
	r, err := c.rpc.Reserve(ctx, &schedulerv1.ReserveRequest{Cycle: cy.c, NodeName: node})
	if err != nil {
		return nil, rpcErr("Reserve", err)
	}
	return statusFromProto(r.Status), nil
}

// Unreserve runs the plugin's Unreserve.
func (c *Client) Unreserve(ctx context.Context, cy Cycle, node string) error {
	if _, err := c.rpc.Unreserve(ctx, &schedulerv1.UnreserveRequest{Cycle: cy.c, NodeName: node}); err != nil {
		return rpcErr("Unreserve", err)
	}
	return nil
}

// Permit runs the plugin's Permit; the duration is the hold of a Wait.
func (c *Client) Permit(ctx context.Context, cy Cycle, node string) (*Status, time.Duration, error) {
	r, err := c.rpc.Permit(ctx, &schedulerv1.PermitRequest{Cycle: cy.c, NodeName: node})
	if err != nil {
		return nil, 0, rpcErr("Permit", err)
	}
	return statusFromProto(r.Status), permitTimeout(r.TimeoutMs), nil
}

// PreBind runs the plugin's PreBind.
func (c *Client) PreBind(ctx context.Context, cy Cycle, node string) (*Status, error) {
	r, err := c.rpc.PreBind(ctx, &schedulerv1.PreBindRequest{Cycle: cy.c, NodeName: node})
	if err != nil {
		return nil, rpcErr("PreBind", err)
	}
	return statusFromProto(r.Status), nil
}
