package sim_test

import (
	"context"
	"path/filepath"
	goruntime "runtime"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"berth.dev/berth/drivers/cri/sim"
)

const busybox = "berth.local/busybox:1.35"

// client is a CRI client of one simulated runtime served on a unix socket of the test's
// own, through a real gRPC connection.
type client struct {
	rt     runtimeapi.RuntimeServiceClient
	img    runtimeapi.ImageServiceClient
	logDir string
}

// startSim serves a runtime of cfg with sim.Serve until the test ends.
func startSim(t *testing.T, cfg sim.Config) *client {
	t.Helper()
	dir := t.TempDir()
	socket := filepath.Join(dir, "sim.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sim.Serve(ctx, socket, cfg) }()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not stop")
		}
	})
	c := &client{rt: runtimeapi.NewRuntimeServiceClient(conn), img: runtimeapi.NewImageServiceClient(conn), logDir: filepath.Join(dir, "pods")}
	// Wait for the socket to answer.
	deadline := time.Now().Add(10 * time.Second)
	for {
		cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.rt.Version(cctx, &runtimeapi.VersionRequest{}, grpc.WaitForReady(true))
		ccancel()
		if err == nil {
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("simulated runtime does not answer on %s: %v", socket, err)
		}
		select {
		case err := <-done:
			t.Fatalf("Serve stopped: %v", err)
		default:
		}
	}
}

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// sandboxConfig is a pod sandbox like the agent's, logging under the client's log dir.
func (c *client) sandboxConfig(name string, annotations map[string]string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: "uid-" + name},
		Hostname:     name,
		LogDirectory: filepath.Join(c.logDir, "default_"+name),
		Labels:       map[string]string{"io.kubernetes.pod.name": name, "app": "test"},
		Annotations:  annotations,
		PortMappings: []*runtimeapi.PortMapping{{Protocol: runtimeapi.Protocol_TCP, ContainerPort: 80, HostPort: 8080}},
	}
}

// runSandbox starts a sandbox.
func (c *client) runSandbox(t *testing.T, name string, annotations map[string]string) (string, *runtimeapi.PodSandboxConfig) {
	t.Helper()
	cfg := c.sandboxConfig(name, annotations)
	resp, err := c.rt.RunPodSandbox(testCtx(t), &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		t.Fatalf("RunPodSandbox %s: %v", name, err)
	}
	return resp.PodSandboxId, cfg
}

// containerConfig is a busybox container running argv.
func containerConfig(name string, argv ...string) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: busybox, UserSpecifiedImage: busybox},
		Command:  argv,
		LogPath:  name + "/0.log",
		Labels:   map[string]string{"io.kubernetes.container.name": name},
	}
}

// create creates a container in the sandbox.
func (c *client) create(t *testing.T, sandboxID string, sbCfg *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) string {
	t.Helper()
	resp, err := c.rt.CreateContainer(testCtx(t), &runtimeapi.CreateContainerRequest{PodSandboxId: sandboxID, Config: cfg, SandboxConfig: sbCfg})
	if err != nil {
		t.Fatalf("CreateContainer %s: %v", cfg.Metadata.Name, err)
	}
	return resp.ContainerId
}

// run creates and starts a container.
func (c *client) run(t *testing.T, sandboxID string, sbCfg *runtimeapi.PodSandboxConfig, cfg *runtimeapi.ContainerConfig) string {
	t.Helper()
	id := c.create(t, sandboxID, sbCfg, cfg)
	if _, err := c.rt.StartContainer(testCtx(t), &runtimeapi.StartContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("StartContainer %s: %v", cfg.Metadata.Name, err)
	}
	return id
}

func (c *client) status(t *testing.T, id string) *runtimeapi.ContainerStatus {
	t.Helper()
	resp, err := c.rt.ContainerStatus(testCtx(t), &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		t.Fatalf("ContainerStatus %s: %v", id, err)
	}
	return resp.Status
}

// waitExited waits for a container to exit and returns its status.
func (c *client) waitExited(t *testing.T, id string, within time.Duration) *runtimeapi.ContainerStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		st := c.status(t, id)
		if st.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("container %s still %s after %s", st.Metadata.Name, st.State, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func runtimeNumGoroutine() int { return goruntime.NumGoroutine() }
