// Package integration runs berth's real API server on temporary data dirs and drives it the
// way users and components do: with client-go and with the real kubectl 1.27 and 1.33.
//
// The client-go tests share one in-process server (apiserver.Start), each in a namespace of
// its own; the kubectl tests share one `berth server` process built from cmd/berth; the
// process-level tests (SIGTERM, restart, external etcd) start processes of their own.
// Every test skips under -short.
package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"berth.dev/berth/core/apiserver"
)

// kubectlDir holds kubectl.1.27 ... kubectl.1.33 on every machine berth is built on.
const kubectlDir = "/usr/lib/google-cloud-sdk/bin"

// kubectlVersions are the oldest and the newest kubectl berth promises to work with.
var kubectlVersions = []string{"1.27", "1.33"}

// suite holds what the tests share for one `go test` run; TestMain stops it.
var suite struct {
	root   string // temp dir for everything the run creates
	ctx    context.Context
	cancel context.CancelFunc

	buildOnce sync.Once
	binary    string
	buildErr  error

	inProcOnce sync.Once
	inProc     *apiserver.Server
	inProcErr  error

	procOnce sync.Once
	proc     *berthProcess
	procErr  error
}

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		os.Exit(m.Run())
	}
	root, err := os.MkdirTemp("", "berth-integration-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	suite.root = root
	suite.ctx, suite.cancel = context.WithCancel(context.Background())
	code := m.Run()
	suite.cancel()
	if suite.inProc != nil {
		if err := suite.inProc.Wait(); err != nil {
			fmt.Fprintf(os.Stderr, "shared in-process server stopped with: %v\n", err)
		}
	}
	if suite.proc != nil {
		suite.proc.terminate()
	}
	os.RemoveAll(root)
	os.Exit(code)
}

// skipShort skips an integration test under `go test -short`.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("integration test: skipped under -short")
	}
}

// quietLogger keeps the in-process servers' logs out of the test output, errors excepted.
func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// sharedServer returns the in-process API server the client-go tests share.
func sharedServer(t *testing.T) *apiserver.Server {
	t.Helper()
	skipShort(t)
	suite.inProcOnce.Do(func() {
		dir := filepath.Join(suite.root, "shared-inproc")
		suite.inProc, suite.inProcErr = apiserver.Start(suite.ctx, apiserver.Config{DataDir: dir, Port: 0, Logger: quietLogger()})
	})
	if suite.inProcErr != nil {
		t.Fatalf("start the shared in-process server: %v", suite.inProcErr)
	}
	return suite.inProc
}

// startServer starts an in-process API server of the test's own (for tests that would
// disturb the others, such as compaction); it stops when the test ends.
func startServer(t *testing.T) *apiserver.Server {
	t.Helper()
	skipShort(t)
	ctx, cancel := context.WithCancel(suite.ctx)
	srv, err := apiserver.Start(ctx, apiserver.Config{DataDir: t.TempDir(), Port: 0, Logger: quietLogger()})
	if err != nil {
		cancel()
		t.Fatalf("start in-process server: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		if err := srv.Wait(); err != nil {
			t.Errorf("server stopped with: %v", err)
		}
	})
	return srv
}

// restConfig loads a kubeconfig as client-go does, without client-side throttling.
func restConfig(t *testing.T, kubeconfig string) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatalf("load kubeconfig %s: %v", kubeconfig, err)
	}
	cfg.QPS, cfg.Burst = 500, 1000
	cfg.Timeout = 60 * time.Second
	return cfg
}

// clientset returns a client-go Clientset for the kubeconfig.
func clientset(t *testing.T, kubeconfig string) *kubernetes.Clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(restConfig(t, kubeconfig))
	if err != nil {
		t.Fatalf("client for %s: %v", kubeconfig, err)
	}
	return cs
}

