package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// benchClientRate is the client-go QPS and burst of the bench's clients: high enough that
// client-go's rate limiter never waits, so the figures are the server's.
const benchClientRate = 100000

// benchServer is a `berth server` child process on a temporary data dir.
type benchServer struct {
	cmd        *exec.Cmd
	logPath    string
	exited     chan struct{} // closed when the process has exited; exitErr is set then
	exitErr    error
	restConfig *rest.Config
}

// startBenchServer starts `binary server --data-dir dir --port 0 extra...` and returns once
// its admin.kubeconfig exists and /readyz answers ok.
func startBenchServer(ctx context.Context, binary, dir string, extra []string, timeout time.Duration) (*benchServer, error) {
	return startBenchProcess(ctx, binary, dir, append([]string{"server", "--data-dir", dir, "--port", "0"}, extra...), timeout)
}

// startBenchProcess starts `binary args...`, a command that runs a berth server on data dir
// dir (server, up), and returns once its admin.kubeconfig exists and /readyz answers ok.
func startBenchProcess(ctx context.Context, binary, dir string, args []string, timeout time.Duration) (*benchServer, error) {
	logPath := filepath.Join(dir, "server.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create server log: %w", err)
	}
	defer logFile.Close() // the child has its own descriptor
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A bench killed hard must not leave its server behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s server: %w", binary, err)
	}
	s := &benchServer{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		s.exitErr = cmd.Wait()
		close(s.exited)
	}()
	if err := s.waitReady(ctx, filepath.Join(dir, "admin.kubeconfig"), timeout); err != nil {
		_ = s.stop(10 * time.Second)
		return nil, err
	}
	return s, nil
}

func (s *benchServer) pid() int { return s.cmd.Process.Pid }

// waitReady polls for the kubeconfig, then for /readyz, until timeout.
func (s *benchServer) waitReady(ctx context.Context, kubeconfig string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	var lastErr error
	for {
		select {
		case <-s.exited:
			return fmt.Errorf("the server exited before it was ready (%v); see its log below", s.exitErr)
		case <-ctx.Done():
			return fmt.Errorf("waiting for the server: %w", ctx.Err())
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the server was not ready within %s: %v", timeout, lastErr)
		}
		if s.restConfig == nil {
			if _, err := os.Stat(kubeconfig); err != nil {
				lastErr = fmt.Errorf("no %s yet", kubeconfig)
				continue
			}
			cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
			if err != nil {
				lastErr = fmt.Errorf("load %s: %w", kubeconfig, err)
				continue
			}
			cfg.QPS, cfg.Burst = benchClientRate, benchClientRate
			cfg.UserAgent = "berth-bench"
			s.restConfig = cfg
		}
		client, err := kubernetes.NewForConfig(s.restConfig)
		if err != nil {
			return fmt.Errorf("build client: %w", err)
		}
		reqCtx, cancel := context.WithTimeout(ctx, 2*time.Second)
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(reqCtx)
		cancel()
		if err == nil && strings.TrimSpace(string(body)) == "ok" {
			return nil
		}
		lastErr = fmt.Errorf("/readyz: %v %q", err, body)
	}
}

// stop sends SIGTERM and waits up to timeout for a clean exit, then kills.
func (s *benchServer) stop(timeout time.Duration) error {
	select {
	case <-s.exited:
		return nil
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop the server (pid %d): %w", s.pid(), err)
	}
	select {
	case <-s.exited:
		if s.exitErr != nil {
			return fmt.Errorf("the server did not exit cleanly after SIGTERM: %w", s.exitErr)
		}
		return nil
	case <-time.After(timeout):
		_ = s.cmd.Process.Kill()
		<-s.exited
		return fmt.Errorf("the server (pid %d) did not stop within %s of SIGTERM; killed it", s.pid(), timeout)
	}
}

// logTail returns the last n lines of the server's log.
func (s *benchServer) logTail(n int) string {
	data, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)\n", s.logPath, err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n"))) + "\n"
}

// benchCluster is a server started for a benchmark: a client of it, and the machine it
// runs on as read before it started.
type benchCluster struct {
	srv     *benchServer
	kube    kubernetes.Interface
	machine machineInfo
}

// withBenchCluster starts `binary server --data-dir <temp> --port 0 extra...`, creates
// nodes API-only nodes and runs measure; then it stops the server (printing the end of its
// log when anything failed) and removes the data dir.
func withBenchCluster(ctx context.Context, binary string, extra []string, startTimeout time.Duration, nodes int, logw io.Writer, measure func(context.Context, *benchCluster) error) (err error) {
	dir, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		return fmt.Errorf("create temp data dir: %w", err)
	}
	defer os.RemoveAll(dir)
	c := &benchCluster{machine: readMachineInfo()} // before the server adds to the load average
	fmt.Fprintf(logw, "starting %s server --data-dir %s --port 0 %s\n", binary, dir, strings.Join(extra, " "))
	c.srv, err = startBenchServer(ctx, binary, dir, extra, startTimeout)
	if err != nil {
		return err
	}
	defer func() {
		if serr := c.srv.stop(30 * time.Second); serr != nil && err == nil {
			err = serr
		}
		if err != nil {
			fmt.Fprintf(logw, "the end of the server log:\n%s", c.srv.logTail(30))
		}
	}()
	if c.kube, err = kubernetes.NewForConfig(c.srv.restConfig); err != nil {
		return fmt.Errorf("build client: %w", err)
	}
	fmt.Fprintf(logw, "creating %d nodes\n", nodes)
	if err := createBenchNodes(ctx, c.kube, nodes); err != nil {
		return err
	}
	return measure(ctx, c)
}
