package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"berth.dev/berth/core/apiserver"
)

// benchNamespace holds the benchmark's ConfigMaps; the server's data dir is fresh, so
// nothing else is in it.
const benchNamespace = "bench"

// apiBenchOptions are the flags of `berth bench api`.
type apiBenchOptions struct {
	creates      int
	workers      int
	keepDir      bool
	serverBinary string
	jsonOutput   bool
	cpuProfile   string
	startTimeout time.Duration
	watchTimeout time.Duration
	// controllers runs the controllers in the benchmarked server too; off by default, since
	// the targets (and kube-apiserver's figures they are set against) are the API server's.
	controllers bool
}

func newBenchCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure berth's performance (figures to record in docs/benchmarks.md)",
		Args:  cobra.NoArgs,
		PersistentPreRun: func(*cobra.Command, []string) {
			// The bench's own client-go logs only the watches it cancels on the way out.
			klog.SetSlogLogger(slog.New(slog.DiscardHandler))
		},
	}
	cmd.AddCommand(newBenchAPICommand(), newBenchWorkloadsCommand(), newBenchSchedulerCommand(), newBenchNodesCommand(), newBenchProxyCommand())
	cmd.AddCommand(newBenchStartupCommand())
	cmd.AddCommand(newBenchDNSCommand(), newBenchStorageCommand())
	return cmd
}

