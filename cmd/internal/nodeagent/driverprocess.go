package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/pflag"
)

// driverProcess is an out-of-process driver that a node runs as its child (berth's CSI
// driver under `berth up`): started at once, restarted whenever it exits, stopped when
// the node stops. A driver that crashes costs its callers the time it takes to come back
// (their calls fail meanwhile and are retried), never the node.
type driverProcess struct {
	name    string // for logs: "csi-local"
	path    string // the executable
	args    []string
	logFile string // the driver's stdout and stderr, appended
	log     *slog.Logger
}

const (
	// A driver that exits is started again after 1 s, doubling up to 30 s; one that ran
	// for a minute before it exited starts over at 1 s.
	driverRestartMin    = time.Second
	driverRestartMax    = 30 * time.Second
	driverHealthyUptime = time.Minute
	// driverStopGrace is how long a driver has to exit on SIGTERM before SIGKILL.
	driverStopGrace = 10 * time.Second
)

// findDriverBinary finds a driver's executable beside the running binary (bin/ of a
// `make build`), then in PATH.
func findDriverBinary(name string) (string, error) {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s is neither beside this binary nor in PATH (make build puts it in bin/): %w", name, err)
	}
	return p, nil
}

// run keeps the driver running until ctx ends, then stops it. It returns when the last
// process has exited.
func (d driverProcess) run(ctx context.Context) {
	delay := driverRestartMin
	for {
		started := time.Now()
		err := d.runOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if time.Since(started) >= driverHealthyUptime {
			delay = driverRestartMin
		}
		d.log.Error("driver exited; restarting", "driver", d.name, "err", err, "in", delay, "log", d.logFile)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
		delay = min(2*delay, driverRestartMax)
	}
}

// runOnce runs one process of the driver until it exits or ctx ends.
func (d driverProcess) runOnce(ctx context.Context) error {
	if err := os.MkdirAll(filepath.Dir(d.logFile), 0o755); err != nil {
		return fmt.Errorf("log directory: %w", err)
	}
	logf, err := os.OpenFile(d.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open %s: %w", d.logFile, err)
	}
	defer logf.Close()
	cmd := exec.Command(d.path, d.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C at the terminal reaches berth, which stops the
	// driver itself after the agent is done with it; Pdeathsig so that a berth killed
	// hard does not leave it behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", d.path, err)
	}
	d.log.Info("driver started", "driver", d.name, "pid", cmd.Process.Pid, "log", d.logFile)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err == nil {
			err = errors.New("exited with status 0")
		}
		return err
	case <-ctx.Done():
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		return err
	case <-time.After(driverStopGrace):
		_ = cmd.Process.Kill()
		return <-exited
	}
}

// LocalCSIDriverName is berth's own CSI driver (drivers/csi/local).
const LocalCSIDriverName = "local.csi.berth.dev"

// startCSIDriver starts the node's CSI driver, when it has one, as a supervised child
// that lives until ctx ends (the runtime's context: it outlives the agent, whose last
// unmounts it answers). Its socket goes into the agent's plugins directory, where the
// agent finds it. The returned channel closes when the driver has stopped.
func startCSIDriver(ctx context.Context, o *Options) (<-chan struct{}, error) {
	done := make(chan struct{})
	switch o.CSIDriver {
	case "", "none":
		close(done)
		return done, nil
	case "local":
	default:
		return nil, fmt.Errorf("--csi-driver %q: want local (berth's own driver) or none", o.CSIDriver)
	}
	bin, err := findDriverBinary("berth-csi-local")
	if err != nil {
		return nil, fmt.Errorf("--csi-driver local: %w", err)
	}
	dir := o.CSIPluginsDir
	if dir == "" {
		dir = filepath.Join(o.DataDir, "plugins_registry")
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("CSI plugins directory: %w", err)
	}
	args := []string{"--endpoint", "unix://" + filepath.Join(dir, LocalCSIDriverName+".sock"),
		"--node-id", o.NodeName, "--state-dir", filepath.Join(o.DataDir, "csi-local")}
	if o.CSICapacity != "" {
		args = append(args, "--capacity", o.CSICapacity)
	}
	d := driverProcess{name: "csi-local", path: bin, args: args,
		logFile: filepath.Join(o.DataDir, "logs", "csi-local.log"), log: o.Log}
	go func() {
		defer close(done)
		d.run(ctx)
	}()
	return done, nil
}

// AddCSIFlags adds --csi-driver (def its default) and --csi-capacity.
func AddCSIFlags(f *pflag.FlagSet, driver, capacity *string, def string) {
	f.StringVar(driver, "csi-driver", def, "CSI driver the node runs as its child: local (berth's own, bin/berth-csi-local; volumes under --data-dir/csi-local) or none (drivers started otherwise, their sockets in --csi-plugins-dir)")
	f.StringVar(capacity, "csi-capacity", "", "the local CSI driver's pool of volume space, a quantity such as 50Gi (empty: the driver's default)")
}
