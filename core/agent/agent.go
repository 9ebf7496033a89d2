// Package agent is berth's node agent, its kubelet: it registers the node, renews the
// node's Lease, and runs the pods bound to the node on a container runtime through CRI
// (k8s.io/cri-api v1), reporting their status as the kubelet does.
//
// The agent is level-based: a pod's worker reads the pod from the API and the pod's
// sandboxes and containers from the runtime (found by the kubelet's CRI labels), makes the
// runtime match the pod and writes the status. A relist of the runtime every second (the
// kubelet's PLEG) wakes the worker of a pod whose containers changed; since the runtime
// is the record, a restarted agent adopts the pods it finds instead of starting them again.
// Probes run in goroutines of their own (prober.go), one per probe per container; a
// changed result wakes the pod's worker, which writes readiness into the status and kills
// a container that failed its liveness or startup probe.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/clock"

	"berth.dev/berth/core/agent/csi"
	"berth.dev/berth/core/dns"
	"berth.dev/berth/core/kubeclient"
)

// KubeletVersion is the Kubernetes version the agent reports in the Node's nodeInfo: the
// version of the API it implements.
const KubeletVersion = "v1.33.13"

// Config is what an agent needs.
type Config struct {
	// Kube is a client of the API server with the node's rights.
	Kube kubeclient.Interface
	// NodeName is the Node the agent registers and whose pods it runs.
	NodeName string
	// RuntimeEndpoint is the CRI socket, unix:///path.
	RuntimeEndpoint string
	// DataDir holds the pods' log files (DataDir/pods/NS_NAME_UID/).
	DataDir string
	// PodCIDR is reported as the Node's spec.podCIDR when not empty.
	PodCIDR string
	// NodeIP is the node's InternalIP; the address of the default route's interface when empty.
	NodeIP string
	// Log receives the agent's log (slog.Default when nil).
	Log *slog.Logger
	// Workers is how many pods are synced at once (4 when zero).
	Workers int
	// RelistPeriod is how often the runtime is listed for changes (1 s when zero).
	RelistPeriod time.Duration
	// ClientCA is the PEM of the CA whose client certificates may use the agent's
	// streaming server (logs, exec, attach, port-forward): the cluster CA, from the
	// kubeconfig. Without it the agent serves no streams and publishes no port.
	ClientCA []byte
	// StreamingAddr is where the streaming server listens (DefaultStreamingAddr when
	// empty); its port goes into the Node's status.daemonEndpoints.kubeletEndpoint.
	StreamingAddr string
	// LeaseRenewInterval is how often the node's Lease is renewed (10 s when zero), and
	// StatusInterval how often the Node's status is posted (10 s when zero).
	LeaseRenewInterval, StatusInterval time.Duration
	// ClusterDNS are the nameservers of pods with dnsPolicy ClusterFirst (the kube-dns
	// Service's ClusterIP). When set, the agent also runs the cluster DNS server (core/dns)
	// on DNSListen, unless NoDNSServer; when empty, ClusterFirst pods get the host's
	// resolv.conf, as with a kubelet without --cluster-dns.
	ClusterDNS []string
	// ClusterDomain is the cluster's DNS domain (cluster.local when empty).
	ClusterDomain string
	// ResolvConf is the host's resolver file: what dnsPolicy Default pods get and where
	// the DNS server forwards other names (/etc/resolv.conf when empty).
	ResolvConf string
	// DNSListen are the host:port addresses of the DNS server (dns.DefaultListen of the
	// node IP and PodCIDR when empty); the first is published in the kube-dns Service.
	DNSListen []string
	// NoDNSServer keeps the DNS server off while pods still use ClusterDNS.
	NoDNSServer bool
	// CSIPluginsDir is where CSI drivers' sockets are discovered
	// (DataDir/plugins_registry when empty; see core/agent/csi).
	CSIPluginsDir string
}

