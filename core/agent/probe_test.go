package agent

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeExec answers ExecSync as a runtime would: the fake has no containers, it replays
// the configured answer and records the request.
type fakeExec struct {
	resp *runtimeapi.ExecSyncResponse
	err  error
	got  *runtimeapi.ExecSyncRequest
}

func (f *fakeExec) ExecSync(_ context.Context, in *runtimeapi.ExecSyncRequest, _ ...grpc.CallOption) (*runtimeapi.ExecSyncResponse, error) {
	f.got = in
	return f.resp, f.err
}

func TestExecProbe(t *testing.T) {
	c := &corev1.Container{Name: "main", Env: []corev1.EnvVar{
		{Name: "FILE", Value: "/tmp/ready"},
		{Name: "FROM", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
	}}
	tests := []struct {
		name       string
		resp       *runtimeapi.ExecSyncResponse
		err        error
		want       probeResult
		wantOutput string
		wantErr    bool
	}{
		{"exit 0", &runtimeapi.ExecSyncResponse{Stdout: []byte("ok\n")}, nil, probeSuccess, "ok\n", false},
		{"exit 1 with output", &runtimeapi.ExecSyncResponse{ExitCode: 1, Stdout: []byte("out "), Stderr: []byte("no such file")}, nil, probeFailure, "out no such file", false},
		{"timeout", nil, status.Error(codes.DeadlineExceeded, "timeout 1s exceeded"), probeFailure, `command "cat /tmp/ready $(FROM)" timed out`, false},
		{"runtime error", nil, status.Error(codes.NotFound, "no such container"), probeUnknown, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeExec{resp: tt.resp, err: tt.err}
			h := newProbeHandlers(f)
			ph := &corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"cat", "$(FILE)", "$(FROM)"}}}
			got, out, err := h.run(context.Background(), ph, 3*time.Second, probeTarget{containerID: "c1", container: c})
			if got != tt.want || out != tt.wantOutput || (err != nil) != tt.wantErr {
				t.Errorf("got %v %q %v, want %v %q error %v", got, out, err, tt.want, tt.wantOutput, tt.wantErr)
			}
			// Static env is expanded, valueFrom is not; the timeout goes to the runtime.
			if f.got.ContainerId != "c1" || strings.Join(f.got.Cmd, " ") != "cat /tmp/ready $(FROM)" || f.got.Timeout != 3 {
				t.Errorf("request %+v", f.got)
			}
		})
	}
}

func TestHTTPGetProbe(t *testing.T) {
	var gotHeader http.Header
	var gotHost string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotHeader, gotHost = r.Header.Clone(), r.Host
		switch r.URL.Path {
		case "/healthz":
			_, _ = w.Write([]byte("fine"))
		case "/moved":
			http.Redirect(w, r, "/healthz", http.StatusFound)
		case "/elsewhere":
			// A redirect off the probed host is not followed: the 3xx is the answer.
			http.Redirect(w, r, "http://127.0.0.2:1/", http.StatusFound)
		case "/slow":
			<-r.Context().Done()
		default:
			http.Error(w, "broken", http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	u, _ := url.Parse(srv.URL)
	host, portText, _ := net.SplitHostPort(u.Host)
	port, _ := strconv.Atoi(portText)
	c := &corev1.Container{Name: "main", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(port)}}}

	tests := []struct {
		name       string
		action     corev1.HTTPGetAction
		want       probeResult
		wantOutput string
		wantErr    bool
	}{
		{"2xx", corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(int32(port))}, probeSuccess, "fine", false},
		{"named port, path without slash", corev1.HTTPGetAction{Path: "healthz", Port: intstr.FromString("http")}, probeSuccess, "fine", false},
		{"local redirect followed", corev1.HTTPGetAction{Path: "/moved", Port: intstr.FromInt32(int32(port))}, probeSuccess, "fine", false},
		{"redirect elsewhere is a 3xx answer", corev1.HTTPGetAction{Path: "/elsewhere", Port: intstr.FromInt32(int32(port))}, probeSuccess, "", false},
		{"5xx", corev1.HTTPGetAction{Path: "/broken", Port: intstr.FromInt32(int32(port))}, probeFailure, "HTTP probe failed with statuscode: 500", false},
		{"timeout", corev1.HTTPGetAction{Path: "/slow", Port: intstr.FromInt32(int32(port))}, probeFailure, "context deadline exceeded", false},
		{"unknown port name", corev1.HTTPGetAction{Path: "/", Port: intstr.FromString("nope")}, probeUnknown, "", true},
	}
	h := newProbeHandlers(nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ph := &corev1.ProbeHandler{HTTPGet: &tt.action}
			got, out, err := h.run(context.Background(), ph, time.Second, probeTarget{container: c, host: host})
			if got != tt.want || !strings.Contains(out, tt.wantOutput) || (err != nil) != tt.wantErr {
				t.Errorf("got %v %q %v, want %v %q error %v", got, out, err, tt.want, tt.wantOutput, tt.wantErr)
			}
		})
	}

	// Headers: the pod's, Host among them, replace the defaults.
	ph := &corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
		Path: "/healthz", Port: intstr.FromInt32(int32(port)), Scheme: corev1.URISchemeHTTP,
		HTTPHeaders: []corev1.HTTPHeader{{Name: "X-Probe", Value: "yes"}, {Name: "Host", Value: "web.example"}, {Name: "Accept", Value: "text/plain"}},
	}}
	if got, _, err := h.run(context.Background(), ph, time.Second, probeTarget{container: c, host: host}); got != probeSuccess || err != nil {
		t.Fatalf("probe with headers: %v %v", got, err)
	}
	if gotHeader.Get("X-Probe") != "yes" || gotHeader.Get("User-Agent") != probeUserAgent || gotHeader.Get("Accept") != "text/plain" || gotHost != "web.example" {
		t.Errorf("headers %v, host %q", gotHeader, gotHost)
	}
}

