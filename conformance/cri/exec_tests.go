package cri

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	utilexec "k8s.io/client-go/util/exec"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// testExecSyncStdout: ExecSync returns the command's stdout and exit code 0.
func testExecSyncStdout(ctx context.Context, t *T) {
	_, id := t.sleeper(ctx)
	resp := t.execSync(ctx, id, 30, "echo", "hello", "exec")
	if string(resp.Stdout) != "hello exec\n" || resp.ExitCode != 0 {
		t.Errorf("ExecSync echo: stdout %q, exit code %d; expected %q, 0", resp.Stdout, resp.ExitCode, "hello exec\n")
	}
	if len(resp.Stderr) != 0 {
		t.Errorf("ExecSync echo: unexpected stderr %q", resp.Stderr)
	}
}

// testExecSyncStderr: ExecSync returns the command's stderr apart from its stdout.
func testExecSyncStderr(ctx context.Context, t *T) {
	_, id := t.sleeper(ctx)
	resp := t.execSync(ctx, id, 30, "cat", "/conformance-missing")
	want := "cat: can't open '/conformance-missing': No such file or directory"
	if !strings.Contains(string(resp.Stderr), want) {
		t.Errorf("ExecSync cat of a missing file: stderr %q, expected %q", resp.Stderr, want)
	}
	if len(resp.Stdout) != 0 {
		t.Errorf("ExecSync cat of a missing file: unexpected stdout %q", resp.Stdout)
	}
	if resp.ExitCode != 1 {
		t.Errorf("ExecSync cat of a missing file: expected exit code 1, got %d", resp.ExitCode)
	}
}

// testExecSyncExitCode: ExecSync returns the command's non-zero exit code as such, not
// as an error.
func testExecSyncExitCode(ctx context.Context, t *T) {
	_, id := t.sleeper(ctx)
	resp := t.execSync(ctx, id, 30, "sh", "-c", "echo out; exit 7")
	if resp.ExitCode != 7 {
		t.Errorf("expected exit code 7, got %d", resp.ExitCode)
	}
	if string(resp.Stdout) != "out\n" {
		t.Errorf("stdout %q, expected %q", resp.Stdout, "out\n")
	}
}

// testExecSyncTimeout: ExecSync of a command that outlives its timeout comes back soon
// after the timeout, as an error or a non-zero exit, instead of waiting for it.
func testExecSyncTimeout(ctx context.Context, t *T) {
	_, id := t.sleeper(ctx)
	const timeout, sleep = 1, 30
	start := time.Now()
	resp, err := t.Runtime().ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"sleep", fmt.Sprint(sleep)}, Timeout: timeout})
	took := time.Since(start)
	if took > 15*time.Second {
		t.Errorf("ExecSync with timeout %ds of sleep %d took %s", timeout, sleep, took.Round(time.Millisecond))
	}
	if err == nil && resp.ExitCode == 0 {
		t.Errorf("ExecSync with timeout %ds of sleep %d: exit code 0 and no error after %s", timeout, sleep, took.Round(time.Millisecond))
	}
	t.Logf("after %s: error %v, response %v", took.Round(time.Millisecond), err, resp)
	// The container must still be usable.
	t.execOK(ctx, id, "true")
}

// streamingURL checks a URL that Exec, Attach or PortForward returned.
func (t *T) streamingURL(what, raw string) *url.URL {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		t.Fatalf("%s returned URL %q, which is not an http(s) URL (%v)", what, raw, err)
	}
	return u
}

// streamConfig is the client configuration of a runtime's streaming server: plain
// HTTP, or TLS with a certificate the suite cannot verify (runtimes make their own).
func streamConfig(u *url.URL) *rest.Config {
	cfg := &rest.Config{Host: u.Scheme + "://" + u.Host}
	if u.Scheme == "https" {
		cfg.TLSClientConfig.Insecure = true
	}
	return cfg
}

// testStreamingExec: the Exec URL runs a command with stdin, stdout and stderr over SPDY,
// and a non-zero exit reaches the client as its exit code.
func testStreamingExec(ctx context.Context, t *T) {
	_, id := t.sleeper(ctx)
	resp, err := t.Runtime().Exec(ctx, &runtimeapi.ExecRequest{ContainerId: id, Cmd: []string{"cat"}, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	u := t.streamingURL("Exec", resp.Url)
	exe, err := remotecommand.NewSPDYExecutor(streamConfig(u), http.MethodPost, u)
	if err != nil {
		t.Fatalf("SPDY executor for %s: %v", u, err)
	}
	var stdout, stderr bytes.Buffer
	const input = "hello streaming exec\n"
	if err := exe.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: strings.NewReader(input), Stdout: &stdout, Stderr: &stderr}); err != nil {
		t.Fatalf("exec cat with stdin through %s: %v (stderr %q)", u, err, stderr.String())
	}
	if stdout.String() != input {
		t.Errorf("exec cat: stdout %q, expected %q (stderr %q)", stdout.String(), input, stderr.String())
	}

	// The exit code of a failing command.
	resp, err = t.Runtime().Exec(ctx, &runtimeapi.ExecRequest{ContainerId: id, Cmd: []string{"sh", "-c", "echo failing; exit 3"}, Stdout: true, Stderr: true})
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	u = t.streamingURL("Exec", resp.Url)
	if exe, err = remotecommand.NewSPDYExecutor(streamConfig(u), http.MethodPost, u); err != nil {
		t.Fatalf("SPDY executor for %s: %v", u, err)
	}
	stdout.Reset()
	err = exe.StreamWithContext(ctx, remotecommand.StreamOptions{Stdout: &stdout, Stderr: &stderr})
	var exit utilexec.CodeExitError
	switch {
	case errors.As(err, &exit):
		if exit.Code != 3 {
			t.Errorf("exec exit 3: the client got exit code %d", exit.Code)
		}
	case err == nil:
		t.Errorf("exec exit 3: the client got no error, expected exit code 3")
	default:
		t.Errorf("exec exit 3: expected an exit code error, got %v", err)
	}
	if stdout.String() != "failing\n" {
		t.Errorf("exec exit 3: stdout %q, expected %q", stdout.String(), "failing\n")
	}
}