// Agent runs the pods of one node. Make it with New, then Run it.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	conn    *grpc.ClientConn
	runtime runtimeapi.RuntimeServiceClient
	images  runtimeapi.ImageServiceClient
	now     func() time.Time

	// Filled in by Run.
	runtimeName, runtimeVersion string
	hostIP                      string
	queue                       workqueue.TypedRateLimitingInterface[string]
	pods                        corelisters.PodLister
	// services lists every Service, for the service environment variables.
	services corelisters.ServiceLister
	// dns is what pods' resolv.conf is made from.
	dns      dnsSettings
	recorder record.EventRecorder

	crashBackoff, pullBackoff *backoff
	// probes runs the containers' liveness, readiness and startup probes.
	probes *prober
	// hooks runs the containers' postStart and preStop hooks.
	hooks *hookRunner

	// streams is the streaming server; nil without a ClientCA.
	streams *streamServer

	// lastNodeReport is when the Node's status was last written (postStatus only).
	lastNodeReport time.Time

	mu          sync.Mutex
	states      map[types.UID]*podState
	terminating map[types.UID]bool
	// killers are the goroutines that stop pods; Run waits for them.
	killers sync.WaitGroup

	// volumes caches the objects pods' volumes project and backs off failed mounts
	// (volumes.go); its zero value is ready.
	volumes volumeManager
	// csi sets up CSI volumes and registers CSI drivers (csivolumes.go); made by Run.
	csi *csi.Manager
}

// podState is what the agent knows of a pod that the runtime does not record.
type podState struct {
	waiting map[string]waitingState // by container name
	// dnsWarned: the pod's DNS warnings were recorded once (podDNS); not at every sync.
	dnsWarned bool
}

// New checks cfg and connects (lazily) to the runtime.
func New(cfg Config) (*Agent, error) {
	if cfg.Kube == nil {
		return nil, errors.New("agent: no API client")
	}
	if cfg.NodeName == "" {
		return nil, errors.New("agent: no node name")
	}
	if cfg.DataDir == "" {
		return nil, errors.New("agent: no data dir")
	}
	if !strings.HasPrefix(cfg.RuntimeEndpoint, "unix://") {
		return nil, fmt.Errorf("agent: runtime endpoint %q is not unix:///path", cfg.RuntimeEndpoint)
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.RelistPeriod <= 0 {
		cfg.RelistPeriod = time.Second
	}
	if cfg.LeaseRenewInterval <= 0 {
		cfg.LeaseRenewInterval = 10 * time.Second
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = 10 * time.Second
	}
	if cfg.StreamingAddr == "" {
		cfg.StreamingAddr = DefaultStreamingAddr
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = dns.DefaultDomain
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("agent data dir: %w", err)
	}
	cfg.DataDir = dataDir
	conn, err := grpc.NewClient(cfg.RuntimeEndpoint,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(16<<20)))
	if err != nil {
		return nil, fmt.Errorf("agent: runtime client for %s: %w", cfg.RuntimeEndpoint, err)
	}
	return &Agent{
		cfg:          cfg,
		log:          cfg.Log,
		conn:         conn,
		runtime:      runtimeapi.NewRuntimeServiceClient(conn),
		images:       runtimeapi.NewImageServiceClient(conn),
		hooks:        newHookRunner(runtimeapi.NewRuntimeServiceClient(conn)),
		now:          time.Now,
		crashBackoff: newBackoff(backoffInitial, backoffMax),
		pullBackoff:  newBackoff(backoffInitial, backoffMax),
		states:       map[types.UID]*podState{},
		terminating:  map[types.UID]bool{},
	}, nil
}

