package sim_test

import (
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"berth.dev/berth/drivers/cri/sim"
)

func TestVersionAndStatus(t *testing.T) {
	c := startSim(t, sim.Config{})
	ctx := testCtx(t)
	v, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if v.RuntimeName != "berth-sim" || v.RuntimeVersion == "" || v.RuntimeApiVersion != "v1" {
		t.Errorf("version %+v", v)
	}
	st, err := c.rt.Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ready := map[string]bool{}
	for _, cond := range st.Status.Conditions {
		ready[cond.Type] = cond.Status
	}
	if !ready[runtimeapi.RuntimeReady] || !ready[runtimeapi.NetworkReady] {
		t.Errorf("conditions %+v", st.Status.Conditions)
	}
}

// TestLifecycle drives a sandbox and a container through their whole life, with the
// filters, idempotent stops and removes, and NotFound for unknown IDs.
func TestLifecycle(t *testing.T) {
	c := startSim(t, sim.Config{PodCIDR: "10.99.0.0/24"})
	ctx := testCtx(t)
	sbID, sbCfg := c.runSandbox(t, "web", map[string]string{"note": "kept"})
	other, _ := c.runSandbox(t, "other", nil)

	sb, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID, Verbose: true})
	if err != nil {
		t.Fatal(err)
	}
	_, subnet, _ := net.ParseCIDR("10.99.0.0/24")
	ip := net.ParseIP(sb.Status.Network.GetIp())
	if ip == nil || !subnet.Contains(ip) || ip.String() == "10.99.0.1" || ip.String() == "10.99.0.0" {
		t.Errorf("sandbox IP %q: want a pod address of 10.99.0.0/24", sb.Status.Network.GetIp())
	}
	if sb.Status.State != runtimeapi.PodSandboxState_SANDBOX_READY || sb.Status.Annotations["note"] != "kept" || sb.Status.Labels["app"] != "test" {
		t.Errorf("sandbox status %+v", sb.Status)
	}
	if !strings.Contains(sb.Info["info"], `"host_port":8080`) && !strings.Contains(sb.Info["info"], `8080`) {
		t.Errorf("verbose info does not record the port mapping: %s", sb.Info["info"])
	}
	osb, _ := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: other})
	if osb.Status.Network.Ip == sb.Status.Network.Ip {
		t.Errorf("two sandboxes share IP %s", osb.Status.Network.Ip)
	}
	// The same pod attempt cannot be run twice.
	if _, err := c.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sbCfg}); err == nil {
		t.Errorf("a second RunPodSandbox of the same attempt succeeded")
	}

	cfg := containerConfig("app", "sleep", "infinity")
	cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: t.TempDir()}}
	cfg.Annotations = map[string]string{"a": "b"}
	cfg.Linux = &runtimeapi.LinuxContainerConfig{Resources: &runtimeapi.LinuxContainerResources{CpuShares: 512, MemoryLimitInBytes: 64 << 20}}
	id := c.create(t, sbID, sbCfg, cfg)
	if st := c.status(t, id); st.State != runtimeapi.ContainerState_CONTAINER_CREATED || st.CreatedAt == 0 || st.StartedAt != 0 {
		t.Errorf("created container: %+v", st)
	}
	if _, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	st := c.status(t, id)
	if st.State != runtimeapi.ContainerState_CONTAINER_RUNNING || st.StartedAt == 0 || st.FinishedAt != 0 ||
		st.Image.GetImage() != busybox ||
		st.ImageRef == "" || st.Annotations["a"] != "b" || len(st.Mounts) != 1 ||
		st.LogPath != filepath.Join(sbCfg.LogDirectory, "app/0.log") || st.Resources.GetLinux().GetCpuShares() != 512 {
		t.Errorf("running container: %+v", st)
	}
	if _, err := c.rt.UpdateContainerResources(ctx, &runtimeapi.UpdateContainerResourcesRequest{
		ContainerId: id, Linux: &runtimeapi.LinuxContainerResources{CpuShares: 1024, MemoryLimitInBytes: 128 << 20},
	}); err != nil {
		t.Fatal(err)
	}
	if got := c.status(t, id).Resources.GetLinux().GetMemoryLimitInBytes(); got != 128<<20 {
		t.Errorf("memory limit after update %d", got)
	}
	// Log rotation: the file is renamed away, and reopening makes a new one.
	if err := os.Rename(st.LogPath, st.LogPath+".1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.rt.ReopenContainerLog(ctx, &runtimeapi.ReopenContainerLogRequest{ContainerId: id}); err != nil {
		t.Errorf("ReopenContainerLog: %v", err)
	}
	if _, err := os.Stat(st.LogPath); err != nil {
		t.Errorf("no new log file after ReopenContainerLog: %v", err)
	}
	// A second container that exits at once, to filter on.
	done := c.run(t, sbID, sbCfg, containerConfig("done", "true"))
	c.waitExited(t, done, 5*time.Second)

	list := func(f *runtimeapi.ContainerFilter) []string {
		t.Helper()
		resp, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: f})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, c := range resp.Containers {
			names = append(names, c.Metadata.Name)
		}
		slices.Sort(names)
		return names
	}
	for _, tc := range []struct {
		name   string
		filter *runtimeapi.ContainerFilter
		want   []string
	}{
		{"all", nil, []string{"app", "done"}},
		{"running", &runtimeapi.ContainerFilter{State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}, []string{"app"}},
		{"id", &runtimeapi.ContainerFilter{Id: done}, []string{"done"}},
		{"id prefix", &runtimeapi.ContainerFilter{Id: done[:12]}, []string{"done"}},
		{"sandbox", &runtimeapi.ContainerFilter{PodSandboxId: sbID}, []string{"app", "done"}},
		{"other sandbox", &runtimeapi.ContainerFilter{PodSandboxId: other}, nil},
		{"label", &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"io.kubernetes.container.name": "app"}}, []string{"app"}},
		{"label miss", &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"x": "y"}}, nil},
	} {
		if got := list(tc.filter); !slices.Equal(got, tc.want) {
			t.Errorf("ListContainers %s: %v, want %v", tc.name, got, tc.want)
		}
	}
	sandboxes := func(f *runtimeapi.PodSandboxFilter) int {
		resp, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: f})
		if err != nil {
			t.Fatal(err)
		}
		return len(resp.Items)
	}
	if n := sandboxes(nil); n != 2 {
		t.Errorf("%d sandboxes listed, want 2", n)
	}
	if n := sandboxes(&runtimeapi.PodSandboxFilter{Id: sbID}); n != 1 {
		t.Errorf("%d sandboxes with the ID", n)
	}
	if n := sandboxes(&runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{"io.kubernetes.pod.name": "web"}}); n != 1 {
		t.Errorf("%d sandboxes with the label", n)
	}

	// Stop with timeout 0 kills at once; a second stop and remove are no errors.
	if _, err := c.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0}); err != nil {
		t.Fatal(err)
	}
	if st := c.status(t, id); st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 || st.Reason != "Error" || st.FinishedAt < st.StartedAt {
		t.Errorf("killed container: %+v", st)
	}
	if _, err := c.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id}); err != nil {
		t.Errorf("second StopContainer: %v", err)
	}
	for range 2 {
		if _, err := c.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Errorf("RemoveContainer: %v", err)
		}
	}
	if _, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id}); status.Code(err) != codes.NotFound {
		t.Errorf("status of a removed container: %v, want NotFound", err)
	}
	for range 2 {
		if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err != nil {
			t.Errorf("StopPodSandbox: %v", err)
		}
	}
	if n := sandboxes(&runtimeapi.PodSandboxFilter{State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY}}); n != 1 {
		t.Errorf("%d stopped sandboxes listed, want 1", n)
	}
	// No new container in a stopped sandbox.
	if _, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sbID, Config: containerConfig("late", "true"), SandboxConfig: sbCfg}); err == nil {
		t.Errorf("CreateContainer in a stopped sandbox succeeded")
	}
	for range 2 {
		if _, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sbID}); err != nil {
			t.Errorf("RemovePodSandbox: %v", err)
		}
	}
	if got := list(nil); len(got) != 0 {
		t.Errorf("containers left after the sandbox's removal: %v", got)
	}
	if _, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID}); status.Code(err) != codes.NotFound {
		t.Errorf("status of a removed sandbox: %v, want NotFound", err)
	}
	for name, call := range map[string]func() error{
		"StartContainer": func() error {
			_, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: "nosuch"})
			return err
		},
		"ExecSync": func() error {
			_, err := c.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: "nosuch", Cmd: []string{"true"}})
			return err
		},
		"CreateContainer": func() error {
			_, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: "nosuch", Config: containerConfig("x", "true")})
			return err
		},
		"ContainerStats": func() error {
			_, err := c.rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: "nosuch"})
			return err
		},
	} {
		if err := call(); status.Code(err) != codes.NotFound {
			t.Errorf("%s of an unknown ID: %v, want NotFound", name, err)
		}
	}
	for name, call := range map[string]func() error{
		"StopContainer": func() error {
			_, err := c.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: "nosuch"})
			return err
		},
		"StopPodSandbox": func() error {
			_, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: "nosuch"})
			return err
		},
		"RemovePodSandbox": func() error {
			_, err := c.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: "nosuch"})
			return err
		},
	} {
		if err := call(); err != nil {
			t.Errorf("%s of an unknown ID: %v, want no error", name, err)
		}
	}
}

