package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"berth.dev/berth/core/agent"
)

// nodeOptions are what one node of `berth agent` or `berth up` is told.
type nodeOptions struct {
	kube                                         kubernetes.Interface
	nodeName, endpoint, dataDir, podCIDR, nodeIP string
	// clientCA verifies the API server's client certificate at the agent's streaming
	// endpoint (streamingAddr); without it the agent serves no logs, exec or port-forward.
	clientCA      []byte
	streamingAddr string
	log           *slog.Logger
}

// kubeconfigCA is the certificate authority of a client configuration: the cluster CA,
// which also signs the API server's client certificate for the agents.
func kubeconfigCA(cfg *rest.Config) ([]byte, error) {
	if len(cfg.CAData) > 0 || cfg.CAFile == "" {
		return cfg.CAData, nil
	}
	ca, err := os.ReadFile(cfg.CAFile)
	if err != nil {
		return nil, fmt.Errorf("certificate authority: %w", err)
	}
	return ca, nil
}

// runNode runs one node agent until ctx ends. Without an endpoint it starts containerd of
// its own under dataDir/containerd first, and stops it after the agent.
func runNode(ctx context.Context, o nodeOptions) error {
	// The runtime outlives the agent on the way down, so that the agent's last calls
	// are answered.
	rtCtx, stopRuntime := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRuntime()
	var runtimeDone <-chan struct{}
	if o.endpoint == "" {
		proc, err := startOwnContainerd(rtCtx, o.dataDir, o.podCIDR)
		if proc != nil {
			defer func() {
				stopRuntime()
				if err := proc.Wait(); err != nil {
					o.log.Error("containerd", "err", err)
				}
			}()
		}
		if err != nil {
			return err
		}
		o.endpoint = proc.Endpoint
		runtimeDone = proc.Done()
		o.log.Info("containerd started", "endpoint", o.endpoint)
	}
	a, err := agent.New(agent.Config{
		Kube: o.kube, NodeName: o.nodeName, RuntimeEndpoint: o.endpoint,
		DataDir: o.dataDir, PodCIDR: o.podCIDR, NodeIP: o.nodeIP, Log: o.log.With("component", "agent"),
		ClientCA: o.clientCA, StreamingAddr: o.streamingAddr,
	})
	if err != nil {
		return err
	}
	actx, stop := context.WithCancel(ctx)
	defer stop()
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
	if runtimeDone != nil && ctx.Err() == nil {
		select {
		case <-runtimeDone:
			return errors.New("containerd exited; the agent stopped")
		default:
		}
	}
	return err
}
