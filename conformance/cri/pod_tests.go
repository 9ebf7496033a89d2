package cri

import (
	"context"
	"net"
	"slices"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// testSandboxRun: a sandbox runs and its status is Ready, with its metadata, labels, a
// creation time and an IP address.
func testSandboxRun(ctx context.Context, t *T) {
	sb := t.runSandbox(ctx)
	st := t.sandboxStatus(ctx, sb.ID)
	if st.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		t.Errorf("sandbox state %s, expected SANDBOX_READY", st.State)
	}
	if st.Id != sb.ID {
		t.Errorf("sandbox status ID %q, expected %q", st.Id, sb.ID)
	}
	if m := st.Metadata; m == nil || m.Name != sb.Config.Metadata.Name || m.Uid != sb.Config.Metadata.Uid || m.Namespace != Namespace {
		t.Errorf("sandbox metadata %v, expected %v", st.Metadata, sb.Config.Metadata)
	}
	if st.Labels[RunLabel] != t.Config().RunID {
		t.Errorf("sandbox labels %v lack %s=%s", st.Labels, RunLabel, t.Config().RunID)
	}
	if st.CreatedAt <= 0 {
		t.Errorf("sandbox created at %d", st.CreatedAt)
	}
	if st.Network == nil || net.ParseIP(st.Network.Ip) == nil {
		t.Errorf("sandbox network status %v: no valid IP", st.Network)
	} else {
		t.Logf("sandbox IP %s", st.Network.Ip)
	}
}

// testSandboxList: ListPodSandbox filters by ID, label selector and state.
func testSandboxList(ctx context.Context, t *T) {
	a := t.runSandbox(ctx)
	b := t.runSandbox(ctx)
	if _, err := t.Runtime().StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: b.ID}); err != nil {
		t.Fatalf("StopPodSandbox %s: %v", b.ID, err)
	}
	ours := map[string]string{RunLabel: t.Config().RunID, TestLabel: labelValue(t.Name())}
	ready := &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY}
	notReady := &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_NOTREADY}
	for _, c := range []struct {
		what   string
		filter *runtimeapi.PodSandboxFilter
		want   []string
	}{
		{"by ID", &runtimeapi.PodSandboxFilter{Id: a.ID}, []string{a.ID}},
		{"by labels", &runtimeapi.PodSandboxFilter{LabelSelector: ours}, []string{a.ID, b.ID}},
		{"by labels, ready", &runtimeapi.PodSandboxFilter{LabelSelector: ours, State: ready}, []string{a.ID}},
		{"by labels, not ready", &runtimeapi.PodSandboxFilter{LabelSelector: ours, State: notReady}, []string{b.ID}},
		{"by ID and state", &runtimeapi.PodSandboxFilter{Id: a.ID, State: notReady}, []string{}},
		{"by a label no sandbox has", &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{RunLabel: "no-such-run"}}, []string{}},
	} {
		got := t.listSandboxIDs(ctx, c.filter)
		if !sameSet(got, c.want) {
			t.Errorf("ListPodSandbox %s: got %v, expected %v", c.what, got, c.want)
		}
	}
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// testSandboxHostname: the sandbox's containers see its hostname.
func testSandboxHostname(ctx context.Context, t *T) {
	sb, id := t.sleeper(ctx)
	if got := strings.TrimSpace(t.execOK(ctx, id, "hostname")); got != sb.Config.Hostname {
		t.Errorf("hostname in the container %q, expected the sandbox's %q", got, sb.Config.Hostname)
	}
}

// testSandboxStop: a stopped sandbox is NotReady and its containers have exited.
func testSandboxStop(ctx context.Context, t *T) {
	sb, id := t.sleeper(ctx)
	if _, err := t.Runtime().StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if st := t.sandboxStatus(ctx, sb.ID); st.State != runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		t.Errorf("sandbox state after StopPodSandbox %s, expected SANDBOX_NOTREADY", st.State)
	}
	if st := t.containerStatus(ctx, id); st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("container state after StopPodSandbox %s, expected CONTAINER_EXITED", st.State)
	}
}

// testSandboxRemove: a removed sandbox is gone from status and list, with its containers.
func testSandboxRemove(ctx context.Context, t *T) {
	sb, id := t.sleeper(ctx)
	if _, err := t.Runtime().StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := t.Runtime().RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	if resp, err := t.Runtime().PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sb.ID}); err == nil {
		t.Errorf("PodSandboxStatus of a removed sandbox: expected a not-found error, got state %s", resp.GetStatus().GetState())
	} else if !isNotFound(err) {
		t.Errorf("PodSandboxStatus of a removed sandbox: expected a not-found error, got %v", err)
	}
	if ids := t.listSandboxIDs(ctx, &runtimeapi.PodSandboxFilter{Id: sb.ID}); len(ids) != 0 {
		t.Errorf("ListPodSandbox still lists the removed sandbox: %v", ids)
	}
	if ids := t.listContainerIDs(ctx, &runtimeapi.ContainerFilter{PodSandboxId: sb.ID}); len(ids) != 0 {
		t.Errorf("ListContainers still lists containers of the removed sandbox: %v", ids)
	}
	if _, err := t.Runtime().ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id}); !isNotFound(err) {
		t.Errorf("ContainerStatus of a container of the removed sandbox: expected a not-found error, got %v", err)
	}
}

