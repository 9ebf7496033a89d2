package sim

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"os"
	"path"
	"strconv"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/tools/remotecommand"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/kubelet/pkg/cri/streaming"
	utilexec "k8s.io/utils/exec"
)

// maxExecOutput bounds what ExecSync collects of each stream, as the kubelet bounds it.
const maxExecOutput = 16 << 20

// streamServer is the kubelet's streaming server (k8s.io/kubelet/pkg/cri/streaming, the
// library containerd uses too) on a listener of its own.
type streamServer struct {
	server streaming.Server
	http   *http.Server
	served chan struct{}
}

func (s *streamServer) close() error {
	err := s.http.Close()
	<-s.served
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// streamingServer starts the streaming server on first use: most simulated nodes never
// see an exec, and a thousand idle listeners would be waste.
func (r *Runtime) streamingServer() (streaming.Server, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil, status.Error(codes.Unavailable, "runtime is closed")
	}
	if r.stream != nil {
		return r.stream.server, nil
	}
	lis, err := net.Listen("tcp", r.cfg.StreamAddr)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "start streaming server on %s: %v", r.cfg.StreamAddr, err)
	}
	cfg := streaming.DefaultConfig
	cfg.Addr = lis.Addr().String()
	srv, err := streaming.NewServer(cfg, streamRuntime{r})
	if err != nil {
		lis.Close()
		return nil, status.Errorf(codes.Internal, "streaming server: %v", err)
	}
	s := &streamServer{server: srv, http: &http.Server{Handler: srv, ReadHeaderTimeout: 30 * time.Second}, served: make(chan struct{})}
	go func() {
		defer close(s.served)
		if err := s.http.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			r.log.Error("streaming server", "err", err)
		}
	}()
	r.stream = s
	return srv, nil
}

// runningContainer is the container with id when it runs, else a CRI error.
func (r *Runtime) runningContainer(id string) (*container, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, _, ok := lookup(r.containers, id)
	if !ok {
		return nil, notFound("container", id)
	}
	if c.state != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return nil, status.Errorf(codes.FailedPrecondition, "container %q is in %s state", c.id, c.state)
	}
	return c, nil
}

// execShell is an interpreter for an exec in c, on the real clock of ctx.
func (r *Runtime) execShell(ctx context.Context, c *container, stdin io.Reader, out func(int, []byte)) *shell {
	r.mu.Lock()
	sh := c.shell()
	r.mu.Unlock()
	sh.clock = realClock{ctx}
	sh.stdin = stdin
	sh.out = out
	return sh
}

// runExec runs cmd in c: the exit code, or an error for a program the contract does not
// know (as the OCI runtime fails to exec it) or when ctx ended first.
func (r *Runtime) runExec(ctx context.Context, c *container, cmd []string, stdin io.Reader, out func(int, []byte)) (int, error) {
	// The exec ends with its container.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.mu.Lock()
	done := c.done
	r.mu.Unlock()
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	code, err := r.execShell(ctx, c, stdin, out).run(cmd)
	switch {
	case errors.Is(err, errNotCommand):
		name := ""
		if len(cmd) > 0 {
			name = cmd[0]
		}
		return 0, fmt.Errorf("OCI runtime exec failed: exec failed: unable to start container process: exec: %q: executable file not found in $PATH: unknown", name)
	case err != nil:
		return 0, err
	}
	return code, nil
}

// ExecSync runs a command in a running container and returns its output and exit code;
// a command still running at the timeout is an error (DeadlineExceeded).
func (r *Runtime) ExecSync(ctx context.Context, req *runtimeapi.ExecSyncRequest) (*runtimeapi.ExecSyncResponse, error) {
	c, err := r.runningContainer(req.ContainerId)
	if err != nil {
		return nil, err
	}
	if req.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.Timeout)*time.Second)
		defer cancel()
	}
	var bufs [2]bytes.Buffer
	code, err := r.runExec(ctx, c, req.Cmd, nil, func(stream int, data []byte) {
		if room := maxExecOutput - bufs[stream].Len(); room > 0 {
			bufs[stream].Write(data[:min(len(data), room)])
		}
	})
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return nil, status.Errorf(codes.DeadlineExceeded, "failed to exec in container: timeout %ds exceeded: %v", req.Timeout, err)
	case errors.Is(err, context.Canceled):
		return nil, status.Errorf(codes.Canceled, "exec in container %q: %v", c.id, err)
	case err != nil:
		return nil, status.Errorf(codes.Unknown, "failed to exec in container: %v", err)
	}
	return &runtimeapi.ExecSyncResponse{Stdout: bufs[stdout].Bytes(), Stderr: bufs[stderr].Bytes(), ExitCode: int32(code)}, nil
}

// Exec returns the streaming server's URL for an exec in a running container.
func (r *Runtime) Exec(_ context.Context, req *runtimeapi.ExecRequest) (*runtimeapi.ExecResponse, error) {
	if _, err := r.runningContainer(req.ContainerId); err != nil {
		return nil, err
	}
	srv, err := r.streamingServer()
	if err != nil {
		return nil, err
	}
	return srv.GetExec(req)
}