// testStreamingAttach: the Attach URL connects to a running container's stdin and
// stdout: a container running cat echoes what the client sends and, its stdin closed
// (StdinOnce), exits.
func testStreamingAttach(ctx context.Context, t *T) {
	sb := t.runSandbox(ctx)
	id, cfg := t.runContainer(ctx, sb, []string{"cat"}, withStdinOnce())
	t.waitRunning(ctx, id)
	resp, err := t.Runtime().Attach(ctx, &runtimeapi.AttachRequest{ContainerId: id, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	u := t.streamingURL("Attach", resp.Url)
	exe, err := remotecommand.NewSPDYExecutor(streamConfig(u), http.MethodPost, u)
	if err != nil {
		t.Fatalf("SPDY executor for %s: %v", u, err)
	}
	var stdout, stderr bytes.Buffer
	const input = "hello attach\n"
	if err := exe.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: strings.NewReader(input), Stdout: &stdout, Stderr: &stderr}); err != nil {
		t.Fatalf("attach to cat through %s: %v (stderr %q)", u, err, stderr.String())
	}
	if stdout.String() != input {
		t.Errorf("attach to cat: stdout %q, expected %q (stderr %q)", stdout.String(), input, stderr.String())
	}
	st := t.waitExited(ctx, id)
	if st.ExitCode != 0 {
		t.Errorf("cat after its stdin closed: exit code %d, expected 0", st.ExitCode)
	}
	// What went through attach is in the log too.
	t.waitFor(ctx, "the attached input in the container log", func() (bool, error) {
		data, err := readLog(sb, cfg)
		if err != nil {
			return false, err
		}
		lines, err := parseLog(data)
		if err != nil {
			t.Fatalf("container log: %v", err)
		}
		return hasLogLine(lines, "stdout", strings.TrimSuffix(input, "\n")), fmt.Errorf("log %q", data)
	})
}

// testStreamingPortForward: the PortForward URL reaches a port of the pod's network: an
// httpd in the container serves a file from a mounted directory through a local port,
// and answers 404 for a missing one.
func testStreamingPortForward(ctx context.Context, t *T) {
	const port = 8080
	www := t.TempDir()
	const body = "served through port-forward\n"
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte(body), 0o644); err != nil {
		t.Fatalf("web root: %v", err)
	}
	sb := t.runSandbox(ctx)
	id, _ := t.runContainer(ctx, sb, []string{"httpd", "-f", "-p", fmt.Sprint(port), "-h", "/www"}, withMount(www, "/www", true))
	t.waitRunning(ctx, id)
	resp, err := t.Runtime().PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: sb.ID, Port: []int32{port}})
	if err != nil {
		t.Fatalf("PortForward: %v", err)
	}
	u := t.streamingURL("PortForward", resp.Url)
	transport, upgrader, err := spdy.RoundTripperFor(streamConfig(u))
	if err != nil {
		t.Fatalf("SPDY round tripper: %v", err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	out, errOut := &syncBuffer{}, &syncBuffer{}
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, ready, out, errOut)
	if err != nil {
		t.Fatalf("port forwarder: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	// The forwarder is this test's: it stops when the test ends, whichever way.
	defer func() {
		close(stop)
		select {
		case err := <-done:
			if err != nil {
				t.Logf("port forwarder: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("the port forwarder did not stop")
		}
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("port forwarding through %s: %v", u, err)
	case <-ctx.Done():
		t.Fatalf("port forwarding through %s: not ready: %v", u, ctx.Err())
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		t.Fatalf("forwarded ports %v: %v", ports, err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", ports[0].Local)
	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path string) (int, string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
		if err != nil {
			return 0, "", err
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		data, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(data), err
	}
	// httpd may still be starting: the first connections can fail.
	var code int
	var got string
	t.waitFor(ctx, "httpd to answer through port-forward", func() (bool, error) {
		var err error
		code, got, err = get("/index.html")
		return err == nil, fmt.Errorf("%v; forwarder said %q", err, errOut.String())
	})
	if code != http.StatusOK || got != body {
		t.Errorf("GET /index.html through port-forward: %d %q, expected 200 %q", code, got, body)
	}
	if code, _, err := get("/missing.html"); err != nil || code != http.StatusNotFound {
		t.Errorf("GET /missing.html through port-forward: %d, %v; expected 404", code, err)
	}
}

// syncBuffer is a buffer that the port forwarder's goroutines write while the test reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
