// Package containerd runs a containerd of berth's own as a child process: it writes the
// daemon's configuration (CRI plugin included) and the node's CNI network under a data
// dir, starts the daemon, waits for its socket and stops it when the context ends.
//
// The configuration carries what ../shared/environment.md found to be needed on these
// machines: restrict_oom_score_adj (the VM forbids lowering oom_score_adj), a local
// sandbox image (no registry is reachable), and CNI dirs of its own.
package containerd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"berth.dev/berth/core/agent/network"
)

const (
	// DefaultPodCIDR is the node's pod network when none is configured.
	DefaultPodCIDR = "10.244.0.0/24"
	// DefaultBridge is the host bridge the pods of the node are attached to.
	DefaultBridge = "berth0"
	// DefaultCNIBinDir is where Debian's containernetworking-plugins installs the plugins.
	DefaultCNIBinDir = "/usr/lib/cni"
	// Namespace is the containerd namespace the CRI plugin keeps its images and containers in.
	Namespace = "k8s.io"
	// NetworkName is the name of berth's CNI network.
	NetworkName = "berth"
)

// Config is what the launched containerd looks like.
type Config struct {
	// DataDir holds everything: config.toml, root/, state/, the socket, cni/.
	DataDir string
	// SandboxImage is the CRI plugin's sandbox (pause) image; it must be imported before
	// the first pod starts, since nothing can be pulled.
	SandboxImage string
	// PodCIDR is the subnet host-local allocates pod IPs from (DefaultPodCIDR when empty).
	PodCIDR string
	// Bridge is the host bridge's name (DefaultBridge when empty); at most 15 bytes.
	Bridge string
	// Binary is the containerd executable ("containerd" on PATH when empty).
	Binary string
	// CNIBinDir is where the CNI plugins are (DefaultCNIBinDir when empty).
	CNIBinDir string
	// Output receives the daemon's log (discarded when nil).
	Output io.Writer
	// NetworkConfig is a NetworkConfiguration file (package network) choosing the pod
	// network's driver; the bridge driver when empty. Start watches it and re-renders
	// the CNI conf dir when it changes, which containerd applies to new sandboxes.
	NetworkConfig string
	// Log receives the network watcher's messages (discarded when nil).
	Log *slog.Logger
}

// Paths are where a Config puts things.
type Paths struct {
	// Config is the daemon's config.toml.
	Config string
	// Address is the gRPC socket (for ctr --address); Endpoint is the same as a CRI
	// endpoint URL (unix:///...).
	Address, Endpoint string
	// Root and State are containerd's persistent and runtime dirs.
	Root, State string
	// CNIConfDir holds the node's conflist; CNIDataDir is host-local's lease store.
	CNIConfDir, CNIDataDir string
}

// PathsFor tells where the files of a containerd on dataDir are.
func PathsFor(dataDir string) Paths {
	sock := filepath.Join(dataDir, "containerd.sock")
	return Paths{
		Config:     filepath.Join(dataDir, "config.toml"),
		Address:    sock,
		Endpoint:   "unix://" + sock,
		Root:       filepath.Join(dataDir, "root"),
		State:      filepath.Join(dataDir, "state"),
		CNIConfDir: filepath.Join(dataDir, "cni", "net.d"),
		CNIDataDir: filepath.Join(dataDir, "cni", "ipam"),
	}
}

