package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"golang.org/x/sync/errgroup"

	"berth.dev/berth/core/kubeclient"
)

// NodeConfig is the DNS server of one node, as the node agent runs it.
type NodeConfig struct {
	// Kube is the agent's API client, for the node's kube-dns EndpointSlice.
	Kube kubeclient.Interface
	// NodeName names the node's EndpointSlice (kube-dns-<node>).
	NodeName string
	// Domain is the cluster domain (DefaultDomain when empty).
	Domain string
	// ResolvConf is the host's resolver file, whose nameservers get the other names.
	ResolvConf string
	// Listen are the host:port addresses to serve on; the first is the one published in
	// the kube-dns Service.
	Listen []string
	Log    *slog.Logger
}

// DefaultListen are where a node's DNS server listens by default: port 53 of the node's
// address (what the kube-dns Service sends to) and of the pod network's gateway, the
// first address of podCIDR, which the node's pods reach without any proxy.
func DefaultListen(nodeIP, podCIDR string) []string {
	var out []string
	if nodeIP != "" {
		out = append(out, net.JoinHostPort(nodeIP, "53"))
	}
	if p, err := netip.ParsePrefix(podCIDR); err == nil {
		gw := p.Masked().Addr().Next()
		if a := net.JoinHostPort(gw.String(), "53"); len(out) == 0 || out[0] != a {
			out = append(out, a)
		}
	}
	return out
}

// StartNode makes the node's server, fed by the Services, EndpointSlices and Namespaces
// informers of the set (which the caller starts afterwards), and binds its addresses.
// run serves them and keeps the node's kube-dns EndpointSlice until ctx ends.
func StartNode(cfg NodeConfig, informers *kubeclient.Informers) (run func(context.Context) error, err error) {
	if len(cfg.Listen) == 0 {
		return nil, errors.New("dns: no address to listen on")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	srv, err := New(Config{Domain: cfg.Domain, ResolvConf: cfg.ResolvConf, Log: cfg.Log})
	if err != nil {
		return nil, err
	}
	// Queries the host's resolvers would send back to this server would loop.
	srv.upstreams = without(srv.upstreams, cfg.Listen)
	if err := srv.Watch(informers.Services(), informers.EndpointSlices(), informers.Namespaces()); err != nil {
		return nil, err
	}
	l, err := srv.Listen(cfg.Listen)
	if err != nil {
		return nil, err
	}
	published := l.Addrs()[0]
	cfg.Log.Info("cluster DNS serving", "domain", srv.zone, "listen", l.Addrs(), "upstreams", srv.upstreams)
	return func(ctx context.Context) error {
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error { return l.Serve(gctx) })
		g.Go(func() error { return Publish(gctx, cfg.Kube, cfg.NodeName, published, 0, cfg.Log) })
		if err := g.Wait(); err != nil {
			return fmt.Errorf("cluster DNS: %w", err)
		}
		return nil
	}, nil
}

func without(list, drop []string) []string {
	var out []string
	for _, a := range list {
		keep := true
		for _, d := range drop {
			if a == d {
				keep = false
			}
		}
		if keep {
			out = append(out, a)
		}
	}
	return out
}