// testContext is a context for one test's requests, bounded so a hung server fails the test.
func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// createNamespace creates a namespace for one test (names are unique per run: the tests share
// a server).
func createNamespace(t *testing.T, cs kubernetes.Interface, name string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := cs.CoreV1().Namespaces().Create(testContext(t), ns, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	return name
}

// nextEvent returns the next watch event, failing the test after timeout.
func nextEvent(t *testing.T, w watch.Interface, timeout time.Duration) watch.Event {
	t.Helper()
	select {
	case ev, ok := <-w.ResultChan():
		if !ok {
			t.Fatalf("watch closed while waiting for an event")
		}
		return ev
	case <-time.After(timeout):
		t.Fatalf("no watch event within %s", timeout)
	}
	return watch.Event{}
}

// eventName describes an event as "TYPE name" (or "ERROR <message>").
func eventName(ev watch.Event) string {
	if s, ok := ev.Object.(*metav1.Status); ok {
		return fmt.Sprintf("%s %d %s", ev.Type, s.Code, s.Message)
	}
	if o, ok := ev.Object.(metav1.Object); ok {
		return fmt.Sprintf("%s %s", ev.Type, o.GetName())
	}
	return fmt.Sprintf("%s %T", ev.Type, ev.Object)
}

// --- the berth binary ---------------------------------------------------------------------

// moduleRoot is the repository root, two levels above this package.
func moduleRoot() (string, error) {
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("module root not found at %s: %w", dir, err)
	}
	return dir, nil
}

// berthBinary builds cmd/berth once per test run into the run's temp dir.
func berthBinary(t *testing.T) string {
	t.Helper()
	skipShort(t)
	suite.buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			suite.buildErr = err
			return
		}
		out := filepath.Join(suite.root, "bin", "berth")
		cmd := exec.Command("go", "build", "-o", out, "./cmd/berth")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			suite.buildErr = fmt.Errorf("go build ./cmd/berth: %v\n%s", err, b)
			return
		}
		suite.binary = out
	})
	if suite.buildErr != nil {
		t.Fatal(suite.buildErr)
	}
	return suite.binary
}

// berthProcess is one `berth server` process.
type berthProcess struct {
	cmd        *exec.Cmd
	dataDir    string
	url        string // as printed on stdout and written in the kubeconfig
	kubeconfig string
	logs       *syncBuffer
	exited     chan struct{}
	exitErr    error
}

// syncBuffer collects a process's output from one goroutine while tests read it.
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

// startBerth runs `berth server --data-dir dir --port 0 extra...` and returns once it has
// printed that it is up. The process is killed when the test ends if it still runs.
func startBerth(t *testing.T, dir string, extra ...string) *berthProcess {
	t.Helper()
	p, err := launchBerth(berthBinary(t), dir, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("berth server (%s) output:\n%s", dir, tail(p.logs.String(), 60))
		}
		p.kill()
	})
	return p
}

func launchBerth(binary, dir string, extra ...string) (*berthProcess, error) {
	return launchBerthCommand(binary, "server", dir, extra...)
}

// launchBerthCommand starts `berth <command> --data-dir dir --port 0 extra...`, a command
// that runs a server (server, up), and returns once it printed that the server is up.
func launchBerthCommand(binary, command, dir string, extra ...string) (*berthProcess, error) {
	args := append([]string{command, "--data-dir", dir, "--port", "0"}, extra...)
	cmd := exec.Command(binary, args...)
	logs := &syncBuffer{}
	cmd.Stderr = logs
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	p := &berthProcess{cmd: cmd, dataDir: dir, logs: logs, exited: make(chan struct{})}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			logs.Write([]byte("stdout: " + sc.Text() + "\n"))
			select {
			case lines <- sc.Text():
			default:
			}
		}
		close(lines)
	}()
	go func() {
		p.exitErr = cmd.Wait()
		close(p.exited)
	}()
	deadline := time.After(90 * time.Second)
	for p.url == "" {
		select {
		case line, ok := <-lines:
			if !ok {
				<-p.exited
				return nil, fmt.Errorf("berth server exited before it was up (%v):\n%s", p.exitErr, tail(logs.String(), 40))
			}
			if u, found := strings.CutPrefix(line, "berth server is up at "); found {
				p.url = strings.TrimSpace(u)
			}
		case <-deadline:
			p.kill()
			return nil, fmt.Errorf("berth server not up within 90s:\n%s", tail(logs.String(), 40))
		}
	}
	p.kubeconfig = filepath.Join(dir, "admin.kubeconfig")
	cfg, err := clientcmd.LoadFromFile(p.kubeconfig)
	if err != nil {
		p.kill()
		return nil, fmt.Errorf("read %s: %w", p.kubeconfig, err)
	}
	cluster := cfg.Clusters[cfg.Contexts[cfg.CurrentContext].Cluster]
	if cluster == nil || cluster.Server != p.url {
		p.kill()
		return nil, fmt.Errorf("%s names server %v, the process printed %s", p.kubeconfig, cluster, p.url)
	}
	return p, nil
}