// testContainerCreate: a created container is CONTAINER_CREATED with its metadata, image
// and labels.
func testContainerCreate(ctx context.Context, t *T) {
	sb := t.runSandbox(ctx)
	cfg := t.containerConfig([]string{"sleep", "infinity"})
	id := t.createContainer(ctx, sb, cfg)
	st := t.containerStatus(ctx, id)
	if st.State != runtimeapi.ContainerState_CONTAINER_CREATED {
		t.Errorf("container state %s, expected CONTAINER_CREATED", st.State)
	}
	if st.Id != id || st.Metadata.GetName() != cfg.Metadata.Name {
		t.Errorf("container status ID %q, metadata %v; expected %q, %v", st.Id, st.Metadata, id, cfg.Metadata)
	}
	if st.CreatedAt <= 0 {
		t.Errorf("container created at %d", st.CreatedAt)
	}
	if st.ImageRef == "" {
		t.Errorf("container status has no image reference")
	}
	if st.Labels[RunLabel] != t.Config().RunID {
		t.Errorf("container labels %v lack %s", st.Labels, RunLabel)
	}
}

// testContainerStart: a started container is CONTAINER_RUNNING with a start time.
func testContainerStart(ctx context.Context, t *T) {
	_, id := t.sleeper(ctx)
	st := t.containerStatus(ctx, id)
	if st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
		t.Errorf("container state %s, expected CONTAINER_RUNNING", st.State)
	}
	if st.StartedAt <= 0 || st.StartedAt < st.CreatedAt {
		t.Errorf("container started at %d, created at %d", st.StartedAt, st.CreatedAt)
	}
}

// testContainerList: ListContainers filters by ID, sandbox, state and label selector.
func testContainerList(ctx context.Context, t *T) {
	sb := t.runSandbox(ctx)
	running, _ := t.runContainer(ctx, sb, []string{"sleep", "infinity"})
	created := t.createContainer(ctx, sb, t.containerConfig([]string{"sleep", "infinity"}))
	ours := map[string]string{RunLabel: t.Config().RunID, TestLabel: labelValue(t.Name())}
	for _, c := range []struct {
		what   string
		filter *runtimeapi.ContainerFilter
		want   []string
	}{
		{"by ID", &runtimeapi.ContainerFilter{Id: running}, []string{running}},
		{"by sandbox", &runtimeapi.ContainerFilter{PodSandboxId: sb.ID}, []string{running, created}},
		{"by labels", &runtimeapi.ContainerFilter{LabelSelector: ours}, []string{running, created}},
		{"by sandbox, running", &runtimeapi.ContainerFilter{PodSandboxId: sb.ID, State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_RUNNING}}, []string{running}},
		{"by sandbox, created", &runtimeapi.ContainerFilter{PodSandboxId: sb.ID, State: &runtimeapi.ContainerStateValue{State: runtimeapi.ContainerState_CONTAINER_CREATED}}, []string{created}},
		{"by a label no container has", &runtimeapi.ContainerFilter{LabelSelector: map[string]string{RunLabel: "no-such-run"}}, []string{}},
	} {
		if got := t.listContainerIDs(ctx, c.filter); !sameSet(got, c.want) {
			t.Errorf("ListContainers %s: got %v, expected %v", c.what, got, c.want)
		}
	}
}

// expectExit runs command in a new sandbox, waits for it to exit by itself and checks
// its exit code and reason.
// startSkew is how much earlier than its start time a container's exit time may be.
const startSkew = 50 * time.Millisecond

func expectExit(ctx context.Context, t *T, command []string, code int32, reason string) {
	sb := t.runSandbox(ctx)
	id, _ := t.runContainer(ctx, sb, command)
	st := t.waitExited(ctx, id)
	if st.ExitCode != code {
		t.Errorf("expected exit code %d, got %d", code, st.ExitCode)
	}
	if st.Reason != reason {
		t.Errorf("expected reason %q, got %q", reason, st.Reason)
	}
	// A runtime may take the start time after the start call returns and the exit time
	// from the process's exit, so a process that exits at once can look as if it finished
	// a moment before it started (containerd 1.6 does, now and then). Only a gap beyond
	// startSkew is an error.
	if st.FinishedAt <= 0 || st.FinishedAt < st.StartedAt-int64(startSkew) {
		t.Errorf("container finished at %d, %s before it started at %d", st.FinishedAt, time.Duration(st.StartedAt-st.FinishedAt), st.StartedAt)
	}
}

// testContainerExitZero: a container that exits 0 by itself is EXITED, code 0, Completed.
func testContainerExitZero(ctx context.Context, t *T) {
	expectExit(ctx, t, []string{"sh", "-c", "echo done; exit 0"}, 0, "Completed")
}