// TestExits checks how containers end, by the command contract and by annotations.
func TestExits(t *testing.T) {
	c := startSim(t, sim.Config{})
	sbID, sbCfg := c.runSandbox(t, "exits", map[string]string{
		"sim.berth.dev/exit-code.scripted": "42",
		"sim.berth.dev/run-seconds.short":  "0.2",
		"sim.berth.dev/run-seconds.capped": "0.1",
	})
	for _, tc := range []struct {
		name   string
		argv   []string
		code   int32
		reason string
		min    time.Duration
	}{
		{"true", []string{"true"}, 0, "Completed", 0},
		{"false", []string{"false"}, 1, "Error", 0},
		{"exit", []string{"sh", "-c", "exit 3"}, 3, "Error", 0},
		{"and", []string{"sh", "-c", "false && exit 5; exit 6"}, 6, "Error", 0},
		{"last", []string{"sh", "-c", "echo a; false"}, 1, "Error", 0},
		{"sleep", []string{"sleep", "0.3"}, 0, "Completed", 300 * time.Millisecond},
		{"script-sleep", []string{"/bin/sh", "-c", "sleep 0.2 && exit 2"}, 2, "Error", 200 * time.Millisecond},
		{"missing-file", []string{"cat", "/nonexistent"}, 1, "Error", 0},
		{"scripted", []string{"true"}, 42, "Error", 0},
		{"short", []string{"sleep", "infinity"}, 0, "Completed", 200 * time.Millisecond},
		{"capped", []string{"sh", "-c", "sleep 10; exit 9"}, 0, "Completed", 100 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			id := c.run(t, sbID, sbCfg, containerConfig(tc.name, tc.argv...))
			st := c.waitExited(t, id, 5*time.Second)
			if st.ExitCode != tc.code || st.Reason != tc.reason {
				t.Errorf("%v: exit code %d reason %q, want %d %q", tc.argv, st.ExitCode, st.Reason, tc.code, tc.reason)
			}
			if ran := time.Duration(st.FinishedAt - st.StartedAt); ran < tc.min || ran > tc.min+2*time.Second {
				t.Errorf("%v ran %s, want %s", tc.argv, ran, tc.min)
			}
			if time.Since(start) < tc.min {
				t.Errorf("%v exited before %s", tc.argv, tc.min)
			}
		})
	}
	// A command outside the contract runs like a daemon, until stopped.
	id := c.run(t, sbID, sbCfg, containerConfig("daemon", "nginx", "-g", "daemon off;"))
	time.Sleep(100 * time.Millisecond)
	if st := c.status(t, id); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("an unknown command: %s, want running", st.State)
	}
	// ... and, unlike busybox, dies of SIGTERM.
	start := time.Now()
	if _, err := c.rt.StopContainer(testCtx(t), &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 30}); err != nil {
		t.Fatal(err)
	}
	if st := c.status(t, id); st.ExitCode != 143 || time.Since(start) > 5*time.Second {
		t.Errorf("stopped daemon: exit code %d after %s, want 143 at once", st.ExitCode, time.Since(start))
	}
}