// Attach returns the streaming server's URL for attaching to a running container.
func (r *Runtime) Attach(_ context.Context, req *runtimeapi.AttachRequest) (*runtimeapi.AttachResponse, error) {
	if _, err := r.runningContainer(req.ContainerId); err != nil {
		return nil, err
	}
	srv, err := r.streamingServer()
	if err != nil {
		return nil, err
	}
	return srv.GetAttach(req)
}

// PortForward returns the streaming server's URL for forwarding to a ready sandbox.
func (r *Runtime) PortForward(_ context.Context, req *runtimeapi.PortForwardRequest) (*runtimeapi.PortForwardResponse, error) {
	r.mu.Lock()
	sb, _, ok := lookup(r.sandboxes, req.PodSandboxId)
	ready := ok && sb.state == runtimeapi.PodSandboxState_SANDBOX_READY
	r.mu.Unlock()
	if !ok {
		return nil, notFound("sandbox", req.PodSandboxId)
	}
	if !ready {
		return nil, status.Errorf(codes.FailedPrecondition, "sandbox %q is not running", sb.id)
	}
	srv, err := r.streamingServer()
	if err != nil {
		return nil, err
	}
	return srv.GetPortForward(req)
}

// streamRuntime is what the streaming server runs exec, attach and port-forward on.
type streamRuntime struct{ r *Runtime }

var _ streaming.Runtime = streamRuntime{}

// Exec runs cmd with the client's streams; a non-zero exit reaches the client as its
// exit code.
func (s streamRuntime) Exec(ctx context.Context, containerID string, cmd []string, in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	c, err := s.r.runningContainer(containerID)
	if err != nil {
		return err
	}
	drainResize(resize)
	if errOut == nil || tty {
		errOut = out
	}
	writers := [2]io.Writer{out, errOut}
	code, err := s.r.runExec(ctx, c, cmd, in, func(stream int, data []byte) {
		if w := writers[stream]; w != nil {
			_, _ = w.Write(data)
		}
	})
	if err != nil {
		return err
	}
	if code != 0 {
		return utilexec.CodeExitError{Err: fmt.Errorf("command %q exited with %d", cmd, code), Code: code}
	}
	return nil
}

// drainResize reads terminal resizes, which a process-less container has no use for, so
// that the streaming library's sender never blocks; it ends when the library closes the
// channel.
func drainResize(resize <-chan remotecommand.TerminalSize) {
	if resize == nil {
		return
	}
	go func() {
		for range resize {
		}
	}()
}

// Attach streams the container's output from now on until it exits. A container running
// `cat` or `sh` with stdin gets the client's input (see feedStdin).
func (s streamRuntime) Attach(ctx context.Context, containerID string, in io.Reader, out, errOut io.WriteCloser, tty bool, resize <-chan remotecommand.TerminalSize) error {
	r := s.r
	r.mu.Lock()
	c, _, ok := lookup(r.containers, containerID)
	if !ok || c.state != runtimeapi.ContainerState_CONTAINER_RUNNING {
		r.mu.Unlock()
		return fmt.Errorf("container %q is not running", containerID)
	}
	a := &attachment{ch: make(chan outputEvent, 256)}
	if c.attached == nil {
		c.attached = map[*attachment]struct{}{}
	}
	c.attached[a] = struct{}{}
	done, stdinCat, stdinShell, once := c.done, c.stdinCat, c.stdinShell, c.cfg.GetStdinOnce()
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(c.attached, a)
		r.mu.Unlock()
	}()
	drainResize(resize)
	if errOut == nil || tty {
		errOut = out
	}
	if in != nil && (stdinCat || stdinShell) {
		// The reader ends with the client's stdin stream, which the streaming server
		// closes with the connection, or when the container exits.
		go r.feedStdin(c, done, in, stdinShell, once)
	}
	writers := [2]io.Writer{out, errOut}
	for {
		select {
		case ev, ok := <-a.ch:
			if !ok {
				return nil
			}
			if w := writers[ev.stream]; w != nil {
				if _, err := w.Write(ev.data); err != nil {
					return nil
				}
			}
		case <-done:
			// Deliver what was queued before the exit.
			for ev := range a.ch {
				if w := writers[ev.stream]; w != nil {
					_, _ = w.Write(ev.data)
				}
			}
			return nil
		case <-ctx.Done():
			return nil
		}
	}
}

