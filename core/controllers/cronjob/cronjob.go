// Package cronjob is the CronJob controller: at each time a CronJob's schedule names it
// creates a Job from the CronJob's jobTemplate, named <cronjob>-<scheduled time in minutes
// since the epoch> so that a time is never run twice, honouring startingDeadlineSeconds,
// concurrencyPolicy and suspend; it tracks the running Jobs in status.active and deletes
// finished Jobs beyond the history limits. It follows Kubernetes 1.33's pkg/controller/cronjob
// (the "v2" controller, which requeues each CronJob for its next schedule time instead of
// polling).
package cronjob

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	batchlisters "k8s.io/client-go/listers/batch/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/reconcile"
)

// kind is the CronJob's group, version and kind, as written into its Jobs' ownerReferences.
var kind = batchv1.SchemeGroupVersion.WithKind("CronJob")

// Options tune the controller; the zero value is ready to use.
type Options struct {
	// Workers is how many CronJobs are synced at once (5 by default, as
	// kube-controller-manager).
	Workers int
	// Log receives the controller's messages (slog.Default() by default).
	Log *slog.Logger
	// Recorder receives the CronJobs' events (none when nil).
	Recorder record.EventRecorder
	// Now returns the current time (time.Now by default; tests set it).
	Now func() time.Time
}

// Controller is the CronJob controller.
type Controller struct {
	kube     kubernetes.Interface
	opts     Options
	log      *slog.Logger
	recorder record.EventRecorder
	cronJobs batchlisters.CronJobLister
	jobs     batchlisters.JobLister
	queue    workqueue.TypedRateLimitingInterface[string]
	synced   []cache.InformerSynced
}

// New builds the controller and registers its informers (cronjobs, jobs) with factory; start
// the factory after New, then call Run.
func New(kube kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 5
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		kube:     kube,
		opts:     opts,
		log:      opts.Log,
		recorder: opts.Recorder,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "cronjob"}),
	}
	if c.recorder == nil {
		c.recorder = &record.FakeRecorder{} // drops events: no channel
	}
	cjInf := factory.Batch().V1().CronJobs()
	jobInf := factory.Batch().V1().Jobs()
	c.cronJobs, c.jobs = cjInf.Lister(), jobInf.Lister()

	reg, err := cjInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueue,
		UpdateFunc: c.cronJobUpdated,
	})
	if err != nil {
		return nil, fmt.Errorf("watch cronjobs: %w", err)
	}
	c.synced = append(c.synced, reg.HasSynced)
	reg, err = jobInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueOwner,
		UpdateFunc: func(_, obj any) { c.enqueueOwner(obj) },
		DeleteFunc: c.enqueueOwner,
	})
	if err != nil {
		return nil, fmt.Errorf("watch jobs: %w", err)
	}
	c.synced = append(c.synced, reg.HasSynced)
	return c, nil
}

// Run syncs CronJobs until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.log.Info("starting cronjob controller", "workers", c.opts.Workers)
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.opts.Workers, c.log)
	return nil
}

func (c *Controller) enqueue(obj any) {
	if cj, ok := obj.(*batchv1.CronJob); ok {
		c.queue.Add(cj.Namespace + "/" + cj.Name)
	}
}

// cronJobUpdated syncs a changed CronJob now, except for a new schedule or time zone, which
// only moves its next run: a sync now could start a Job for a time the old schedule
// skipped.
func (c *Controller) cronJobUpdated(old, obj any) {
	prev, ok1 := old.(*batchv1.CronJob)
	cj, ok2 := obj.(*batchv1.CronJob)
	if !ok1 || !ok2 {
		return
	}
	key := cj.Namespace + "/" + cj.Name
	if prev.Spec.Schedule == cj.Spec.Schedule && equalPtr(prev.Spec.TimeZone, cj.Spec.TimeZone) {
		c.queue.Add(key)
		return
	}
	sched, err := parseSchedule(cj)
	if err != nil {
		c.queue.Add(key) // the sync reports it
		return
	}
	c.queue.AddAfter(key, untilNext(cj, c.opts.Now(), sched))
}

// enqueueOwner queues the CronJob controlling a Job.
func (c *Controller) enqueueOwner(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	job, ok := obj.(*batchv1.Job)
	if !ok {
		return
	}
	if ref := metav1.GetControllerOf(job); ref != nil && ref.Kind == kind.Kind && ref.APIVersion == kind.GroupVersion().String() {
		c.queue.Add(job.Namespace + "/" + ref.Name)
	}
}

func equalPtr[T comparable](a, b *T) bool {
	return (a == nil && b == nil) || (a != nil && b != nil && *a == *b)
}
