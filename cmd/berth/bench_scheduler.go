package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
)

// schedulerBenchOptions are the flags of `berth bench scheduler`.
type schedulerBenchOptions struct {
	nodes, pods  int
	serverBinary string
	startTimeout time.Duration
	timeout      time.Duration
}

func newBenchSchedulerCommand() *cobra.Command {
	var o schedulerBenchOptions
	cmd := &cobra.Command{
		Use:   "scheduler",
		Short: "Create API-only nodes and pending pods; print pods scheduled per second, latency and RSS",
		Long: `Start a berth server (API server and scheduler, no controllers) on a temporary data dir,
create --nodes Ready API-only nodes, then --pods pods from 16 client-go workers, and measure
until every pod is bound: pods bound per second (from the first to the last bind, and from
the first create), the per-pod latency from create to bind seen by a watch (p50, p99), and
the server's memory and CPU.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.nodes < 1 || o.pods < 1 {
				return fmt.Errorf("--nodes and --pods must be at least 1")
			}
			if o.serverBinary == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find the berth binary to start the server from (use --server-binary): %w", err)
				}
				o.serverBinary = exe
			}
			return runSchedulerBench(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.nodes, "nodes", 500, "how many API-only nodes to create")
	f.IntVar(&o.pods, "pods", 5000, "how many pods to schedule")
	f.StringVar(&o.serverBinary, "server-binary", "", "berth binary whose server command is started (default: this binary)")
	f.DurationVar(&o.startTimeout, "start-timeout", time.Minute, "how long to wait for the server to become ready")
	f.DurationVar(&o.timeout, "timeout", 10*time.Minute, "how long the pods may take to be bound before the run fails")
	return cmd
}

// bindWatch records, from a pod informer, when each bench pod was created (by this
// command) and when it was first seen bound.
type bindWatch struct {
	mu                  sync.Mutex
	created, bound      map[string]time.Time
	firstBind, lastBind time.Time
	latencies           []time.Duration
}

func (b *bindWatch) onPod(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Spec.NodeName == "" {
		return
	}
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, seen := b.bound[p.Name]; seen {
		return
	}
	b.bound[p.Name] = now
	if b.firstBind.IsZero() {
		b.firstBind = now
	}
	b.lastBind = now
	if c, ok := b.created[p.Name]; ok {
		b.latencies = append(b.latencies, now.Sub(c))
	}
}

func (b *bindWatch) boundCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.bound)
}

func runSchedulerBench(ctx context.Context, o schedulerBenchOptions, out, logw io.Writer) error {
	extra := []string{"--controllers=false", "--scheduler=true"}
	return withBenchCluster(ctx, o.serverBinary, extra, o.startTimeout, o.nodes, logw, func(ctx context.Context, c *benchCluster) error {
		return measureScheduling(ctx, c, o, out, logw)
	})
}

// measureScheduling creates the pods on a ready cluster and reports how they were bound.
func measureScheduling(ctx context.Context, c *benchCluster, o schedulerBenchOptions, out, logw io.Writer) (err error) {
	srv, kube, machine := c.srv, c.kube, c.machine
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace}}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace: %w", err)
	}

	w := &bindWatch{created: make(map[string]time.Time, o.pods), bound: make(map[string]time.Time, o.pods)}
	factory := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(benchNamespace))
	podInformer := factory.Core().V1().Pods().Informer()
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.onPod,
		UpdateFunc: func(_, obj any) { w.onPod(obj) },
	}); err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	defer cancel() // stop the informer before Shutdown waits for it
	if !cache.WaitForCacheSync(ctx.Done(), podInformer.HasSynced) {
		return fmt.Errorf("the pod informer did not sync")
	}

	cpuBefore, _ := readProcCPU(srv.pid())
	fmt.Fprintf(logw, "creating %d pods\n", o.pods)
	start := time.Now()
	createErr := make(chan error, 1)
	go func() {
		createErr <- parallel(ctx, o.pods, func(i int) error {
			name := fmt.Sprintf("pod-%d", i)
			w.mu.Lock()
			w.created[name] = time.Now()
			w.mu.Unlock()
			if _, err := kube.CoreV1().Pods(benchNamespace).Create(ctx, benchPod(name), metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("create pod %s: %w", name, err)
			}
			return nil
		})
	}()
	var created time.Duration
	var createFailed error
	err = waitUntilBench(ctx, o.timeout, "every pod is bound", func() bool {
		if created == 0 {
			select {
			case e := <-createErr:
				if e != nil {
					createFailed = e
					return true
				}
				created = time.Since(start)
			default:
			}
		}
		return w.boundCount() >= o.pods
	})
	if createFailed != nil {
		return createFailed
	}
	if err != nil {
		return fmt.Errorf("%w (%d of %d pods bound)", err, w.boundCount(), o.pods)
	}
	if created == 0 {
		if e := <-createErr; e != nil {
			return e
		}
		created = time.Since(start)
	}
	mem, err := readProcMemory(srv.pid())
	if err != nil {
		return err
	}
	cpuAfter, _ := readProcCPU(srv.pid())

	w.mu.Lock()
	total := w.lastBind.Sub(start)
	window := w.lastBind.Sub(w.firstBind)
	q := quantilesOf(w.latencies)
	w.mu.Unlock()
	overall := float64(o.pods) / total.Seconds()
	binds := overall
	if window > 0 {
		binds = float64(o.pods-1) / window.Seconds()
	}
	line := func(k, v string) { fmt.Fprintf(out, "%-26s %s\n", k+":", v) }
	line("machine", fmt.Sprintf("%d CPUs, %s, %s memory, Linux %s", machine.CPUs, machine.CPUModel, gib(machine.MemoryBytes), machine.Kernel))
	line("load average", machine.LoadAvg+" (before the run)")
	line("run", fmt.Sprintf("%d API-only nodes, %d pods, default profile, embedded etcd, scheduler in the server", o.nodes, o.pods))
	line("all pods created", fmt.Sprintf("%.2f s", created.Seconds()))
	line("all pods bound", fmt.Sprintf("%.2f s", total.Seconds()))
	line("created and bound", fmt.Sprintf("%.0f pods/s", overall))
	line("scheduled (first to last)", fmt.Sprintf("%.0f pods/s", binds))
	line("create to bind p50", ms(q.P50))
	line("create to bind p99", ms(q.P99))
	line("server RSS after", megabytes(mem.rss))
	line("server CPU during run", (cpuAfter - cpuBefore).Round(10*time.Millisecond).String())
	return nil
}

// benchPod is a small pod for the scheduler bench: 100m cpu, 128Mi memory.
func benchPod(name string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "bench"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "c", Image: "berth.local/bench:v1",
			Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi"),
			}},
		}}},
	}
}