func (c *Config) defaults() error {
	if c.DataDir == "" {
		return errors.New("containerd: a data dir is needed")
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return fmt.Errorf("containerd data dir: %w", err)
	}
	c.DataDir = abs
	if c.SandboxImage == "" {
		return errors.New("containerd: a sandbox image is needed")
	}
	if c.PodCIDR == "" {
		c.PodCIDR = DefaultPodCIDR
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if len(c.Bridge) > 15 {
		return fmt.Errorf("containerd: bridge name %q is longer than 15 bytes", c.Bridge)
	}
	if c.Binary == "" {
		c.Binary = "containerd"
	}
	if c.CNIBinDir == "" {
		c.CNIBinDir = DefaultCNIBinDir
	}
	if c.Output == nil {
		c.Output = io.Discard
	}
	// A unix socket path is limited to 107 bytes.
	if p := PathsFor(c.DataDir); len(p.Address)+len(".ttrpc") > 107 {
		return fmt.Errorf("containerd: data dir %s is too long for a unix socket path", c.DataDir)
	}
	return nil
}

// ConfigTOML is the daemon's configuration for c (version 2, containerd 1.6 and later).
func ConfigTOML(c Config, p Paths) string {
	q := strconv.Quote
	return `version = 2
root = ` + q(p.Root) + `
state = ` + q(p.State) + `

[grpc]
  address = ` + q(p.Address) + `

[ttrpc]
  address = ` + q(p.Address+".ttrpc") + `

[plugins."io.containerd.internal.v1.opt"]
  path = ` + q(filepath.Join(c.DataDir, "opt")) + `

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = ` + q(c.SandboxImage) + `
  # Without it every sandbox fails: the VM forbids lowering /proc/self/oom_score_adj.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = ` + q(c.CNIBinDir) + `
    conf_dir = ` + q(p.CNIConfDir) + `
    max_conf_num = 1
`
}

// CNIConflist is the node's network: a bridge with host-local addresses from podCIDR
// (leases kept in dataDir) and portmap for hostPort. The loopback plugin is not in the
// chain because containerd's CRI plugin sets up lo itself, with the loopback plugin of
// bin_dir, for every sandbox.
func CNIConflist(bridge, podCIDR, dataDir string) ([]byte, error) {
	return network.Render(network.Configuration{Driver: network.DriverBridge},
		network.Params{Name: NetworkName, PodCIDR: podCIDR, Bridge: bridge, DataDir: dataDir})
}

// PTPConflist is the node's network with the ptp driver: a veth pair per pod and no
// bridge, the pod's address from host-local on podCIDR (leases in dataDir) and a host
// route to each pod, plus portmap for hostPort.
func PTPConflist(podCIDR, dataDir string) ([]byte, error) {
	return network.Render(network.Configuration{Driver: network.DriverPTP},
		network.Params{Name: NetworkName, PodCIDR: podCIDR, DataDir: dataDir})
}

// networkParams are the node's facts a network configuration file is rendered with.
func networkParams(c Config, p Paths) network.Params {
	return network.Params{Name: NetworkName, PodCIDR: c.PodCIDR, Bridge: c.Bridge, DataDir: p.CNIDataDir}
}

// WriteConfig writes config.toml and the CNI conflist of c and makes the dirs they name.
func WriteConfig(c Config) (Paths, error) {
	if err := c.defaults(); err != nil {
		return Paths{}, err
	}
	p := PathsFor(c.DataDir)
	for _, d := range []string{p.Root, p.State, p.CNIConfDir, p.CNIDataDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return Paths{}, fmt.Errorf("containerd dirs: %w", err)
		}
	}
	if err := os.WriteFile(p.Config, []byte(ConfigTOML(c, p)), 0o600); err != nil {
		return Paths{}, fmt.Errorf("containerd config: %w", err)
	}
	// Without a network configuration file the node's network is the bridge driver.
	netConf := network.Configuration{Driver: network.DriverBridge}
	if c.NetworkConfig != "" {
		var err error
		if netConf, err = network.Load(c.NetworkConfig); err != nil {
			return Paths{}, err
		}
	}
	if err := network.Write(p.CNIConfDir, netConf, networkParams(c, p)); err != nil {
		return Paths{}, err
	}
	return p, nil
}

// Process is a running containerd.
type Process struct {
	Paths
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	// watchDone is closed when the network watcher has stopped (at once without one).
	watchDone chan struct{}
}

// Start writes c's configuration, starts containerd and returns once its socket answers.
// containerd gets SIGTERM when ctx ends (SIGKILL 10 s later); Wait tells when it is gone.
// Containers keep running in their shims after containerd stops, as with any containerd:
// removing the pods first is the caller's business.
func Start(ctx context.Context, c Config) (*Process, error) {
	if err := c.defaults(); err != nil {
		return nil, err
	}
	p, err := WriteConfig(c)
	if err != nil {
		return nil, err
	}
	_ = os.Remove(p.Address) // a stale socket from a killed daemon
	cmd := exec.CommandContext(ctx, c.Binary, "--config", p.Config)
	cmd.Stdout, cmd.Stderr = c.Output, c.Output
	// The shims containerd starts need runc and themselves on PATH.
	cmd.Env = append(os.Environ(), "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	// Its own process group, so that a terminal's Ctrl-C reaches berth alone, which then
	// stops containerd in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	proc := &Process{Paths: p, cmd: cmd, done: make(chan struct{}), watchDone: make(chan struct{})}
	go func() {
		proc.err = cmd.Wait()
		if ctx.Err() != nil {
			proc.err = nil // stopped on purpose
		}
		close(proc.done)
	}()
	if err := proc.waitReady(ctx, 30*time.Second); err != nil {
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
		}
		<-proc.done
		return nil, err
	}
	if c.NetworkConfig == "" {
		close(proc.watchDone)
		return proc, nil
	}
	w := &network.Watcher{File: c.NetworkConfig, ConfDir: p.CNIConfDir, Params: networkParams(c, p), Log: c.Log}
	// The watcher lives as long as containerd: both stop when ctx ends, and Wait
	// returns once both have.
	go func() {
		defer close(proc.watchDone)
		if err := w.Run(ctx); err != nil && c.Log != nil {
			c.Log.Error("network configuration watcher stopped", "err", err)
		}
	}()
	return proc, nil
}

func (p *Process) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if conn, err := net.Dial("unix", p.Address); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("containerd exited before its socket appeared: %v", p.err)
		case <-ctx.Done():
			return fmt.Errorf("waiting for containerd: %w", ctx.Err())
		case <-deadline.C:
			return fmt.Errorf("containerd socket %s did not appear within %s", p.Address, timeout)
		case <-tick.C:
		}
	}
}

// Wait returns once containerd has exited: nil when it was stopped through the context,
// its exit error otherwise.
func (p *Process) Wait() error {
	<-p.done
	<-p.watchDone
	return p.err
}

// Done is closed when containerd has exited.
func (p *Process) Done() <-chan struct{} { return p.done }
