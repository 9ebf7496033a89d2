package cri

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// pollInterval is how often the suite looks again at a state it waits for.
const pollInterval = 100 * time.Millisecond

// isNotFound reports whether err is the runtime saying an object does not exist. CRI
// does not fix the code: containerd answers NotFound, others Unknown with "not found"
// in the message, which the kubelet accepts as well.
func isNotFound(err error) bool {
	if err == nil {
		return false
	}
	if status.Code(err) == codes.NotFound {
		return true
	}
	return strings.Contains(strings.ToLower(err.Error()), "not found")
}

// sandbox is a pod sandbox a test made.
type sandbox struct {
	ID     string
	Config *runtimeapi.PodSandboxConfig
}

// sandboxOption changes a sandbox's config before it runs.
type sandboxOption func(*runtimeapi.PodSandboxConfig)

func withPortMappings(pm ...*runtimeapi.PortMapping) sandboxOption {
	return func(c *runtimeapi.PodSandboxConfig) { c.PortMappings = pm }
}

// sandboxConfig is a sandbox config as the kubelet would send it for a pod of the
// suite, with the run's labels and a log directory of the test's own.
func (t *T) sandboxConfig(opts ...sandboxOption) *runtimeapi.PodSandboxConfig {
	n := t.Seq()
	name := fmt.Sprintf("%s-%d", labelValue(t.Name()), n)
	uid := fmt.Sprintf("%s-%s", t.suite.cfg.RunID, name)
	podNS := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}
	c := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: uid, Namespace: Namespace, Attempt: 0},
		Hostname:     fmt.Sprintf("cri-%d-%s", n, t.suite.cfg.RunID),
		LogDirectory: t.TempDir(),
		Labels: map[string]string{
			RunLabel: t.suite.cfg.RunID, TestLabel: labelValue(t.Name()),
			"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": Namespace, "io.kubernetes.pod.uid": uid,
		},
		Annotations: map[string]string{"conformance.berth.dev/suite": "cri"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: podNS},
		},
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// runSandbox runs a sandbox and registers its removal after the test.
func (t *T) runSandbox(ctx context.Context, opts ...sandboxOption) *sandbox {
	cfg := t.sandboxConfig(opts...)
	return t.runSandboxConfig(ctx, cfg)
}

func (t *T) runSandboxConfig(ctx context.Context, cfg *runtimeapi.PodSandboxConfig) *sandbox {
	resp, err := t.Runtime().RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg, RuntimeHandler: t.suite.cfg.RuntimeHandler})
	if err != nil {
		t.Fatalf("RunPodSandbox %s: %v", cfg.Metadata.Name, err)
	}
	if resp.PodSandboxId == "" {
		t.Fatalf("RunPodSandbox %s returned an empty sandbox ID", cfg.Metadata.Name)
	}
	id := resp.PodSandboxId
	t.Cleanup(func(ctx context.Context) {
		if err := removeSandbox(ctx, t.Runtime(), id); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return &sandbox{ID: id, Config: cfg}
}

// containerOption changes a container's config before it is created.
type containerOption func(*runtimeapi.ContainerConfig)

func withEnv(kv ...string) containerOption {
	return func(c *runtimeapi.ContainerConfig) {
		for i := 0; i+1 < len(kv); i += 2 {
			c.Envs = append(c.Envs, &runtimeapi.KeyValue{Key: kv[i], Value: kv[i+1]})
		}
	}
}

func withMount(hostPath, containerPath string, readOnly bool) containerOption {
	return func(c *runtimeapi.ContainerConfig) {
		c.Mounts = append(c.Mounts, &runtimeapi.Mount{HostPath: hostPath, ContainerPath: containerPath, Readonly: readOnly})
	}
}

// withStdinOnce gives the container a stdin that closes once the first attach ends.
func withStdinOnce() containerOption {
	return func(c *runtimeapi.ContainerConfig) { c.Stdin, c.StdinOnce = true, true }
}

// containerConfig is a container config of the suite's image running command.
func (t *T) containerConfig(command []string, opts ...containerOption) *runtimeapi.ContainerConfig {
	name := fmt.Sprintf("c%d", t.Seq())
	c := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name, Attempt: 0},
		Image:    &runtimeapi.ImageSpec{Image: t.suite.cfg.Image},
		Command:  command,
		LogPath:  filepath.Join(name, "0.log"),
		Labels: map[string]string{
			RunLabel: t.suite.cfg.RunID, TestLabel: labelValue(t.Name()), "io.kubernetes.container.name": name,
		},
		Linux: &runtimeapi.LinuxContainerConfig{
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD},
			},
		},
	}
	for _, o := range opts {
		o(c)
	}
	return c
}

