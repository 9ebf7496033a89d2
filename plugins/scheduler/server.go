package scheduler

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	schedulerv1 "berth.dev/berth/specs/scheduler/v1"
)

// Configurable is implemented by a plugin that takes arguments: Configure gets the API
// version the scheduler chose and the plugin's args from the scheduler configuration (JSON,
// empty when none) once, before any other call. An error refuses the plugin.
type Configurable interface {
	Configure(apiVersion string, args []byte) error
}

// APIVersioner is implemented by a plugin that speaks other API versions than the SDK's
// APIVersions (a plugin that keeps an old behaviour, or a test of the negotiation).
type APIVersioner interface {
	APIVersions() []string
}

// server serves one plugin over the protocol. It embeds the generated Unimplemented
// server, so a host that calls a point the plugin did not announce gets UNIMPLEMENTED.
type server struct {
	schedulerv1.UnimplementedSchedulerServer
	plugin Plugin
	points map[ExtensionPoint]bool
	nodes  *nodeCache
	// signature is the plugin's PodSignature (nil: none declared).
	signature *PodSignature

	mu         sync.Mutex
	apiVersion string
}

// newServer checks what the plugin announces and returns its server.
func newServer(p Plugin) (*server, error) {
	if p == nil {
		return nil, errors.New("scheduler plugin is nil")
	}
	if p.Name() == "" {
		return nil, errors.New("scheduler plugin has an empty Name()")
	}
	points := ExtensionPointsOf(p)
	if len(points) == 0 {
		return nil, fmt.Errorf("scheduler plugin %s implements no extension point (embedding Unimplemented needs an ExtensionPoints method)", p.Name())
	}
	s := &server{plugin: p, points: map[ExtensionPoint]bool{}, nodes: newNodeCache()}
	for _, pt := range points {
		if !s.implements(p, pt) {
			return nil, fmt.Errorf("scheduler plugin %s lists extension point %s but has no method for it", p.Name(), PointName(pt))
		}
		s.points[pt] = true
	}
	if ps, ok := p.(PodSigner); ok {
		s.signature = ps.PodSignature()
		if err := s.signature.Validate(); err != nil {
			return nil, fmt.Errorf("scheduler plugin %s: %w", p.Name(), err)
		}
	}
	return s, nil
}

// implements reports whether p has the methods of point pt.
func (s *server) implements(p Plugin, pt ExtensionPoint) bool {
	var ok bool
	switch pt {
	case PreFilterPoint:
		_, ok = p.(PreFilterPlugin)
	case FilterPoint:
		_, ok = p.(FilterPlugin)
	case PostFilterPoint:
		_, ok = p.(PostFilterPlugin)
	case PreScorePoint:
		_, ok = p.(PreScorePlugin)
	case ScorePoint:
		_, ok = p.(ScorePlugin)
	case NormalizeScorePoint:
		_, ok = p.(NormalizeScorePlugin)
	case ReservePoint:
		_, ok = p.(ReservePlugin)
	case PermitPoint:
		_, ok = p.(PermitPlugin)
	case PreBindPoint:
		_, ok = p.(PreBindPlugin)
	}
	return ok
}

func (s *server) apiVersions() []string {
	if v, ok := s.plugin.(APIVersioner); ok {
		return v.APIVersions()
	}
	return APIVersions
}

func (s *server) PluginInfo(context.Context, *schedulerv1.PluginInfoRequest) (*schedulerv1.PluginInfoResponse, error) {
	resp := &schedulerv1.PluginInfoResponse{
		Name:        s.plugin.Name(),
		Version:     s.plugin.Version(),
		ApiVersions: s.apiVersions(),
	}
	resp.ExtensionPoints = append(resp.ExtensionPoints, ExtensionPointsOf(s.plugin)...)
	if s.signature != nil {
		resp.PodSignature = &schedulerv1.PodSignature{PodFields: s.signature.Fields}
	}
	return resp, nil
}

func (s *server) Configure(_ context.Context, req *schedulerv1.ConfigureRequest) (*schedulerv1.ConfigureResponse, error) {
	if _, err := NegotiateAPIVersion(s.plugin.Name(), s.apiVersions(), []string{req.ApiVersion}); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if c, ok := s.plugin.(Configurable); ok {
		if err := c.Configure(req.ApiVersion, req.Args); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "configure plugin %s: %v", s.plugin.Name(), err)
		}
	}
	s.mu.Lock()
	s.apiVersion = req.ApiVersion
	s.mu.Unlock()
	return &schedulerv1.ConfigureResponse{}, nil
}

