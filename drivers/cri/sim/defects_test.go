package sim_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"berth.dev/berth/drivers/cri/sim"
)

// TestDefects shows each defect behaving wrongly where the healthy runtime behaves right.
func TestDefects(t *testing.T) {
	t.Run("wrong-exit-code", func(t *testing.T) {
		c := startSim(t, sim.Config{Defect: sim.DefectWrongExitCode})
		sbID, sbCfg := c.runSandbox(t, "p", nil)
		id := c.run(t, sbID, sbCfg, containerConfig("app", "sh", "-c", "exit 3"))
		if st := c.waitExited(t, id, 5*time.Second); st.ExitCode != 4 {
			t.Errorf("exit code %d, want the wrong 4", st.ExitCode)
		}
	})
	t.Run("never-stops", func(t *testing.T) {
		c := startSim(t, sim.Config{Defect: sim.DefectNeverStops})
		sbID, sbCfg := c.runSandbox(t, "p", nil)
		id := c.run(t, sbID, sbCfg, containerConfig("app", "sleep", "infinity"))
		if _, err := c.rt.StopContainer(testCtx(t), &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 0}); err != nil {
			t.Fatalf("StopContainer: %v", err)
		}
		if st := c.status(t, id); st.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
			t.Errorf("state after StopContainer %s, want the wrong RUNNING", st.State)
		}
	})
	t.Run("sandbox-survives-removal", func(t *testing.T) {
		c := startSim(t, sim.Config{Defect: sim.DefectSandboxSurvivesRemoval})
		sbID, _ := c.runSandbox(t, "p", nil)
		if _, err := c.rt.RemovePodSandbox(testCtx(t), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sbID}); err != nil {
			t.Fatalf("RemovePodSandbox: %v", err)
		}
		resp, err := c.rt.ListPodSandbox(testCtx(t), &runtimeapi.ListPodSandboxRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Items) != 1 {
			t.Errorf("%d sandboxes listed after removal, want the wrong 1", len(resp.Items))
		}
	})
	t.Run("not-idempotent", func(t *testing.T) {
		c := startSim(t, sim.Config{Defect: sim.DefectNotIdempotent})
		ctx := testCtx(t)
		sbID, sbCfg := c.runSandbox(t, "p", nil)
		id := c.run(t, sbID, sbCfg, containerConfig("app", "true"))
		c.waitExited(t, id, 5*time.Second)
		if _, err := c.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
			t.Fatalf("first RemoveContainer: %v", err)
		}
		if _, err := c.rt.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err == nil {
			t.Errorf("second RemoveContainer succeeded; the defect wants an error")
		}
		if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err != nil {
			t.Fatalf("first StopPodSandbox: %v", err)
		}
		if _, err := c.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID}); err == nil {
			t.Errorf("second StopPodSandbox succeeded; the defect wants an error")
		}
	})
	if _, err := sim.New(sim.Config{Defect: "nonsense"}); err == nil || !strings.Contains(err.Error(), "wrong-exit-code") {
		t.Errorf("unknown defect: %v, want an error listing the known ones", err)
	}
}

func TestImages(t *testing.T) {
	c := startSim(t, sim.Config{MissingImages: []string{"example.com/private/app:2"}})
	ctx := testCtx(t)
	// berth's images are there without a pull.
	st, err := c.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: busybox}})
	if err != nil || st.Image == nil {
		t.Fatalf("ImageStatus %s: %+v, %v", busybox, st, err)
	}
	if !strings.HasPrefix(st.Image.Id, "sha256:") || len(st.Image.RepoDigests) != 1 || st.Image.Size_ == 0 {
		t.Errorf("image %+v", st.Image)
	}
	// By ID too.
	if byID, err := c.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: st.Image.Id}}); err != nil || byID.Image.GetId() != st.Image.Id {
		t.Errorf("ImageStatus by ID: %+v, %v", byID, err)
	}
	// An absent image is an empty answer.
	if st, err := c.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "nginx:1.27"}}); err != nil || st.Image != nil {
		t.Errorf("ImageStatus of an absent image: %+v, %v", st, err)
	}
	pulled, err := c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "nginx:1.27"}})
	if err != nil {
		t.Fatal(err)
	}
	st, err = c.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "docker.io/library/nginx:1.27"}})
	if err != nil || st.Image.GetId() != pulled.ImageRef || st.Image.RepoTags[0] != "docker.io/library/nginx:1.27" {
		t.Errorf("pulled image status %+v, %v (pull said %s)", st, err, pulled.ImageRef)
	}
	for _, ref := range []string{"doesnotexist:1", "registry.local/doesnotexist/app:1", "example.com/private/app:2"} {
		_, err := c.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
		if status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "failed to pull and unpack image") ||
			!(strings.Contains(err.Error(), "pull access denied") || strings.Contains(err.Error(), "not found")) {
			t.Errorf("pull of %s: %v, want NotFound with containerd's message", ref, err)
		}
	}
	list, err := c.img.ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil || len(list.Images) != 3 {
		t.Errorf("ListImages: %d images, %v; want 3", len(list.Images), err)
	}
	for range 2 {
		if _, err := c.img.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: "nginx:1.27"}}); err != nil {
			t.Errorf("RemoveImage: %v", err)
		}
	}
	if st, _ := c.img.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "nginx:1.27"}}); st.GetImage() != nil {
		t.Errorf("removed image still present")
	}
	fs, err := c.img.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil || len(fs.ImageFilesystems) != 1 || fs.ImageFilesystems[0].UsedBytes.GetValue() == 0 {
		t.Errorf("ImageFsInfo %+v, %v", fs, err)
	}
	// A container cannot be made from an absent image.
	sbID, sbCfg := c.runSandbox(t, "p", nil)
	cfg := containerConfig("app", "true")
	cfg.Image = &runtimeapi.ImageSpec{Image: "nginx:1.27"}
	if _, err := c.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sbID, Config: cfg, SandboxConfig: sbCfg}); status.Code(err) != codes.NotFound {
		t.Errorf("CreateContainer from an absent image: %v, want NotFound", err)
	}
}

