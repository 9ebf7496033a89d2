package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/tools/clientcmd"

	"berth.dev/berth/cmd/internal/logging"
	"berth.dev/berth/core/apiserver"
	"berth.dev/berth/core/apiserver/admissionplugins"
	"berth.dev/berth/core/controllers"
	"berth.dev/berth/core/election"
	"berth.dev/berth/core/scheduler"
	schedconfig "berth.dev/berth/core/scheduler/config"
	"berth.dev/berth/core/scheduler/external"
	"berth.dev/berth/core/scheduler/framework"
)

func newServerCommand() *cobra.Command {
	var o serverOptions
	var verbose bool
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the control plane: the Kubernetes API on etcd, the controllers and the scheduler",
		Long: `Run berth's control plane. Without --etcd-endpoints an etcd is embedded, its data under
--data-dir/etcd. Certificates are made under --data-dir/pki on first start, and
--data-dir/admin.kubeconfig lets kubectl in as the cluster admin.

The controllers (garbage collector, namespace lifecycle, ...) run in the same process
unless --controllers=false; several servers on one etcd elect one of them to run the
controllers through the Lease kube-system/berth-controller-manager. The scheduler runs
likewise unless --scheduler=false, elected through the Lease kube-system/berth-scheduler.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.log = newLogger(verbose)
			return runServer(cmd.Context(), o, func(srv *apiserver.Server) {
				fmt.Fprintf(cmd.OutOrStdout(), "berth server is up at %s\nexport KUBECONFIG=%s\n", srv.URL, srv.Kubeconfig)
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.cfg.DataDir, "data-dir", "", "directory for etcd data, certificates and admin.kubeconfig (required)")
	f.IntVar(&o.cfg.Port, "port", 6443, "HTTPS port of the API (0 picks a free one)")
	addServerFlags(f, &o)
	f.BoolVarP(&verbose, "verbose", "v", false, "log debug messages")
	_ = cmd.MarkFlagRequired("data-dir")
	return cmd
}

// serverOptions are what `berth server` (and `berth up`, which runs one) is told.
type serverOptions struct {
	cfg                          apiserver.Config
	runControllers, runScheduler bool
	serviceCIDR, nodePorts       string
	ctrlOpts                     controllers.Options
	schedulerConfig              string
	admissionConfig              string
	log                          *slog.Logger
}

// addServerFlags adds the flags of the control plane but --data-dir and --port, which
// `berth up` describes in its own words.
func addServerFlags(f *pflag.FlagSet, o *serverOptions) {
	f.StringVar(&o.cfg.BindAddress, "bind-address", "127.0.0.1", "address the API listens on")
	f.StringSliceVar(&o.cfg.EtcdEndpoints, "etcd-endpoints", nil, "URLs of an external etcd cluster (comma-separated); embedded etcd when empty")
	f.DurationVar(&o.cfg.CompactionInterval, "etcd-compaction-interval", 5*time.Minute, "how often old etcd revisions are compacted")
	f.Int64Var(&o.cfg.DefaultTolerationSeconds, "default-toleration-seconds", 300, "how long pods tolerate a not-ready or unreachable node before eviction, unless they say otherwise")
	f.StringVar(&o.serviceCIDR, "service-cluster-ip-range", "10.96.0.0/12", "the CIDR Services' ClusterIPs are allocated from (IPv4)")
	f.StringVar(&o.nodePorts, "service-node-port-range", "30000-32767", "the range NodePorts are allocated from")
	f.BoolVar(&o.runControllers, "controllers", true, "run the controllers in this process (elected through a Lease among servers)")
	addControllerFlags(f, &o.ctrlOpts)
	f.BoolVar(&o.runScheduler, "scheduler", true, "run the scheduler in this process (elected through a Lease among servers)")
	addSchedulerConfigFlag(f, &o.schedulerConfig)
	f.StringVar(&o.admissionConfig, "admission-config", "", "admission plugins' configuration file (apiVersion "+admissionplugins.APIVersion+", kind "+admissionplugins.Kind+"): site policy plugins, their rules and failure policies")
}

// addSchedulerConfigFlag adds --scheduler-config, shared by server and scheduler.
func addSchedulerConfigFlag(f *pflag.FlagSet, path *string) {
	f.StringVar(path, "scheduler-config", "", "scheduler configuration file (apiVersion "+schedconfig.APIVersion+", kind "+schedconfig.Kind+"): profiles, plugins, their arguments")
}

// loadSchedulerConfig reads and checks the scheduler configuration file, before anything
// starts; no file gives the default profile.
func loadSchedulerConfig(path string) (*schedconfig.Configuration, error) {
	if path == "" {
		return nil, nil
	}
	return schedconfig.Load(path)
}

// runServer runs the API server, and the controllers and scheduler when asked, until ctx
// ends or one of them fails; up is called once the API serves.
func runServer(ctx context.Context, o serverOptions, up func(*apiserver.Server)) error {
	schedCfg, err := loadSchedulerConfig(o.schedulerConfig)
	if err != nil {
		return err
	}
	if o.admissionConfig != "" {
		if o.cfg.Admission, err = admissionplugins.Load(o.admissionConfig); err != nil {
			return err
		}
	}
	o.cfg.Logger = o.log.With("component", "apiserver")
	cidr, err := netip.ParsePrefix(o.serviceCIDR)
	if err != nil {
		return fmt.Errorf("--service-cluster-ip-range %q: %w", o.serviceCIDR, err)
	}
	first, last, err := apiserver.ParseNodePortRange(o.nodePorts)
	if err != nil {
		return fmt.Errorf("--service-node-port-range: %w", err)
	}
	o.cfg.ServiceRanges = apiserver.ServiceRanges{ClusterIPs: cidr, NodePortFirst: first, NodePortLast: last}
	// The API server outlives the controllers on the way down, so that they can give
	// their Lease up and finish their last writes.
	srvCtx, stopServer := context.WithCancel(context.WithoutCancel(ctx))
	defer stopServer()
	srv, err := apiserver.Start(srvCtx, o.cfg)
	if err != nil {
		return err
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Wait() }()
	up(srv)

	ctrlCtx, stopControllers := context.WithCancel(ctx)
	defer stopControllers()
	ctrlDone := make(chan error, 1)
	if o.runControllers {
		go func() { ctrlDone <- runElectedControllers(ctrlCtx, srv.Kubeconfig, o.log, o.ctrlOpts) }()
	} else {
		go func() { <-ctrlCtx.Done(); ctrlDone <- nil }()
	}
	// The scheduler runs beside the controllers, under its own Lease.
	schedCtx, stopScheduler := context.WithCancel(ctx)
	defer stopScheduler()
	schedDone := make(chan error, 1)
	if o.runScheduler {
		go func() { schedDone <- runElectedScheduler(schedCtx, srv.Kubeconfig, o.log, schedCfg) }()
	} else {
		go func() { <-schedCtx.Done(); schedDone <- nil }()
	}
	var ctrlErr, schedErr, srvErr error
	select {
	case <-ctx.Done():
		ctrlErr, schedErr = <-ctrlDone, <-schedDone
	case ctrlErr = <-ctrlDone:
		// The controllers stopped by themselves: a failure, so the server stops too
		// rather than serve a cluster in which nothing acts.
		stopScheduler()
		schedErr = <-schedDone
	case schedErr = <-schedDone:
		// Likewise for the scheduler.
		stopControllers()
		ctrlErr = <-ctrlDone
	case srvErr = <-srvDone:
		stopControllers()
		stopScheduler()
		ctrlErr, schedErr = <-ctrlDone, <-schedDone
		o.log.Info("berth server stopped")
		return errors.Join(srvErr, ctrlErr, schedErr)
	}
	stopServer()
	srvErr = <-srvDone
	o.log.Info("berth server stopped")
	return errors.Join(ctrlErr, schedErr, srvErr)
}

func newControllersCommand() *cobra.Command {
	var kubeconfig string
	var verbose bool
	var ctrlOpts controllers.Options
	cmd := &cobra.Command{
		Use:   "controllers",
		Short: "Run the controllers alone against an API server",
		Long: `Run berth's controller manager on its own, against the API server a kubeconfig names
(for example DIR/admin.kubeconfig of a "berth server --controllers=false"). Several
managers elect one active one through the Lease kube-system/berth-controller-manager.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runElectedControllers(cmd.Context(), kubeconfig, newLogger(verbose), ctrlOpts)
		},
	}
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the API server (required)")
	addControllerFlags(cmd.Flags(), &ctrlOpts)
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "log debug messages")
	_ = cmd.MarkFlagRequired("kubeconfig")
	return cmd
}

