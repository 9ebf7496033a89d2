package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	watchtools "k8s.io/client-go/tools/watch"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
)

// The pod start-up benchmark's targets on a 2-core machine.
const (
	// targetStartupP50Factor bounds the p50 of a Deployment's pods against the floor p50:
	// the agent's work on top of the runtime's may cost at most 30%.
	targetStartupP50Factor = 1.3
	targetStartupP99       = 2 * time.Second
	targetAgentRSSBytes    = 60 * mb
)

const (
	startupNamespace = "bench"
	startupNodeName  = "bench-startup-node"
	// startupSettle is how long after the last pod is Ready the agent's RSS is read again,
	// once the burst of status writes and probes' first rounds has passed.
	startupSettle = 5 * time.Second
)

// startupBenchOptions are the flags of `berth bench startup`.
type startupBenchOptions struct {
	replicas, floorRuns int
	burstWorkers        int // 0: no CRI burst
	serverBinary        string
	agentBinary         string
	startTimeout        time.Duration
	timeout             time.Duration
}

func newBenchStartupCommand() *cobra.Command {
	var o startupBenchOptions
	cmd := &cobra.Command{
		Use:   "startup",
		Short: "Start a Deployment's pods on a real node (agent + containerd); print start-up latency against the CRI floor, and the agent's RSS",
		Long: `Measure pod start-up on a real node. Starts a berth server (API server, controllers and
scheduler) on a temporary data dir, a containerd of its own on another (a free /24 of
10.244.0.0/16 on a bridge of its own, berth's busybox and pause images imported) and the
agent as a separate process (this binary's agent command on that containerd), so that its
memory can be read from /proc.

First the floor: --floor-runs times, one after another (after one warm-up run), a pod
straight on CRI, RunPodSandbox + CreateContainer + StartContainer of busybox sleep 3600,
removed again before the next. With --burst-workers N, then --replicas pods straight on
CRI at once, N at a time, each timed from the start of the burst: what the runtime alone
makes of a burst (the agent syncs 4 pods at a time). Then a Deployment of --replicas pods of the same container
(imagePullPolicy IfNotPresent, the image is there): each pod's start-up latency runs from
the watch event that showed it created to the one that showed it Ready (watch arrival
times: creationTimestamp has a resolution of one second). Prints p50, p99 and max against
the targets (p50 within 1.3 times the floor's p50, p99 within 2 s) and the agent's RSS
with the pods running (target 60 MB) and at its peak (VmHWM).

Everything is removed afterwards, on failure and Ctrl-C too: the Deployment and its pods
(through the agent), then any sandbox left (straight through CRI), the agent, containerd,
its shims, mounts and bridge, and the temporary dirs. Needs root, containerd, runc, ctr,
Debian's CNI plugins and busybox-static. A missed target is a figure, not a failure.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.replicas < 1 || o.floorRuns < 1 {
				return fmt.Errorf("--replicas and --floor-runs must be at least 1")
			}
			if err := checkStartupHost(); err != nil {
				return fmt.Errorf("bench startup: %w", err)
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the berth binary to start the server and agent from (use --server-binary and --agent-binary): %w", err)
			}
			if o.serverBinary == "" {
				o.serverBinary = exe
			}
			if o.agentBinary == "" {
				// The node-only binary when it is built (ADR 0010), else this one.
				o.agentBinary = exe
				if alone := filepath.Join(filepath.Dir(exe), "berth-agent"); fileExists(alone) {
					o.agentBinary = alone
				}
			}
			if err := runStartupBench(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr()); err != nil {
				return fmt.Errorf("bench startup: %w", err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.replicas, "replicas", 50, "the Deployment's replicas")
	f.IntVar(&o.floorRuns, "floor-runs", 10, "how many pods to start straight on CRI for the floor")
	f.IntVar(&o.burstWorkers, "burst-workers", 0, "also start --replicas pods straight on CRI at once, this many at a time (the agent syncs 4 pods at a time), and print their latencies: the runtime's share of the Deployment's (0: skip)")
	f.StringVar(&o.serverBinary, "server-binary", "", "berth binary whose server command is started (default: this binary)")
	f.StringVar(&o.agentBinary, "agent-binary", "", "binary the agent is started from: berth-agent, or a berth binary (default: berth-agent next to this binary, else this binary)")
	f.DurationVar(&o.startTimeout, "start-timeout", time.Minute, "how long to wait for the server, containerd and the node to become ready")
	f.DurationVar(&o.timeout, "timeout", 3*time.Minute, "how long the pods may take to become Ready, and to go away, before the run fails")
	return cmd
}

// checkStartupHost fails early, naming what is missing, when this machine cannot run
// containers.
func checkStartupHost() error {
	if os.Geteuid() != 0 {
		return errors.New("needs root to run containerd and containers")
	}
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr", "ip"} {
		if _, err := exec.LookPath(bin); err != nil {
			if _, err := os.Stat(filepath.Join("/usr/sbin", bin)); err != nil {
				return fmt.Errorf("%s is missing (make deps installs it)", bin)
			}
		}
	}
	for _, p := range []string{"bridge", "host-local", "portmap", "loopback"} {
		if _, err := os.Stat(filepath.Join(containerd.DefaultCNIBinDir, p)); err != nil {
			return fmt.Errorf("CNI plugin %s is missing (make deps installs containernetworking-plugins): %w", p, err)
		}
	}
	if _, err := os.Stat(images.DefaultBusyboxPath); err != nil {
		return fmt.Errorf("busybox-static is missing (make deps installs it): %w", err)
	}
	return nil
}

func runStartupBench(ctx context.Context, o startupBenchOptions, out, logw io.Writer) error {
	return withBenchCluster(ctx, o.serverBinary, nil, o.startTimeout, 0, logw, func(ctx context.Context, c *benchCluster) error {
		return measureStartup(ctx, c, o, out, logw)
	})
}

// startupResult is what one run measured.
type startupResult struct {
	floor, startup      quantiles
	burst               quantiles     // the CRI burst's latencies, from the burst's start
	toBound, boundReady quantiles     // start-up split: seen to bound to a node, bound to Ready
	allReady            time.Duration // from the Deployment's create to the last pod Ready
	rssReady, rssSettle int64         // agent VmRSS when the last pod was Ready, and startupSettle later
	rssPeak             int64         // agent VmHWM at the end
	rssAnon, rssFile    int64         // rssSettle split: anonymous memory, file-backed pages
	agentCPU            time.Duration // agent CPU from the Deployment's create to the last Ready
	cidr, bridge        string
}

// measureStartup runs the node (containerd, then the floor, then the agent) next to the
// cluster c and the Deployment on it. Its defers undo everything in reverse order, after a
// failure or an interrupt as well.
func measureStartup(ctx context.Context, c *benchCluster, o startupBenchOptions, out, logw io.Writer) (err error) {
	dir, err := os.MkdirTemp("", "berth-startup-")
	if err != nil {
		return fmt.Errorf("create temp dir for containerd and the agent: %w", err)
	}
	fmt.Fprintf(logw, "node dir %s (containerd, the agent's data and logs)\n", dir)
	defer func() {
		if rerr := os.RemoveAll(dir); rerr != nil {
			cleanupError(&err, fmt.Errorf("remove %s: %w", dir, rerr), logw)
		}
	}()
	res := &startupResult{}
	res.cidr, err = freeBenchPodCIDR()
	if err != nil {
		return err
	}
	res.bridge = fmt.Sprintf("berths%d", os.Getpid()%100000)
	fmt.Fprintf(logw, "starting containerd on pod network %s, bridge %s\n", res.cidr, res.bridge)
	rt, err := startBenchRuntime(ctx, dir, res.cidr, res.bridge, o.startTimeout)
	if err != nil {
		return err
	}
	defer func() {
		cleanupError(&err, rt.stop(logw), logw)
	}()

	fmt.Fprintf(logw, "floor: %d pods straight on CRI, one after another\n", o.floorRuns)
	floor, err := measureFloor(ctx, rt, o.floorRuns)
	if err != nil {
		return err
	}
	res.floor = quantilesOf(floor)
	if o.burstWorkers > 0 {
		fmt.Fprintf(logw, "CRI burst: %d pods straight on CRI at once, %d at a time\n", o.replicas, o.burstWorkers)
		burst, err := measureBurst(ctx, rt, o.replicas, o.burstWorkers)
		if err != nil {
			return err
		}
		res.burst = quantilesOf(burst)
	}

	kubeconfig := filepath.Join(filepath.Dir(c.srv.logPath), "admin.kubeconfig") // the server's data dir
	fmt.Fprintf(logw, "starting the agent (%s) on %s\n", o.agentBinary, rt.proc.Endpoint)
	agent, err := startBenchAgent(o.agentBinary, kubeconfig, rt.proc.Endpoint, filepath.Join(dir, "agent"), res.cidr)
	if err != nil {
		return err
	}
	defer func() {
		cleanupError(&err, agent.stop(30*time.Second), logw)
		if err != nil {
			fmt.Fprintf(logw, "the end of the agent log:\n%s", agent.logTail(30))
		}
	}()
	if err := waitNodeReady(ctx, c.kube, agent, o.startTimeout); err != nil {
		return err
	}

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: startupNamespace}}
	if _, err := c.kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", startupNamespace, err)
	}
	// Registered before the Deployment exists, so that it runs (before the agent stops)
	// whatever happens from here on.
	defer func() {
		cleanupError(&err, removeStartupPods(c.kube, o.timeout, logw), logw)
	}()
	if err := measureDeploymentStartup(ctx, c.kube, agent, o, res, logw); err != nil {
		return err
	}
	writeStartupResult(out, c.machine, o, res)
	return nil
}

// cleanupError makes cerr, an error of a cleanup step, the run's error when it has none;
// otherwise it prints cerr, so that no failed cleanup goes unsaid.
func cleanupError(err *error, cerr error, logw io.Writer) {
	switch {
	case cerr == nil:
	case *err == nil:
		*err = cerr
	default:
		fmt.Fprintf(logw, "cleanup: %v\n", cerr)
	}
}

// benchRuntime is the benchmark's containerd with a CRI client of it.
type benchRuntime struct {
	dir, bridge string
	proc        *containerd.Process
	stopProc    context.CancelFunc
	conn        *grpc.ClientConn
	runtime     runtimeapi.RuntimeServiceClient
	log         *os.File
}

// startBenchRuntime builds berth's images, starts containerd on dir/containerd and
// imports them. containerd's context is not ctx: on an interrupt it must outlive the
// removal of the pods; stop ends it.
func startBenchRuntime(ctx context.Context, dir, cidr, bridge string, timeout time.Duration) (_ *benchRuntime, err error) {
	files, err := images.BuildAll(filepath.Join(dir, "images"), images.DefaultBusyboxPath)
	if err != nil {
		return nil, err
	}
	logFile, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		return nil, fmt.Errorf("create containerd log: %w", err)
	}
	rt := &benchRuntime{dir: dir, bridge: bridge, log: logFile}
	procCtx, stopProc := context.WithCancel(context.WithoutCancel(ctx))
	rt.stopProc = stopProc
	startCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	rt.proc, err = containerd.Start(procCtx, containerd.Config{
		DataDir: filepath.Join(dir, "containerd"), SandboxImage: images.PauseRef,
		PodCIDR: cidr, Bridge: bridge, Output: logFile,
	})
	if err != nil {
		stopProc()
		logFile.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = rt.stop(io.Discard)
		}
	}()
	rt.conn, err = grpc.NewClient(rt.proc.Endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("CRI client of %s: %w", rt.proc.Endpoint, err)
	}
	rt.runtime = runtimeapi.NewRuntimeServiceClient(rt.conn)
	for _, f := range files {
		if err := images.Import(startCtx, rt.proc.Address, containerd.Namespace, f); err != nil {
			return nil, err
		}
	}
	return rt, nil
}

// stop removes every sandbox left (the runtime is this benchmark's alone), stops
// containerd, kills any shim of it still running, unmounts what is left under the dir and
// deletes the bridge. It goes on after an error and returns the first.
func (rt *benchRuntime) stop(logw io.Writer) error {
	var errs []error
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if rt.runtime != nil {
		if resp, err := rt.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			if len(resp.Items) > 0 {
				fmt.Fprintf(logw, "removing %d sandboxes left in containerd\n", len(resp.Items))
			}
			for _, sb := range resp.Items {
				_, _ = rt.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id})
				if _, err := rt.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
					errs = append(errs, fmt.Errorf("remove sandbox %s: %w", sb.Id, err))
				}
			}
		} else {
			errs = append(errs, fmt.Errorf("list sandboxes to remove: %w", err))
		}
	}
	if rt.conn != nil {
		rt.conn.Close()
	}
	rt.stopProc()
	if err := rt.proc.Wait(); err != nil {
		errs = append(errs, fmt.Errorf("containerd: %w", err))
	}
	rt.log.Close()
	killBenchShims(rt.proc.Address, logw)
	if err := unmountUnder(rt.dir); err != nil {
		errs = append(errs, err)
	}
	if out, err := exec.Command("ip", "link", "del", rt.bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
		errs = append(errs, fmt.Errorf("delete bridge %s: %w: %s", rt.bridge, err, bytes.TrimSpace(out)))
	}
	return errors.Join(errs...)
}

// measureFloor starts runs pods straight on CRI, one at a time, after one warm-up pod that
// is not counted (the first sandbox pays for the bridge and caches the others share), and
// returns how long RunPodSandbox + CreateContainer + StartContainer took for each. Every
// pod is removed before the next starts.
func measureFloor(ctx context.Context, rt *benchRuntime, runs int) ([]time.Duration, error) {
	var took []time.Duration
	for i := range runs + 1 {
		id, d, err := rt.startCRIPod(ctx, fmt.Sprintf("floor-%d", i))
		if err != nil {
			return nil, err
		}
		if i > 0 {
			took = append(took, d)
		}
		if err := rt.removeCRIPod(ctx, id); err != nil {
			return nil, err
		}
	}
	return took, nil
}

// measureBurst starts n pods straight on CRI at once, workers at a time, as the agent does
// with a Deployment's pods, and returns each pod's latency from the start of the burst to
// its StartContainer's return: the runtime's own share of a burst's start-up latencies.
// The pods are removed before it returns.
func measureBurst(ctx context.Context, rt *benchRuntime, n, workers int) ([]time.Duration, error) {
	took := make([]time.Duration, n)
	ids := make([]string, n)
	errs := make([]error, n)
	sem := make(chan struct{}, workers)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			ids[i], _, errs[i] = rt.startCRIPod(ctx, fmt.Sprintf("burst-%d", i))
			took[i] = time.Since(start)
		}()
	}
	wg.Wait()
	for i, id := range ids {
		if id == "" {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := rt.removeCRIPod(ctx, id); err != nil && errs[i] == nil {
				errs[i] = err
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return took, nil
}

// startCRIPod runs a pod of busybox sleep 3600 straight on CRI, configured as the agent
// configures a pod's sandbox, and returns its sandbox and how long RunPodSandbox +
// CreateContainer + StartContainer took. The sandbox is returned even with an error.
func (rt *benchRuntime) startCRIPod(ctx context.Context, name string) (string, time.Duration, error) {
	uid := string(uuid.NewUUID())
	logDir := filepath.Join(rt.dir, "floor", uid)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return "", 0, fmt.Errorf("CRI pod %s: log dir: %w", name, err)
	}
	sandbox := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "bench-floor", Uid: uid},
		Hostname:     name,
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD},
		}},
	}
	start := time.Now()
	sb, err := rt.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sandbox})
	if err != nil {
		return "", 0, fmt.Errorf("CRI pod %s: run sandbox: %w", name, err)
	}
	ct, err := rt.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: sb.PodSandboxId, SandboxConfig: sandbox,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "sleep"},
			Image:    &runtimeapi.ImageSpec{Image: images.BusyboxRef},
			Command:  []string{"sleep", "3600"},
			LogPath:  "sleep/0.log",
			Linux:    &runtimeapi.LinuxContainerConfig{},
		},
	})
	if err == nil {
		_, err = rt.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: ct.ContainerId})
	}
	d := time.Since(start)
	if err != nil {
		return sb.PodSandboxId, d, fmt.Errorf("CRI pod %s: create and start the container: %w", name, err)
	}
	return sb.PodSandboxId, d, nil
}

// removeCRIPod stops and removes a sandbox with its container (StopPodSandbox kills
// what still runs in it; sleep would ignore SIGTERM anyway).
func (rt *benchRuntime) removeCRIPod(ctx context.Context, id string) error {
	if _, err := rt.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("stop sandbox %s: %w", id, err)
	}
	if _, err := rt.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil {
		return fmt.Errorf("remove sandbox %s: %w", id, err)
	}
	return nil
}

// benchAgent is `berth agent` as a child process.
type benchAgent struct {
	cmd     *exec.Cmd
	logPath string
	exited  chan struct{} // closed when the process has exited; exitErr is set then
	exitErr error
}

func startBenchAgent(binary, kubeconfig, endpoint, dataDir, cidr string) (*benchAgent, error) {
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, fmt.Errorf("agent data dir: %w", err)
	}
	logPath := filepath.Join(filepath.Dir(dataDir), "agent.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create agent log: %w", err)
	}
	defer logFile.Close() // the child has its own descriptor
	// A free loopback port for the agent's streaming server, so that the benchmark runs
	// next to a cluster whose agent holds the default 10250.
	var args []string
	if filepath.Base(binary) != "berth-agent" {
		args = []string{"agent"}
	}
	args = append(args, "--kubeconfig", kubeconfig, "--runtime-endpoint", endpoint,
		"--data-dir", dataDir, "--node-name", startupNodeName, "--pod-cidr", cidr,
		"--streaming-address", "127.0.0.1:0")
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, so that a terminal's Ctrl-C reaches the benchmark alone, which
	// then has the agent remove the pods before stopping it; Pdeathsig so that a benchmark
	// killed hard does not leave it behind.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s agent: %w", binary, err)
	}
	a := &benchAgent{cmd: cmd, logPath: logPath, exited: make(chan struct{})}
	go func() {
		a.exitErr = cmd.Wait()
		close(a.exited)
	}()
	return a, nil
}

func (a *benchAgent) pid() int { return a.cmd.Process.Pid }

// stop sends SIGTERM and waits up to timeout for a clean exit, then kills.
func (a *benchAgent) stop(timeout time.Duration) error {
	select {
	case <-a.exited:
		if a.exitErr != nil {
			return fmt.Errorf("the agent exited early: %w", a.exitErr)
		}
		return nil
	default:
	}
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop the agent (pid %d): %w", a.pid(), err)
	}
	select {
	case <-a.exited:
		if a.exitErr != nil {
			return fmt.Errorf("the agent did not exit cleanly after SIGTERM: %w", a.exitErr)
		}
		return nil
	case <-time.After(timeout):
		_ = a.cmd.Process.Kill()
		<-a.exited
		return fmt.Errorf("the agent (pid %d) did not stop within %s of SIGTERM; killed it", a.pid(), timeout)
	}
}

func (a *benchAgent) logTail(n int) string {
	data, err := os.ReadFile(a.logPath)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)\n", a.logPath, err)
	}
	lines := bytes.Split(bytes.TrimRight(data, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n"))) + "\n"
}

// alive fails once the agent has exited.
func (a *benchAgent) alive() error {
	select {
	case <-a.exited:
		return fmt.Errorf("the agent exited (%v); see its log below", a.exitErr)
	default:
		return nil
	}
}

func waitNodeReady(ctx context.Context, kube kubernetes.Interface, agent *benchAgent, timeout time.Duration) error {
	var aerr error
	err := waitUntilBench(ctx, timeout, "the node "+startupNodeName+" is Ready", func() bool {
		if aerr = agent.alive(); aerr != nil {
			return true
		}
		n, err := kube.CoreV1().Nodes().Get(ctx, startupNodeName, metav1.GetOptions{})
		if err != nil {
			return false
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady {
				return c.Status == corev1.ConditionTrue
			}
		}
		return false
	})
	if aerr != nil {
		return aerr
	}
	return err
}

// measureDeploymentStartup creates the Deployment and records, from a watch opened
// before, when each pod was first seen and when it was first seen Ready.
func measureDeploymentStartup(ctx context.Context, kube kubernetes.Interface, agent *benchAgent, o startupBenchOptions, res *startupResult, logw io.Writer) error {
	pods := kube.CoreV1().Pods(startupNamespace)
	list, err := pods.List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list pods in %s: %w", startupNamespace, err)
	}
	if len(list.Items) != 0 {
		return fmt.Errorf("namespace %s already has %d pods; the bench needs it empty", startupNamespace, len(list.Items))
	}
	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	w, err := watchtools.NewRetryWatcherWithContext(wctx, list.ResourceVersion, &cache.ListWatch{
		WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
			return pods.Watch(ctx, opts)
		},
	})
	if err != nil {
		return fmt.Errorf("watch pods in %s: %w", startupNamespace, err)
	}
	defer func() { w.Stop(); <-w.Done() }()

	cpu0, err := readProcCPU(agent.pid())
	if err != nil {
		return err
	}
	fmt.Fprintf(logw, "creating a Deployment of %d replicas\n", o.replicas)
	start := time.Now()
	if _, err := kube.AppsV1().Deployments(startupNamespace).Create(ctx, startupDeployment(int32(o.replicas)), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create deployment: %w", err)
	}
	seen := map[types.UID]time.Time{}
	bound := map[types.UID]time.Time{}
	ready := map[types.UID]time.Time{}
	timeout := time.NewTimer(o.timeout)
	defer timeout.Stop()
	alive := time.NewTicker(time.Second)
	defer alive.Stop()
	for len(ready) < o.replicas {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return fmt.Errorf("the pod watch closed with %d of %d pods Ready", len(ready), o.replicas)
			}
			now := time.Now()
			if ev.Type == watch.Error {
				return fmt.Errorf("pod watch: %v", apierrors.FromObject(ev.Object))
			}
			p, isPod := ev.Object.(*corev1.Pod)
			if !isPod || ev.Type == watch.Deleted {
				continue
			}
			if _, ok := seen[p.UID]; !ok {
				seen[p.UID] = now
			}
			if _, ok := bound[p.UID]; !ok && p.Spec.NodeName != "" {
				bound[p.UID] = now
			}
			if _, ok := ready[p.UID]; !ok && podIsReady(p) {
				ready[p.UID] = now
			}
		case <-alive.C:
			if err := agent.alive(); err != nil {
				return err
			}
		case <-timeout.C:
			return fmt.Errorf("timed out after %s with %d of %d pods Ready (%d created)", o.timeout, len(ready), o.replicas, len(seen))
		case <-ctx.Done():
			return fmt.Errorf("interrupted with %d of %d pods Ready: %w", len(ready), o.replicas, ctx.Err())
		}
	}
	var last time.Time
	var latencies, toBound, boundReady []time.Duration
	for uid, at := range ready {
		latencies = append(latencies, at.Sub(seen[uid]))
		toBound = append(toBound, bound[uid].Sub(seen[uid]))
		boundReady = append(boundReady, at.Sub(bound[uid]))
		if at.After(last) {
			last = at
		}
	}
	res.allReady = last.Sub(start)
	res.startup = quantilesOf(latencies)
	res.toBound, res.boundReady = quantilesOf(toBound), quantilesOf(boundReady)
	mem, err := readProcMemory(agent.pid())
	if err != nil {
		return fmt.Errorf("agent memory: %w", err)
	}
	res.rssReady = mem.rss
	cpu1, err := readProcCPU(agent.pid())
	if err != nil {
		return err
	}
	res.agentCPU = cpu1 - cpu0
	select {
	case <-time.After(startupSettle):
	case <-ctx.Done():
		return fmt.Errorf("interrupted: %w", ctx.Err())
	}
	if mem, err = readProcMemory(agent.pid()); err != nil {
		return fmt.Errorf("agent memory: %w", err)
	}
	res.rssSettle, res.rssPeak, res.rssAnon, res.rssFile = mem.rss, mem.hwm, mem.anon, mem.file
	return nil
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// startupDeployment is replicas pods of busybox sleep 3600 from the imported image.
func startupDeployment(replicas int32) *appsv1.Deployment {
	lbls := map[string]string{"app": "startup"}
	grace := int64(1) // sleep ignores SIGTERM: the removal at the end should not wait 30 s
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "startup", Labels: lbls},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: lbls},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: lbls},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					Containers: []corev1.Container{{
						Name: "sleep", Image: images.BusyboxRef, Command: []string{"sleep", "3600"},
						ImagePullPolicy: corev1.PullIfNotPresent,
					}},
				},
			},
		},
	}
}

// removeStartupPods deletes the Deployment, its ReplicaSets and pods and waits until the
// agent has confirmed every pod gone. It runs on a context of its own: after an interrupt
// the run's context is done, and the pods must go all the same. When the API server is
// gone (a terminal's Ctrl-C reaches it too) it gives up at once, and the runtime's stop
// removes the sandboxes instead.
func removeStartupPods(kube kubernetes.Interface, timeout time.Duration, logw io.Writer) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	background := metav1.DeletePropagationBackground
	opts := metav1.DeleteOptions{PropagationPolicy: &background}
	sel := metav1.ListOptions{LabelSelector: "app=startup"}
	err := kube.AppsV1().Deployments(startupNamespace).Delete(ctx, "startup", opts)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete deployment %s/startup: %w", startupNamespace, err)
	}
	// The garbage collector would delete these too; doing it here does not depend on it.
	if err := kube.AppsV1().ReplicaSets(startupNamespace).DeleteCollection(ctx, opts, sel); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete replicasets in %s: %w", startupNamespace, err)
	}
	fmt.Fprintf(logw, "deleting the pods\n")
	start := time.Now()
	var left int
	err = waitUntilBench(ctx, timeout, "every pod is gone", func() bool {
		list, err := kube.CoreV1().Pods(startupNamespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false
		}
		left = len(list.Items)
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				_ = kube.CoreV1().Pods(startupNamespace).Delete(ctx, p.Name, metav1.DeleteOptions{})
			}
		}
		return left == 0
	})
	if err != nil {
		return fmt.Errorf("%w (%d pods left)", err, left)
	}
	fmt.Fprintf(logw, "pods gone in %.1f s\n", time.Since(start).Seconds())
	return nil
}

func writeStartupResult(out io.Writer, machine machineInfo, o startupBenchOptions, r *startupResult) {
	line := func(k, v, tgt string) {
		if tgt == "" {
			fmt.Fprintf(out, "%-24s %s\n", k+":", v)
			return
		}
		fmt.Fprintf(out, "%-24s %-32s %s\n", k+":", v, tgt)
	}
	sec := func(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }
	line("machine", fmt.Sprintf("%d CPUs, %s, %s memory, Linux %s", machine.CPUs, machine.CPUModel, gib(machine.MemoryBytes), machine.Kernel), "")
	line("load average", machine.LoadAvg+" (before the run)", "")
	line("run", fmt.Sprintf("1 node: berth agent (own process) on containerd, pod network %s; server with controllers and scheduler", r.cidr), "")
	line("floor", fmt.Sprintf("%d CRI pods one at a time (after 1 warm-up): RunPodSandbox + CreateContainer + StartContainer, busybox sleep", o.floorRuns), "")
	line("floor p50", sec(r.floor.P50), "")
	line("floor p99", sec(r.floor.P99), "")
	if o.burstWorkers > 0 {
		line("CRI burst", fmt.Sprintf("%d CRI pods at once, %d at a time; latency from the burst's start to StartContainer's return", o.replicas, o.burstWorkers), "")
		line("CRI burst p50", sec(r.burst.P50), "")
		line("CRI burst p99", sec(r.burst.P99), "")
		line("CRI burst per pod", sec(r.burst.Max/time.Duration(o.replicas))+" (the last one's latency / replicas)", "")
	}
	line("deployment", fmt.Sprintf("%d replicas of busybox sleep 3600, image present (IfNotPresent)", o.replicas), "")
	p50Goal := time.Duration(math.Round(float64(r.floor.P50) * targetStartupP50Factor))
	line("pod start-up p50", sec(r.startup.P50), fmt.Sprintf("target ≤ %.1f × floor p50 = %s  %s", targetStartupP50Factor, sec(p50Goal), passMiss(r.startup.P50 <= p50Goal)))
	if o.burstWorkers > 0 {
		// The same pods straight on CRI: what the runtime alone makes of this burst.
		burstGoal := time.Duration(math.Round(float64(r.burst.P50) * targetStartupP50Factor))
		line("  against the CRI burst", fmt.Sprintf("%.2f × its p50", float64(r.startup.P50)/float64(r.burst.P50)), fmt.Sprintf("≤ %.1f × CRI burst p50 = %s  %s", targetStartupP50Factor, sec(burstGoal), passMiss(r.startup.P50 <= burstGoal)))
	}
	line("pod start-up p90", sec(r.startup.P90), "")
	line("pod start-up p99", sec(r.startup.P99), fmt.Sprintf("target ≤ %s  %s", sec(targetStartupP99), passMiss(r.startup.P99 <= targetStartupP99)))
	if o.burstWorkers > 0 {
		line("  CRI burst p99", sec(r.burst.P99)+" (the runtime alone, the same pods)", passMiss(r.burst.P99 <= targetStartupP99)+" for the runtime itself")
	}
	line("pod start-up max", sec(r.startup.Max), "")
	line("  seen to bound", fmt.Sprintf("p50 %s, p99 %s (controllers and scheduler)", sec(r.toBound.P50), sec(r.toBound.P99)), "")
	line("  bound to Ready", fmt.Sprintf("p50 %s, p99 %s (the agent and the runtime)", sec(r.boundReady.P50), sec(r.boundReady.P99)), "")
	line("all pods Ready", sec(r.allReady)+" after the Deployment's create", "")
	// On a small node the runtime starts pods about as fast together as one at a time, so
	// a burst's latencies queue up; the time per pod shows what the agent adds to the floor.
	line("time per pod", fmt.Sprintf("%s (all Ready / replicas; the floor, one at a time: %s)", sec(r.allReady/time.Duration(o.replicas)), sec(r.floor.P50)), "")
	line("agent CPU", fmt.Sprintf("%.2f s (create to last Ready)", r.agentCPU.Seconds()), "")
	line("agent RSS at last Ready", megabytes(r.rssReady), "")
	line("agent RSS", megabytes(r.rssSettle)+fmt.Sprintf(" (%d pods running, %s later)", o.replicas, startupSettle), fmt.Sprintf("target ≤ %s  %s", megabytes(targetAgentRSSBytes), passMiss(r.rssSettle <= targetAgentRSSBytes)))
	line("agent RSS split", fmt.Sprintf("%s anonymous (heap, stacks), %s file-backed (the binary's pages)", megabytes(r.rssAnon), megabytes(r.rssFile)), "")
	line("agent RSS peak", megabytes(r.rssPeak)+" (VmHWM)", "")
}

// freeBenchPodCIDR picks a /24 under 10.244.0.0/16 that no address or route of this
// machine overlaps, so that the benchmark's pod network disturbs no other.
func freeBenchPodCIDR() (string, error) {
	out, err := exec.Command("ip", "-4", "route", "show", "table", "all").Output()
	if err != nil {
		return "", fmt.Errorf("list routes to pick a free pod network: %w", err)
	}
	used := string(out)
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("list addresses to pick a free pod network: %w", err)
	}
	for i := range 150 {
		third := 100 + (os.Getpid()+i)%150
		_, subnet, _ := net.ParseCIDR(fmt.Sprintf("10.244.%d.0/24", third))
		taken := strings.Contains(used, fmt.Sprintf("10.244.%d.", third))
		for _, a := range addrs {
			if n, ok := a.(*net.IPNet); ok && (subnet.Contains(n.IP) || n.Contains(subnet.IP)) {
				taken = true
			}
		}
		if !taken {
			return subnet.String(), nil
		}
	}
	return "", errors.New("no free /24 in 10.244.100.0-10.244.249.0 for the pod network")
}

// killBenchShims kills the runc shims serving the containerd at address, found by the
// address on their command line; there are none when every sandbox was removed.
func killBenchShims(address string, logw io.Writer) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		data, err := os.ReadFile(f)
		if err != nil || !bytes.Contains(data, []byte("containerd-shim")) || !bytes.Contains(data, []byte(address)) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(f, "/proc/%d/cmdline", &pid); err == nil {
			fmt.Fprintf(logw, "killing shim %d left running\n", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// unmountUnder detaches every mount below dir, deepest first, so that removing dir never
// reaches into a container's file system.
func unmountUnder(dir string) error {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return fmt.Errorf("list mounts under %s: %w", dir, err)
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			points = append(points, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	var errs []error
	for _, p := range points {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}

// fileExists tells whether path names an existing file.
func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