// TestStopTimeout: containers ignore SIGTERM, so StopContainer waits out the timeout and
// kills (137), unless the container ends first or is scripted to honour SIGTERM.
func TestStopTimeout(t *testing.T) {
	c := startSim(t, sim.Config{})
	ctx := testCtx(t)
	sbID, sbCfg := c.runSandbox(t, "stop", map[string]string{"sim.berth.dev/sigterm-exit-code.polite": "143"})

	long := c.run(t, sbID, sbCfg, containerConfig("long", "sleep", "100"))
	start := time.Now()
	if _, err := c.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: long, Timeout: 1}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took < time.Second || took > 3*time.Second {
		t.Errorf("StopContainer with timeout 1 took %s", took)
	}
	if st := c.status(t, long); st.State != runtimeapi.ContainerState_CONTAINER_EXITED || st.ExitCode != 137 || st.Reason != "Error" {
		t.Errorf("after the timeout: %s exit %d reason %q, want EXITED 137 Error", st.State, st.ExitCode, st.Reason)
	}

	short := c.run(t, sbID, sbCfg, containerConfig("short", "sleep", "0.3"))
	start = time.Now()
	if _, err := c.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: short, Timeout: 10}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("StopContainer of a container ending in 0.3 s took %s", took)
	}
	if st := c.status(t, short); st.ExitCode != 0 || st.Reason != "Completed" {
		t.Errorf("container that ended during the grace period: exit %d reason %q", st.ExitCode, st.Reason)
	}

	polite := c.run(t, sbID, sbCfg, containerConfig("polite", "sleep", "100"))
	start = time.Now()
	if _, err := c.rt.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: polite, Timeout: 30}); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("StopContainer of a SIGTERM-honouring container took %s", took)
	}
	if st := c.status(t, polite); st.ExitCode != 143 {
		t.Errorf("SIGTERM-honouring container: exit %d, want 143", st.ExitCode)
	}
}