// createContainer creates a container in sb, making its log directory first as the
// kubelet does.
func (t *T) createContainer(ctx context.Context, sb *sandbox, cfg *runtimeapi.ContainerConfig) string {
	if err := os.MkdirAll(filepath.Join(sb.Config.LogDirectory, filepath.Dir(cfg.LogPath)), 0o755); err != nil {
		t.Fatalf("container log directory: %v", err)
	}
	resp, err := t.Runtime().CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.ID, Config: cfg, SandboxConfig: sb.Config})
	if err != nil {
		t.Fatalf("CreateContainer %s %v: %v", cfg.Metadata.Name, cfg.Command, err)
	}
	if resp.ContainerId == "" {
		t.Fatalf("CreateContainer %s returned an empty container ID", cfg.Metadata.Name)
	}
	return resp.ContainerId
}

func (t *T) startContainer(ctx context.Context, id string) {
	if _, err := t.Runtime().StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer %s: %v", id, err)
	}
}

// runContainer creates and starts a container of command in sb.
func (t *T) runContainer(ctx context.Context, sb *sandbox, command []string, opts ...containerOption) (string, *runtimeapi.ContainerConfig) {
	cfg := t.containerConfig(command, opts...)
	id := t.createContainer(ctx, sb, cfg)
	t.startContainer(ctx, id)
	return id, cfg
}

// sleeper runs a sandbox with a container that sleeps forever.
func (t *T) sleeper(ctx context.Context, opts ...containerOption) (*sandbox, string) {
	sb := t.runSandbox(ctx)
	id, _ := t.runContainer(ctx, sb, []string{"sleep", "infinity"}, opts...)
	return sb, id
}

func (t *T) sandboxStatus(ctx context.Context, id string) *runtimeapi.PodSandboxStatus {
	resp, err := t.Runtime().PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
	if err != nil {
		t.Fatalf("PodSandboxStatus %s: %v", id, err)
	}
	if resp.Status == nil {
		t.Fatalf("PodSandboxStatus %s returned no status", id)
	}
	return resp.Status
}

func (t *T) containerStatus(ctx context.Context, id string) *runtimeapi.ContainerStatus {
	resp, err := t.Runtime().ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("ContainerStatus %s: %v", id, err)
	}
	if resp.Status == nil {
		t.Fatalf("ContainerStatus %s returned no status", id)
	}
	return resp.Status
}

// waitFor polls cond until it is true, and fails the test with what when ctx ends
// first (cond's last error tells why).
func (t *T) waitFor(ctx context.Context, what string, cond func() (bool, error)) {
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		select {
		case <-ctx.Done():
			if last != nil {
				t.Fatalf("waiting for %s: %v (last: %v)", what, ctx.Err(), last)
			}
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(pollInterval):
		}
	}
}

// waitExited waits until the container has exited and returns its status.
func (t *T) waitExited(ctx context.Context, id string) *runtimeapi.ContainerStatus {
	var st *runtimeapi.ContainerStatus
	t.waitFor(ctx, "container "+id+" to exit", func() (bool, error) {
		st = t.containerStatus(ctx, id)
		return st.State == runtimeapi.ContainerState_CONTAINER_EXITED, fmt.Errorf("state %s", st.State)
	})
	return st
}

