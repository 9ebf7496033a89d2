package cri

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// waitLog waits until the container's log file has a full line of stream with content
// and returns the parsed log.
func (t *T) waitLog(ctx context.Context, sb *sandbox, cfg *runtimeapi.ContainerConfig, stream, content string) []logLine {
	var lines []logLine
	t.waitFor(ctx, fmt.Sprintf("%s line %q in the container log", stream, content), func() (bool, error) {
		data, err := readLog(sb, cfg)
		if err != nil {
			return false, err
		}
		if lines, err = parseLog(data); err != nil {
			t.Fatalf("container log %s is not in the CRI format: %v", filepath.Join(sb.Config.LogDirectory, cfg.LogPath), err)
		}
		return hasLogLine(lines, stream, content), fmt.Errorf("log %q", data)
	})
	return lines
}

// testLogsFile: the container's stdout and stderr land in the CRI log file at the
// sandbox's log directory and the container's log path, one "<time> <stream> F <line>"
// per line.
func testLogsFile(ctx context.Context, t *T) {
	sb := t.runSandbox(ctx)
	id, cfg := t.runContainer(ctx, sb, []string{"sh", "-c", "echo hello stdout; cat /conformance-missing"})
	st := t.waitExited(ctx, id)
	if st.ExitCode != 1 {
		t.Errorf("sh -c 'echo; cat missing': exit code %d, expected 1", st.ExitCode)
	}
	t.waitLog(ctx, sb, cfg, "stdout", "hello stdout")
	lines := t.waitLog(ctx, sb, cfg, "stderr", "cat: can't open '/conformance-missing': No such file or directory")
	for i := 1; i < len(lines); i++ {
		if lines[i].Time.Before(lines[i-1].Time) {
			t.Errorf("log line %d's time %s is before line %d's %s", i+1, lines[i].Time, i, lines[i-1].Time)
		}
	}
	if st.LogPath == "" {
		t.Errorf("ContainerStatus has no log path")
	} else if full := filepath.Join(sb.Config.LogDirectory, cfg.LogPath); st.LogPath != full && st.LogPath != cfg.LogPath {
		t.Errorf("ContainerStatus log path %q, expected %q", st.LogPath, full)
	}
}

// testLogsReopen: after the log file is moved away (rotated), ReopenContainerLog makes
// the runtime write to a new file at the log path.
func testLogsReopen(ctx context.Context, t *T) {
	sb := t.runSandbox(ctx)
	id, cfg := t.runContainer(ctx, sb, []string{"sh", "-c", "echo before; sleep 3; echo after; sleep 3600"})
	t.waitLog(ctx, sb, cfg, "stdout", "before")
	path := filepath.Join(sb.Config.LogDirectory, cfg.LogPath)
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatalf("rotate the log: %v", err)
	}
	if _, err := t.Runtime().ReopenContainerLog(ctx, &runtimeapi.ReopenContainerLogRequest{ContainerId: id}); err != nil {
		t.Fatalf("ReopenContainerLog: %v", err)
	}
	// A runtime may create the new file at once (containerd) or at the next write: the
	// line written after the reopen must land in it either way.
	lines := t.waitLog(ctx, sb, cfg, "stdout", "after")
	if hasLogLine(lines, "stdout", "before") {
		t.Errorf("the new log file has the line written before the rotation")
	}
}

// freePort returns a TCP port of the loopback interface that is free right now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// hostPortKey finds a host port in a runtime's verbose info (containerd puts the
// sandbox config there as JSON).
var hostPortKey = regexp.MustCompile(`"host_?[pP]ort"\s*:\s*(\d+)`)

// testPortsMapping: a sandbox with port mappings runs Ready; when the runtime gives
// verbose status info, the mapping is in it.
func testPortsMapping(ctx context.Context, t *T) {
	hostPort, err := freePort()
	if err != nil {
		t.Fatalf("%v", err)
	}
	sb := t.runSandbox(ctx, withPortMappings(&runtimeapi.PortMapping{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 8080, HostPort: int32(hostPort), HostIp: "127.0.0.1"}))
	resp, err := t.Runtime().PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.ID, Verbose: true})
	if err != nil {
		t.Fatalf("PodSandboxStatus: %v", err)
	}
	if resp.Status.GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("sandbox with a port mapping: state %s, expected SANDBOX_READY", resp.Status.GetState())
	}
	if len(resp.Info) == 0 {
		t.Logf("the runtime gives no verbose info: the mapping was accepted, its report cannot be checked")
		return
	}
	for _, v := range resp.Info {
		for _, m := range hostPortKey.FindAllStringSubmatch(v, -1) {
			if m[1] == strconv.Itoa(hostPort) {
				return
			}
		}
	}
	t.Errorf("the sandbox's verbose status does not report host port %d", hostPort)
}

