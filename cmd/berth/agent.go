package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
)

// newAgentCommand is `berth agent`: the node agent, joining a server.
func newAgentCommand() *cobra.Command {
	var (
		kubeconfig, nodeName, endpoint, dataDir, podCIDR, nodeIP string
		verbose                                                  bool
	)
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the node agent: register this node and run its pods on a CRI runtime",
		Long: `Run berth's node agent (its kubelet). It registers --node-name with the API server
of --kubeconfig, renews the node's Lease and runs the pods bound to the node through the
CRI runtime at --runtime-endpoint. Pod logs go under --data-dir/pods.

Without --runtime-endpoint the agent starts a containerd of its own under
--data-dir/containerd (CRI plugin with restrict_oom_score_adj, CNI network bridge +
host-local over --pod-cidr + portmap), builds berth's busybox and pause images into
--data-dir/images when they are not there and imports every tarball of that folder, so
that no registry is needed. That containerd stops with the agent; the containers keep
running in their shims and are found again at the next start.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log := newLogger(verbose)
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
			kube, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				return fmt.Errorf("API client: %w", err)
			}
			// The runtime outlives the agent on the way down, so that the agent's last
			// calls are answered.
			rtCtx, stopRuntime := context.WithCancel(context.WithoutCancel(cmd.Context()))
			defer stopRuntime()
			var runtimeDone <-chan struct{}
			if endpoint == "" {
				proc, err := startOwnContainerd(rtCtx, dataDir, podCIDR)
				if proc != nil {
					defer func() {
						stopRuntime()
						if err := proc.Wait(); err != nil {
							log.Error("containerd", "err", err)
						}
					}()
				}
				if err != nil {
					return err
				}
				endpoint = proc.Endpoint
				runtimeDone = proc.Done()
				log.Info("containerd started", "endpoint", endpoint)
			}
			a, err := agent.New(agent.Config{
				Kube: kube, NodeName: nodeName, RuntimeEndpoint: endpoint,
				DataDir: dataDir, PodCIDR: podCIDR, NodeIP: nodeIP, Log: log.With("component", "agent"),
			})
			if err != nil {
				return err
			}
			ctx, stop := context.WithCancel(cmd.Context())
			defer stop()
			if runtimeDone != nil {
				// containerd dying takes the agent down with an error rather than
				// leaving a node that reports Ready with nothing behind it.
				go func() {
					select {
					case <-runtimeDone:
						stop()
					case <-ctx.Done():
					}
				}()
			}
			err = a.Run(ctx)
			if runtimeDone != nil && cmd.Context().Err() == nil {
				select {
				case <-runtimeDone:
					return errors.New("containerd exited; the agent stopped")
				default:
				}
			}
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig file of the API server to join")
	f.StringVar(&nodeName, "node-name", "", "name of this node (the host name by default)")
	f.StringVar(&endpoint, "runtime-endpoint", "", "CRI socket, unix:///path (empty: start containerd under --data-dir)")
	f.StringVar(&dataDir, "data-dir", "/var/lib/berth/agent", "directory for pod logs and, without --runtime-endpoint, containerd")
	f.StringVar(&podCIDR, "pod-cidr", containerd.DefaultPodCIDR, "this node's pod network")
	f.StringVar(&nodeIP, "node-ip", "", "the node's InternalIP (the default route's address by default)")
	f.BoolVarP(&verbose, "verbose", "v", false, "log at debug level")
	return cmd
}

// startOwnContainerd starts containerd under dataDir/containerd and imports every image
// tarball of dataDir/images, building berth's own images there first when they are missing.
// A containerd that started is returned even with an error, for the caller to stop.
func startOwnContainerd(ctx context.Context, dataDir, podCIDR string) (*containerd.Process, error) {
	imagesDir := filepath.Join(dataDir, "images")
	if _, err := os.Stat(filepath.Join(imagesDir, images.PauseFile)); errors.Is(err, os.ErrNotExist) {
		if _, err := images.BuildAll(imagesDir, images.DefaultBusyboxPath); err != nil {
			return nil, fmt.Errorf("build berth's images: %w", err)
		}
	}
	proc, err := containerd.Start(ctx, containerd.Config{
		DataDir: filepath.Join(dataDir, "containerd"), SandboxImage: images.PauseRef, PodCIDR: podCIDR,
		Output: os.Stderr,
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
