package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/proxy"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"berth.dev/berth/core/pki"
)

// DefaultStreamingAddr is where the agent serves logs, exec, attach and port-forward by
// default: the kubelet's port.
const DefaultStreamingAddr = "0.0.0.0:10250"

// streamServer is the agent's HTTPS endpoint for the API server, the kubelet's port 10250
// server reduced to what kubectl reaches through the API: container logs, exec, attach
// and port-forward. Clients authenticate with a certificate of the cluster CA and must be
// in group system:masters (the API server's kube-apiserver-kubelet-client identity is).
type streamServer struct {
	a    *Agent
	auth *pki.Authenticator
	ln   net.Listener
	srv  *http.Server
	mux  *http.ServeMux

	// requests counts the requests being served, so serve returns only after the last.
	requests sync.WaitGroup
	mu       sync.Mutex
	// upgraded are the connections of streams in progress (exec, attach, port-forward):
	// net/http forgets a connection once a handler hijacks it, so the server keeps them
	// to close them when the agent stops.
	upgraded map[net.Conn]bool
	// closing is set once serve stops; later requests are refused.
	closing bool
}

// connKey is the request context's key of the request's connection.
type connKey struct{}

// listenStreaming binds the streaming server's address, so the Node can publish the port
// before the server runs; serve starts it.
func (a *Agent) listenStreaming() (*streamServer, error) {
	auth, err := pki.NewAuthenticatorFromPEM(a.cfg.ClientCA)
	if err != nil {
		return nil, fmt.Errorf("streaming server: %w", err)
	}
	host, _ := os.Hostname()
	// The API server does not check this certificate (as kube-apiserver without
	// --kubelet-certificate-authority); the names only help a human with curl.
	serving, err := pki.SelfSignedServing(a.cfg.NodeName, []string{a.hostIP, host, a.cfg.NodeName, "localhost", "127.0.0.1"})
	if err != nil {
		return nil, fmt.Errorf("streaming server: %w", err)
	}
	ln, err := net.Listen("tcp", a.cfg.StreamingAddr)
	if err != nil {
		return nil, fmt.Errorf("streaming server: listen on %s: %w", a.cfg.StreamingAddr, err)
	}
	s := &streamServer{a: a, auth: auth, mux: http.NewServeMux(), upgraded: map[net.Conn]bool{}}
	s.mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", s.serveContainerLogs)
	s.mux.HandleFunc("/exec/{namespace}/{pod}/{container}", s.serveExec)
	s.mux.HandleFunc("/attach/{namespace}/{pod}/{container}", s.serveAttach)
	s.mux.HandleFunc("/portForward/{namespace}/{pod}", s.servePortForward)
	// The kubelet's summary API, with the stats of CSI volumes (csivolumes.go).
	s.mux.HandleFunc("GET /stats/summary", a.serveStatsSummary)
	s.ln = tls.NewListener(ln, &tls.Config{
		Certificates: []tls.Certificate{serving},
		MinVersion:   tls.VersionTLS12,
		// Requested, verified per request by Authenticate: a client without a valid
		// certificate gets a 401 it can read rather than a TLS alert.
		ClientAuth: tls.RequestClientCert,
		NextProtos: []string{"http/1.1"},
	})
	s.srv = &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, connKey{}, c)
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			if st == http.StateHijacked {
				s.mu.Lock()
				s.upgraded[c] = true
				s.mu.Unlock()
			}
		},
	}
	return s, nil
}

// port is the TCP port the server listens on, for the Node's daemonEndpoints.
func (s *streamServer) port() int32 {
	if s == nil {
		return 0
	}
	return int32(s.ln.Addr().(*net.TCPAddr).Port)
}

// serve runs the server until ctx ends, then closes it with every stream in progress and
// returns once their handlers have.
func (s *streamServer) serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	var err error
	select {
	case err = <-errc:
		err = fmt.Errorf("streaming server: %w", err)
		_ = s.srv.Close()
	case <-ctx.Done():
		_ = s.srv.Close()
		if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
			err = fmt.Errorf("streaming server: %w", serr)
		}
	}
	s.mu.Lock()
	s.closing = true
	for c := range s.upgraded {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.requests.Wait()
	return err
}