func TestTCPSocketProbe(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := l.Addr().(*net.TCPAddr).Port
	// A port that was free a moment ago: nothing listens there.
	closed, _ := net.Listen("tcp", "127.0.0.1:0")
	closedPort := closed.Addr().(*net.TCPAddr).Port
	closed.Close()
	defer l.Close()

	tests := []struct {
		name   string
		action corev1.TCPSocketAction
		want   probeResult
		output string
	}{
		{"listening", corev1.TCPSocketAction{Port: intstr.FromInt32(int32(port))}, probeSuccess, ""},
		{"explicit host", corev1.TCPSocketAction{Host: "127.0.0.1", Port: intstr.FromInt32(int32(port))}, probeSuccess, ""},
		{"refused", corev1.TCPSocketAction{Port: intstr.FromInt32(int32(closedPort))}, probeFailure, "connection refused"},
	}
	h := newProbeHandlers(nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, out, err := h.run(context.Background(), &corev1.ProbeHandler{TCPSocket: &tt.action}, time.Second, probeTarget{host: "127.0.0.1"})
			if got != tt.want || !strings.Contains(out, tt.output) || err != nil {
				t.Errorf("got %v %q %v, want %v %q", got, out, err, tt.want, tt.output)
			}
		})
	}
}

func TestGRPCProbe(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	hs.SetServingStatus("db", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	go func() { _ = srv.Serve(l) }()
	defer srv.Stop()
	port := int32(l.Addr().(*net.TCPAddr).Port)

	// A gRPC server without the health service.
	l2, _ := net.Listen("tcp", "127.0.0.1:0")
	bare := grpc.NewServer()
	go func() { _ = bare.Serve(l2) }()
	defer bare.Stop()

	db := "db"
	tests := []struct {
		name   string
		action corev1.GRPCAction
		want   probeResult
		output string
	}{
		{"serving", corev1.GRPCAction{Port: port}, probeSuccess, "service healthy"},
		{"not serving", corev1.GRPCAction{Port: port, Service: &db}, probeFailure, `service unhealthy (responded with "NOT_SERVING")`},
		{"no health service", corev1.GRPCAction{Port: int32(l2.Addr().(*net.TCPAddr).Port)}, probeFailure, "does not implement the grpc health protocol"},
	}
	h := newProbeHandlers(nil)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, out, err := h.run(context.Background(), &corev1.ProbeHandler{GRPC: &tt.action}, time.Second, probeTarget{host: "127.0.0.1"})
			if got != tt.want || !strings.Contains(out, tt.output) || err != nil {
				t.Errorf("got %v %q %v, want %v %q", got, out, err, tt.want, tt.output)
			}
		})
	}
}