func newBenchAPICommand() *cobra.Command {
	var o apiBenchOptions
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Create ConfigMaps from concurrent client-go workers against a fresh server; print throughput, latency, watch lag and RSS",
		Long: `Start a berth server with embedded etcd on a temporary data dir as a child process, watch
ConfigMaps in namespace "bench", create --creates ConfigMaps from --workers client-go
workers as fast as the server takes them, and print creates/s, create latency, watch
delivery lag (ADDED received minus create returned) and the server's memory, each
against berth's target. A missed target is a figure, not a failure: the exit status is
non-zero only when the run itself failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.creates < 1 || o.workers < 1 {
				return fmt.Errorf("--creates and --workers must be at least 1")
			}
			if o.serverBinary == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find the berth binary to start the server from (use --server-binary): %w", err)
				}
				o.serverBinary = exe
			}
			if o.cpuProfile != "" {
				f, err := os.Create(o.cpuProfile)
				if err != nil {
					return fmt.Errorf("create CPU profile: %w", err)
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return fmt.Errorf("start CPU profile: %w", err)
				}
				defer pprof.StopCPUProfile()
			}
			res, err := runAPIBench(cmd.Context(), o, cmd.ErrOrStderr())
			if err != nil {
				return fmt.Errorf("bench api: %w", err)
			}
			if o.jsonOutput {
				return writeAPIBenchJSON(cmd.OutOrStdout(), res)
			}
			writeAPIBenchText(cmd.OutOrStdout(), res)
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.creates, "creates", 10000, "how many ConfigMaps to create")
	f.IntVar(&o.workers, "workers", 16, "how many concurrent client-go workers create them")
	f.BoolVar(&o.keepDir, "keep-dir", false, "keep the server's temporary data dir (etcd data, server.log) and print where it is")
	f.BoolVar(&o.controllers, "controllers", false, "run the controllers and the scheduler in the benchmarked server as well (they then mirror every ConfigMap in their informers)")
	f.StringVar(&o.serverBinary, "server-binary", "", "berth binary whose server command is started (default: this binary)")
	f.BoolVar(&o.jsonOutput, "json", false, "print the figures as JSON instead of text")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this (client) process to FILE; the server is a separate process")
	f.DurationVar(&o.startTimeout, "start-timeout", time.Minute, "how long to wait for the server to become ready")
	f.DurationVar(&o.watchTimeout, "watch-timeout", time.Minute, "how long to wait, after the last create, for the remaining watch events")
	return cmd
}

// apiBenchResult is everything one run measured; its JSON form is the --json output.
type apiBenchResult struct {
	Machine       machineInfo   `json:"machine"`
	GoVersion     string        `json:"goVersion"`
	BerthVersion  string        `json:"berthVersion"`
	ServerVersion string        `json:"serverVersion"`
	Creates       int           `json:"creates"`
	Workers       int           `json:"workers"`
	Controllers   bool          `json:"controllers"` // the server ran its controllers too
	Elapsed       time.Duration `json:"elapsedNs"`
	CreatesPerSec float64       `json:"createsPerSecond"`
	Latency       quantiles     `json:"createLatencyNs"`
	WatchLag      quantiles     `json:"watchLagNs"`
	// EarlyEvents counts ADDED events received before their create call returned; their
	// lag is counted as 0.
	EarlyEvents int `json:"earlyEvents"`
	// Server memory in bytes: VmRSS before the first create and after the last event,
	// and VmHWM (the peak) after.
	ServerRSSIdle  int64 `json:"serverRSSIdleBytes"`
	ServerRSSAfter int64 `json:"serverRSSAfterBytes"`
	ServerRSSPeak  int64 `json:"serverRSSPeakBytes"`
	// ServerRSSAfter split: anonymous memory and file-backed pages.
	ServerRSSAnon int64 `json:"serverRSSAnonBytes"`
	ServerRSSFile int64 `json:"serverRSSFileBytes"`
	// CPU time used from the first create to the last event, by the server (etcd
	// included, as it is embedded) and by this client process.
	ServerCPU time.Duration `json:"serverCPUNs"`
	ClientCPU time.Duration `json:"clientCPUNs"`
	// EtcdDirBytes is the disk space under the data dir's etcd/, EtcdWALBytes the WAL's
	// part of it, EtcdDBBytes the size of the bbolt database file.
	EtcdDirBytes int64 `json:"etcdDirBytes"`
	EtcdWALBytes int64 `json:"etcdWALBytes"`
	EtcdDBBytes  int64 `json:"etcdDBBytes"`
	// DataDir is the kept data dir (--keep-dir).
	DataDir string   `json:"dataDir,omitempty"`
	Targets []target `json:"targets"`
}

// runAPIBench does one run; progress goes to logw, figures are returned.
func runAPIBench(ctx context.Context, o apiBenchOptions, logw io.Writer) (res *apiBenchResult, err error) {
	dir, err := os.MkdirTemp("", "berth-bench-")
	if err != nil {
		return nil, fmt.Errorf("create temp data dir: %w", err)
	}
	defer func() {
		if o.keepDir {
			fmt.Fprintf(logw, "kept the data dir %s (server log: %s)\n", dir, filepath.Join(dir, "server.log"))
			return
		}
		if rerr := os.RemoveAll(dir); rerr != nil && err == nil {
			err = fmt.Errorf("remove temp data dir: %w", rerr)
		}
	}()

	machine := readMachineInfo() // before the server adds to the load average
	// The scheduler stays off too: it is idle here, but its pod and node caches would count
	// in the API server's figures.
	extra := []string{fmt.Sprintf("--controllers=%t", o.controllers), fmt.Sprintf("--scheduler=%t", o.controllers)}
	fmt.Fprintf(logw, "starting %s server --data-dir %s --port 0 %s\n", o.serverBinary, dir, strings.Join(extra, " "))
	srv, err := startBenchServer(ctx, o.serverBinary, dir, extra, o.startTimeout)
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := srv.stop(30 * time.Second); serr != nil && err == nil {
			err = serr
		}
		if err != nil {
			fmt.Fprintf(logw, "the end of the server log:\n%s", srv.logTail(20))
		}
	}()

	res, err = measureCreates(ctx, srv, o, logw)
	if err != nil {
		return nil, err
	}
	res.Machine = machine
	if o.keepDir {
		res.DataDir = dir
	}
	res.EtcdDirBytes, res.EtcdWALBytes, res.EtcdDBBytes, err = etcdDirSize(filepath.Join(dir, "etcd"))
	if err != nil {
		return nil, err
	}
	res.Targets = evaluateTargets(res)
	return res, nil
}

// measureCreates runs the workers and the watch against a ready server.
func measureCreates(ctx context.Context, srv *benchServer, o apiBenchOptions, logw io.Writer) (*apiBenchResult, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	client, err := kubernetes.NewForConfig(srv.restConfig)
	if err != nil {
		return nil, fmt.Errorf("build client: %w", err)
	}
	res := &apiBenchResult{
		GoVersion:    runtime.Version(),
		BerthVersion: apiserver.BerthVersion,
		Creates:      o.creates,
		Workers:      o.workers,
		Controllers:  o.controllers,
	}
	if v, err := client.Discovery().ServerVersion(); err == nil {
		res.ServerVersion = v.GitVersion
	} else {
		return nil, fmt.Errorf("read server version: %w", err)
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace}}
	if _, err := client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return nil, fmt.Errorf("create namespace %s: %w", benchNamespace, err)
	}
	list, err := client.CoreV1().ConfigMaps(benchNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list configmaps in %s: %w", benchNamespace, err)
	}
	if len(list.Items) != 0 {
		return nil, fmt.Errorf("namespace %s already has %d configmaps; the bench needs it empty", benchNamespace, len(list.Items))
	}

	// Index i belongs to bench-i: the worker that creates it writes createdAt[i] and
	// latency[i], the watcher writes receivedAt[i]; both are read after wg.Wait and
	// <-w.done, so no lock is needed.
	n := o.creates
	createdAt := make([]time.Time, n)
	latency := make([]time.Duration, n)
	w := &benchWatcher{client: client, receivedAt: make([]time.Time, n), done: make(chan struct{})}
	watchErr := make(chan error, 1)
	if err := w.start(ctx, list.ResourceVersion); err != nil {
		return nil, err
	}
	go func() { watchErr <- w.run(ctx) }()

	idle, err := readProcMemory(srv.pid())
	if err != nil {
		return nil, err
	}
	res.ServerRSSIdle = idle.rss
	serverCPU0, err := readProcCPU(srv.pid())
	if err != nil {
		return nil, err
	}
	clientCPU0 := selfCPU()

	fmt.Fprintf(logw, "creating %d configmaps from %d workers\n", n, o.workers)
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		failOnce sync.Once
		failErr  error
	)
	start := time.Now()
	for range o.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				cm := benchConfigMap(i)
				t0 := time.Now()
				_, err := client.CoreV1().ConfigMaps(benchNamespace).Create(ctx, cm, metav1.CreateOptions{})
				t1 := time.Now()
				if err != nil {
					failOnce.Do(func() {
						failErr = fmt.Errorf("create configmap %s/%s: %w", benchNamespace, cm.Name, err)
						cancel()
					})
					return
				}
				latency[i] = t1.Sub(t0)
				createdAt[i] = t1
			}
		}()
	}
	wg.Wait()
	end := time.Now()
	if failErr != nil {
		return nil, failErr
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("creates interrupted: %w", err)
	}

	timer := time.NewTimer(o.watchTimeout)
	defer timer.Stop()
	select {
	case <-w.done:
	case err := <-watchErr:
		// run returns nil only after closing w.done.
		if err != nil {
			return nil, fmt.Errorf("watch failed with %d of %d ADDED events missing: %w", n-int(w.seen.Load()), n, err)
		}
	case <-timer.C:
		cancel()
		return nil, fmt.Errorf("watch: %d of %d ADDED events missing %s after the last create", n-int(w.seen.Load()), n, o.watchTimeout)
	case <-ctx.Done():
		return nil, fmt.Errorf("interrupted while waiting for watch events: %w", ctx.Err())
	}
	cancel()

	after, err := readProcMemory(srv.pid())
	if err != nil {
		return nil, err
	}
	res.ServerRSSAfter, res.ServerRSSPeak = after.rss, after.hwm
	res.ServerRSSAnon, res.ServerRSSFile = after.anon, after.file
	serverCPU1, err := readProcCPU(srv.pid())
	if err != nil {
		return nil, err
	}
	res.ServerCPU = serverCPU1 - serverCPU0
	res.ClientCPU = selfCPU() - clientCPU0

	res.Elapsed = end.Sub(start)
	res.CreatesPerSec = float64(n) / res.Elapsed.Seconds()
	res.Latency = quantilesOf(latency)
	lags := make([]time.Duration, n)
	for i := range n {
		lag := w.receivedAt[i].Sub(createdAt[i])
		if lag < 0 {
			res.EarlyEvents++
			lag = 0
		}
		lags[i] = lag
	}
	res.WatchLag = quantilesOf(lags)
	return res, nil
}

// benchConfigMap is the small object every create sends: a few keys, under 200 bytes of data.
func benchConfigMap(i int) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name:   "bench-" + strconv.Itoa(i),
			Labels: map[string]string{"app": "berth-bench"},
		},
		Data: map[string]string{
			"index":   strconv.Itoa(i),
			"color":   "blue",
			"payload": "the quick brown fox jumps over the lazy dog",
		},
	}
}

// benchWatcher records when each bench-N's ADDED event arrives.
type benchWatcher struct {
	client     kubernetes.Interface
	receivedAt []time.Time
	seen       atomic.Int64
	done       chan struct{} // closed when every object's ADDED event has arrived
	w          watch.Interface
	lastRV     string
}

// start opens the watch before any create, so no event can be missed.
func (b *benchWatcher) start(ctx context.Context, rv string) error {
	w, err := b.client.CoreV1().ConfigMaps(benchNamespace).Watch(ctx, metav1.ListOptions{ResourceVersion: rv})
	if err != nil {
		return fmt.Errorf("watch configmaps in %s from resourceVersion %s: %w", benchNamespace, rv, err)
	}
	b.w, b.lastRV = w, rv
	return nil
}

// run reads events until every ADDED has arrived or ctx ends; a watch the server closes
// is reopened from the last resourceVersion seen.
func (b *benchWatcher) run(ctx context.Context) error {
	defer func() { b.w.Stop() }()
	n := int64(len(b.receivedAt))
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-b.w.ResultChan():
			if !ok {
				b.w.Stop()
				if err := b.start(ctx, b.lastRV); err != nil {
					return fmt.Errorf("reopen: %w", err)
				}
				continue
			}
			now := time.Now()
			switch ev.Type {
			case watch.Error:
				return fmt.Errorf("error event: %v", apierrors.FromObject(ev.Object))
			case watch.Added, watch.Modified, watch.Deleted, watch.Bookmark:
			default:
				return fmt.Errorf("unexpected event type %q", ev.Type)
			}
			cm, isCM := ev.Object.(*corev1.ConfigMap)
			if !isCM {
				return fmt.Errorf("%s event carries %T, not a ConfigMap", ev.Type, ev.Object)
			}
			b.lastRV = cm.ResourceVersion
			if ev.Type != watch.Added {
				continue
			}
			i, ok := benchIndex(cm.Name, len(b.receivedAt))
			if !ok || !b.receivedAt[i].IsZero() {
				continue
			}
			b.receivedAt[i] = now
			if b.seen.Add(1) == n {
				close(b.done)
				return nil
			}
		}
	}
}

// benchIndex returns N for a name bench-N with 0 ≤ N < n.
func benchIndex(name string, n int) (int, bool) {
	s, ok := strings.CutPrefix(name, "bench-")
	if !ok {
		return 0, false
	}
	i, err := strconv.Atoi(s)
	if err != nil || i < 0 || i >= n {
		return 0, false
	}
	return i, true
}

// selfCPU returns the user plus system CPU time this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// etcdDirSize returns the disk space used under dir, of it the WAL's (etcd preallocates
// 64 MB segments, and a spare one while it runs), and the size of the bbolt database.
// Disk space is allocated blocks, not apparent sizes: the db file is sparse.
func etcdDirSize(dir string) (total, wal, db int64, err error) {
	err = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		used := info.Size()
		if st, ok := info.Sys().(*syscall.Stat_t); ok {
			used = st.Blocks * 512
		}
		total += used
		switch parent := filepath.Base(filepath.Dir(path)); {
		case d.IsDir():
		case parent == "wal":
			wal += used
		case parent == "snap" && d.Name() == "db":
			db = info.Size()
		}
		return nil
	})
	if err != nil {
		return 0, 0, 0, fmt.Errorf("measure etcd data dir %s: %w", dir, err)
	}
	return total, wal, db, nil
}

func writeAPIBenchJSON(w io.Writer, res *apiBenchResult) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(res); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}