// Run registers the node and runs its pods until ctx ends. It returns an error only when
// it cannot start (no runtime answers, the Node cannot be registered); errors of single
// pods are reported on the pods and retried.
func (a *Agent) Run(ctx context.Context) error {
	defer a.conn.Close()
	if err := os.MkdirAll(filepath.Join(a.cfg.DataDir, "pods"), 0o755); err != nil {
		return fmt.Errorf("agent data dir: %w", err)
	}
	if err := a.waitRuntime(ctx); err != nil {
		return err
	}
	a.hostIP = a.cfg.NodeIP
	if a.hostIP == "" {
		a.hostIP = detectNodeIP()
	}
	if len(a.cfg.ClientCA) > 0 {
		// Bound before the Node is registered, so its status carries the port.
		streams, err := a.listenStreaming()
		if err != nil {
			return err
		}
		a.streams = streams
		defer streams.close()
	} else {
		a.log.Warn("no client CA: the agent serves no logs, exec, attach or port-forward")
	}
	if err := a.registerNode(ctx); err != nil {
		return err
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: a.cfg.Kube.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	a.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: a.cfg.NodeName})

	a.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.DefaultTypedControllerRateLimiter[string](),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: "pods"})
	factory := kubeclient.NewInformers(a.cfg.Kube, time.Minute, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", a.cfg.NodeName).String()
	})
	podInformer := factory.Pods()
	a.pods = corelisters.NewPodLister(podInformer.GetIndexer())
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			a.queue.Add(key)
		}
	}
	if _, err := podInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}

	// Services, and for the DNS server EndpointSlices and Namespaces, of the whole cluster.
	cluster := kubeclient.NewInformers(a.cfg.Kube, 0, nil)
	svcInformer := cluster.Services()
	a.services = corelisters.NewServiceLister(svcInformer.GetIndexer())
	a.dns = dnsSettings{clusterDNS: a.cfg.ClusterDNS, domain: a.cfg.ClusterDomain}
	var err error
	if a.dns.host, err = readResolvConf(a.cfg.ResolvConf); err != nil {
		a.log.Warn("pods with dnsPolicy Default get an empty resolv.conf", "err", err)
	}
	var runDNS func(context.Context) error
	if len(a.cfg.ClusterDNS) > 0 && !a.cfg.NoDNSServer {
		listen := a.cfg.DNSListen
		if len(listen) == 0 {
			listen = dns.DefaultListen(a.hostIP, a.cfg.PodCIDR)
		}
		runDNS, err = dns.StartNode(dns.NodeConfig{
			Kube: a.cfg.Kube, NodeName: a.cfg.NodeName, Domain: a.cfg.ClusterDomain, ResolvConf: a.cfg.ResolvConf,
			Listen: listen, Log: a.log.With("component", "dns"),
		}, cluster)
		if err != nil {
			// The node still runs pods; it just answers no DNS (port 53 taken, say).
			a.log.Error("cluster DNS server not started: this node answers no DNS queries", "listen", listen, "err", err)
		}
	}

	// CSI: the drivers' discovery and the node's record of their volumes, read before any
	// pod's worker runs so that adopted pods find their volumes set up.
	a.csi, err = csi.New(csi.Config{
		Kube: a.cfg.Kube, NodeName: a.cfg.NodeName, DataDir: a.cfg.DataDir, PluginsDir: a.cfg.CSIPluginsDir,
		Recorder: a.recorder, Log: a.log.With("component", "csi"),
		// Pods waiting for a driver try again at once.
		DriverRegistered: func(string) {
			pods, _ := a.pods.List(labels.Everything())
			for _, p := range pods {
				a.queue.Add(p.Namespace + "/" + p.Name)
			}
		},
	})
	if err != nil {
		return err
	}

	handlers := newProbeHandlers(a.runtime)
	a.probes = newProber(ctx, proberConfig{
		clock: clock.RealClock{},
		run:   handlers.run,
		event: func(pod *corev1.Pod, c *corev1.Container, eventType, reason, message string) {
			a.recorder.Event(containerRef(pod, c), eventType, reason, message)
		},
		wake: a.queue.Add,
	})

	g, gctx := errgroup.WithContext(ctx)
	factory.Start(gctx.Done())
	defer factory.Shutdown()
	cluster.Start(gctx.Done())
	defer cluster.Shutdown()
	// Services are synced before any container is made, so that its environment has them.
	if !cache.WaitForCacheSync(gctx.Done(), podInformer.HasSynced, svcInformer.HasSynced) {
		a.queue.ShutDown()
		if runDNS != nil {
			_ = runDNS(gctx) // gctx has ended: this closes the DNS server's sockets
		}
		return fmt.Errorf("informers did not sync: %w", context.Cause(gctx))
	}
	a.log.Info("agent running", "node", a.cfg.NodeName, "runtime", a.runtimeName+" "+a.runtimeVersion, "nodeIP", a.hostIP)

	g.Go(func() error { a.renewLease(gctx); return nil })
	g.Go(func() error { a.postStatus(gctx); return nil })
	g.Go(func() error { a.relist(gctx); return nil })
	g.Go(func() error {
		// Without CSI the node still runs pods that use no CSI volume.
		if err := a.csi.Run(gctx); err != nil {
			a.log.Error("CSI plugin manager stopped: no CSI driver is registered on this node", "err", err)
		}
		return nil
	})
	if a.streams != nil {
		g.Go(func() error { return a.streams.serve(gctx) })
	}
	if runDNS != nil {
		g.Go(func() error { return runDNS(gctx) })
	}
	g.Go(func() error {
		<-gctx.Done()
		a.queue.ShutDown()
		return nil
	})
	for range a.cfg.Workers {
		g.Go(func() error {
			for a.processNext(gctx) {
			}
			return nil
		})
	}
	err = g.Wait()
	a.probes.stop()
	a.killers.Wait()
	return err
}

