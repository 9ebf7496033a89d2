package admissionplugins_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"berth.dev/berth/core/apiserver"
	"berth.dev/berth/core/apiserver/admissionplugins"
)

const kubectlPath = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33"

// cluster is a real API server with admission plugins, driven by the real kubectl.
type cluster struct {
	t          *testing.T
	dir        string
	kubeconfig string
}

// kubectl runs kubectl 1.33 against the server with stdin, returning its combined output.
func (c *cluster) kubectl(stdin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, kubectlPath, append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (c *cluster) mustKubectl(stdin string, args ...string) string {
	c.t.Helper()
	out, err := c.kubectl(stdin, args...)
	if err != nil {
		c.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// writeFile writes a manifest into the test's folder, for kubectl -f.
func (c *cluster) writeFile(name, body string) string {
	c.t.Helper()
	p := filepath.Join(c.dir, name)
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		c.t.Fatal(err)
	}
	return p
}

func startCluster(t *testing.T) *cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts an API server with embedded etcd and runs kubectl")
	}
	if _, err := os.Stat(kubectlPath); err != nil {
		t.Skipf("kubectl 1.33 is not installed: %v", err)
	}
	dir := t.TempDir()
	bin := admissionplugins.BinDir()
	config := fmt.Sprintf(`apiVersion: admission.berth.dev/v1
kind: AdmissionConfiguration
plugins:
  - name: require-limits
    path: %s
    failurePolicy: Fail
    rules:
      - operations: [CREATE, UPDATE]
        apiGroups: [""]
        resources: [pods]
  - name: misbehave
    path: %s
    rules:
      - operations: ["*"]
        apiGroups: [""]
        resources: [configmaps]
    namespaceSelector:
      matchLabels: {policy: strict}
`, filepath.Join(bin, "berth-admission-require-limits"), filepath.Join(bin, "misbehave"))
	path := filepath.Join(dir, "admission.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := admissionplugins.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
		mu.Lock()
		defer mu.Unlock()
		return logs.Write(p)
	}), &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := apiserver.Start(ctx, apiserver.Config{DataDir: filepath.Join(dir, "data"), Port: 0, Logger: log, Admission: cfg})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		if err := srv.Wait(); err != nil {
			t.Logf("server stopped with: %v", err)
		}
		if t.Failed() {
			mu.Lock()
			t.Logf("server logs:\n%s", logs.String())
			mu.Unlock()
		}
	})
	return &cluster{t: t, dir: dir, kubeconfig: srv.Kubeconfig}
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func pod(name, limits string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
spec:
  containers:
    - name: c
      image: busybox
%s`, name, limits)
}

const withLimits = `      resources:
        limits: {cpu: 100m, memory: 64Mi}
`

func TestKubectlSeesPolicy(t *testing.T) {
	c := startCluster(t)

	// A pod without limits is refused with Forbidden and the plugin's message.
	file := c.writeFile("pod.yaml", pod("p", ""))
	out, err := c.kubectl("", "create", "-f", file)
	want := fmt.Sprintf(`Error from server (Forbidden): error when creating %q: pods "p" is forbidden: admission plugin "require-limits" denied the request: container "c" has no cpu or memory limits`, file)
	if err == nil || out != want {
		t.Fatalf("kubectl create of a pod without limits: %v\n got: %s\nwant: %s", err, out, want)
	}
	// One with limits is created, and can be updated.
	if out := c.mustKubectl(pod("q", withLimits), "create", "-f", "-"); out != "pod/q created" {
		t.Errorf("kubectl create: %s", out)
	}
	if out := c.mustKubectl("", "label", "pod", "q", "a=b"); out != "pod/q labeled" {
		t.Errorf("kubectl label: %s", out)
	}

	// The namespaceSelector: misbehave judges configmaps only in namespaces labelled
	// policy=strict; it mutates label-me and refuses updates of deny-update-me.
	c.mustKubectl("", "create", "configmap", "deny-update-me")
	c.mustKubectl("", "label", "configmap", "deny-update-me", "x=y")
	c.mustKubectl("", "create", "namespace", "strict")
	c.mustKubectl("", "label", "namespace", "strict", "policy=strict")
	c.mustKubectl("", "-n", "strict", "create", "configmap", "deny-update-me")
	out, err = c.kubectl("", "-n", "strict", "label", "configmap", "deny-update-me", "x=y")
	if err == nil || !strings.HasPrefix(out, `Error from server (Forbidden): configmaps "deny-update-me" is forbidden: admission plugin "misbehave" denied the request: deny-update-me may not be updated by `) {
		t.Errorf("kubectl label of deny-update-me in strict: %v\n%s", err, out)
	}
	c.mustKubectl("", "-n", "strict", "create", "configmap", "label-me")
	if out := c.mustKubectl("", "-n", "strict", "get", "configmap", "label-me", "-o", "jsonpath={.metadata.labels.mutated}"); out != "yes" {
		t.Errorf("label-me's label mutated = %q, want yes", out)
	}
}

func TestKubectlWhilePluginIsKilled(t *testing.T) {
	c := startCluster(t)
	exe := filepath.Join(admissionplugins.BinDir(), "berth-admission-require-limits")
	if len(pluginPids(t, exe)) == 0 {
		t.Fatal("no require-limits process runs")
	}
	// Kill the plugin, and each process restarted in its place, for as long as one
	// kubectl create takes: the create must meet a plugin that is down (or dying).
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			for _, pid := range pluginPids(t, exe) {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	out, err := c.kubectl(pod("q", withLimits), "create", "-f", "-")
	close(stop)
	<-done
	want := `Error from server (InternalError): error when creating "STDIN": Internal error occurred: failed calling admission plugin "require-limits": `
	if err == nil || !strings.HasPrefix(out, want) {
		t.Fatalf("kubectl create while the plugin is killed: %v\n got: %s\nwant: %s...", err, out, want)
	}
	t.Logf("while killed: %s", out)
	// After the restart, creates work again.
	deadline := time.Now().Add(60 * time.Second)
	for i := 0; ; i++ {
		out, err := c.kubectl(pod("q"+strconv.Itoa(i), withLimits), "create", "-f", "-")
		if err == nil {
			break
		}
		if !strings.Contains(out, `failed calling admission plugin "require-limits"`) || time.Now().After(deadline) {
			t.Fatalf("kubectl create after the restart: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if pids := pluginPids(t, exe); len(pids) != 1 {
		t.Errorf("%d require-limits processes after the restart, want 1", len(pids))
	}
}

// pluginPids lists this test process' children running exe.
func pluginPids(t *testing.T, exe string) []int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil || target != exe {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// The parent pid is the second field after the command's closing parenthesis.
		fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(os.Getpid()) {
			out = append(out, pid)
		}
	}
	return out
}