// feedStdin gives a container the input of an attached client: a `cat` writes it out, a
// `sh` runs each line as a script (an `exit` ends the container). The end of the input
// ends a StdinOnce container with 0.
func (r *Runtime) feedStdin(c *container, done chan struct{}, in io.Reader, shell bool, once bool) {
	buf := make([]byte, 32<<10)
	var pending []byte
	running := func() bool { return c.done == done && c.state == runtimeapi.ContainerState_CONTAINER_RUNNING }
	for {
		n, err := in.Read(buf)
		if !shell && n > 0 {
			r.mu.Lock()
			if running() {
				r.outputLocked(c, stdout, append([]byte(nil), buf[:n]...))
			}
			r.mu.Unlock()
		}
		if shell {
			pending = append(pending, buf[:n]...)
			if err != nil && len(pending) > 0 && pending[len(pending)-1] != '\n' {
				pending = append(pending, '\n')
			}
			for {
				i := bytes.IndexByte(pending, '\n')
				if i < 0 {
					break
				}
				line := string(pending[:i])
				pending = pending[i+1:]
				if r.runStdinLine(c, done, line) {
					return
				}
			}
		}
		if err != nil {
			if once {
				r.mu.Lock()
				if running() {
					r.exitLocked(c, 0, r.now())
				}
				r.mu.Unlock()
			}
			return
		}
	}
}

// runStdinLine runs one line given to a stdin shell; it reports whether the container
// has ended.
func (r *Runtime) runStdinLine(c *container, done chan struct{}, line string) bool {
	r.mu.Lock()
	if c.done != done || c.state != runtimeapi.ContainerState_CONTAINER_RUNNING {
		r.mu.Unlock()
		return true
	}
	sh := c.shell()
	r.mu.Unlock()
	sh.clock = doneClock{done}
	sh.out = func(stream int, data []byte) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if c.done == done && c.state == runtimeapi.ContainerState_CONTAINER_RUNNING {
			r.outputLocked(c, stream, data)
		}
	}
	code, err := sh.script(line)
	if err != nil {
		return true
	}
	if sh.exited {
		r.mu.Lock()
		r.exitLocked(c, int32(code), r.now())
		r.mu.Unlock()
		return true
	}
	return false
}

// PortForward connects stream to port in the sandbox: to the container serving HTTP there
// (httpd), else it is refused.
func (s streamRuntime) PortForward(_ context.Context, podSandboxID string, port int32, stream io.ReadWriteCloser) error {
	defer stream.Close()
	r := s.r
	r.mu.Lock()
	var server *container
	var files fileResolver
	var dir string
	if sb, _, ok := lookup(r.sandboxes, podSandboxID); ok && sb.state == runtimeapi.PodSandboxState_SANDBOX_READY {
		for _, c := range r.containers {
			if c.sandbox == sb && c.state == runtimeapi.ContainerState_CONTAINER_RUNNING && c.httpdPort == port {
				server, dir = c, c.httpdDir
				files = c.shell().files
				break
			}
		}
	}
	r.mu.Unlock()
	if server == nil {
		return fmt.Errorf("failed to connect to localhost:%d inside namespace %q, IPv4: dial tcp4 127.0.0.1:%d: connect: connection refused", port, podSandboxID, port)
	}
	return serveHTTP(stream, files, dir)
}

// serveHTTP answers the HTTP requests on one forwarded connection as busybox httpd does:
// files of dir, index.html for a directory, 404 for anything missing.
func serveHTTP(conn io.ReadWriter, files fileResolver, dir string) error {
	br := bufio.NewReader(conn)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("read forwarded HTTP request: %w", err)
		}
		_, _ = io.Copy(io.Discard, req.Body)
		req.Body.Close()
		resp := httpResponse(req, files, dir)
		if err := resp.Write(conn); err != nil {
			return fmt.Errorf("write forwarded HTTP response: %w", err)
		}
		if req.Close || resp.Close {
			return nil
		}
	}
}

func httpResponse(req *http.Request, files fileResolver, dir string) *http.Response {
	respond := func(code int, body []byte, contentType string) *http.Response {
		h := http.Header{}
		h.Set("Content-Type", contentType)
		h.Set("Content-Length", strconv.Itoa(len(body)))
		resp := &http.Response{
			StatusCode: code, Status: fmt.Sprintf("%d %s", code, http.StatusText(code)),
			ProtoMajor: 1, ProtoMinor: 1, Header: h, ContentLength: int64(len(body)),
			Body: io.NopCloser(bytes.NewReader(body)), Request: req, Close: req.Close,
		}
		if req.Method == http.MethodHead {
			resp.Body = http.NoBody
		}
		return resp
	}
	page := func(code int) *http.Response {
		text := http.StatusText(code)
		return respond(code, fmt.Appendf(nil, "<HTML><HEAD><TITLE>%d %s</TITLE></HEAD>\n<BODY><H1>%d %s</H1>\n</BODY></HTML>\n", code, text, code, text), "text/html")
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return page(http.StatusNotImplemented)
	}
	p := path.Join(dir, path.Clean("/"+req.URL.Path))
	data, err := files.read(p)
	if errors.Is(err, errIsDir) {
		p = path.Join(p, "index.html")
		data, err = files.read(p)
	}
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return page(http.StatusForbidden)
		}
		return page(http.StatusNotFound)
	}
	ct := mime.TypeByExtension(path.Ext(p))
	if ct == "" {
		ct = "application/octet-stream"
	}
	return respond(http.StatusOK, data, ct)
}