// stop sends SIGTERM and returns how long the process took to exit and its exit error; it
// kills the process after limit.
func (p *berthProcess) stop(limit time.Duration) (time.Duration, error) {
	start := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return 0, fmt.Errorf("signal: %w", err)
	}
	select {
	case <-p.exited:
		return time.Since(start), p.exitErr
	case <-time.After(limit):
		p.kill()
		return time.Since(start), fmt.Errorf("still running %s after SIGTERM (killed)", limit)
	}
}

// terminate stops the process politely, then by force.
func (p *berthProcess) terminate() {
	if _, err := p.stop(15 * time.Second); err != nil {
		p.kill()
	}
}

func (p *berthProcess) kill() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// sharedBerth returns the `berth server` process the kubectl tests share.
func sharedBerth(t *testing.T) *berthProcess {
	t.Helper()
	bin := berthBinary(t)
	suite.procOnce.Do(func() {
		suite.proc, suite.procErr = launchBerth(bin, filepath.Join(suite.root, "shared-process"))
	})
	if suite.procErr != nil {
		t.Fatalf("start the shared berth server: %v", suite.procErr)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("shared berth server output (last lines):\n%s", tail(suite.proc.logs.String(), 40))
		}
	})
	return suite.proc
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// freePort asks the kernel for a free loopback port (for etcd, which needs its ports named).
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// --- kubectl --------------------------------------------------------------------------------

// kubectlResult is what one kubectl run printed and how it exited.
type kubectlResult struct {
	Args   []string
	Stdout string
	Stderr string
	Code   int // -1 when it did not finish in time
}

func (r kubectlResult) String() string {
	return fmt.Sprintf("kubectl %s\nexit code: %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.Args, " "), r.Code, r.Stdout, r.Stderr)
}

// kubectlRun says how to run kubectl: which version, against which kubeconfig.
type kubectlRun struct {
	Version    string
	Kubeconfig string
	Env        []string // extra KEY=value pairs (KUBE_EDITOR ...)
	Timeout    time.Duration
}

// kubectlPath is the binary of one kubectl version.
func kubectlPath(t *testing.T, version string) string {
	t.Helper()
	p := filepath.Join(kubectlDir, "kubectl."+version)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("kubectl %s is not installed at %s: %v", version, p, err)
	}
	return p
}

// kubectlCmd prepares a kubectl command: KUBECONFIG set, and a HOME of the run's own so the
// discovery cache of one server never leaks into another's.
func (k kubectlRun) cmd(t *testing.T, ctx context.Context, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(ctx, kubectlPath(t, k.Version), args...)
	home := filepath.Join(suite.root, "home-"+k.Version)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+k.Kubeconfig, "HOME="+home)
	cmd.Env = append(cmd.Env, k.Env...)
	return cmd
}

