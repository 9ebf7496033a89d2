package admission

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	admissionv1 "berth.dev/berth/specs/admission/v1"
)

// connect serves p over an in-memory gRPC connection and returns the host's Client.
func connect(t *testing.T, p Plugin) *Client {
	t.Helper()
	srv, err := newServer(p)
	if err != nil {
		t.Fatal(err)
	}
	lis := bufconn.Listen(1 << 20)
	s := grpc.NewServer()
	admissionv1.RegisterAdmissionServer(s, srv)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	conn, err := grpc.NewClient("passthrough:///bufnet",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		s.Stop()
		<-done
	})
	return NewClient(conn)
}

// recorder validates and mutates by the object's name, and records what it was sent.
type recorder struct {
	got  *Request
	args []byte
}

func (r *recorder) Name() string    { return "recorder" }
func (r *recorder) Version() string { return "1.2.3" }
func (r *recorder) Configure(_ string, args []byte) error {
	if string(args) == `{"bad":true}` {
		return errors.New("bad args")
	}
	r.args = args
	return nil
}

func (r *recorder) Validate(_ context.Context, req *Request) (Verdict, error) {
	r.got = req
	switch req.Name {
	case "deny":
		return Deny("no %s today", req.Kind.Kind), nil
	case "error":
		return Verdict{}, errors.New("broken")
	}
	return Allow(), nil
}

func (r *recorder) Mutate(_ context.Context, req *Request) (Mutation, error) {
	var pod corev1.Pod
	if err := req.Decode(&pod); err != nil {
		return Mutation{}, err
	}
	switch req.Name {
	case "deny":
		return DenyMutation("nope"), nil
	case "patch":
		return Patched([]byte(`[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]`)), nil
	case "replace":
		pod.Spec.NodeName = "n1"
		return Replaced(&pod)
	case "rename":
		pod.Name = "other"
		return Replaced(&pod)
	case "badpatch":
		return Patched([]byte(`{]`)), nil
	case "nopatch":
		return Mutation{Verdict: Allow(), PatchType: NoPatch, Patch: []byte("x")}, nil
	case "notapplicable":
		return Patched([]byte(`[{"op":"replace","path":"/spec/nothing/there","value":1}]`)), nil
	}
	return Unchanged(), nil
}

func podRequest(t *testing.T, name string) *Request {
	t.Helper()
	pod := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"}}
	b, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return &Request{
		UID: "u1", Operation: Update,
		Resource: schema.GroupVersionResource{Version: "v1", Resource: "pods"}, Kind: schema.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Namespace: "ns", Name: name, Object: b, OldObject: b,
		UserInfo: UserInfo{Username: "alice", Groups: []string{"devs"}}, DryRun: true,
	}
}

func TestInfoAndConfigure(t *testing.T) {
	r := &recorder{}
	c := connect(t, r)
	ctx := context.Background()
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Name != "recorder" || info.Version != "1.2.3" || !info.Mutating || !info.Validating || strings.Join(info.APIVersions, ",") != "v1" {
		t.Errorf("Info = %+v", info)
	}
	if err := c.Configure(ctx, "v1", []byte(`{"x":1}`)); err != nil {
		t.Fatal(err)
	}
	if string(r.args) != `{"x":1}` {
		t.Errorf("args = %s", r.args)
	}
	err = c.Configure(ctx, "v1", []byte(`{"bad":true}`))
	if status.Code(errors.Unwrap(err)) != codes.InvalidArgument || !strings.Contains(err.Error(), "bad args") {
		t.Errorf("Configure with bad args = %v, want InvalidArgument naming the reason", err)
	}
}

func TestValidateRoundTrip(t *testing.T) {
	r := &recorder{}
	c := connect(t, r)
	ctx := context.Background()
	req := podRequest(t, "ok")
	v, err := c.Validate(ctx, req)
	if err != nil || !v.Allowed {
		t.Fatalf("Validate = %+v, %v", v, err)
	}
	got := r.got
	if got.UID != "u1" || got.Operation != Update || got.Resource != req.Resource || got.Kind != req.Kind ||
		got.Namespace != "ns" || got.Name != "ok" || string(got.Object) != string(req.Object) || string(got.OldObject) != string(req.OldObject) ||
		got.UserInfo.Username != "alice" || strings.Join(got.UserInfo.Groups, ",") != "devs" || !got.DryRun {
		t.Errorf("plugin got %+v, sent %+v", got, req)
	}
	v, err = c.Validate(ctx, podRequest(t, "deny"))
	if err != nil || v.Allowed || v.Message != "no Pod today" {
		t.Errorf("Validate(deny) = %+v, %v", v, err)
	}
	if _, err := c.Validate(ctx, podRequest(t, "error")); status.Code(errors.Unwrap(err)) != codes.Unknown || !strings.Contains(err.Error(), "broken") {
		t.Errorf("Validate(error) = %v, want Unknown with the plugin's error", err)
	}
}