// testContainerExitCode: a container that exits 3 is EXITED, code 3, Error.
func testContainerExitCode(ctx context.Context, t *T) {
	expectExit(ctx, t, []string{"sh", "-c", "exit 3"}, 3, "Error")
}

// testContainerStopTimeout: StopContainer with a timeout kills a container that ignores
// SIGTERM once the timeout is over: EXITED, code 137 (SIGKILL), reason Error.
func testContainerStopTimeout(ctx context.Context, t *T) {
	_, id := t.sleeper(ctx)
	const timeout = 2
	start := time.Now()
	if _, err := t.Runtime().StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: timeout}); err != nil {
		t.Fatalf("StopContainer with timeout %ds: %v", timeout, err)
	}
	took := time.Since(start)
	st := t.containerStatus(ctx, id)
	if st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Fatalf("container state after StopContainer %s, expected CONTAINER_EXITED", st.State)
	}
	if st.ExitCode != 137 {
		t.Errorf("expected exit code 137 (killed at the timeout), got %d", st.ExitCode)
	}
	if st.Reason != "Error" {
		t.Errorf("expected reason %q, got %q", "Error", st.Reason)
	}
	if took > timeout*time.Second+20*time.Second {
		t.Errorf("StopContainer with timeout %ds took %s", timeout, took.Round(time.Millisecond))
	}
	t.Logf("StopContainer took %s", took.Round(time.Millisecond))
}

// testContainerRemove: a removed container is gone from status and list.
func testContainerRemove(ctx context.Context, t *T) {
	sb, id := t.sleeper(ctx)
	if _, err := t.Runtime().StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if st := t.containerStatus(ctx, id); st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("container state after StopContainer %s, expected CONTAINER_EXITED", st.State)
	}
	if _, err := t.Runtime().RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if _, err := t.Runtime().ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id}); !isNotFound(err) {
		t.Errorf("ContainerStatus of a removed container: expected a not-found error, got %v", err)
	}
	if ids := t.listContainerIDs(ctx, &runtimeapi.ContainerFilter{PodSandboxId: sb.ID}); len(ids) != 0 {
		t.Errorf("ListContainers still lists the removed container: %v", ids)
	}
}

// The CRI requires stop and remove to be idempotent: the kubelet retries them after a
// crash or a timeout, and garbage collection removes what may already be gone.

// testStopSandboxTwice: StopPodSandbox of a stopped sandbox succeeds.
func testStopSandboxTwice(ctx context.Context, t *T) {
	sb, _ := t.sleeper(ctx)
	for i := 1; i <= 2; i++ {
		if _, err := t.Runtime().StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
			t.Fatalf("StopPodSandbox #%d: %v", i, err)
		}
	}
}

// testRemoveSandboxTwice: RemovePodSandbox of a removed sandbox succeeds.
func testRemoveSandboxTwice(ctx context.Context, t *T) {
	sb, _ := t.sleeper(ctx)
	if _, err := t.Runtime().StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	for i := 1; i <= 2; i++ {
		if _, err := t.Runtime().RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
			t.Fatalf("RemovePodSandbox #%d: %v", i, err)
		}
	}
}

// testStopRemovedSandbox: StopPodSandbox of a removed sandbox succeeds ("must not return
// an error if all relevant resources have already been reclaimed").
func testStopRemovedSandbox(ctx context.Context, t *T) {
	sb, _ := t.sleeper(ctx)
	if _, err := t.Runtime().StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := t.Runtime().RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	if _, err := t.Runtime().StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.ID}); err != nil {
		t.Errorf("StopPodSandbox of a removed sandbox: expected success, got %v", err)
	}
}

// testStopContainerTwice: StopContainer of a stopped container succeeds.
func testStopContainerTwice(ctx context.Context, t *T) {
	_, id := t.sleeper(ctx)
	for i := 1; i <= 2; i++ {
		if _, err := t.Runtime().StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0}); err != nil {
			t.Fatalf("StopContainer #%d: %v", i, err)
		}
	}
	if st := t.containerStatus(ctx, id); st.State != runtimeapi.ContainerState_CONTAINER_EXITED {
		t.Errorf("container state %s, expected CONTAINER_EXITED", st.State)
	}
}

// testRemoveContainerTwice: RemoveContainer of a removed container succeeds.
func testRemoveContainerTwice(ctx context.Context, t *T) {
	_, id := t.sleeper(ctx)
	if _, err := t.Runtime().StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	for i := 1; i <= 2; i++ {
		if _, err := t.Runtime().RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("RemoveContainer #%d: %v", i, err)
		}
	}
}

// testStopRemovedContainer: StopContainer of a removed container succeeds: it is stopped
// for good, and the kubelet's retries after a removal must not fail.
func testStopRemovedContainer(ctx context.Context, t *T) {
	_, id := t.sleeper(ctx)
	if _, err := t.Runtime().StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if _, err := t.Runtime().RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
	if _, err := t.Runtime().StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0}); err != nil {
		t.Errorf("StopContainer of a removed container: expected success, got %v", err)
	}
}
