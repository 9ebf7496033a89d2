package scheduler

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	schedulerv1 "berth.dev/berth/specs/scheduler/v1"
)

func TestNegotiateAPIVersion(t *testing.T) {
	for _, tc := range []struct {
		plugin, host []string
		want, err    string
	}{
		{plugin: []string{"v1"}, host: []string{"v1"}, want: "v1"},
		{plugin: []string{"v1", "v2", "v3"}, host: []string{"v1", "v2"}, want: "v2"},
		{plugin: []string{"v2", "v10"}, host: []string{"v10", "v2"}, want: "v10"},
		{plugin: []string{"v2"}, host: []string{"v1"}, err: "plugin cost speaks scheduler API v2; this berth speaks v1"},
		{plugin: nil, host: []string{"v1"}, err: "plugin cost announces no scheduler API version; this berth speaks v1"},
		{plugin: []string{"1", "vx"}, host: []string{"1", "vx"}, err: "plugin cost speaks scheduler API 1, vx; this berth speaks 1, vx"},
	} {
		got, err := NegotiateAPIVersion("cost", tc.plugin, tc.host)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%v/%v: err = %v, want %q", tc.plugin, tc.host, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%v/%v = %q, %v; want %q", tc.plugin, tc.host, got, err, tc.want)
		}
	}
}

func TestStatusWire(t *testing.T) {
	for _, s := range []*Status{nil, NewStatus(Unschedulable, "a", "b"), NewStatus(Skip), AsStatus(errors.New("boom"))} {
		got := statusFromProto(s.toProto())
		if s.IsSuccess() != got.IsSuccess() || (s != nil && (got.Code != s.Code || got.Message() != s.Message())) {
			t.Errorf("%v round-tripped to %v", s, got)
		}
	}
	if s := statusFromProto(&schedulerv1.Status{Code: 42, Reasons: []string{"x"}}); s.Code != Error || !strings.Contains(s.Message(), "unknown status code 42") {
		t.Errorf("unknown code became %v, want an Error", s)
	}
}

// fake is a plugin with every extension point, recording what it saw.
type fake struct {
	reserved []string
}

func (*fake) Name() string    { return "fake" }
func (*fake) Version() string { return "1.2.3" }

func (*fake) PreFilter(_ context.Context, pod *corev1.Pod) (*PreFilterResult, *Status) {
	if pod.Labels["skip"] != "" {
		return nil, NewStatus(Skip)
	}
	if pod.Labels["narrow"] != "" {
		return &PreFilterResult{NodeNames: []string{pod.Labels["narrow"]}}, nil
	}
	return nil, nil
}

func (*fake) Filter(_ context.Context, pod *corev1.Pod, node *corev1.Node) *Status {
	if node.Labels["zone"] != pod.Labels["zone"] {
		return NewStatus(Unschedulable, "node(s) in another zone")
	}
	return nil
}

func (*fake) Score(_ context.Context, _ *corev1.Pod, node *corev1.Node) (int64, *Status) {
	return int64(len(node.Name)) * 100, nil
}

func (*fake) NormalizeScore(_ context.Context, _ *corev1.Pod, scores []NodeScore) *Status {
	for i := range scores {
		scores[i].Score /= 100
	}
	return nil
}

func (f *fake) Reserve(ctx context.Context, _ *corev1.Pod, node string) *Status {
	f.reserved = append(f.reserved, CycleID(ctx)+"@"+node)
	return nil
}

func (*fake) Unreserve(context.Context, *corev1.Pod, string) {}

func (*fake) Permit(context.Context, *corev1.Pod, string) (*Status, time.Duration) {
	return NewStatus(Wait), 3 * time.Second
}

// connect serves p over a real in-process go-plugin gRPC connection and returns the host's
// Client.
func connect(t *testing.T, p Plugin) *Client {
	t.Helper()
	client, _ := plugin.TestPluginGRPCConn(t, false, PluginSet(p))
	t.Cleanup(func() { _ = client.Close() })
	raw, err := client.Dispense(PluginName)
	if err != nil {
		t.Fatal(err)
	}
	return raw.(*Client)
}

func node(name, zone string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"zone": zone}}}
}

func pod(labels map[string]string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "u1", Labels: labels}}
}

