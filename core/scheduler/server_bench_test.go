package scheduler_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/apiserver"
	"berth.dev/berth/core/scheduler"
	"berth.dev/berth/core/scheduler/config"
	"berth.dev/berth/core/scheduler/external"
	"berth.dev/berth/core/scheduler/framework"
)

// BenchmarkSchedulerAgainstServer is `berth bench scheduler` in one process, for profiling
// the whole path (pod create, watch, scheduling cycle, bind, event) with the Go tools:
// 5,000 API-only nodes, then 10,000 pods created from 16 workers while the scheduler binds
// them. The API server, etcd, the scheduler and the client share the process, so the
// figures are a little below the bench's. Run:
//
//	BERTH_BENCH_CPUPROFILE=/tmp/cpu.out go test -run '^$' -bench SchedulerAgainstServer -benchtime 1x ./core/scheduler/
//
// BERTH_BENCH_CPUPROFILE names a file for a CPU profile of the pods' phase alone.
//
// The cost-aware sub-benchmark schedules with plugins/examples/cost's profile (the cost
// plugin built from cmd/berth-scheduler-cost into a temp dir, out of process) with four
// nodes in five labelled example.berth.dev/cost.
func BenchmarkSchedulerAgainstServer(b *testing.B) {
	const nodes, pods = 5000, 10000
	b.Run("default", func(b *testing.B) {
		for range b.N {
			benchAgainstServer(b, nodes, pods, "")
		}
	})
	b.Run("cost-aware", func(b *testing.B) {
		for range b.N {
			benchAgainstServer(b, nodes, pods, "cost-aware")
		}
	})
}

// costAwareOptions loads plugins/examples/cost/scheduler-config.yaml with the plugin built
// into a temp dir, and wires its out-of-process plugins as the server does.
func costAwareOptions(b *testing.B) scheduler.Options {
	dir := b.TempDir()
	bin := filepath.Join(dir, "berth-scheduler-cost")
	if out, err := exec.Command("go", "build", "-o", bin, "berth.dev/berth/cmd/berth-scheduler-cost").CombinedOutput(); err != nil {
		b.Fatalf("build the cost plugin: %v\n%s", err, out)
	}
	data, err := os.ReadFile("../../plugins/examples/cost/scheduler-config.yaml")
	if err != nil {
		b.Fatal(err)
	}
	cfg, err := config.Parse(filepath.Join(dir, "scheduler-config.yaml"), []byte(strings.ReplaceAll(string(data), "../../../bin/berth-scheduler-cost", bin)))
	if err != nil {
		b.Fatal(err)
	}
	ext := external.NewFactory(external.Options{Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	b.Cleanup(func() { _ = ext.Close() })
	return scheduler.Options{
		Config: cfg,
		ExternalPlugins: func(e config.ExternalPlugin) (framework.Plugin, error) {
			args, err := e.ArgsJSON()
			if err != nil {
				return nil, err
			}
			return ext.New(e.Name, e.Path, args, e.Timeout)
		},
		ExternalHooks: func(nodes func() []*framework.NodeInfo, retry func(plugin string)) {
			ext.SetNodeLister(nodes)
			ext.SetOnAvailable(retry)
		},
	}
}

func benchAgainstServer(b *testing.B, nodes, pods int, profile string) {
	b.StopTimer()
	kube, cfg := startBenchCluster(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	workqueue.ParallelizeUntil(ctx, 16, nodes, func(i int) {
		name := fmt.Sprintf("node-%d", i)
		labels := map[string]string{corev1.LabelHostname: name}
		if profile != "" && i%5 != 4 {
			labels["example.berth.dev/cost"] = fmt.Sprint(i%7 + 1)
		}
		n, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: name, Labels: labels,
		}}, metav1.CreateOptions{})
		if err != nil {
			b.Error(err)
			return
		}
		res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("32"), corev1.ResourceMemory: resource.MustParse("128Gi"), corev1.ResourcePods: resource.MustParse("110")}
		now := metav1.Now()
		n.Status.Capacity, n.Status.Allocatable = res, res
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}}
		if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
			b.Error(err)
		}
	})
	if b.Failed() {
		return
	}
	ns := "bench"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	// The scheduler starts once the nodes exist, as the bench's server has them all
	// before the first pod.
	schedDone := make(chan error, 1)
	schedCtx, stopSched := context.WithCancel(ctx)
	// The scheduler gets the server's kubeconfig as is: Run's own client rate applies.
	schedCfg := rest.CopyConfig(cfg)
	schedCfg.QPS, schedCfg.Burst = 0, 0
	opts := scheduler.Options{}
	if profile != "" {
		opts = costAwareOptions(b)
	}
	opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() { schedDone <- scheduler.Run(schedCtx, schedCfg, opts) }()
	defer func() {
		stopSched()
		if err := <-schedDone; err != nil {
			b.Errorf("scheduler.Run: %v", err)
		}
	}()

	var bound atomic.Int64
	seen := sync.Map{}
	factory := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(ns))
	inf := factory.Core().V1().Pods().Informer()
	onPod := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
			if _, dup := seen.LoadOrStore(p.Name, true); !dup {
				bound.Add(1)
			}
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: onPod, UpdateFunc: func(_, o any) { onPod(o) }}); err != nil {
		b.Fatal(err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	defer cancel()
	cache.WaitForCacheSync(ctx.Done(), inf.HasSynced)
	time.Sleep(time.Second) // the scheduler's informers sync

	if path := os.Getenv("BERTH_BENCH_CPUPROFILE"); path != "" {
		// A profile of the pods' phase only, without the nodes' creation.
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	b.StartTimer()
	start := time.Now()
	go workqueue.ParallelizeUntil(ctx, 16, pods, func(i int) {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("pod-%d", i), Labels: map[string]string{"app": "bench"}},
			Spec: corev1.PodSpec{SchedulerName: profile, Containers: []corev1.Container{{Name: "c", Image: "berth.local/bench:v1",
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi"),
				}}}}},
		}
		if _, err := kube.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil && ctx.Err() == nil {
			b.Error(err)
		}
	})
	deadline := time.Now().Add(5 * time.Minute)
	for bound.Load() < int64(pods) {
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d pods bound after 5 minutes", bound.Load(), pods)
		}
		time.Sleep(10 * time.Millisecond)
	}
	b.ReportMetric(float64(pods)/time.Since(start).Seconds(), "pods/s")
	b.StopTimer()
	if evs, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{}); err == nil {
		b.Logf("%d events in %s", len(evs.Items), ns)
	}
}

// startBenchCluster starts the API server alone, with a client that is never throttled.
func startBenchCluster(b *testing.B) (kubernetes.Interface, *rest.Config) {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := apiserver.Start(ctx, apiserver.Config{DataDir: b.TempDir(), Port: 0, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		cancel()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cancel()
		_ = srv.Wait()
	})
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 100000, 100000
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return kube, cfg
}
