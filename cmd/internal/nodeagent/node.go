// Package nodeagent is the node agent's command, shared by `berth agent`, `berth up` and
// the node-only binary berth-agent (ADR 0010), and the runner of one node: the agent and,
// unless told of a runtime, the containerd it starts.
package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"k8s.io/client-go/rest"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/kubeclient"
	"berth.dev/berth/core/proxy"
)

// Options are what one node of `berth agent` or `berth up` is told.
type Options struct {
	Kube                                         kubeclient.Interface
	NodeName, Endpoint, DataDir, PodCIDR, NodeIP string
	// ClientCA verifies the API server's client certificate at the agent's streaming
	// endpoint (StreamingAddr); without it the agent serves no logs, exec or port-forward.
	ClientCA      []byte
	StreamingAddr string
	Log           *slog.Logger
	// Proxy runs the node proxy (core/proxy) beside the agent, with the range of
	// ClusterIPs and the cluster's pod network (for masquerade decisions; empty: PodCIDR).
	Proxy                    bool
	ServiceCIDR, ClusterCIDR string
	// DNS is the pods' DNS and the node's DNS server (--cluster-dns and the flags with it).
	DNS DNSOptions
	// NetworkConfig is the node's NetworkConfiguration file (--network-config), for the
	// containerd the agent starts; empty: the bridge driver.
	NetworkConfig string
	// CSIPluginsDir is where CSI drivers' sockets are found (--csi-plugins-dir; empty:
	// DataDir/plugins_registry).
	CSIPluginsDir string
	// CSIDriver names the CSI driver the node runs as its child: "local" for berth's own
	// (bin/berth-csi-local, volumes under DataDir/csi-local), "" or "none" for none.
	// CSICapacity is that driver's pool (--capacity; empty: the driver's default).
	CSIDriver, CSICapacity string
	// Ingress runs berth's Ingress controller beside the agent (--ingress and its ports).
	Ingress IngressOptions
}

// DNSOptions are the agent's DNS settings (agent.Config's fields of the same names).
type DNSOptions struct {
	ClusterDNS    []string
	ClusterDomain string
	ResolvConf    string
	DNSListen     []string
	NoDNSServer   bool
}

// KubeconfigCA is the certificate authority of a client configuration: the cluster CA,
// which also signs the API server's client certificate for the agents.
func KubeconfigCA(cfg *rest.Config) ([]byte, error) {
	if len(cfg.CAData) > 0 || cfg.CAFile == "" {
		return cfg.CAData, nil
	}
	ca, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("certificate authority: %w", err)
	}
	return ca, nil
}

// Run runs one node agent until ctx ends. Without an endpoint it starts containerd of
// its own under dataDir/containerd first, and stops it after the agent.
func Run(ctx context.Context, o Options) error {
	// The runtime outlives the agent on the way down, so that the agent's last calls
	// are answered.
	rtCtx, stopRuntime := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRuntime()
	var runtimeDone <-chan struct{}
	if o.Endpoint == "" {
		proc, err := startOwnContainerd(rtCtx, o.DataDir, o.PodCIDR, o.NetworkConfig, o.Log)
		if proc != nil {
			defer func() {
				stopRuntime()
				if err := proc.Wait(); err != nil {
					o.Log.Error("containerd", "err", err)
				}
			}()
		}
		if err != nil {
			return err
		}
		o.Endpoint = proc.Endpoint
		runtimeDone = proc.Done()
		o.Log.Info("containerd started", "endpoint", o.Endpoint)
	}
	csiDone, err := startCSIDriver(rtCtx, &o)
	if err != nil {
		return err
	}
	// Deferred after the runtime's: runs first, after the agent is done.
	defer func() {
		stopRuntime()
		<-csiDone
	}()
	a, err := agent.New(agent.Config{
		Kube: o.Kube, NodeName: o.NodeName, RuntimeEndpoint: o.Endpoint,
		DataDir: o.DataDir, PodCIDR: o.PodCIDR, NodeIP: o.NodeIP, Log: o.Log.With("component", "agent"),
		ClientCA: o.ClientCA, StreamingAddr: o.StreamingAddr,
		ClusterDNS: o.DNS.ClusterDNS, ClusterDomain: o.DNS.ClusterDomain, ResolvConf: o.DNS.ResolvConf,
		DNSListen: o.DNS.DNSListen, NoDNSServer: o.DNS.NoDNSServer,
		CSIPluginsDir: o.CSIPluginsDir,
	})
	if err != nil {
		return err
	}
	actx, stop := context.WithCancel(ctx)
	defer stop()
	// proxyFailed gets why the proxy stopped before the node did.
	proxyFailed := make(chan error, 1)
	if o.Proxy {
		proxyDone, err := startProxy(actx, o)
		if err != nil {
			return err
		}
		// The proxy stops with the agent; a proxy that fails stops the node.
		defer func() {
			stop()
			<-proxyDone
		}()
		go func() {
			select {
			case err := <-proxyDone:
				if err == nil && actx.Err() == nil {
					err = errors.New("it stopped by itself")
				}
				if err != nil {
					o.Log.Error("proxy", "err", err)
					proxyFailed <- err
				}
				stop()
				proxyDone <- err
			case <-actx.Done():
			}
		}()
	}
	if o.Ingress.Enabled {
		ingressDone, err := startIngress(actx, o)
		if err != nil {
			return err
		}
		// The controller stops with the agent; one that fails is logged, and the node
		// (its pods, the proxy) keeps running without Ingress.
		defer func() {
			stop()
			<-ingressDone
		}()
	}
	if runtimeDone != nil {
		// containerd dying takes the agent down with an error rather than leaving a node
		// that reports Ready with nothing behind it.
		go func() {
			select {
			case <-runtimeDone:
				stop()
			case <-actx.Done():
			}
		}()
	}
	err = a.Run(actx)
	if ctx.Err() == nil {
		select {
		case perr := <-proxyFailed:
			return errors.Join(fmt.Errorf("the node proxy failed, so the node stopped: %w", perr), err)
		default:
		}
	}
	if runtimeDone != nil && ctx.Err() == nil {
		select {
		case <-runtimeDone:
			return errors.New("containerd exited; the agent stopped")
		default:
		}
	}
	return err
}

// startProxy starts the node proxy until ctx ends; the returned channel gets its result.
func startProxy(ctx context.Context, o Options) (chan error, error) {
	svcCIDR, err := netip.ParsePrefix(o.ServiceCIDR)
	if err != nil {
		return nil, fmt.Errorf("--service-cidr %q: %w", o.ServiceCIDR, err)
	}
	clusterCIDR := o.ClusterCIDR
	if clusterCIDR == "" {
		clusterCIDR = o.PodCIDR
	}
	cluster, err := netip.ParsePrefix(clusterCIDR)
	if err != nil {
		return nil, fmt.Errorf("--cluster-cidr %q: %w", clusterCIDR, err)
	}
	p, err := proxy.New(proxy.Config{
		Kube: o.Kube, NodeName: o.NodeName, ServiceCIDR: svcCIDR, ClusterCIDR: cluster,
		Log: o.Log.With("component", "proxy"),
	})
	if err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	return done, nil
}
