package main

import (
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/cobra"

	"berth.dev/berth/core/apiserver"
)

func newServerCommand() *cobra.Command {
	var cfg apiserver.Config
	var verbose bool
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: the Kubernetes API on etcd",
		Long: `Run berth's control plane. Without --etcd-endpoints an etcd is embedded, its data under
--data-dir/etcd. Certificates are made under --data-dir/pki on first start, and
--data-dir/admin.kubeconfig lets kubectl in as the cluster admin.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
			srv, err := apiserver.Start(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "berth server is up at %s\nexport KUBECONFIG=%s\n", srv.URL, srv.Kubeconfig)
			err = srv.Wait()
			cfg.Logger.Info("berth server stopped")
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.DataDir, "data-dir", "", "directory for etcd data, certificates and admin.kubeconfig (required)")
	f.IntVar(&cfg.Port, "port", 6443, "HTTPS port of the API (0 picks a free one)")
	f.StringVar(&cfg.BindAddress, "bind-address", "127.0.0.1", "address the API listens on")
	f.StringSliceVar(&cfg.EtcdEndpoints, "etcd-endpoints", nil, "URLs of an external etcd cluster (comma-separated); embedded etcd when empty")
	f.DurationVar(&cfg.CompactionInterval, "etcd-compaction-interval", 5*time.Minute, "how often old etcd revisions are compacted")
	f.BoolVarP(&verbose, "verbose", "v", false, "log debug messages")
	_ = cmd.MarkFlagRequired("data-dir")
	return cmd
}
