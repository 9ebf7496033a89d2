package sim_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/client-go/transport/spdy"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	utilexec "k8s.io/utils/exec"

	"berth.dev/berth/drivers/cri/sim"
)

func TestExecSync(t *testing.T) {
	c := startSim(t, sim.Config{})
	ctx := testCtx(t)
	sbID, sbCfg := c.runSandbox(t, "exec", nil)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("content\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := containerConfig("app", "sleep", "infinity")
	cfg.Envs = []*runtimeapi.KeyValue{{Key: "GREETING", Value: "hi there"}}
	cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/mnt", HostPath: dir}}
	id := c.run(t, sbID, sbCfg, cfg)

	for _, tc := range []struct {
		cmd            []string
		stdout, stderr string
		code           int32
	}{
		{[]string{"echo", "hello"}, "hello\n", "", 0},
		{[]string{"sh", "-c", "echo $GREETING"}, "hi there\n", "", 0},
		{[]string{"cat", "/mnt/f"}, "content\n", "", 0},
		{[]string{"cat", "/mnt/nope"}, "", "cat: can't open '/mnt/nope': No such file or directory\n", 1},
		{[]string{"hostname"}, "exec\n", "", 0},
		{[]string{"sh", "-c", "exit 7"}, "", "", 7},
		{[]string{"sh", "-c", "true && echo yes || echo no"}, "yes\n", "", 0},
		{[]string{"sh", "-c", "nosuchcmd"}, "", "sh: nosuchcmd: not found\n", 127},
		{[]string{"false"}, "", "", 1},
	} {
		resp, err := c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: tc.cmd, Timeout: 5})
		if err != nil {
			t.Errorf("ExecSync %q: %v", tc.cmd, err)
			continue
		}
		if string(resp.Stdout) != tc.stdout || string(resp.Stderr) != tc.stderr || resp.ExitCode != tc.code {
			t.Errorf("ExecSync %q: stdout %q stderr %q code %d; want %q %q %d", tc.cmd, resp.Stdout, resp.Stderr, resp.ExitCode, tc.stdout, tc.stderr, tc.code)
		}
	}
	resp, err := c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"env"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"HOSTNAME=exec\n", "PATH=/", "GREETING=hi there\n"} {
		if !strings.Contains(string(resp.Stdout), want) {
			t.Errorf("env output %q lacks %q", resp.Stdout, want)
		}
	}

	start := time.Now()
	_, err = c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"sleep", "10"}, Timeout: 1})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("ExecSync past its timeout: %v, want DeadlineExceeded", err)
	}
	if took := time.Since(start); took < time.Second || took > 3*time.Second {
		t.Errorf("ExecSync with timeout 1 took %s", took)
	}
	if _, err := c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"/usr/bin/nosuch"}}); err == nil {
		t.Errorf("ExecSync of an unknown program succeeded")
	}

	exited := c.run(t, sbID, sbCfg, containerConfig("exited", "true"))
	c.waitExited(t, exited, 5*time.Second)
	if _, err := c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: exited, Cmd: []string{"true"}}); err == nil {
		t.Errorf("ExecSync in an exited container succeeded")
	}
}