// run runs kubectl to completion (60 s unless the run says otherwise).
func (k kubectlRun) run(t *testing.T, args ...string) kubectlResult {
	t.Helper()
	timeout := k.Timeout
	if timeout == 0 {
		timeout = 60 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := k.cmd(t, ctx, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := kubectlResult{Args: args, Stdout: stdout.String(), Stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case ctx.Err() != nil:
		res.Code = -1
		res.Stderr += fmt.Sprintf("\n[test: kubectl did not finish within %s]", timeout)
	case errors.As(err, &exitErr):
		res.Code = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("run kubectl %v: %v", args, err)
	}
	return res
}

// mustRun runs kubectl and fails the test unless it exits 0.
func (k kubectlRun) mustRun(t *testing.T, args ...string) kubectlResult {
	t.Helper()
	res := k.run(t, args...)
	if res.Code != 0 {
		fatalf(t, "expected exit code 0:\n%s", res)
	}
	return res
}

// failures holds each test's fatal message (by test name), so that a test that dumps
// logs when it fails can say why once more after them: a CI summary keeps only the head
// and the tail of a long output, and the reason would be lost in between.
var failures sync.Map

// fatalf is t.Fatalf that remembers the message for restateFailure.
func fatalf(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	failures.Store(t.Name(), msg)
	t.Fatal(msg)
}

// besideBuilds holds one build per package for buildBeside.
var besideBuilds sync.Map // package path -> *besideBuild

type besideBuild struct {
	once sync.Once
	err  error
}

// buildBeside builds the command package pkg (./cmd/NAME) once per test binary into the
// folder of the berth binary, where `berth up` looks for its companions; static builds
// it without cgo.
func buildBeside(t *testing.T, berth, pkg string, static bool) {
	t.Helper()
	v, _ := besideBuilds.LoadOrStore(pkg, &besideBuild{})
	b := v.(*besideBuild)
	b.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			b.err = err
			return
		}
		cmd := exec.Command("go", "build", "-o", filepath.Join(filepath.Dir(berth), filepath.Base(pkg)), pkg)
		cmd.Dir = root
		if static {
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		fatalf(t, "%v", b.err)
	}
}

// logProblems logs, for a failed `berth up` test, the last errors and warnings of its
// output (a tail of everything is mostly the runtime's info lines) and the cluster's last
// events, which say why a pod did not start.
func logProblems(t *testing.T, k kubectlRun, output string) {
	var bad []string
	for _, l := range strings.Split(output, "\n") {
		if strings.Contains(l, "level=ERROR") || strings.Contains(l, "level=WARN") || strings.Contains(l, "level=error") || strings.Contains(l, "level=warning") {
			bad = append(bad, l)
		}
	}
	t.Logf("errors and warnings of berth up (last 40 of %d):\n%s", len(bad), tail(strings.Join(bad, "\n"), 40))
	res := k.run(t, "get", "events", "-A", "--sort-by=.lastTimestamp")
	t.Logf("events (last 30):\n%s", tail(res.Stdout+res.Stderr, 30))
}

// saveArtifact writes a failed test's full log to $BERTH_TEST_ARTIFACTS/<test>-<name>
// when that variable names a folder, for a look beyond the tail the test prints.
func saveArtifact(t *testing.T, name, content string) {
	dir := os.Getenv("BERTH_TEST_ARTIFACTS")
	if dir == "" || !t.Failed() {
		return
	}
	f := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_")+"-"+name)
	if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
		t.Logf("save %s: %v", f, err)
		return
	}
	t.Logf("full log in %s", f)
}

// restateFailure logs, when t failed through fatalf, the reason again. Tests that dump
// logs on failure call it last in their cleanup.
func restateFailure(t *testing.T) {
	if msg, ok := failures.Load(t.Name()); ok && t.Failed() {
		t.Logf("%s failed (its logs are above): %s", t.Name(), msg)
	}
}

// lineReader streams a process's output line by line.
func lineReader(r io.Reader) <-chan string {
	ch := make(chan string, 64)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			ch <- sc.Text()
		}
		close(ch)
	}()
	return ch
}

// ptrTo returns a pointer to v (k8s.io/utils/ptr.To, without the module dependency).
func ptrTo[T any](v T) *T { return &v }

// foreignClientCert returns, in PEM, an admin-looking client certificate (CN admin, O
// system:masters) and its key, signed by a CA of its own that no berth server trusts.
func foreignClientCert(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "foreign-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "admin", Organization: []string{"system:masters"}},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
}
