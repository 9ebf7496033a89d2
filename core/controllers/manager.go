// Package controllers runs berth's controllers (one package each under core/controllers)
// against an API server, as kube-controller-manager does for Kubernetes.
package controllers

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"

	"berth.dev/berth/core/controllers/attachdetach"
	"berth.dev/berth/core/controllers/cronjob"
	"berth.dev/berth/core/controllers/daemonset"
	"berth.dev/berth/core/controllers/deployment"
	"berth.dev/berth/core/controllers/disruption"
	"berth.dev/berth/core/controllers/endpoints"
	"berth.dev/berth/core/controllers/endpointslice"
	"berth.dev/berth/core/controllers/ephemeral"
	"berth.dev/berth/core/controllers/garbagecollector"
	"berth.dev/berth/core/controllers/job"
	"berth.dev/berth/core/controllers/namespace"
	"berth.dev/berth/core/controllers/nodelifecycle"
	"berth.dev/berth/core/controllers/persistentvolume"
	"berth.dev/berth/core/controllers/replicaset"
	"berth.dev/berth/core/controllers/resourcequota"
	"berth.dev/berth/core/controllers/servicelb"
	"berth.dev/berth/core/controllers/statefulset"
)

// controller is what the manager runs: Run blocks until ctx ends, or fails.
type controller interface {
	Run(ctx context.Context) error
}

// Options tune the controller manager; the zero value is ready to use.
type Options struct {
	// Log receives the controllers' messages (slog.Default() by default).
	Log *slog.Logger
	// NodeGracePeriod is how long a node may go without renewing its Lease before it is
	// marked Unknown and tainted unreachable (40 s by default).
	NodeGracePeriod time.Duration
}

// Run runs every controller against the API server cfg points at until ctx ends, or until
// one of them fails (it then stops the others and returns that error).
func Run(ctx context.Context, cfg *rest.Config, opts Options) error {
	log := opts.Log
	if log == nil {
		log = slog.Default()
	}
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		// The controllers must never be the bottleneck (issue 4): client-go's default of 5
		// requests/s, or kube-controller-manager's 20, would make a 1,000-pod Deployment take
		// 50 s or more. The API server takes thousands of writes a second, so the client
		// limit here only guards against a runaway loop.
		cfg.QPS, cfg.Burst = 1000, 2000
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "berth-controller-manager"
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	meta, err := metadata.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("metadata client: %w", err)
	}
	// Events go through one broadcaster; each controller records as its own component
	// (replicaset-controller, deployment-controller ...), as kube-controller-manager's do.
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := func(component string) record.EventRecorder {
		return broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component})
	}

	// One informer per resource, shared by every controller that watches it.
	kubeInformers := informers.NewSharedInformerFactory(kube, 0)
	metaInformers := metadatainformer.NewSharedInformerFactoryWithOptions(meta, 0,
		metadatainformer.WithTransform(dropManagedFields))

	// Every controller, by name, with what builds it and registers its informers.
	type builder struct {
		name  string
		build func(log *slog.Logger) (controller, error)
	}
	builders := []builder{
		{"garbagecollector", func(l *slog.Logger) (controller, error) {
			return garbagecollector.New(meta, metaInformers, garbagecollector.Options{Log: l})
		}},
		{"namespace", func(l *slog.Logger) (controller, error) {
			return namespace.New(kube, meta, kubeInformers, namespace.Options{Log: l})
		}},
		{"nodelifecycle", func(l *slog.Logger) (controller, error) {
			return nodelifecycle.New(kube, kubeInformers, nodelifecycle.Options{GracePeriod: opts.NodeGracePeriod, Log: l, Recorder: recorder("node-controller")})
		}},
		{"resourcequota", func(l *slog.Logger) (controller, error) {
			return resourcequota.New(kube, kubeInformers, metaInformers, resourcequota.Options{Log: l})
		}},
		{"disruption", func(l *slog.Logger) (controller, error) {
			return disruption.New(kube, kubeInformers, disruption.Options{Log: l, Recorder: recorder("controllermanager")})
		}},
		{"replicaset", func(l *slog.Logger) (controller, error) {
			return replicaset.New(kube, kubeInformers, replicaset.Options{Log: l, Recorder: recorder("replicaset-controller")})
		}},
		{"deployment", func(l *slog.Logger) (controller, error) {
			return deployment.New(kube, kubeInformers, deployment.Options{Log: l, Recorder: recorder("deployment-controller")})
		}},
		{"statefulset", func(l *slog.Logger) (controller, error) {
			return statefulset.New(kube, kubeInformers, statefulset.Options{Log: l, Recorder: recorder("statefulset-controller")})
		}},
		{"daemonset", func(l *slog.Logger) (controller, error) {
			return daemonset.New(kube, kubeInformers, daemonset.Options{Log: l, Recorder: recorder("daemonset-controller")})
		}},
		{"job", func(l *slog.Logger) (controller, error) {
			return job.New(kube, kubeInformers, job.Options{Log: l, Recorder: recorder("job-controller")})
		}},
		{"endpoints", func(l *slog.Logger) (controller, error) {
			return endpoints.New(kube, kubeInformers, endpoints.Options{Log: l, Recorder: recorder("endpoint-controller")})
		}},
		{"endpointslice", func(l *slog.Logger) (controller, error) {
			return endpointslice.New(kube, kubeInformers, endpointslice.Options{Log: l, Recorder: recorder("endpointslice-controller")})
		}},
		{"servicelb", func(l *slog.Logger) (controller, error) {
			return servicelb.New(kube, kubeInformers, servicelb.Options{Log: l})
		}},
		{"cronjob", func(l *slog.Logger) (controller, error) {
			return cronjob.New(kube, kubeInformers, cronjob.Options{Log: l, Recorder: recorder("cronjob-controller")})
		}},
		{"attachdetach", func(l *slog.Logger) (controller, error) {
			return attachdetach.New(kube, kubeInformers, attachdetach.Options{Log: l, Recorder: recorder("attachdetach-controller")})
		}},
		{"ephemeral", func(l *slog.Logger) (controller, error) {
			return ephemeral.New(kube, kubeInformers, ephemeral.Options{Log: l, Recorder: recorder("ephemeral_volume")})
		}},
		{"persistentvolume", func(l *slog.Logger) (controller, error) {
			return persistentvolume.New(kube, kubeInformers, persistentvolume.Options{Log: l, Recorder: recorder("persistentvolume-controller")})
		}},
	}
	// berth server runs all of this only while it holds the Lease (core/election).
	running := map[string]controller{}
	for _, b := range builders {
		c, err := b.build(log.With("controller", b.name))
		if err != nil {
			return fmt.Errorf("%s controller: %w", b.name, err)
		}
		running[b.name] = c
	}

	g, ctx := errgroup.WithContext(ctx)
	// The factories start the informers registered so far: every controller must be built
	// before this point.
	kubeInformers.Start(ctx.Done())
	metaInformers.Start(ctx.Done())
	defer kubeInformers.Shutdown()
	defer metaInformers.Shutdown()
	for name, c := range running {
		g.Go(func() error {
			if err := c.Run(ctx); err != nil {
				return fmt.Errorf("%s controller: %w", name, err)
			}
			return nil
		})
	}
	log.Info("controllers started", "count", len(running))
	return g.Wait()
}

// dropManagedFields keeps managedFields out of the informers' caches: no controller reads
// them, and they are most of an object's metadata.
func dropManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