// close releases the listener of a server that never served (Run failed before).
func (s *streamServer) close() {
	if s != nil {
		_ = s.ln.Close()
	}
}

func (s *streamServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		http.Error(w, "the node agent is stopping", http.StatusServiceUnavailable)
		return
	}
	s.requests.Add(1)
	s.mu.Unlock()
	defer s.requests.Done()
	defer func() {
		// A finished stream's connection is closed; forget it.
		if c, ok := r.Context().Value(connKey{}).(net.Conn); ok {
			s.mu.Lock()
			delete(s.upgraded, c)
			s.mu.Unlock()
		}
	}()
	user, ok := s.auth.Authenticate(r)
	if !ok {
		http.Error(w, "Unauthorized", http.StatusUnauthorized)
		return
	}
	if !slices.Contains(user.Groups, pki.NodeClientGroup) {
		http.Error(w, fmt.Sprintf("Forbidden (user=%s, verb=%s, resource=nodes, subresource=proxy)", user.Name, strings.ToLower(r.Method)), http.StatusForbidden)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// streamFlags are exec's and attach's stdin, stdout, stderr and tty parameters; the API
// server sends "1", kubectl talking to an agent directly "true".
type streamFlags struct{ stdin, stdout, stderr, tty bool }

func parseStreamFlags(q url.Values) (streamFlags, error) {
	var f streamFlags
	for _, p := range []struct {
		name string
		dst  *bool
	}{{"stdin", &f.stdin}, {"stdout", &f.stdout}, {"stderr", &f.stderr}, {"tty", &f.tty}} {
		v := q.Get(p.name)
		if v == "" {
			continue
		}
		b, err := strconv.ParseBool(v)
		if err != nil {
			return f, badRequestf("%s=%q is not a boolean", p.name, v)
		}
		*p.dst = b
	}
	if !f.stdin && !f.stdout && !f.stderr {
		return f, badRequestf("you must specify at least 1 of stdin, stdout, stderr")
	}
	// A terminal has one output stream; the kubelet drops stderr the same way.
	if f.tty {
		f.stderr = false
	}
	return f, nil
}

// serveExec answers /exec/{namespace}/{pod}/{container}?command=...: the runtime's
// streaming server runs the command; this proxies the client's upgraded connection to it.
func (s *streamServer) serveExec(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	flags, err := parseStreamFlags(q)
	if err != nil {
		http.Error(w, message(err), http.StatusBadRequest)
		return
	}
	cmd := q["command"]
	if len(cmd) == 0 {
		http.Error(w, "you must specify at least one command for the container", http.StatusBadRequest)
		return
	}
	id, code, err := s.runningContainer(r.Context(), r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container"))
	if err != nil {
		http.Error(w, err.Error(), code)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), criTimeout)
	resp, err := s.a.runtime.Exec(ctx, &runtimeapi.ExecRequest{
		ContainerId: id, Cmd: cmd, Tty: flags.tty, Stdin: flags.stdin, Stdout: flags.stdout, Stderr: flags.stderr,
	})
	cancel()
	if err != nil {
		http.Error(w, "exec: "+grpcMessage(err), http.StatusInternalServerError)
		return
	}
	s.proxyStream(w, r, resp.Url)
}

// serveAttach answers /attach/{namespace}/{pod}/{container}: attach to the container's
// main process through the runtime's streaming server.
func (s *streamServer) serveAttach(w http.ResponseWriter, r *http.Request) {
	flags, err := parseStreamFlags(r.URL.Query())
	if err != nil {
		http.Error(w, message(err), http.StatusBadRequest)
		return
	}
	id, code, err := s.runningContainer(r.Context(), r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container"))
	if err != nil {
		http.Error(w, err.Error(), code)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), criTimeout)
	resp, err := s.a.runtime.Attach(ctx, &runtimeapi.AttachRequest{
		ContainerId: id, Tty: flags.tty, Stdin: flags.stdin, Stdout: flags.stdout, Stderr: flags.stderr,
	})
	cancel()
	if err != nil {
		http.Error(w, "attach: "+grpcMessage(err), http.StatusInternalServerError)
		return
	}
	s.proxyStream(w, r, resp.Url)
}

// servePortForward answers /portForward/{namespace}/{pod}: forwards to ports of the pod's
// network namespace through the runtime's streaming server. The ports travel in the
// streams' headers (SPDY); the optional port parameter lists them for the runtime.
func (s *streamServer) servePortForward(w http.ResponseWriter, r *http.Request) {
	var ports []int32
	for _, v := range r.URL.Query()["port"] {
		for _, p := range strings.Split(v, ",") {
			n, err := strconv.ParseUint(strings.TrimSpace(p), 10, 16)
			if err != nil || n == 0 {
				http.Error(w, fmt.Sprintf("invalid port %q", p), http.StatusBadRequest)
				return
			}
			ports = append(ports, int32(n))
		}
	}
	pod, code, err := s.pod(r.PathValue("namespace"), r.PathValue("pod"))
	if err != nil {
		http.Error(w, err.Error(), code)
		return
	}
	sb, err := s.readySandbox(r.Context(), pod)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), criTimeout)
	resp, err := s.a.runtime.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: sb, Port: ports})
	cancel()
	if err != nil {
		http.Error(w, "port-forward: "+grpcMessage(err), http.StatusInternalServerError)
		return
	}
	s.proxyStream(w, r, resp.Url)
}