func TestStats(t *testing.T) {
	c := startSim(t, sim.Config{})
	ctx := testCtx(t)
	sbID, sbCfg := c.runSandbox(t, "stats", map[string]string{
		"sim.berth.dev/cpu-millicores.busy": "250",
		"sim.berth.dev/memory-bytes.busy":   "64Mi",
	})
	busy := c.run(t, sbID, sbCfg, containerConfig("busy", "sleep", "infinity"))
	idle := c.run(t, sbID, sbCfg, containerConfig("idle", "sleep", "infinity"))
	time.Sleep(100 * time.Millisecond)
	st, err := c.rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: busy})
	if err != nil {
		t.Fatal(err)
	}
	if st.Stats.Cpu.UsageNanoCores.GetValue() != 250_000_000 || st.Stats.Memory.WorkingSetBytes.GetValue() != 64<<20 || st.Stats.Cpu.UsageCoreNanoSeconds.GetValue() == 0 {
		t.Errorf("scripted stats %+v", st.Stats)
	}
	st, err = c.rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: idle})
	if err != nil || st.Stats.Memory.WorkingSetBytes.GetValue() == 0 || st.Stats.Cpu.UsageNanoCores.GetValue() == 0 {
		t.Errorf("default stats %+v, %v", st, err)
	}
	list, err := c.rt.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{Filter: &runtimeapi.ContainerStatsFilter{PodSandboxId: sbID}})
	if err != nil || len(list.Stats) != 2 {
		t.Errorf("ListContainerStats: %+v, %v", list, err)
	}
	ps, err := c.rt.PodSandboxStats(ctx, &runtimeapi.PodSandboxStatsRequest{PodSandboxId: sbID})
	if err != nil {
		t.Fatal(err)
	}
	if mem := ps.Stats.Linux.Memory.WorkingSetBytes.GetValue(); mem != 64<<20+4<<20 || len(ps.Stats.Linux.Containers) != 2 {
		t.Errorf("sandbox stats: memory %d, %d containers", mem, len(ps.Stats.Linux.Containers))
	}
	pl, err := c.rt.ListPodSandboxStats(ctx, &runtimeapi.ListPodSandboxStatsRequest{Filter: &runtimeapi.PodSandboxStatsFilter{LabelSelector: map[string]string{"io.kubernetes.pod.name": "stats"}}})
	if err != nil || len(pl.Stats) != 1 {
		t.Errorf("ListPodSandboxStats: %+v, %v", pl, err)
	}
}

// TestServeReplacesStaleSocket: a socket file nobody listens on is replaced; one in use is
// an error.
func TestServeReplacesStaleSocket(t *testing.T) {
	dir := t.TempDir()
	socket := filepath.Join(dir, "s.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := sim.Serve(ctx, socket, sim.Config{}); err == nil || !strings.Contains(err.Error(), "already listens") {
		t.Errorf("Serve on a socket in use: %v", err)
	}
	// Leave the file behind, as a crashed process would.
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(socket); err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sim.Serve(sctx, socket, sim.Config{}) }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		conn, err := net.Dial("unix", socket)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Serve did not take over the stale socket: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	scancel()
	if err := <-done; err != nil {
		t.Errorf("Serve: %v", err)
	}
	if _, err := os.Stat(socket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

// TestManyIdleContainers is the cost per container: no goroutine waits for an idle one.
func TestManyIdleContainers(t *testing.T) {
	r, err := sim.New(sim.Config{PodCIDR: "10.200.0.0/16"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx := testCtx(t)
	before := runtimeNumGoroutine()
	for i := range 300 {
		name := fmt.Sprintf("pod-%d", i)
		sb, err := r.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: &runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "ns", Uid: name},
		}})
		if err != nil {
			t.Fatal(err)
		}
		cfg := containerConfig("c", "sleep", "3600")
		cfg.LogPath = ""
		cc, err := r.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: cfg})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: cc.ContainerId}); err != nil {
			t.Fatal(err)
		}
	}
	if after := runtimeNumGoroutine(); after-before > 10 {
		t.Errorf("300 running containers added %d goroutines", after-before)
	}
}