func (s *server) SyncNodes(_ context.Context, req *schedulerv1.SyncNodesRequest) (*schedulerv1.SyncNodesResponse, error) {
	if err := s.nodes.apply(req); err != nil {
		var stale errStale
		if errors.As(err, &stale) {
			return nil, status.Error(codes.FailedPrecondition, err.Error())
		}
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &schedulerv1.SyncNodesResponse{Generation: req.Generation}, nil
}

// begin checks that the point is announced and decodes the call's pod into ctx's cycle.
func (s *server) begin(ctx context.Context, pt ExtensionPoint, c *schedulerv1.Cycle) (context.Context, *corev1.Pod, error) {
	if !s.points[pt] {
		return ctx, nil, status.Errorf(codes.Unimplemented, "plugin %s does not implement %s", s.plugin.Name(), PointName(pt))
	}
	if c == nil {
		return ctx, nil, status.Error(codes.InvalidArgument, "call without a cycle")
	}
	pod := &corev1.Pod{}
	if err := pod.Unmarshal(c.Pod); err != nil {
		return ctx, nil, status.Errorf(codes.InvalidArgument, "decode the pod: %v", err)
	}
	return context.WithValue(ctx, cycleKey{}, c.Id), pod, nil
}

// lookup returns the named nodes; a node the plugin does not know is a protocol error.
func (s *server) lookup(gen int64, names []string) ([]*corev1.Node, error) {
	nodes, missing, err := s.nodes.lookup(gen, names)
	if err != nil {
		return nil, status.Error(codes.FailedPrecondition, err.Error())
	}
	if len(missing) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "%d node(s) unknown to the plugin, first %q: send every node", len(missing), missing[0])
	}
	return nodes, nil
}

func (s *server) PreFilter(ctx context.Context, req *schedulerv1.PreFilterRequest) (*schedulerv1.PreFilterResponse, error) {
	ctx, pod, err := s.begin(ctx, PreFilterPoint, req.Cycle)
	if err != nil {
		return nil, err
	}
	r, st := s.plugin.(PreFilterPlugin).PreFilter(ctx, pod)
	resp := &schedulerv1.PreFilterResponse{Status: st.toProto()}
	if r != nil && r.NodeNames != nil {
		resp.Narrow, resp.NodeNames = true, r.NodeNames
	}
	return resp, nil
}

func (s *server) Filter(ctx context.Context, req *schedulerv1.FilterRequest) (*schedulerv1.FilterResponse, error) {
	ctx, pod, err := s.begin(ctx, FilterPoint, req.Cycle)
	if err != nil {
		return nil, err
	}
	nodes, err := s.lookup(req.NodeGeneration, req.NodeNames)
	if err != nil {
		return nil, err
	}
	p := s.plugin.(FilterPlugin)
	resp := &schedulerv1.FilterResponse{Statuses: make([]*schedulerv1.Status, len(nodes))}
	for i, n := range nodes {
		if i%256 == 0 && ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		resp.Statuses[i] = p.Filter(ctx, pod, n).toProto()
	}
	return resp, nil
}

func (s *server) PostFilter(ctx context.Context, req *schedulerv1.PostFilterRequest) (*schedulerv1.PostFilterResponse, error) {
	ctx, pod, err := s.begin(ctx, PostFilterPoint, req.Cycle)
	if err != nil {
		return nil, err
	}
	rejected := make(map[string]*Status, len(req.Rejected))
	for _, r := range req.Rejected {
		st := statusFromProto(r.Status)
		if st == nil {
			st = NewStatus(Unschedulable)
		}
		rejected[r.NodeName] = st
	}
	node, st := s.plugin.(PostFilterPlugin).PostFilter(ctx, pod, rejected)
	return &schedulerv1.PostFilterResponse{Status: st.toProto(), NominatedNodeName: node}, nil
}

func (s *server) PreScore(ctx context.Context, req *schedulerv1.PreScoreRequest) (*schedulerv1.PreScoreResponse, error) {
	ctx, pod, err := s.begin(ctx, PreScorePoint, req.Cycle)
	if err != nil {
		return nil, err
	}
	nodes, err := s.lookup(req.NodeGeneration, req.NodeNames)
	if err != nil {
		return nil, err
	}
	st := s.plugin.(PreScorePlugin).PreScore(ctx, pod, nodes)
	return &schedulerv1.PreScoreResponse{Status: st.toProto()}, nil
}

