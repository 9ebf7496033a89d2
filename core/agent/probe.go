package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
)

// probeResult is the verdict of one probe, or a probe's standing result.
type probeResult int

const (
	probeUnknown probeResult = iota
	probeSuccess
	probeFailure
)

func (r probeResult) String() string {
	switch r {
	case probeSuccess:
		return "success"
	case probeFailure:
		return "failure"
	}
	return "unknown"
}

// probeUserAgent is what the kubelet of the version the agent implements sends.
const probeUserAgent = "kube-probe/1.33"

// probeBodyLimit is how much of an HTTP answer is read for the probe's output.
const probeBodyLimit = 10 << 10

// execSyncer runs a command in a container: the one call of the CRI runtime service
// the exec handler needs (runtimeapi.RuntimeServiceClient has it).
type execSyncer interface {
	ExecSync(ctx context.Context, in *runtimeapi.ExecSyncRequest, opts ...grpc.CallOption) (*runtimeapi.ExecSyncResponse, error)
}

// probeTarget is what a probe's handler acts on.
type probeTarget struct {
	// containerID is the runtime's ID of the container (for exec).
	containerID string
	// container is the container's spec: its ports (named ports) and static env (exec).
	container *corev1.Container
	// host is the pod's IP (the node's for a hostNetwork pod), used when the handler
	// names no host.
	host string
}

// probeHandlers runs the four kinds of probe handler.
type probeHandlers struct {
	exec execSyncer
	// http is the client of httpGet probes: no keep-alive, no proxy, no redirects off
	// the probed host.
	http *http.Client
}

func newProbeHandlers(exec execSyncer) *probeHandlers {
	transport := &http.Transport{
		Proxy:              nil, // probes go straight to the pod, whatever the agent's environment says
		DisableKeepAlives:  true,
		DisableCompression: true,
		// The kubelet does not verify a probed pod's certificate either.
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // as the kubelet
	}
	return &probeHandlers{
		exec: exec,
		http: &http.Client{Transport: transport, CheckRedirect: localRedirectsOnly},
	}
}

// localRedirectsOnly follows redirects on the probed host only, as the kubelet does by
// default; a redirect elsewhere ends the probe with the redirect as its answer.
func localRedirectsOnly(req *http.Request, via []*http.Request) error {
	if req.URL.Hostname() != via[0].URL.Hostname() {
		return http.ErrUseLastResponse
	}
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	return nil
}

// run runs handler h against t within timeout. A failure comes with the handler's
// output; an error means the probe could not be run at all (the kubelet retries those).
func (p *probeHandlers) run(ctx context.Context, h *corev1.ProbeHandler, timeout time.Duration, t probeTarget) (probeResult, string, error) {
	switch {
	case h.Exec != nil:
		return p.runExec(ctx, h.Exec, timeout, t)
	case h.HTTPGet != nil:
		return p.runHTTP(ctx, h.HTTPGet, timeout, t)
	case h.TCPSocket != nil:
		return runTCP(ctx, h.TCPSocket, timeout, t)
	case h.GRPC != nil:
		return runGRPC(ctx, h.GRPC, timeout, t)
	}
	return probeUnknown, "", errors.New("probe has no handler")
}

func (p *probeHandlers) runExec(ctx context.Context, h *corev1.ExecAction, timeout time.Duration, t probeTarget) (probeResult, string, error) {
	cmd := expandStatic(h.Command, t.container)
	// The runtime enforces the timeout; the call's own deadline only guards against a
	// runtime that does not.
	cctx, cancel := context.WithTimeout(ctx, timeout+criTimeout)
	defer cancel()
	resp, err := p.exec.ExecSync(cctx, &runtimeapi.ExecSyncRequest{
		ContainerId: t.containerID, Cmd: cmd, Timeout: int64(timeout / time.Second),
	})
	if err != nil {
		if status.Code(err) == codes.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded) {
			return probeFailure, fmt.Sprintf("command %q timed out", strings.Join(cmd, " ")), nil
		}
		return probeUnknown, "", fmt.Errorf("exec %q in container %s: %s", strings.Join(cmd, " "), t.containerID, grpcMessage(err))
	}
	out := string(resp.Stdout) + string(resp.Stderr)
	if resp.ExitCode != 0 {
		return probeFailure, out, nil
	}
	return probeSuccess, out, nil
}

