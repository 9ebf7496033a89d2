package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// targetPodsPerSecond is issue 4's target for creating and binding a Deployment's pods.
const targetPodsPerSecond = 200

// workloadBenchOptions are the flags of `berth bench workloads`.
type workloadBenchOptions struct {
	nodes, replicas int
	serverBinary    string
	startTimeout    time.Duration
	timeout         time.Duration
}

func newBenchWorkloadsCommand() *cobra.Command {
	var o workloadBenchOptions
	cmd := &cobra.Command{
		Use:   "workloads",
		Short: "Create a large Deployment on API-only nodes and roll it; print pods/s and rollout time",
		Long: `Start a berth server (API server, controllers and scheduler) on a temporary data dir, create
--nodes API-only nodes (Node objects whose Leases this command renews, as hollow nodes do),
then a Deployment of --replicas pods, and measure the time until every pod exists and until
every pod is bound to a node. This command then plays the nodes' agents: it reports every
bound pod Running and Ready as fast as the API takes the status writes, and confirms the
deletion of terminating pods. Once the Deployment is available it changes the image and
measures the rolling update (maxSurge 25%) until the new ReplicaSet has every pod available
and the old one none. Prints pods/s against berth's target (200) and the server's RSS.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.nodes < 1 || o.replicas < 1 {
				return fmt.Errorf("--nodes and --replicas must be at least 1")
			}
			if o.serverBinary == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find the berth binary to start the server from (use --server-binary): %w", err)
				}
				o.serverBinary = exe
			}
			return runWorkloadBench(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.nodes, "nodes", 100, "how many API-only nodes to create")
	f.IntVar(&o.replicas, "replicas", 1000, "the Deployment's replicas")
	f.StringVar(&o.serverBinary, "server-binary", "", "berth binary whose server command is started (default: this binary)")
	f.DurationVar(&o.startTimeout, "start-timeout", time.Minute, "how long to wait for the server to become ready")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "how long each phase may take before the run fails")
	return cmd
}

func runWorkloadBench(ctx context.Context, o workloadBenchOptions, out, logw io.Writer) error {
	return withBenchCluster(ctx, o.serverBinary, nil, o.startTimeout, o.nodes, logw, func(ctx context.Context, c *benchCluster) error {
		return measureWorkloads(ctx, c, o, out, logw)
	})
}

// measureWorkloads creates the Deployment on a ready cluster, plays the nodes' agents and
// reports how fast it was created, bound and rolled.
func measureWorkloads(ctx context.Context, c *benchCluster, o workloadBenchOptions, out, logw io.Writer) (err error) {
	srv, kube, machine := c.srv, c.kube, c.machine
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(2)
	go func() { defer wg.Done(); renewBenchLeases(ctx, kube, o.nodes) }()
	agents := newFakeAgents(kube)
	go func() { defer wg.Done(); agents.run(ctx) }()
	if !cache.WaitForCacheSync(ctx.Done(), agents.synced) {
		return fmt.Errorf("the pod informer did not sync")
	}

	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}
	if _, err := kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace: %w", err)
	}
	fmt.Fprintf(logw, "creating a Deployment of %d replicas\n", o.replicas)
	start := time.Now()
	if _, err := kube.AppsV1().Deployments("bench").Create(ctx, benchDeployment(int32(o.replicas)), metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create deployment: %w", err)
	}
	var existed, bound time.Duration
	err = waitUntilBench(ctx, o.timeout, "every pod exists and is bound", func() bool {
		n, b := agents.counts("v1")
		if existed == 0 && n >= o.replicas {
			existed = time.Since(start)
		}
		if bound == 0 && b >= o.replicas {
			bound = time.Since(start)
		}
		return bound > 0
	})
	if err != nil {
		n, b := agents.counts("v1")
		return fmt.Errorf("%w (%d pods exist, %d bound)", err, n, b)
	}
	if err := waitUntilBench(ctx, o.timeout, "the deployment is available", deploymentDone(ctx, kube, o.replicas)); err != nil {
		return err
	}
	available := time.Since(start)

	fmt.Fprintf(logw, "rolling the Deployment to a new image\n")
	rollStart := time.Now()
	d, err := kube.AppsV1().Deployments("bench").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get deployment: %w", err)
	}
	d.Spec.Template.Spec.Containers[0].Image = "berth.local/bench:v2"
	d.Spec.Template.Labels["version"] = "v2"
	if _, err := kube.AppsV1().Deployments("bench").Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update deployment: %w", err)
	}
	if err := waitUntilBench(ctx, o.timeout, "the rolling update completes", deploymentDone(ctx, kube, o.replicas)); err != nil {
		return err
	}
	rolled := time.Since(rollStart)
	mem, err := readProcMemory(srv.pid())
	if err != nil {
		return err
	}
	cpu, _ := readProcCPU(srv.pid())

	rate := float64(o.replicas) / bound.Seconds()
	line := func(k, v, tgt string) { fmt.Fprintf(out, "%-26s %-24s %s\n", k+":", v, tgt) }
	line("machine", fmt.Sprintf("%d CPUs, %s, %s memory, Linux %s", machine.CPUs, machine.CPUModel, gib(machine.MemoryBytes), machine.Kernel), "")
	line("load average", machine.LoadAvg+" (before the run)", "")
	line("run", fmt.Sprintf("%d API-only nodes, a Deployment of %d replicas, embedded etcd, controllers and scheduler in the server", o.nodes, o.replicas), "")
	line("all pods exist", fmt.Sprintf("%.2f s", existed.Seconds()), "")
	line("all pods bound", fmt.Sprintf("%.2f s", bound.Seconds()), "")
	line("created and bound", fmt.Sprintf("%.0f pods/s", rate), fmt.Sprintf("target ≥ %d  %s", targetPodsPerSecond, passMiss(rate >= targetPodsPerSecond)))
	line("deployment available", fmt.Sprintf("%.2f s", available.Seconds()), "")
	line("rolling update", fmt.Sprintf("%.2f s (%d pods replaced, maxSurge 25%%)", rolled.Seconds(), o.replicas), "")
	line("status writes (agents)", fmt.Sprintf("%d", agents.writes.Load()), "")
	line("server RSS after", megabytes(mem.rss), "")
	line("server CPU", cpu.Round(10*time.Millisecond).String(), "")
	return nil
}

func gib(b int64) string { return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30)) }

// waitUntilBench polls cond every 50 ms until it holds, ctx ends or timeout passes.
func waitUntilBench(ctx context.Context, timeout time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out after %s waiting until %s", timeout, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

// deploymentDone reports whether the bench Deployment has rolled out completely: every
// replica updated and available, and no old pod left.
func deploymentDone(ctx context.Context, kube kubernetes.Interface, replicas int) func() bool {
	return func() bool {
		d, err := kube.AppsV1().Deployments("bench").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false
		}
		s := d.Status
		r := int32(replicas)
		return s.ObservedGeneration >= d.Generation && s.UpdatedReplicas == r && s.Replicas == r && s.AvailableReplicas == r
	}
}

func benchDeployment(replicas int32) *appsv1.Deployment {
	lbls := map[string]string{"app": "web"}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: lbls},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web", "version": "v1"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "web", Image: "berth.local/bench:v1",
					Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
						corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi"),
					}},
				}}},
			},
		},
	}
}

// createBenchNodes creates API-only nodes: Ready, with room for 110 pods each.
func createBenchNodes(ctx context.Context, kube kubernetes.Interface, n int) error {
	return parallel(ctx, n, func(i int) error {
		name := fmt.Sprintf("bench-node-%d", i)
		alloc := corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse("32"), corev1.ResourceMemory: resource.MustParse("128Gi"), corev1.ResourcePods: resource.MustParse("110"),
		}
		node, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: name, Labels: map[string]string{"kubernetes.io/hostname": name},
		}}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create node %s: %w", name, err)
		}
		now := metav1.Now()
		node.Status = corev1.NodeStatus{
			Capacity: alloc, Allocatable: alloc,
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}},
		}
		if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("set status of node %s: %w", name, err)
		}
		return nil
	})
}

// renewBenchLeases keeps the nodes' Leases fresh every 10 s, as their agents would, so the
// node lifecycle controller does not mark them unreachable during a long run.
func renewBenchLeases(ctx context.Context, kube kubernetes.Interface, n int) {
	duration := int32(40)
	for {
		_ = parallel(ctx, n, func(i int) error {
			name := fmt.Sprintf("bench-node-%d", i)
			now := metav1.NewMicroTime(time.Now())
			leases := kube.CoordinationV1().Leases(corev1.NamespaceNodeLease)
			l, err := leases.Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				_, err = leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name},
					Spec: coordinationv1.LeaseSpec{HolderIdentity: &name, LeaseDurationSeconds: &duration, RenewTime: &now}}, metav1.CreateOptions{})
				return err
			}
			l.Spec.RenewTime = &now
			_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
			return err
		})
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Second):
		}
	}
}

// parallel runs f(0..n-1) on 16 workers and returns the first error.
func parallel(ctx context.Context, n int, f func(i int) error) error {
	var mu sync.Mutex
	var first error
	workqueue.ParallelizeUntil(ctx, 16, n, func(i int) {
		if err := f(i); err != nil {
			mu.Lock()
			if first == nil {
				first = err
			}
			mu.Unlock()
		}
	})
	return first
}

// fakeAgents plays the node agents of the API-only nodes: a bound pod is reported Running
// and Ready at once, a terminating one is deleted for good, as an agent confirms it.
type fakeAgents struct {
	kube    kubernetes.Interface
	factory informers.SharedInformerFactory
	pods    cache.SharedIndexInformer
	synced  cache.InformerSynced
	queue   workqueue.TypedInterface[string]
	writes  atomic.Int64
}

func newFakeAgents(kube kubernetes.Interface) *fakeAgents {
	a := &fakeAgents{kube: kube, queue: workqueue.NewTyped[string]()}
	a.factory = informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace("bench"))
	a.pods = a.factory.Core().V1().Pods().Informer()
	enqueue := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			a.queue.Add(key)
		}
	}
	reg, _ := a.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }})
	a.synced = reg.HasSynced
	return a
}

// counts returns how many live pods of a template version exist and how many are bound.
func (a *fakeAgents) counts(version string) (exist, bound int) {
	sel := labels.SelectorFromSet(labels.Set{"version": version})
	for _, obj := range a.pods.GetStore().List() {
		p := obj.(*corev1.Pod)
		if p.DeletionTimestamp != nil || !sel.Matches(labels.Set(p.Labels)) {
			continue
		}
		exist++
		if p.Spec.NodeName != "" {
			bound++
		}
	}
	return exist, bound
}

func (a *fakeAgents) run(ctx context.Context) {
	a.factory.Start(ctx.Done())
	defer a.factory.Shutdown()
	go func() { <-ctx.Done(); a.queue.ShutDown() }()
	var wg sync.WaitGroup
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				key, quit := a.queue.Get()
				if quit {
					return
				}
				a.sync(ctx, key)
				a.queue.Done(key)
			}
		}()
	}
	wg.Wait()
}

func (a *fakeAgents) sync(ctx context.Context, key string) {
	obj, exists, err := a.pods.GetStore().GetByKey(key)
	if err != nil || !exists {
		return
	}
	p := obj.(*corev1.Pod)
	switch {
	case p.Spec.NodeName == "":
	case p.DeletionTimestamp != nil:
		zero := int64(0)
		_ = a.kube.CoreV1().Pods(p.Namespace).Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &p.UID}})
	case p.Status.Phase != corev1.PodRunning:
		now := metav1.Now()
		p = p.DeepCopy()
		p.Status.Phase = corev1.PodRunning
		p.Status.StartTime = &now
		p.Status.Conditions = append(p.Status.Conditions,
			corev1.PodCondition{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
			corev1.PodCondition{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			corev1.PodCondition{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now})
		if _, err := a.kube.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err == nil {
			a.writes.Add(1)
		} else if ctx.Err() == nil && !strings.Contains(err.Error(), "not found") {
			a.queue.Add(key) // a conflict: try again with the newer copy
		}
	}
}