// testPortsHostPort: a hostPort mapping on 127.0.0.1 reaches an httpd in the pod.
// Optional in the CRI (the network plugin maps host ports): skipped when the port
// does not answer.
func testPortsHostPort(ctx context.Context, t *T) {
	const port = 8080
	hostPort, err := freePort()
	if err != nil {
		t.Fatalf("%v", err)
	}
	www := t.TempDir()
	const body = "served through a host port\n"
	if err := os.WriteFile(filepath.Join(www, "index.html"), []byte(body), 0o644); err != nil {
		t.Fatalf("web root: %v", err)
	}
	sb := t.runSandbox(ctx, withPortMappings(&runtimeapi.PortMapping{Protocol: runtimeapi.Protocol_TCP, ContainerPort: port, HostPort: int32(hostPort), HostIp: "127.0.0.1"}))
	id, _ := t.runContainer(ctx, sb, []string{"httpd", "-f", "-p", fmt.Sprint(port), "-h", "/www"}, withMount(www, "/www", true))
	t.waitRunning(ctx, id)
	client := &http.Client{Timeout: 2 * time.Second}
	url := fmt.Sprintf("http://127.0.0.1:%d/index.html", hostPort)
	deadline := time.Now().Add(10 * time.Second)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			t.Fatalf("request: %v", err)
		}
		resp, err := client.Do(req)
		if err == nil {
			data, rerr := io.ReadAll(resp.Body)
			resp.Body.Close()
			if rerr != nil || resp.StatusCode != http.StatusOK || string(data) != body {
				t.Fatalf("GET %s: %d %q (%v), expected 200 %q", url, resp.StatusCode, data, rerr, body)
			}
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Skipf("host port 127.0.0.1:%d does not reach the pod (%v): the runtime's network does not map host ports on loopback", hostPort, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// testEnv: the container's env reaches its process and its execs, with the image's PATH
// and the sandbox's HOSTNAME.
func testEnv(ctx context.Context, t *T) {
	sb := t.runSandbox(ctx)
	env := withEnv("CONFORMANCE_FOO", "bar", "CONFORMANCE_GREETING", "hello world")
	id, cfg := t.runContainer(ctx, sb, []string{"env"}, env)
	t.waitExited(ctx, id)
	t.waitLog(ctx, sb, cfg, "stdout", "CONFORMANCE_FOO=bar")
	lines := t.waitLog(ctx, sb, cfg, "stdout", "CONFORMANCE_GREETING=hello world")
	for _, prefix := range []string{"PATH=", "HOSTNAME="} {
		if !slices.ContainsFunc(lines, func(l logLine) bool { return strings.HasPrefix(l.Content, prefix) }) {
			t.Errorf("env of the container has no %s...", prefix)
		}
	}
	sleeper, _ := t.runContainer(ctx, sb, []string{"sleep", "infinity"}, env)
	if out := t.execOK(ctx, sleeper, "sh", "-c", `echo "$CONFORMANCE_GREETING from ${CONFORMANCE_FOO}"`); out != "hello world from bar\n" {
		t.Errorf("env in an exec: %q, expected %q", out, "hello world from bar\n")
	}
}

// mountFixture makes a host directory with a file for the mount tests.
func mountFixture(t *T) (dir, content string) {
	dir = t.TempDir()
	content = "mounted " + t.Config().RunID
	if err := os.WriteFile(filepath.Join(dir, "file.txt"), []byte(content+"\n"), 0o644); err != nil {
		t.Fatalf("mount fixture: %v", err)
	}
	return dir, content
}

// checkMountStatus checks the mount the container status reports for containerPath, if
// the runtime reports mounts.
func checkMountStatus(ctx context.Context, t *T, id, containerPath string, readOnly bool) {
	st := t.containerStatus(ctx, id)
	if len(st.Mounts) == 0 {
		t.Logf("the runtime reports no mounts in the container status")
		return
	}
	i := slices.IndexFunc(st.Mounts, func(m *runtimeapi.Mount) bool { return m.ContainerPath == containerPath })
	if i < 0 {
		t.Errorf("container status mounts %v lack %s", st.Mounts, containerPath)
		return
	}
	if st.Mounts[i].Readonly != readOnly {
		t.Errorf("container status reports %s with readonly %v, expected %v", containerPath, st.Mounts[i].Readonly, readOnly)
	}
}

// testMountReadOnly: a host directory mounted read-only is readable in the container.
func testMountReadOnly(ctx context.Context, t *T) {
	dir, content := mountFixture(t)
	_, id := t.sleeper(ctx, withMount(dir, "/mnt/ro", true))
	if out := t.execOK(ctx, id, "cat", "/mnt/ro/file.txt"); out != content+"\n" {
		t.Errorf("cat /mnt/ro/file.txt: %q, expected %q", out, content+"\n")
	}
	checkMountStatus(ctx, t, id, "/mnt/ro", true)
}

// testMountReadWrite: a host directory mounted read-write is the host's directory, not
// a copy: a file the host writes after the start is visible in the container.
func testMountReadWrite(ctx context.Context, t *T) {
	dir, content := mountFixture(t)
	_, id := t.sleeper(ctx, withMount(dir, "/mnt/rw", false))
	if out := t.execOK(ctx, id, "cat", "/mnt/rw/file.txt"); out != content+"\n" {
		t.Errorf("cat /mnt/rw/file.txt: %q, expected %q", out, content+"\n")
	}
	if err := os.WriteFile(filepath.Join(dir, "later.txt"), []byte("later\n"), 0o644); err != nil {
		t.Fatalf("write on the host: %v", err)
	}
	if out := t.execOK(ctx, id, "cat", "/mnt/rw/later.txt"); out != "later\n" {
		t.Errorf("cat /mnt/rw/later.txt (written on the host after the start): %q, expected %q", out, "later\n")
	}
	checkMountStatus(ctx, t, id, "/mnt/rw", false)
}

// testMountRefusesWrites would check that a read-only mount refuses writes, but the
// command contract the suite keeps to has no command that writes a file.
func testMountRefusesWrites(_ context.Context, t *T) {
	t.Skipf("the container command contract has no command that writes a file, so writes to a read-only mount cannot be tried (mounts/read-only checks the reported readonly flag)")
}

// testResourcesUpdate: UpdateContainerResources of a running container is accepted;
// where the container status or the container's cgroup shows the memory limit, it is
// the new one.
func testResourcesUpdate(ctx context.Context, t *T) {
	_, id := t.sleeper(ctx)
	const memory = 256 << 20
	res := &runtimeapi.LinuxContainerResources{CpuPeriod: 100000, CpuQuota: 50000, CpuShares: 512, MemoryLimitInBytes: memory}
	if _, err := t.Runtime().UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{ContainerId: id, Linux: res}); err != nil {
		t.Fatalf("UpdateContainerResources: %v", err)
	}
	st := t.containerStatus(ctx, id)
	if st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("container state after UpdateContainerResources %s, expected CONTAINER_RUNNING", st.State)
	}
	if l := st.GetResources().GetLinux(); l != nil {
		if l.MemoryLimitInBytes != memory {
			t.Errorf("container status reports memory limit %d, expected %d", l.MemoryLimitInBytes, memory)
		}
	} else {
		t.Logf("the runtime does not report resources in the container status")
	}
	// The cgroup's own file, v1 then v2, when the container can see it.
	for _, f := range []string{"/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max"} {
		resp := t.execSync(ctx, id, 30, "cat", f)
		if resp.ExitCode != 0 {
			continue
		}
		if got := strings.TrimSpace(string(resp.Stdout)); got != strconv.Itoa(memory) {
			t.Errorf("%s in the container: %q, expected %d", f, got, memory)
		}
		return
	}
	t.Logf("the container sees no memory cgroup file: the limit is checked in the status only")
}