func (s *server) Score(ctx context.Context, req *schedulerv1.ScoreRequest) (*schedulerv1.ScoreResponse, error) {
	ctx, pod, err := s.begin(ctx, ScorePoint, req.Cycle)
	if err != nil {
		return nil, err
	}
	nodes, err := s.lookup(req.NodeGeneration, req.NodeNames)
	if err != nil {
		return nil, err
	}
	p := s.plugin.(ScorePlugin)
	scores := make([]int64, len(nodes))
	for i, n := range nodes {
		if i%256 == 0 && ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		v, st := p.Score(ctx, pod, n)
		if !st.IsSuccess() {
			return &schedulerv1.ScoreResponse{Status: st.toProto()}, nil
		}
		scores[i] = v
	}
	np, ok := s.plugin.(NormalizeScorePlugin)
	if !req.Normalize || !ok || !s.points[NormalizeScorePoint] {
		return &schedulerv1.ScoreResponse{Scores: scores}, nil
	}
	// The host asked for normalized scores in this call: NormalizeScore, as its own call
	// would run it, without the round trip.
	ns := make([]NodeScore, len(scores))
	for i := range ns {
		ns[i] = NodeScore{Name: req.NodeNames[i], Score: scores[i]}
	}
	if st := np.NormalizeScore(ctx, pod, ns); !st.IsSuccess() {
		return &schedulerv1.ScoreResponse{Status: st.toProto()}, nil
	}
	for i, sc := range ns {
		scores[i] = sc.Score
	}
	return &schedulerv1.ScoreResponse{Scores: scores, Normalized: true}, nil
}

func (s *server) NormalizeScore(ctx context.Context, req *schedulerv1.NormalizeScoreRequest) (*schedulerv1.NormalizeScoreResponse, error) {
	ctx, pod, err := s.begin(ctx, NormalizeScorePoint, req.Cycle)
	if err != nil {
		return nil, err
	}
	if len(req.NodeNames) != len(req.Scores) {
		return nil, status.Errorf(codes.InvalidArgument, "%d node names but %d scores", len(req.NodeNames), len(req.Scores))
	}
	scores := make([]NodeScore, len(req.Scores))
	for i := range scores {
		scores[i] = NodeScore{Name: req.NodeNames[i], Score: req.Scores[i]}
	}
	if st := s.plugin.(NormalizeScorePlugin).NormalizeScore(ctx, pod, scores); !st.IsSuccess() {
		return &schedulerv1.NormalizeScoreResponse{Status: st.toProto()}, nil
	}
	out := make([]int64, len(scores))
	for i, sc := range scores {
		out[i] = sc.Score
	}
	return &schedulerv1.NormalizeScoreResponse{Scores: out}, nil
}

func (s *server) Reserve(ctx context.Context, req *schedulerv1.ReserveRequest) (*schedulerv1.ReserveResponse, error) {
	ctx, pod, err := s.begin(ctx, ReservePoint, req.Cycle)
	if err != nil {
		return nil, err
	}
	st := s.plugin.(ReservePlugin).Reserve(ctx, pod, req.NodeName)
	return &schedulerv1.ReserveResponse{Status: st.toProto()}, nil
}

func (s *server) Unreserve(ctx context.Context, req *schedulerv1.UnreserveRequest) (*schedulerv1.UnreserveResponse, error) {
	ctx, pod, err := s.begin(ctx, ReservePoint, req.Cycle)
	if err != nil {
		return nil, err
	}
	s.plugin.(ReservePlugin).Unreserve(ctx, pod, req.NodeName)
	return &schedulerv1.UnreserveResponse{}, nil
}

func (s *server) Permit(ctx context.Context, req *schedulerv1.PermitRequest) (*schedulerv1.PermitResponse, error) {
	ctx, pod, err := s.begin(ctx, PermitPoint, req.Cycle)
	if err != nil {
		return nil, err
	}
	st, d := s.plugin.(PermitPlugin).Permit(ctx, pod, req.NodeName)
	return &schedulerv1.PermitResponse{Status: st.toProto(), TimeoutMs: d.Milliseconds()}, nil
}

func (s *server) PreBind(ctx context.Context, req *schedulerv1.PreBindRequest) (*schedulerv1.PreBindResponse, error) {
	ctx, pod, err := s.begin(ctx, PreBindPoint, req.Cycle)
	if err != nil {
		return nil, err
	}
	st := s.plugin.(PreBindPlugin).PreBind(ctx, pod, req.NodeName)
	return &schedulerv1.PreBindResponse{Status: st.toProto()}, nil
}

// permitTimeout converts the wire's milliseconds.
func permitTimeout(ms int64) time.Duration { return time.Duration(ms) * time.Millisecond }
