package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// targetSimClusterRSS is issue 5's target for a cluster of 1,000 simulated nodes: the
// whole control plane (and here the agents and simulated runtimes too) under 2 GB.
const targetSimClusterRSS = 2 << 30

// nodesBenchOptions are the flags of `berth bench nodes`.
type nodesBenchOptions struct {
	nodes, replicas int
	binary          string
	startTimeout    time.Duration
	timeout         time.Duration
}

func newBenchNodesCommand() *cobra.Command {
	var o nodesBenchOptions
	cmd := &cobra.Command{
		Use:   "nodes",
		Short: "Start a cluster of simulated nodes (berth up --runtime sim); print the time to Ready, pods/s and memory",
		Long: `Start "berth up --runtime sim --nodes N" on a temporary data dir as a child process: the
API server, controllers and scheduler, and N real node agents each on berth's simulated
CRI runtime, all in that one process. Measure the time until every Node is Ready, then
create a Deployment of --replicas pods and measure the time until every pod runs and is
Ready on its simulated node. Prints the process's RSS (control plane, agents and runtimes
together) against the target for 1,000 nodes (2 GB), and its CPU.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.nodes < 1 || o.replicas < 0 {
				return fmt.Errorf("--nodes must be at least 1 and --replicas at least 0")
			}
			if o.binary == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find the berth binary to start (use --binary): %w", err)
				}
				o.binary = exe
			}
			return runNodesBench(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.nodes, "nodes", 1000, "how many simulated nodes")
	f.IntVar(&o.replicas, "replicas", 2000, "the Deployment's replicas")
	f.StringVar(&o.binary, "binary", "", "berth binary whose up command is started (default: this binary)")
	f.DurationVar(&o.startTimeout, "start-timeout", time.Minute, "how long to wait for the API server to answer")
	f.DurationVar(&o.timeout, "timeout", 10*time.Minute, "how long each phase may take before the run fails")
	return cmd
}

func runNodesBench(ctx context.Context, o nodesBenchOptions, out, logw io.Writer) (err error) {
	dir, err := os.MkdirTemp("", "berth-bench-nodes-")
	if err != nil {
		return fmt.Errorf("create temp data dir: %w", err)
	}
	defer os.RemoveAll(dir)
	machine := readMachineInfo()
	args := []string{"up", "--runtime", "sim", "--nodes", strconv.Itoa(o.nodes), "--data-dir", dir, "--port", "0"}
	fmt.Fprintf(logw, "starting %s %v\n", o.binary, args)
	start := time.Now()
	srv, err := startBenchProcess(ctx, o.binary, dir, args, o.startTimeout)
	if err != nil {
		return err
	}
	defer func() {
		if serr := srv.stop(2 * time.Minute); serr != nil && err == nil {
			err = serr
		}
		if err != nil {
			fmt.Fprintf(logw, "the end of the log:\n%s", srv.logTail(30))
		}
	}()
	kube, err := kubernetes.NewForConfig(srv.restConfig)
	if err != nil {
		return fmt.Errorf("build client: %w", err)
	}

	fmt.Fprintf(logw, "waiting for %d nodes to be Ready\n", o.nodes)
	var ready int
	err = waitUntilBench(ctx, o.timeout, "every node is Ready", func() bool {
		ready = countReadyNodes(ctx, kube, nil)
		return ready >= o.nodes
	})
	if err != nil {
		return fmt.Errorf("%w (%d of %d Ready)", err, ready, o.nodes)
	}
	nodesReady := time.Since(start)
	idle, err := readProcMemory(srv.pid())
	if err != nil {
		return err
	}
	// Printed now, so that a run whose pods do not all start still tells these.
	fmt.Fprintf(logw, "%d nodes Ready %.1f s after start; RSS %s\n", o.nodes, nodesReady.Seconds(), megabytes(idle.rss))

	var podsReady time.Duration
	if o.replicas > 0 {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}
		if _, err := kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create namespace: %w", err)
		}
		d := benchDeployment(int32(o.replicas))
		d.Spec.Template.Spec.Containers[0].Image = "berth.local/busybox:1.35"
		d.Spec.Template.Spec.Containers[0].Command = []string{"sleep", "infinity"}
		fmt.Fprintf(logw, "creating a Deployment of %d replicas\n", o.replicas)
		podStart := time.Now()
		if _, err := kube.AppsV1().Deployments("bench").Create(ctx, d, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create deployment: %w", err)
		}
		if err := waitUntilBench(ctx, o.timeout, "every pod runs and is Ready", deploymentDone(ctx, kube, o.replicas)); err != nil {
			if d, gerr := kube.AppsV1().Deployments("bench").Get(ctx, "web", metav1.GetOptions{}); gerr == nil {
				err = fmt.Errorf("%w (%d of %d pods available after %s)", err, d.Status.AvailableReplicas, o.replicas, time.Since(podStart).Round(time.Second))
			}
			return err
		}
		podsReady = time.Since(podStart)
	}
	mem, err := readProcMemory(srv.pid())
	if err != nil {
		return err
	}
	cpu, _ := readProcCPU(srv.pid())

	line := func(k, v, tgt string) { fmt.Fprintf(out, "%-26s %-30s %s\n", k+":", v, tgt) }
	line("machine", fmt.Sprintf("%d CPUs, %s, %s memory, Linux %s", machine.CPUs, machine.CPUModel, gib(machine.MemoryBytes), machine.Kernel), "")
	line("load average", machine.LoadAvg+" (before the run)", "")
	line("run", fmt.Sprintf("berth up --runtime sim --nodes %d (embedded etcd; API server, controllers, scheduler, %d agents and %d simulated runtimes in one process)", o.nodes, o.nodes, o.nodes), "")
	line("all nodes Ready", fmt.Sprintf("%.1f s after start", nodesReady.Seconds()), "")
	line("RSS, nodes idle", megabytes(idle.rss), "")
	if o.replicas > 0 {
		line("pods Ready", fmt.Sprintf("%d in %.1f s (%.0f pods/s)", o.replicas, podsReady.Seconds(), float64(o.replicas)/podsReady.Seconds()), "")
	}
	tgt := ""
	if o.nodes >= 1000 {
		tgt = fmt.Sprintf("target < 2 GB for 1,000 nodes  %s", passMiss(mem.rss < targetSimClusterRSS))
	}
	line("RSS after", megabytes(mem.rss), tgt)
	line("RSS per node", megabytes(mem.rss/int64(o.nodes)), "")
	line("CPU", cpu.Round(10*time.Millisecond).String(), "")
	return nil
}

// countReadyNodes counts the Nodes whose Ready condition is True, of those in want (of
// all when want is nil).
func countReadyNodes(ctx context.Context, kube kubernetes.Interface, want map[string]bool) int {
	list, err := kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return 0
	}
	n := 0
	for _, node := range list.Items {
		if want != nil && !want[node.Name] {
			continue
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				n++
			}
		}
	}
	return n
}
