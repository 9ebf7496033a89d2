package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"berth.dev/berth/cmd/internal/nodeagent"
	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/apiserver"
	"berth.dev/berth/core/ingress"
	"berth.dev/berth/drivers/cri/sim"
)

// upOptions are what `berth up` is told.
type upOptions struct {
	server                             serverOptions
	runtime, endpoint                  string
	nodeName, podCIDR, nodeIP, dataDir string
	nodes                              int
	streamingAddr                      string
	clientCA                           []byte // read from the server's kubeconfig
	proxy                              bool   // the node proxy (containerd nodes only)
	csiDriver, csiCapacity             string // the node's CSI driver (containerd nodes only)
	clusterCIDR                        string
	dns                                nodeagent.DNSOptions // --cluster-dns nil: the kube-dns ClusterIP
	networkConfig                      string               // the node's NetworkConfiguration file
	ingress                            nodeagent.IngressOptions
}

// newUpCommand is `berth up`: a whole cluster in one process.
func newUpCommand() *cobra.Command {
	var o upOptions
	var verbose bool
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a whole cluster in one command: the control plane and a node agent",
		Long: `Run berth's control plane and a node agent in one process, as "berth server" and
"berth agent" would, until interrupted.

With --runtime containerd (the default) and no --runtime-endpoint, containerd is started
as a child process under --data-dir/agent/containerd with a configuration berth writes
(CRI plugin, restrict_oom_score_adj, berth's pause image as sandbox image, its own CNI
network), and stopped on exit; the containers keep running in their shims and are found
again at the next start. Image tarballs in --data-dir/agent/images are imported at start,
so no registry is needed.

With --runtime sim, --nodes simulated nodes are started instead: real agents, each on
berth's simulated CRI runtime (drivers/cri/sim), whose containers run no processes. For
scheduling, controller and scale work on one machine.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.server.log = newLogger(verbose)
			return runUp(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.dataDir, "data-dir", "/var/lib/berth", "directory for the cluster's state: etcd, certificates, admin.kubeconfig, the agent's containerd and pods")
	f.IntVar(&o.server.cfg.Port, "port", 6443, "HTTPS port of the API (0 picks a free one)")
	addServerFlags(f, &o.server)
	f.StringVar(&o.runtime, "runtime", "containerd", "the nodes' container runtime: containerd, or sim for simulated nodes")
	f.StringVar(&o.endpoint, "runtime-endpoint", "", "CRI socket of a runtime already running, unix:///path (containerd only; empty: start containerd)")
	f.IntVar(&o.nodes, "nodes", 1, "how many simulated nodes to run (--runtime sim only)")
	f.StringVar(&o.nodeName, "node-name", "", "name of the node (the host name by default; simulated nodes are sim-0001 ...)")
	f.StringVar(&o.podCIDR, "pod-cidr", containerd.DefaultPodCIDR, "the node's pod network (containerd only)")
	f.StringVar(&o.nodeIP, "node-ip", "", "the node's InternalIP (the default route's address by default)")
	f.StringVar(&o.networkConfig, "network-config", "", "NetworkConfiguration file choosing the pod network's CNI driver (bridge, ptp, custom); watched, applies to new pods (containerd started by berth only)")
	f.StringVar(&o.streamingAddr, "streaming-address", agent.DefaultStreamingAddr, "host:port of the agent's HTTPS endpoint for logs, exec, attach and port-forward (simulated nodes listen on 127.0.0.1, each on a port of its own)")
	nodeagent.AddCSIFlags(f, &o.csiDriver, &o.csiCapacity, "local")
	f.BoolVar(&o.proxy, "proxy", true, "run the node proxy on the node: Service traffic through nftables (--runtime containerd only; simulated nodes have none)")
	f.StringVar(&o.clusterCIDR, "cluster-cidr", "", "the cluster's pod network, for the proxy's masquerade decisions (empty: --pod-cidr)")
	nodeagent.AddDNSFlags(f, &o.dns, nil)
	nodeagent.AddIngressFlags(f, &o.ingress)
	f.Lookup("cluster-dns").Usage = "nameservers of pods with dnsPolicy ClusterFirst (default: the kube-dns Service's ClusterIP, the tenth address of --service-cluster-ip-range, 10.96.0.10); the node's agent runs the cluster DNS server; \"\" for none"
	f.BoolVarP(&verbose, "verbose", "v", false, "log debug messages")
	return cmd
}

// runUp runs the server, then the node(s), until ctx ends; the nodes stop before the server.
func runUp(ctx context.Context, o upOptions, out io.Writer) error {
	log := o.server.log
	switch o.runtime {
	case "containerd":
		if o.nodes != 1 {
			return fmt.Errorf("--nodes %d: only --runtime sim runs more than one node in one process", o.nodes)
		}
	case "sim":
		if o.nodes < 1 {
			return fmt.Errorf("--nodes %d: at least one node is needed", o.nodes)
		}
		if o.endpoint != "" {
			return errors.New("--runtime-endpoint is for --runtime containerd; simulated nodes run their own runtimes")
		}
	default:
		return fmt.Errorf("--runtime %q: want containerd or sim", o.runtime)
	}
	if o.dns.ClusterDNS == nil && o.runtime == "containerd" {
		cidr, err := netip.ParsePrefix(o.server.serviceCIDR)
		if err != nil {
			return fmt.Errorf("--service-cluster-ip-range %q: %w", o.server.serviceCIDR, err)
		}
		o.dns.ClusterDNS = []string{apiserver.DNSServiceIP(cidr).String()}
	}
	dataDir, err := filepath.Abs(o.dataDir)
	if err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	o.server.cfg.DataDir = dataDir
	if o.nodeName == "" && o.runtime == "containerd" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("--node-name not given and no host name: %w", err)
		}
		o.nodeName = host
	}

	// The server outlives the nodes on the way down, so that they can finish their last
	// writes (pods' status, the Lease).
	srvCtx, stopServer := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServer()
	upCh := make(chan *apiserver.Server, 1)
	srvDone := make(chan error, 1)
	go func() {
		srvDone <- runServer(srvCtx, o.server, func(s *apiserver.Server) {
			fmt.Fprintf(out, "berth server is up at %s\nexport KUBECONFIG=%s\n", s.URL, s.Kubeconfig)
			upCh <- s
		})
	}()
	var srv *apiserver.Server
	select {
	case srv = <-upCh:
	case err := <-srvDone:
		return err
	case <-ctx.Done():
		stopServer()
		return <-srvDone
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		stopServer()
		return errors.Join(fmt.Errorf("read %s: %w", srv.Kubeconfig, err), <-srvDone)
	}
	restCfg.QPS, restCfg.Burst = 200, 400
	restCfg.UserAgent = "berth-agent"
	kube, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		stopServer()
		return errors.Join(fmt.Errorf("API client: %w", err), <-srvDone)
	}

	clientCA, err := nodeagent.KubeconfigCA(restCfg)
	if err != nil {
		stopServer()
		return errors.Join(fmt.Errorf("read %s: %w", srv.Kubeconfig, err), <-srvDone)
	}
	o.clientCA = clientCA

	if o.runtime == "containerd" && o.csiDriver == "local" {
		if err := ensureLocalStorageClass(ctx, kube, log); err != nil {
			stopServer()
			return errors.Join(err, <-srvDone)
		}
	}

	if o.runtime == "containerd" && o.ingress.Enabled {
		if err := ingress.EnsureDefaultClass(ctx, kube, log); err != nil {
			stopServer()
			return errors.Join(err, <-srvDone)
		}
	}

	nodeCtx, stopNodes := context.WithCancel(ctx)
	defer stopNodes()
	nodesDone := make(chan error, 1)
	var names []string
	if o.runtime == "sim" {
		names, err = startSimNodes(nodeCtx, kube, o, dataDir, nodesDone)
		if err != nil {
			stopNodes()
			stopServer()
			return errors.Join(err, <-srvDone)
		}
	} else {
		names = []string{o.nodeName}
		go func() {
			nodesDone <- nodeagent.Run(nodeCtx, nodeagent.Options{
				Kube: kube, NodeName: o.nodeName, Endpoint: o.endpoint, DataDir: filepath.Join(dataDir, "agent"),
				PodCIDR: o.podCIDR, NodeIP: o.nodeIP, ClientCA: o.clientCA, StreamingAddr: o.streamingAddr, Log: log,
				Proxy: o.proxy, ServiceCIDR: o.server.serviceCIDR, ClusterCIDR: o.clusterCIDR, DNS: o.dns,
				NetworkConfig: o.networkConfig, CSIDriver: o.csiDriver, CSICapacity: o.csiCapacity,
				Ingress: o.ingress,
			})
		}()
	}
	go func() {
		if err := waitNodesReady(nodeCtx, kube, names); err != nil {
			return
		}
		fmt.Fprintf(out, "berth is up: %d node(s) Ready. Use it with kubectl:\n  export KUBECONFIG=%s\n  kubectl get nodes\n",
			len(names), srv.Kubeconfig)
	}()

	var nodeErr, srvErr error
	select {
	case <-ctx.Done():
		nodeErr = <-nodesDone
	case nodeErr = <-nodesDone:
		// A node that stops by itself has failed (containerd died, say): the whole
		// cluster stops rather than run without it.
		if nodeErr == nil && ctx.Err() == nil {
			nodeErr = errors.New("the node agent stopped")
		}
	case srvErr = <-srvDone:
		stopNodes()
		return errors.Join(srvErr, <-nodesDone)
	}
	stopServer()
	srvErr = <-srvDone
	return errors.Join(nodeErr, srvErr)
}

// waitNodesReady waits until every named Node reports Ready.
func waitNodesReady(ctx context.Context, kube kubernetes.Interface, names []string) error {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	return wait.PollUntilContextCancel(ctx, 500*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		return countReadyNodes(ctx, kube, want) == len(want), nil
	})
}

// startSimNodes starts o.nodes simulated nodes: for each, berth's simulated CRI runtime on
// a socket under dataDir/sim and a real agent on it. done receives the first failure, or
// nil once all have stopped after ctx ended.
func startSimNodes(ctx context.Context, kube kubernetes.Interface, o upOptions, dataDir string, done chan<- error) ([]string, error) {
	simDir := filepath.Join(dataDir, "sim")
	if err := os.MkdirAll(simDir, 0o755); err != nil {
		return nil, fmt.Errorf("sim nodes: %w", err)
	}
	prefix := o.nodeName
	if prefix == "" {
		prefix = "sim"
	}
	g, gctx := errgroup.WithContext(ctx)
	names := make([]string, 0, o.nodes)
	for i := range o.nodes {
		name := fmt.Sprintf("%s-%04d", prefix, i+1)
		names = append(names, name)
		// Each node has a /24 of 10.128.0.0/9: room for 32,768 nodes. The addresses are
		// the simulator's own; no packet goes to them.
		cidr := fmt.Sprintf("10.%d.%d.0/24", 128+i/256, i%256)
		sock := filepath.Join(simDir, name+".sock")
		log := o.server.log.With("node", name)
		g.Go(func() error {
			err := sim.Serve(gctx, sock, sim.Config{PodCIDR: cidr})
			if err != nil && gctx.Err() == nil {
				return fmt.Errorf("simulated runtime of %s: %w", name, err)
			}
			return nil
		})
		g.Go(func() error {
			a, err := agent.New(agent.Config{
				Kube: kube, NodeName: name, RuntimeEndpoint: "unix://" + sock, PodCIDR: cidr,
				DataDir: filepath.Join(simDir, name), NodeIP: "127.0.0.1", Log: log.With("component", "agent"),
				ClientCA: o.clientCA, StreamingAddr: "127.0.0.1:0",
			})
			if err != nil {
				return err
			}
			if err := a.Run(gctx); err != nil && gctx.Err() == nil {
				return fmt.Errorf("agent of %s: %w", name, err)
			}
			return nil
		})
	}
	go func() { done <- g.Wait() }()
	return names, nil
}

// localStorageClass is the StorageClass `berth up` makes for berth's CSI driver.
const localStorageClass = "local"

// ensureLocalStorageClass creates the StorageClass "local" of berth's CSI driver, marked
// default, as k3s does with its local-path class (ADR 0013): Immediate binding, so that a
// claim binds at once, volumes deleted with their claims, expansion allowed. A class of
// that name that exists already is left as it is: the operator's choice wins, and so does
// another default class the operator marked (the newest default is the one used).
func ensureLocalStorageClass(ctx context.Context, kube kubernetes.Interface, log *slog.Logger) error {
	immediate, del, expand := storagev1.VolumeBindingImmediate, corev1.PersistentVolumeReclaimDelete, true
	sc := &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{Name: localStorageClass, Annotations: map[string]string{
			"storageclass.kubernetes.io/is-default-class": "true",
		}},
		Provisioner:          nodeagent.LocalCSIDriverName,
		VolumeBindingMode:    &immediate,
		ReclaimPolicy:        &del,
		AllowVolumeExpansion: &expand,
	}
	_, err := kube.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{})
	switch {
	case apierrors.IsAlreadyExists(err):
		return nil
	case err != nil:
		return fmt.Errorf("create the default StorageClass %q: %w", localStorageClass, err)
	}
	log.Info("default StorageClass created", "name", localStorageClass, "provisioner", nodeagent.LocalCSIDriverName)
	return nil
}
