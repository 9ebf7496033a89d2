package nodeagent

import (
	"context"
	"net"
	"strconv"

	"github.com/spf13/pflag"

	"berth.dev/berth/core/ingress"
)

// IngressOptions are the node's Ingress controller settings (--ingress and its ports).
type IngressOptions struct {
	// Enabled runs berth's Ingress controller (core/ingress) beside the agent.
	Enabled bool
	// HTTPPort and HTTPSPort are where it serves, on every address of the node; 0: not.
	HTTPPort, HTTPSPort int
}

// AddIngressFlags adds --ingress, --ingress-http-port and --ingress-https-port to f.
func AddIngressFlags(f *pflag.FlagSet, o *IngressOptions) {
	f.BoolVar(&o.Enabled, "ingress", true, "run berth's Ingress controller on the node (IngressClass controller berth.dev/ingress; containerd nodes only)")
	f.IntVar(&o.HTTPPort, "ingress-http-port", 80, "port of the Ingress controller's HTTP listener on every address of the node (0: none)")
	f.IntVar(&o.HTTPSPort, "ingress-https-port", 443, "port of the Ingress controller's HTTPS listener on every address of the node (0: none)")
}

// startIngress starts the node's Ingress controller until ctx ends; the returned channel
// is closed when it has stopped.
func startIngress(ctx context.Context, o Options) (<-chan struct{}, error) {
	addr := func(port int) string {
		if port == 0 {
			return ""
		}
		return net.JoinHostPort("", strconv.Itoa(port))
	}
	c, err := ingress.New(ingress.Config{
		Kube: o.Kube, NodeName: o.NodeName, NodeIP: o.NodeIP,
		HTTPAddr: addr(o.Ingress.HTTPPort), HTTPSAddr: addr(o.Ingress.HTTPSPort),
		Log: o.Log.With("component", "ingress"),
	})
	if err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.Run(ctx); err != nil {
			// Logged when it happens: the node runs on without Ingress.
			o.Log.Error("ingress controller stopped", "err", err)
		}
	}()
	return done, nil
}