// TestExecStreaming runs execs through the streaming server with client-go's SPDY
// executor, as kubectl exec does through the API server.
func TestExecStreaming(t *testing.T) {
	c := startSim(t, sim.Config{})
	ctx := testCtx(t)
	sbID, sbCfg := c.runSandbox(t, "stream", nil)
	id := c.run(t, sbID, sbCfg, containerConfig("app", "sleep", "infinity"))

	exec := func(cmd []string, stdin io.Reader) (string, string, error) {
		t.Helper()
		resp, err := c.rt.Exec(ctx, &runtimeapi.ExecRequest{ContainerId: id, Cmd: cmd, Stdin: stdin != nil, Stdout: true, Stderr: true})
		if err != nil {
			t.Fatalf("Exec: %v", err)
		}
		u, err := url.Parse(resp.Url)
		if err != nil {
			t.Fatal(err)
		}
		executor, err := remotecommand.NewSPDYExecutor(&rest.Config{}, http.MethodPost, u)
		if err != nil {
			t.Fatal(err)
		}
		var stdout, stderr bytes.Buffer
		err = executor.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: &stdout, Stderr: &stderr})
		return stdout.String(), stderr.String(), err
	}
	out, _, err := exec([]string{"cat"}, strings.NewReader("line one\nline two\n"))
	if err != nil || out != "line one\nline two\n" {
		t.Errorf("exec cat with stdin: %q, %v", out, err)
	}
	out, errOut, err := exec([]string{"sh", "-c", "echo out; cat /missing; exit 3"}, nil)
	var exitErr utilexec.ExitError
	if !errors.As(err, &exitErr) || exitErr.ExitStatus() != 3 {
		t.Errorf("exec exiting 3: %v, want an exit error with status 3", err)
	}
	if out != "out\n" || !strings.Contains(errOut, "can't open '/missing'") {
		t.Errorf("exec output %q, stderr %q", out, errOut)
	}

	// Attach sees output written after it attached: a container of `cat` with stdin
	// echoes what it is sent.
	catCfg := containerConfig("cat", "cat")
	catCfg.Stdin, catCfg.StdinOnce = true, true
	catID := c.run(t, sbID, sbCfg, catCfg)
	resp, err := c.rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: catID, Stdin: true, Stdout: true})
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(resp.Url)
	executor, err := remotecommand.NewSPDYExecutor(&rest.Config{}, http.MethodPost, u)
	if err != nil {
		t.Fatal(err)
	}
	var attached bytes.Buffer
	if err := executor.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: strings.NewReader("ping\n"), Stdout: &attached}); err != nil {
		t.Errorf("attach: %v", err)
	}
	if attached.String() != "ping\n" {
		t.Errorf("attach output %q, want ping", attached.String())
	}
	st := c.waitExited(t, catID, 5*time.Second)
	if data, _ := os.ReadFile(st.LogPath); !strings.Contains(string(data), "stdout F ping") {
		t.Errorf("attached input not in the log: %q", data)
	}

	// A shell with stdin runs the lines it is sent; exit ends it.
	shCfg := containerConfig("shell", "sh")
	shCfg.Stdin = true
	shID := c.run(t, sbID, sbCfg, shCfg)
	resp, err = c.rt.Attach(ctx, &runtimeapi.AttachRequest{ContainerId: shID, Stdin: true, Stdout: true, Stderr: true})
	if err != nil {
		t.Fatal(err)
	}
	u, _ = url.Parse(resp.Url)
	executor, err = remotecommand.NewSPDYExecutor(&rest.Config{}, http.MethodPost, u)
	if err != nil {
		t.Fatal(err)
	}
	var shOut, shErr bytes.Buffer
	if err := executor.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: strings.NewReader("echo hello\nexit 4\n"), Stdout: &shOut, Stderr: &shErr}); err != nil {
		t.Errorf("attach to sh: %v", err)
	}
	if shOut.String() != "hello\n" {
		t.Errorf("attach to sh: stdout %q, want hello", shOut.String())
	}
	if st := c.waitExited(t, shID, 5*time.Second); st.ExitCode != 4 {
		t.Errorf("sh fed `exit 4` exited with %d", st.ExitCode)
	}
}

// TestPortForward reaches a container's httpd through CRI PortForward with client-go's
// port forwarder, as kubectl port-forward does through the API server.
func TestPortForward(t *testing.T) {
	c := startSim(t, sim.Config{})
	ctx := testCtx(t)
	sbID, sbCfg := c.runSandbox(t, "pf", nil)
	www := t.TempDir()
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte("<h1>home</h1>\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(www, "data.txt"), []byte("some data\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := containerConfig("web", "httpd", "-f", "-p", "8080", "-h", "/srv")
	cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/srv", HostPath: www}}
	c.run(t, sbID, sbCfg, cfg)

	resp, err := c.rt.PortForward(ctx, &runtimeapi.PortForwardRequest{PodSandboxId: sbID, Port: []int32{8080}})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(resp.Url)
	if err != nil {
		t.Fatal(err)
	}
	transport, upgrader, err := spdy.RoundTripperFor(&rest.Config{})
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	stop, ready := make(chan struct{}), make(chan struct{})
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{"0:8080"}, stop, ready, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	fwDone := make(chan error, 1)
	go func() { fwDone <- fw.ForwardPorts() }()
	defer func() {
		close(stop)
		if err := <-fwDone; err != nil {
			t.Errorf("ForwardPorts: %v", err)
		}
	}()
	select {
	case <-ready:
	case err := <-fwDone:
		t.Fatalf("port forward ended: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("port forward not ready")
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		t.Fatalf("forwarded ports %v, %v", ports, err)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(p string) (int, string) {
		t.Helper()
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", ports[0].Local, p))
		if err != nil {
			t.Fatalf("GET %s: %v", p, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/data.txt"); code != 200 || body != "some data\n" {
		t.Errorf("GET /data.txt: %d %q", code, body)
	}
	if code, body := get("/"); code != 200 || body != "<h1>home</h1>\n" {
		t.Errorf("GET /: %d %q", code, body)
	}
	if code, _ := get("/missing"); code != 404 {
		t.Errorf("GET /missing: %d, want 404", code)
	}
}
