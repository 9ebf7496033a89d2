package scheduler

import (
	"context"
	"fmt"

	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"

	"berth.dev/berth/core/scheduler/plugins"
)

// Run runs the scheduler against the API server cfg points at until ctx ends.
func Run(ctx context.Context, cfg *rest.Config, opts Options) error {
	cfg = rest.CopyConfig(cfg)
	if cfg.QPS == 0 {
		// Every pod costs a bind call and a Scheduled event; kube-scheduler's default of
		// 50 would throttle a burst of thousands of pods, and the earlier 500 capped the
		// scheduler near 500 pods/s (bench scheduler measured 539 at 5,000 nodes: the
		// bucket's 500/s plus its burst), below issue 3's 700.
		cfg.QPS, cfg.Burst = 2000, 4000
	}
	if cfg.UserAgent == "" {
		cfg.UserAgent = "berth-scheduler"
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	// Events carry the component kube-scheduler reports, so that tools and users that look
	// for "default-scheduler" find them.
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: plugins.DefaultSchedulerName})

	factory := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithTransform(dropManagedFields))
	s, err := New(kube, factory, recorder, opts)
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	g.Go(func() error { return s.Run(ctx) })
	return g.Wait()
}