// waitRunning waits until the container runs.
func (t *T) waitRunning(ctx context.Context, id string) {
	t.waitFor(ctx, "container "+id+" to run", func() (bool, error) {
		st := t.containerStatus(ctx, id)
		return st.State == runtimeapi.ContainerState_CONTAINER_RUNNING, fmt.Errorf("state %s", st.State)
	})
}

// execSync runs cmd in the container and returns its response; timeout is in seconds
// (0: none).
func (t *T) execSync(ctx context.Context, id string, timeout int64, cmd ...string) *runtimeapi.ExecSyncResponse {
	resp, err := t.Runtime().ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: timeout})
	if err != nil {
		t.Fatalf("ExecSync %v in %s: %v", cmd, id, err)
	}
	return resp
}

// execOK runs cmd and fails the test unless it exits 0; it returns stdout.
func (t *T) execOK(ctx context.Context, id string, cmd ...string) string {
	resp := t.execSync(ctx, id, 30, cmd...)
	if resp.ExitCode != 0 {
		t.Fatalf("ExecSync %v: exit code %d, stderr %q", cmd, resp.ExitCode, resp.Stderr)
	}
	return string(resp.Stdout)
}

// listSandboxIDs lists the IDs of the sandboxes filter selects.
func (t *T) listSandboxIDs(ctx context.Context, filter *runtimeapi.PodSandboxFilter) []string {
	resp, err := t.Runtime().ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: filter})
	if err != nil {
		t.Fatalf("ListPodSandbox: %v", err)
	}
	ids := []string{}
	for _, sb := range resp.Items {
		ids = append(ids, sb.Id)
	}
	return ids
}

// listContainerIDs lists the IDs of the containers filter selects.
func (t *T) listContainerIDs(ctx context.Context, filter *runtimeapi.ContainerFilter) []string {
	resp, err := t.Runtime().ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: filter})
	if err != nil {
		t.Fatalf("ListContainers: %v", err)
	}
	ids := []string{}
	for _, c := range resp.Containers {
		ids = append(ids, c.Id)
	}
	return ids
}

// readLog reads a container's CRI log file.
func readLog(sb *sandbox, cfg *runtimeapi.ContainerConfig) (string, error) {
	data, err := os.ReadFile(filepath.Join(sb.Config.LogDirectory, cfg.LogPath))
	if err != nil {
		return "", fmt.Errorf("read container log: %w", err)
	}
	return string(data), nil
}

// logLine is one line of a CRI log file: "<RFC3339Nano> <stream> <P|F> <content>".
type logLine struct {
	Time    time.Time
	Stream  string
	Partial bool
	Content string
}

// parseLog parses a CRI log file's content and fails on a line of another format.
func parseLog(data string) ([]logLine, error) {
	var lines []logLine
	for i, l := range strings.Split(strings.TrimSuffix(data, "\n"), "\n") {
		if l == "" {
			continue
		}
		f := strings.SplitN(l, " ", 4)
		if len(f) < 3 {
			return nil, fmt.Errorf("log line %d %q is not \"<time> <stream> <tag> <content>\"", i+1, l)
		}
		ts, err := time.Parse(time.RFC3339Nano, f[0])
		if err != nil {
			return nil, fmt.Errorf("log line %d %q: time: %w", i+1, l, err)
		}
		if f[1] != "stdout" && f[1] != "stderr" {
			return nil, fmt.Errorf("log line %d %q: stream %q is neither stdout nor stderr", i+1, l, f[1])
		}
		if f[2] != "F" && f[2] != "P" {
			return nil, fmt.Errorf("log line %d %q: tag %q is neither F nor P", i+1, l, f[2])
		}
		content := ""
		if len(f) == 4 {
			content = f[3]
		}
		lines = append(lines, logLine{Time: ts, Stream: f[1], Partial: f[2] == "P", Content: content})
	}
	return lines, nil
}

// hasLogLine reports whether lines hold a full line of stream with content.
func hasLogLine(lines []logLine, stream, content string) bool {
	for _, l := range lines {
		if l.Stream == stream && !l.Partial && l.Content == content {
			return true
		}
	}
	return false
}