// expandStatic expands $(VAR) in an exec probe's command with the container's env
// entries that have a plain value, as the kubelet does (valueFrom is not resolved).
func expandStatic(cmd []string, c *corev1.Container) []string {
	if c == nil || len(c.Env) == 0 {
		return cmd
	}
	mapping := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			mapping[e.Name] = e.Value
		}
	}
	fn := expansion.MappingFuncFor(mapping)
	out := make([]string, len(cmd))
	for i, s := range cmd {
		out[i] = expansion.Expand(s, fn)
	}
	return out
}

// probePort resolves a probe's port, a number or the name of one of the container's ports.
func probePort(port intstr.IntOrString, c *corev1.Container) (int, error) {
	n := port.IntValue()
	if port.Type == intstr.String {
		n = 0
		if c != nil {
			for _, p := range c.Ports {
				if p.Name == port.StrVal {
					n = int(p.ContainerPort)
				}
			}
		}
		if n == 0 {
			return 0, fmt.Errorf("no port named %q in the container", port.StrVal)
		}
	}
	if n <= 0 || n > 65535 {
		return 0, fmt.Errorf("invalid port number: %d", n)
	}
	return n, nil
}

func probeHost(host string, t probeTarget) string {
	if host != "" {
		return host
	}
	return t.host
}

func (p *probeHandlers) runHTTP(ctx context.Context, h *corev1.HTTPGetAction, timeout time.Duration, t probeTarget) (probeResult, string, error) {
	port, err := probePort(h.Port, t.container)
	if err != nil {
		return probeUnknown, "", err
	}
	scheme := strings.ToLower(string(h.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	path := h.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	u, err := url.Parse(scheme + "://" + net.JoinHostPort(probeHost(h.Host, t), strconv.Itoa(port)) + path)
	if err != nil {
		return probeUnknown, "", fmt.Errorf("probe URL: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return probeUnknown, "", fmt.Errorf("probe request: %w", err)
	}
	for _, hd := range h.HTTPHeaders {
		if strings.EqualFold(hd.Name, "Host") {
			req.Host = hd.Value
			continue
		}
		req.Header.Add(hd.Name, hd.Value)
	}
	// Defaults the pod's own headers can replace.
	if _, ok := req.Header["User-Agent"]; !ok {
		req.Header.Set("User-Agent", probeUserAgent)
	}
	if _, ok := req.Header["Accept"]; !ok {
		req.Header.Set("Accept", "*/*")
	}
	resp, err := p.http.Do(req)
	if err != nil {
		return probeFailure, err.Error(), nil
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, probeBodyLimit))
	if err != nil {
		return probeFailure, "", fmt.Errorf("read probe answer: %w", err)
	}
	if resp.StatusCode >= http.StatusOK && resp.StatusCode < http.StatusBadRequest {
		return probeSuccess, string(body), nil
	}
	return probeFailure, fmt.Sprintf("HTTP probe failed with statuscode: %d", resp.StatusCode), nil
}

func runTCP(ctx context.Context, h *corev1.TCPSocketAction, timeout time.Duration, t probeTarget) (probeResult, string, error) {
	port, err := probePort(h.Port, t.container)
	if err != nil {
		return probeUnknown, "", err
	}
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(probeHost(h.Host, t), strconv.Itoa(port)))
	if err != nil {
		return probeFailure, err.Error(), nil
	}
	_ = conn.Close()
	return probeSuccess, "", nil
}

func runGRPC(ctx context.Context, h *corev1.GRPCAction, timeout time.Duration, t probeTarget) (probeResult, string, error) {
	if h.Port <= 0 || h.Port > 65535 {
		return probeUnknown, "", fmt.Errorf("invalid port number: %d", h.Port)
	}
	addr := net.JoinHostPort(t.host, strconv.Itoa(int(h.Port)))
	conn, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUserAgent(probeUserAgent))
	if err != nil {
		return probeFailure, fmt.Sprintf("error: failed to connect service at %q: %+v", addr, err), nil
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var service string
	if h.Service != nil {
		service = *h.Service
	}
	resp, err := healthpb.NewHealthClient(conn).Check(cctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		switch status.Code(err) {
		case codes.Unimplemented:
			return probeFailure, fmt.Sprintf("error: this server does not implement the grpc health protocol (grpc.health.v1.Health): %s", grpcMessage(err)), nil
		case codes.DeadlineExceeded:
			return probeFailure, fmt.Sprintf("timeout: health rpc did not complete within %v", timeout), nil
		}
		return probeFailure, fmt.Sprintf("error: health rpc probe failed: %+v", err), nil
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return probeFailure, fmt.Sprintf("service unhealthy (responded with %q)", resp.GetStatus().String()), nil
	}
	return probeSuccess, "service healthy", nil
}