// runElectedControllers runs the controllers against the API server of a kubeconfig while
// this process holds the controller manager's Lease, until ctx ends.
func runElectedControllers(ctx context.Context, kubeconfig string, log *slog.Logger, opts controllers.Options) error {
	restCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("read kubeconfig %s: %w", kubeconfig, err)
	}
	opts.Log = log.With("component", "controllers")
	lease := election.Lease{Name: "berth-controller-manager"}
	return election.Run(ctx, restCfg, lease, "the controllers", opts.Log, func(ctx context.Context) error {
		return controllers.Run(ctx, restCfg, opts)
	})
}

func newSchedulerCommand() *cobra.Command {
	var kubeconfig, configFile string
	var verbose bool
	cmd := &cobra.Command{
		Use:   "scheduler",
		Short: "Run the scheduler alone against an API server",
		Long: `Run berth's scheduler on its own, against the API server a kubeconfig names (for
example DIR/admin.kubeconfig of a "berth server --scheduler=false"). Several schedulers
elect one active one through the Lease kube-system/berth-scheduler.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := loadSchedulerConfig(configFile)
			if err != nil {
				return err
			}
			return runElectedScheduler(cmd.Context(), kubeconfig, newLogger(verbose), cfg)
		},
	}
	cmd.Flags().StringVar(&kubeconfig, "kubeconfig", "", "kubeconfig of the API server (required)")
	addSchedulerConfigFlag(cmd.Flags(), &configFile)
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "log debug messages")
	_ = cmd.MarkFlagRequired("kubeconfig")
	return cmd
}

// runElectedScheduler runs the scheduler against the API server of a kubeconfig while this
// process holds the scheduler's Lease, until ctx ends.
func runElectedScheduler(ctx context.Context, kubeconfig string, log *slog.Logger, cfg *schedconfig.Configuration) error {
	restCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return fmt.Errorf("read kubeconfig %s: %w", kubeconfig, err)
	}
	opts := scheduler.Options{Log: log.With("component", "scheduler"), Config: cfg}
	return election.Run(ctx, restCfg, election.Lease{Name: "berth-scheduler"}, "the scheduler", opts.Log, func(ctx context.Context) error {
		// The out-of-process plugins the configuration names run while this scheduler
		// leads, and stop with it.
		ext := external.NewFactory(external.Options{Log: opts.Log})
		defer ext.Close()
		opts.ExternalPlugins = func(e schedconfig.ExternalPlugin) (framework.Plugin, error) {
			args, err := e.ArgsJSON()
			if err != nil {
				return nil, err
			}
			return ext.New(e.Name, e.Path, args, e.Timeout)
		}
		opts.ExternalHooks = func(nodes func() []*framework.NodeInfo, retry func(plugin string)) {
			ext.SetNodeLister(nodes)
			ext.SetOnAvailable(retry)
		}
		return scheduler.Run(ctx, restCfg, opts)
	})
}

// addControllerFlags adds the controllers' tuning flags, shared by server and controllers.
func addControllerFlags(f *pflag.FlagSet, opts *controllers.Options) {
	f.DurationVar(&opts.NodeGracePeriod, "node-monitor-grace-period", 40*time.Second, "how long a node may go without renewing its Lease before it is marked Unknown and its pods are evicted")
}

func newLogger(verbose bool) *slog.Logger { return logging.New(verbose) }
