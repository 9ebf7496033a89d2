package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/tools/clientcmd"

	"berth.dev/berth/cmd/internal/logging"
	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/core/kubeclient"
	"berth.dev/berth/core/proxy"
)

// Command is the agent command, `berth agent` and `berth-agent`: the node agent, joining a
// server. use is the command's name (agent, or berth-agent).
func Command(use string) *cobra.Command {
	var (
		kubeconfig, nodeName, endpoint, dataDir, podCIDR, nodeIP string
		streamingAddr                                            string
		verbose                                                  bool
		runProxy                                                 bool
		serviceCIDR, clusterCIDR                                 string
		dnsOpts                                                  DNSOptions
		networkConfig                                            string
		csiPluginsDir                                            string // CSI drivers' sockets
		csiDriver, csiCapacity                                   string
		ingressOpts                                              IngressOptions
	)
	cmd := &cobra.Command{
		Use:   use,
		Short: "Run the node agent: register this node and run its pods on a CRI runtime",
		Long: `Run berth's node agent (its kubelet). It registers --node-name with the API server
of --kubeconfig, renews the node's Lease and runs the pods bound to the node through the
CRI runtime at --runtime-endpoint. Pod logs go under --data-dir/pods.

Without --runtime-endpoint the agent starts a containerd of its own under
--data-dir/containerd (CRI plugin with restrict_oom_score_adj, CNI network bridge +
host-local over --pod-cidr + portmap, or the driver --network-config chooses: see
docs/network.md), builds berth's busybox and pause images into
--data-dir/images when they are not there and imports every tarball of that folder, so
that no registry is needed. That containerd stops with the agent; the containers keep
running in their shims and are found again at the next start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := logging.New(verbose)
			if kubeconfig == "" {
				return errors.New("--kubeconfig is required")
			}
			if nodeName == "" {
				host, err := os.Hostname()
				if err != nil {
					return fmt.Errorf("--node-name not given and no host name: %w", err)
				}
				nodeName = host
			}
			cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
			if err != nil {
				return fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
			}
			cfg.UserAgent = "berth-agent/" + nodeName
			// kubelet's budget since Kubernetes 1.27 is 50 requests/s, burst 100; the agent
			// also carries what Kubernetes runs as separate clients with budgets of their own
			// (the CSI sidecars, kube-proxy's and CoreDNS's watches, an ingress controller),
			// so it gets twice that rate and a deeper burst. client-go's own 5/10 held back
			// pod status and a burst of claims for seconds.
			cfg.QPS, cfg.Burst = 100, 300
			kube, err := kubeclient.NewForConfig(cfg)
			if err != nil {
				return fmt.Errorf("API client: %w", err)
			}
			clientCA, err := KubeconfigCA(cfg)
			if err != nil {
				return fmt.Errorf("kubeconfig %s: %w", kubeconfig, err)
			}
			return Run(cmd.Context(), Options{
				Kube: kube, NodeName: nodeName, Endpoint: endpoint, DataDir: dataDir, PodCIDR: podCIDR,
				NodeIP: nodeIP, ClientCA: clientCA, StreamingAddr: streamingAddr, Log: log,
				Proxy: runProxy, ServiceCIDR: serviceCIDR, ClusterCIDR: clusterCIDR, DNS: dnsOpts,
				NetworkConfig: networkConfig, CSIPluginsDir: csiPluginsDir,
				CSIDriver: csiDriver, CSICapacity: csiCapacity, Ingress: ingressOpts,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file of the API server to join")
	f.StringVar(&nodeName, "node-name", "", "name of this node (the host name by default)")
	f.StringVar(&endpoint, "runtime-endpoint", "", "CRI socket, unix:///path (empty: start containerd under --data-dir)")
	f.StringVar(&dataDir, "data-dir", "/var/lib/berth/agent", "directory for pod logs and, without --runtime-endpoint, containerd")
	f.StringVar(&podCIDR, "pod-cidr", containerd.DefaultPodCIDR, "this node's pod network")
	AddCSIFlags(f, &csiDriver, &csiCapacity, "none")
	f.StringVar(&csiPluginsDir, "csi-plugins-dir", "", "directory where CSI drivers' unix sockets are discovered (default --data-dir/plugins_registry)")
	f.StringVar(&networkConfig, "network-config", "", "NetworkConfiguration file choosing the pod network's CNI driver (bridge, ptp, custom); watched, applies to new pods (own containerd only)")
	f.StringVar(&nodeIP, "node-ip", "", "the node's InternalIP (the default route's address by default)")
	f.StringVar(&streamingAddr, "streaming-address", agent.DefaultStreamingAddr, "host:port of the HTTPS endpoint the API server reaches for logs, exec, attach and port-forward")
	AddProxyFlags(f, &runProxy, &serviceCIDR, &clusterCIDR)
	AddDNSFlags(f, &dnsOpts, nil)
	AddIngressFlags(f, &ingressOpts)
	f.BoolVarP(&verbose, "verbose", "v", false, "log at debug level")
	return cmd
}

// startOwnContainerd starts containerd under dataDir/containerd and imports every image
// tarball of dataDir/images, building berth's own images there first when they are missing.
// The test server image is built too when its binary is found (images.FindTestserver) and
// its tarballs are missing or older than the binary; without the binary it is left out,
// since no pod needs it to run. A containerd that started is returned even with an error,
// for the caller to stop.
func startOwnContainerd(ctx context.Context, dataDir, podCIDR, networkConfig string, log *slog.Logger) (*containerd.Process, error) {
	imagesDir := filepath.Join(dataDir, "images")
	if _, err := os.Stat(filepath.Join(imagesDir, images.PauseFile)); errors.Is(err, os.ErrNotExist) {
		if _, err := images.BuildAll(imagesDir, images.DefaultBusyboxPath); err != nil {
			return nil, fmt.Errorf("build berth's images: %w", err)
		}
	}
	if bin, err := images.FindTestserver(); err == nil && images.TestserverStale(imagesDir, bin) {
		if _, err := images.BuildTestserver(imagesDir, bin); err != nil {
			return nil, fmt.Errorf("build the test server image from %s: %w", bin, err)
		}
	}
	proc, err := containerd.Start(ctx, containerd.Config{
		DataDir: filepath.Join(dataDir, "containerd"), SandboxImage: images.PauseRef, PodCIDR: podCIDR,
		Output: os.Stderr, NetworkConfig: networkConfig, Log: log,
	})
	if err != nil {
		return nil, err
	}
	tarballs, err := filepath.Glob(filepath.Join(imagesDir, "*.tar"))
	if err == nil {
		for _, f := range tarballs {
			if err = images.Import(ctx, proc.Address, containerd.Namespace, f); err != nil {
				break
			}
		}
	}
	if err != nil {
		return proc, fmt.Errorf("import images: %w", err)
	}
	return proc, nil
}

// AddProxyFlags adds the node proxy's flags (--proxy, --service-cidr, --cluster-cidr).
func AddProxyFlags(f *pflag.FlagSet, run *bool, serviceCIDR, clusterCIDR *string) {
	f.BoolVar(run, "proxy", true, "run the node proxy: Service traffic through nftables (table ip berth-proxy)")
	f.StringVar(serviceCIDR, "service-cidr", proxy.DefaultServiceCIDR, "the API server's range of ClusterIPs, for the node proxy")
	f.StringVar(clusterCIDR, "cluster-cidr", "", "the cluster's pod network: ClusterIP traffic from outside it is masqueraded (empty: --pod-cidr)")
}

// AddDNSFlags adds the agent's DNS flags to f: --cluster-dns (clusterDNS its default),
// --cluster-domain, --resolv-conf, --dns-listen and --dns-server.
func AddDNSFlags(f *pflag.FlagSet, o *DNSOptions, clusterDNS []string) {
	f.StringSliceVar(&o.ClusterDNS, "cluster-dns", clusterDNS, "nameservers of pods with dnsPolicy ClusterFirst, normally the kube-dns Service's ClusterIP (10.96.0.10); when set, the agent also runs the cluster DNS server; empty: such pods get the host's resolv.conf")
	f.StringVar(&o.ClusterDomain, "cluster-domain", "cluster.local", "the cluster's DNS domain")
	f.StringVar(&o.ResolvConf, "resolv-conf", "/etc/resolv.conf", "the host's resolver file: what dnsPolicy Default pods get, and where the DNS server forwards names outside the cluster domain")
	f.StringSliceVar(&o.DNSListen, "dns-listen", nil, "host:port addresses of the node's DNS server, the first one published in the kube-dns Service (default: port 53 of the node IP and of the pod network's gateway)")
	f.Var(negatedBool{&o.NoDNSServer}, "dns-server", "run the cluster DNS server in this agent when --cluster-dns is set")
	f.Lookup("dns-server").NoOptDefVal = "true"
}

// negatedBool is a bool flag kept inverted, so that the option's zero value is the flag's
// default, true.
type negatedBool struct{ no *bool }

func (b negatedBool) String() string {
	if b.no == nil {
		return "true"
	}
	return strconv.FormatBool(!*b.no)
}

func (b negatedBool) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return err
	}
	*b.no = !v
	return nil
}

func (negatedBool) Type() string { return "bool" }