func TestServerAndClient(t *testing.T) {
	f := &fake{}
	c := connect(t, f)
	ctx := context.Background()

	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "fake" || info.Version != "1.2.3" || len(info.APIVersions) != 1 ||
		!info.Implements(FilterPoint) || !info.Implements(NormalizeScorePoint) || !info.Implements(ReservePoint) || info.Implements(PreBindPoint) {
		t.Errorf("info = %+v", info)
	}
	if err := c.Configure(ctx, "v1", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Configure(ctx, "v9", nil); err == nil {
		t.Error("Configure accepted an API version the plugin does not speak")
	}

	// Nodes: a full sync, then a delta.
	if err := c.SyncNodes(ctx, NodeDelta{Generation: 1, Full: true, Nodes: []*corev1.Node{node("a", "z1"), node("bb", "z2"), node("ccc", "z1")}}); err != nil {
		t.Fatal(err)
	}
	if err := c.SyncNodes(ctx, NodeDelta{Base: 5, Generation: 6, Nodes: []*corev1.Node{node("d", "z1")}}); !errors.Is(err, ErrNodesStale) {
		t.Errorf("a delta on the wrong base: err = %v, want ErrNodesStale", err)
	}
	if err := c.SyncNodes(ctx, NodeDelta{Base: 1, Generation: 2, Nodes: []*corev1.Node{node("bb", "z1")}, Removed: []string{"ccc"}}); err != nil {
		t.Fatal(err)
	}

	cy, err := NewCycle("cycle-1", pod(map[string]string{"zone": "z1"}))
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Filter(ctx, cy, 2, []string{"a", "bb"})
	if err != nil {
		t.Fatal(err)
	}
	if !st[0].IsSuccess() || !st[1].IsSuccess() {
		t.Errorf("filter after the delta = %v, %v; want both to fit (bb moved to z1)", st[0], st[1])
	}
	if _, err := c.Filter(ctx, cy, 2, []string{"ccc"}); !errors.Is(err, ErrNodesStale) {
		t.Errorf("filter of a removed node: err = %v, want ErrNodesStale", err)
	}
	if _, err := c.Filter(ctx, cy, 3, []string{"a"}); !errors.Is(err, ErrNodesStale) {
		t.Errorf("filter at a future generation: err = %v, want ErrNodesStale", err)
	}

	other, _ := NewCycle("cycle-2", pod(map[string]string{"zone": "z9"}))
	st, err = c.Filter(ctx, other, 2, []string{"a"})
	if err != nil || st[0] == nil || st[0].Code != Unschedulable || st[0].Message() != "node(s) in another zone" {
		t.Errorf("filter in another zone = %v, %v", st, err)
	}

	scores, s, err := c.Score(ctx, cy, 2, []string{"a", "bb"}, false)
	if err != nil || s != nil || scores[0] != 100 || scores[1] != 200 {
		t.Fatalf("score = %v, %v, %v", scores, s, err)
	}
	if _, _, err := c.Score(ctx, cy, 2, []string{"a", "bb"}, true); err == nil || err.Error() != "malformed answer: score 200 for node bb is outside [0, 100]" {
		t.Errorf("a score of 200 without NormalizeScore: err = %v", err)
	}
	norm, s, err := c.NormalizeScore(ctx, cy, []string{"a", "bb"}, scores)
	if err != nil || s != nil || norm[0] != 1 || norm[1] != 2 {
		t.Errorf("normalize = %v, %v, %v", norm, s, err)
	}
	// Score and NormalizeScore in one round trip give what the two calls give.
	both, normalized, s, err := c.ScoreAndNormalize(ctx, cy, 2, []string{"a", "bb"})
	if err != nil || s != nil || !normalized || both[0] != 1 || both[1] != 2 {
		t.Errorf("score and normalize = %v, %v, %v, %v; want [1 2], normalized", both, normalized, s, err)
	}

	r, s, err := c.PreFilter(ctx, cy)
	if err != nil || s != nil || r != nil {
		t.Errorf("prefilter = %v, %v, %v", r, s, err)
	}
	narrow, _ := NewCycle("c3", pod(map[string]string{"narrow": "a"}))
	if r, _, _ := c.PreFilter(ctx, narrow); r == nil || len(r.NodeNames) != 1 || r.NodeNames[0] != "a" {
		t.Errorf("narrowing prefilter = %v", r)
	}
	skip, _ := NewCycle("c4", pod(map[string]string{"skip": "1"}))
	if _, s, _ := c.PreFilter(ctx, skip); s == nil || s.Code != Skip {
		t.Errorf("skipping prefilter = %v", s)
	}

	if s, err := c.Reserve(ctx, cy, "a"); err != nil || s != nil {
		t.Errorf("reserve = %v, %v", s, err)
	}
	if len(f.reserved) != 1 || f.reserved[0] != "cycle-1@a" {
		t.Errorf("the plugin saw reserve %v, want the cycle id", f.reserved)
	}
	if s, d, err := c.Permit(ctx, cy, "a"); err != nil || s == nil || s.Code != Wait || d != 3*time.Second {
		t.Errorf("permit = %v, %v, %v", s, d, err)
	}
	if _, err := c.PreBind(ctx, cy, "a"); err == nil || !strings.Contains(err.Error(), "does not implement preBind") {
		t.Errorf("prebind of a plugin without it: err = %v", err)
	}
}

// embedded embeds Unimplemented and lists its one real point.
type embedded struct{ Unimplemented }

func (embedded) Name() string                      { return "embedded" }
func (embedded) Version() string                   { return "0" }
func (embedded) ExtensionPoints() []ExtensionPoint { return []ExtensionPoint{ScorePoint} }
func (embedded) Score(context.Context, *corev1.Pod, *corev1.Node) (int64, *Status) {
	return 7, nil
}

type bare struct{ Unimplemented }

func (bare) Name() string    { return "bare" }
func (bare) Version() string { return "0" }

type nothing struct{}

func (nothing) Name() string    { return "nothing" }
func (nothing) Version() string { return "0" }

func TestExtensionPoints(t *testing.T) {
	if got := ExtensionPointsOf(embedded{}); len(got) != 1 || got[0] != ScorePoint {
		t.Errorf("embedded announces %v, want only score", got)
	}
	if got := ExtensionPointsOf(&fake{}); len(got) != 6 {
		t.Errorf("fake announces %v, want 6 points", got)
	}
	for _, p := range []Plugin{bare{}, nothing{}} {
		if err := check(p); err == nil || !strings.Contains(err.Error(), "implements no extension point") {
			t.Errorf("%s: err = %v", p.Name(), err)
		}
	}
	c := connect(t, embedded{})
	ctx := context.Background()
	if err := c.SyncNodes(ctx, NodeDelta{Generation: 1, Full: true, Nodes: []*corev1.Node{node("a", "")}}); err != nil {
		t.Fatal(err)
	}
	cy, _ := NewCycle("x", pod(nil))
	if _, err := c.Filter(ctx, cy, 1, []string{"a"}); err == nil || !strings.Contains(err.Error(), "does not implement filter") {
		t.Errorf("filter of a plugin that only embeds it: %v", err)
	}
	if sc, s, err := c.Score(ctx, cy, 1, []string{"a"}, true); err != nil || s != nil || sc[0] != 7 {
		t.Errorf("score: %v %v %v", sc, s, err)
	}
	// Without NormalizeScore the scores come back as they are, and say so.
	if sc, normalized, s, err := c.ScoreAndNormalize(ctx, cy, 1, []string{"a"}); err != nil || s != nil || normalized || sc[0] != 7 {
		t.Errorf("score and normalize without NormalizeScore: %v %v %v %v", sc, normalized, s, err)
	}
}

// liar answers with the wrong number of results, as a broken plugin in any language could.
type liar struct {
	schedulerv1.UnimplementedSchedulerServer
}

func (liar) Filter(context.Context, *schedulerv1.FilterRequest) (*schedulerv1.FilterResponse, error) {
	return &schedulerv1.FilterResponse{Statuses: []*schedulerv1.Status{{}}}, nil
}

func (liar) Score(context.Context, *schedulerv1.ScoreRequest) (*schedulerv1.ScoreResponse, error) {
	return &schedulerv1.ScoreResponse{Scores: []int64{1, 2, 3}}, nil
}

func (liar) SyncNodes(_ context.Context, r *schedulerv1.SyncNodesRequest) (*schedulerv1.SyncNodesResponse, error) {
	return &schedulerv1.SyncNodesResponse{Generation: r.Generation + 1}, nil
}

func TestClientRefusesGarbage(t *testing.T) {
	conn, _ := plugin.TestGRPCConn(t, func(s *grpc.Server) { schedulerv1.RegisterSchedulerServer(s, liar{}) })
	t.Cleanup(func() { _ = conn.Close() })
	c := NewClient(conn)
	ctx := context.Background()
	cy, _ := NewCycle("x", pod(nil))
	var pe *ProtocolError
	if _, err := c.Filter(ctx, cy, 0, []string{"a", "b"}); !errors.As(err, &pe) {
		t.Errorf("filter: err = %v, want a ProtocolError", err)
	}
	if _, _, err := c.Score(ctx, cy, 0, []string{"a"}, true); !errors.As(err, &pe) || pe.Msg != "Score of 1 nodes answered 3 scores" {
		t.Errorf("score: err = %v", err)
	}
	// liar, like a plugin built before ScoreRequest.normalize, never says normalized.
	if sc, normalized, _, err := c.ScoreAndNormalize(ctx, cy, 0, []string{"a", "b", "c"}); err != nil || normalized || len(sc) != 3 {
		t.Errorf("score and normalize of an older plugin = %v, %v, %v; want its raw scores, not normalized", sc, normalized, err)
	}
	if err := c.SyncNodes(ctx, NodeDelta{Generation: 1, Full: true}); !errors.As(err, &pe) {
		t.Errorf("sync: err = %v", err)
	}
}

func TestNodeCacheKeepsOldStateOnBadDelta(t *testing.T) {
	c := newNodeCache()
	good, _ := node("a", "z").Marshal()
	if err := c.apply(&schedulerv1.SyncNodesRequest{Generation: 1, Full: true, Nodes: [][]byte{good}}); err != nil {
		t.Fatal(err)
	}
	if err := c.apply(&schedulerv1.SyncNodesRequest{BaseGeneration: 1, Generation: 2, Nodes: [][]byte{good, []byte("\xff garbage")}, Removed: []string{"a"}}); err == nil {
		t.Fatal("a delta with a bad node applied")
	}
	if c.len() != 1 || c.generation != 1 {
		t.Errorf("after a bad delta: %d nodes at generation %d, want 1 at 1", c.len(), c.generation)
	}
}

// signer is a Filter plugin that declares the pod signature it is given.
type signer struct {
	sig *PodSignature
}

func (signer) Name() string                                              { return "signer" }
func (signer) Version() string                                           { return "0.0.1" }
func (signer) Filter(context.Context, *corev1.Pod, *corev1.Node) *Status { return nil }
func (s signer) PodSignature() *PodSignature                             { return s.sig }

func TestPodSignatureTravels(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		p    Plugin
		want *PodSignature
	}{
		{"no PodSignature method", embedded{}, nil},
		{"nil signature", signer{}, nil},
		{"empty", signer{&PodSignature{}}, &PodSignature{}},
		{"fields", signer{&PodSignature{Fields: []string{"spec.runtimeClassName", "metadata.annotations"}}},
			&PodSignature{Fields: []string{"spec.runtimeClassName", "metadata.annotations"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := connect(t, tc.p).Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			got := info.PodSignature
			if (got == nil) != (tc.want == nil) || got != nil && !slices.Equal(got.Fields, tc.want.Fields) {
				t.Errorf("Info().PodSignature = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestPodSignatureValidation(t *testing.T) {
	for _, good := range []string{"spec.runtimeClassName", "metadata.annotations", "spec.containers.image", "spec.os.name", "metadata.labels.app_1"} {
		if err := ValidatePodField(good); err != nil {
			t.Errorf("%q: %v", good, err)
		}
	}
	for _, bad := range []string{"", "spec", "spec.", "metadata", "status.phase", "spec..containers", ".spec.x", "spec.containers[0]", "spec.a-b", "Spec.x", "spec.x.", "metadata.labels.app.kubernetes.io/name"} {
		if err := ValidatePodField(bad); err == nil {
			t.Errorf("%q: accepted", bad)
		}
	}
	if err := (*PodSignature)(nil).Validate(); err != nil {
		t.Errorf("nil signature: %v", err)
	}
	// The SDK refuses to serve a plugin that declares a malformed path.
	err := check(signer{&PodSignature{Fields: []string{"spec.nodeName", "status.phase"}}})
	if err == nil || !strings.Contains(err.Error(), "signer") || !strings.Contains(err.Error(), `"status.phase"`) {
		t.Errorf("check of a bad signature: %v", err)
	}
}