func TestMutate(t *testing.T) {
	c := connect(t, &recorder{})
	ctx := context.Background()
	for _, tc := range []struct {
		name    string
		allowed bool
		check   func(*corev1.Pod) bool
		garbage string
	}{
		{name: "same", allowed: true},
		{name: "deny"},
		{name: "patch", allowed: true, check: func(p *corev1.Pod) bool { return p.Labels["a"] == "b" }},
		{name: "replace", allowed: true, check: func(p *corev1.Pod) bool { return p.Spec.NodeName == "n1" }},
		{name: "rename", garbage: `changed the object's name from "rename" to "other"`},
		{name: "badpatch", garbage: "does not parse"},
		{name: "nopatch", garbage: "patch of type NONE"},
		{name: "notapplicable", garbage: "does not apply"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := c.Mutate(ctx, podRequest(t, tc.name))
			if tc.garbage != "" {
				var pe *ProtocolError
				if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.garbage) {
					t.Fatalf("Mutate = %+v, %v; want a ProtocolError containing %q", res, err, tc.garbage)
				}
				return
			}
			if err != nil || res.Allowed != tc.allowed {
				t.Fatalf("Mutate = %+v, %v; want allowed %v", res, err, tc.allowed)
			}
			if tc.check == nil {
				if res.Object != nil {
					t.Errorf("unchanged object returned %s", res.Object)
				}
				return
			}
			var pod corev1.Pod
			if err := json.Unmarshal(res.Object, &pod); err != nil || !tc.check(&pod) {
				t.Errorf("mutated object %s (%v) is not what the plugin made", res.Object, err)
			}
		})
	}
}

type validateOnly struct{}

func (validateOnly) Name() string    { return "v" }
func (validateOnly) Version() string { return "0" }
func (validateOnly) Validate(context.Context, *Request) (Verdict, error) {
	return Allow(), nil
}

type neither struct{}

func (neither) Name() string    { return "n" }
func (neither) Version() string { return "0" }

func TestHooksAnnounced(t *testing.T) {
	c := connect(t, validateOnly{})
	info, err := c.Info(context.Background())
	if err != nil || info.Mutating || !info.Validating {
		t.Fatalf("Info = %+v, %v; want validating only", info, err)
	}
	if _, err := c.Mutate(context.Background(), podRequest(t, "x")); status.Code(errors.Unwrap(err)) != codes.Unimplemented {
		t.Errorf("Mutate on a validating plugin = %v, want Unimplemented", err)
	}
	if err := check(neither{}); err == nil || !strings.Contains(err.Error(), "neither Mutate nor Validate") {
		t.Errorf("check(neither) = %v", err)
	}
	if err := check(nil); err == nil {
		t.Error("check(nil) passed")
	}
}

func TestNegotiateAPIVersion(t *testing.T) {
	for _, tc := range []struct {
		plugin, host []string
		want, err    string
	}{
		{plugin: []string{"v1"}, host: []string{"v1"}, want: "v1"},
		{plugin: []string{"v1", "v2", "v3"}, host: []string{"v1", "v2"}, want: "v2"},
		{plugin: []string{"v2"}, host: []string{"v1"}, err: "admission plugin p speaks admission API v2; this berth speaks v1"},
		{plugin: nil, host: []string{"v1"}, err: "announces no admission API version"},
		{plugin: []string{"beta", "v0"}, host: []string{"beta", "v0"}, err: "speaks admission API beta, v0"},
	} {
		got, err := NegotiateAPIVersion("p", tc.plugin, tc.host)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("NegotiateAPIVersion(%v, %v) = %q, %v; want error %q", tc.plugin, tc.host, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("NegotiateAPIVersion(%v, %v) = %q, %v; want %q", tc.plugin, tc.host, got, err, tc.want)
		}
	}
}