// pod is the pod of the agent's node with that name, and the HTTP code when there is none.
func (s *streamServer) pod(namespace, name string) (*corev1.Pod, int, error) {
	pod, err := s.a.pods.Pods(namespace).Get(name)
	if err != nil {
		return nil, http.StatusNotFound, fmt.Errorf("pod %q does not exist", namespace+"/"+name)
	}
	return pod, 0, nil
}

// readySandbox is the ID of the pod's running sandbox, found by the kubelet's CRI labels.
func (s *streamServer) readySandbox(ctx context.Context, pod *corev1.Pod) (string, error) {
	sbs, err := s.a.listSandboxes(ctx, podLabels(pod))
	if err != nil {
		return "", fmt.Errorf("list sandboxes of pod %s/%s: %s", pod.Namespace, pod.Name, grpcMessage(err))
	}
	for _, sb := range sbs {
		if sb.State == runtimeapi.PodSandboxState_SANDBOX_READY {
			return sb.Id, nil
		}
	}
	return "", fmt.Errorf("pod %s/%s has no running sandbox", pod.Namespace, pod.Name)
}

// runningContainer is the runtime ID of the pod's running container of that name, with
// the kubelet's "container not found" when it has none.
func (s *streamServer) runningContainer(ctx context.Context, namespace, name, container string) (string, int, error) {
	pod, code, err := s.pod(namespace, name)
	if err != nil {
		return "", code, err
	}
	sb, err := s.readySandbox(ctx, pod)
	if err != nil {
		return "", http.StatusInternalServerError, err
	}
	cs, err := s.a.listContainers(ctx, sb)
	if err != nil {
		return "", http.StatusInternalServerError, err
	}
	for _, c := range cs {
		if c.GetMetadata().GetName() == container && c.State == runtimeapi.ContainerState_CONTAINER_RUNNING {
			return c.Id, 0, nil
		}
	}
	return "", http.StatusInternalServerError, fmt.Errorf("container not found (%q)", container)
}

// proxyStream hands the client's upgrade request to the runtime's streaming server, as
// the kubelet does: the runtime's URL carries a one-time token for the request it made.
func (s *streamServer) proxyStream(w http.ResponseWriter, r *http.Request, rawURL string) {
	u, err := url.Parse(rawURL)
	if err != nil {
		http.Error(w, fmt.Sprintf("runtime streaming URL %q: %v", rawURL, err), http.StatusInternalServerError)
		return
	}
	h := proxy.NewUpgradeAwareHandler(u, nil, false, true, &streamResponder{log: s.a.log})
	h.ServeHTTP(w, r)
}

// streamResponder reports a failed proxy to the runtime as a 500 with its reason.
type streamResponder struct{ log *slog.Logger }

func (e *streamResponder) Error(w http.ResponseWriter, r *http.Request, err error) {
	e.log.Info("stream to the runtime failed", "path", r.URL.Path, "err", err)
	http.Error(w, err.Error(), http.StatusInternalServerError)
}