// waitRuntime waits until the runtime answers Version, as the kubelet does at start.
func (a *Agent) waitRuntime(ctx context.Context) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		v, err := a.runtime.Version(cctx, &runtimeapi.VersionRequest{})
		cancel()
		if err == nil {
			a.runtimeName, a.runtimeVersion = v.RuntimeName, v.RuntimeVersion
			return nil
		}
		a.log.Info("waiting for the container runtime", "endpoint", a.cfg.RuntimeEndpoint, "err", err)
		select {
		case <-ctx.Done():
			return fmt.Errorf("container runtime at %s: %w", a.cfg.RuntimeEndpoint, err)
		case <-tick.C:
		}
	}
}

func (a *Agent) processNext(ctx context.Context) bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	after, err := a.syncPod(ctx, key)
	switch {
	case err != nil && ctx.Err() == nil:
		a.log.Error("sync pod", "pod", key, "err", err)
		a.queue.AddRateLimited(key)
	case after > 0:
		a.queue.Forget(key)
		a.queue.AddAfter(key, after)
	default:
		a.queue.Forget(key)
	}
	return true
}

func (a *Agent) state(uid types.UID) *podState {
	a.mu.Lock()
	defer a.mu.Unlock()
	s, ok := a.states[uid]
	if !ok {
		s = &podState{waiting: map[string]waitingState{}}
		a.states[uid] = s
	}
	return s
}

// waitingCopy is a snapshot of the pod's waiting reasons for the status.
func (a *Agent) waitingCopy(uid types.UID) map[string]waitingState {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[string]waitingState{}
	if s, ok := a.states[uid]; ok {
		for k, v := range s.waiting {
			out[k] = v
		}
	}
	return out
}

func (a *Agent) setWaiting(uid types.UID, container string, w *waitingState) {
	s := a.state(uid)
	a.mu.Lock()
	defer a.mu.Unlock()
	if w == nil {
		delete(s.waiting, container)
	} else {
		s.waiting[container] = *w
	}
}

// forget drops what the agent holds of a pod that is gone.
func (a *Agent) forget(uid types.UID, containers []string) {
	a.mu.Lock()
	delete(a.states, uid)
	a.mu.Unlock()
	a.probes.removePod(uid)
	for _, c := range containers {
		a.crashBackoff.Forget(string(uid) + "/" + c)
	}
}