var logLine = regexp.MustCompile(`^(\S+) (stdout|stderr) ([FP]) (.*)$`)

// TestLogs checks the CRI log format and what lands in it.
func TestLogs(t *testing.T) {
	c := startSim(t, sim.Config{})
	sbID, sbCfg := c.runSandbox(t, "logs", map[string]string{"sim.berth.dev/logs.scripted": "first line\nsecond line"})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "greeting"), []byte("from a file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := containerConfig("app", "sh", "-c", `echo "hello $NAME" '$NOT'; echo -n no-newline; echo ${NAME}-braced; cat /cfg/greeting /cfg/missing; sleep 0.2; echo late; hostname`)
	cfg.Envs = []*runtimeapi.KeyValue{{Key: "NAME", Value: "world"}}
	cfg.Mounts = []*runtimeapi.Mount{{ContainerPath: "/cfg", HostPath: dir, Readonly: true}}
	id := c.run(t, sbID, sbCfg, cfg)
	st := c.waitExited(t, id, 5*time.Second)
	if st.ExitCode != 0 {
		t.Errorf("exit code %d, want 0 (the last command succeeded)", st.ExitCode)
	}
	data, err := os.ReadFile(st.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, line := range strings.Split(strings.TrimSuffix(string(data), "\n"), "\n") {
		m := logLine.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("log line %q is not in the CRI format", line)
		}
		if _, err := time.Parse(time.RFC3339Nano, m[1]); err != nil {
			t.Errorf("log line %q: timestamp: %v", line, err)
		}
		got = append(got, m[2]+" "+m[4])
	}
	want := []string{
		"stdout hello world $NOT",
		"stdout no-newlineworld-braced",
		"stdout from a file",
		"stderr cat: can't open '/cfg/missing': No such file or directory",
		"stdout late",
		"stdout logs",
	}
	if !slices.Equal(got, want) {
		t.Errorf("log lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	id = c.run(t, sbID, sbCfg, containerConfig("scripted", "sleep", "infinity"))
	time.Sleep(50 * time.Millisecond)
	st = c.status(t, id)
	data, _ = os.ReadFile(st.LogPath)
	if n := strings.Count(string(data), " stdout F "); n != 2 || !strings.Contains(string(data), "stdout F second line") {
		t.Errorf("scripted logs: %q", data)
	}
}