// testStatsContainer: ContainerStats reports the container with CPU and memory entries.
func testStatsContainer(ctx context.Context, t *T) {
	_, id := t.sleeper(ctx)
	var stats *runtimeapi.ContainerStats
	t.waitFor(ctx, "stats with CPU and memory", func() (bool, error) {
		resp, err := t.Runtime().ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: id})
		if err != nil {
			return false, err
		}
		stats = resp.Stats
		return stats != nil && stats.Cpu != nil && stats.Memory != nil, fmt.Errorf("stats %v", stats)
	})
	if got := stats.GetAttributes().GetId(); got != id {
		t.Errorf("ContainerStats of %s: attributes name %q", id, got)
	}
	if stats.Cpu.Timestamp <= 0 || stats.Memory.Timestamp <= 0 {
		t.Errorf("stats timestamps: cpu %d, memory %d", stats.Cpu.Timestamp, stats.Memory.Timestamp)
	}
}

// testStatsList: ListContainerStats filters by container, sandbox and labels, each with
// CPU and memory entries.
func testStatsList(ctx context.Context, t *T) {
	sb, id := t.sleeper(ctx)
	ours := map[string]string{RunLabel: t.Config().RunID, TestLabel: labelValue(t.Name())}
	for _, c := range []struct {
		what   string
		filter *runtimeapi.ContainerStatsFilter
	}{
		{"by ID", &runtimeapi.ContainerStatsFilter{Id: id}},
		{"by sandbox", &runtimeapi.ContainerStatsFilter{PodSandboxId: sb.ID}},
		{"by labels", &runtimeapi.ContainerStatsFilter{LabelSelector: ours}},
	} {
		t.waitFor(ctx, "ListContainerStats "+c.what, func() (bool, error) {
			resp, err := t.Runtime().ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{Filter: c.filter})
			if err != nil {
				return false, err
			}
			var ids []string
			for _, s := range resp.Stats {
				ids = append(ids, s.GetAttributes().GetId())
			}
			if len(ids) != 1 || ids[0] != id {
				t.Fatalf("ListContainerStats %s: containers %v, expected [%s]", c.what, ids, id)
			}
			s := resp.Stats[0]
			return s.Cpu != nil && s.Memory != nil, fmt.Errorf("stats without CPU or memory: %v", s)
		})
	}
	all, err := t.Runtime().ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{})
	if err != nil {
		t.Fatalf("ListContainerStats: %v", err)
	}
	if !slices.ContainsFunc(all.Stats, func(s *runtimeapi.ContainerStats) bool { return s.GetAttributes().GetId() == id }) {
		t.Errorf("ListContainerStats without a filter does not include %s", id)
	}
}
