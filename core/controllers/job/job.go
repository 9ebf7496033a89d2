// Package job is the Job controller: it runs a Job's pods until enough of them succeed, or
// until the Job fails (backoffLimit, activeDeadlineSeconds, a podFailurePolicy FailJob rule),
// and deletes finished Jobs whose ttlSecondsAfterFinished has run out (Kubernetes'
// TTL-after-finished controller). It follows Kubernetes 1.33's pkg/controller/job: pods carry
// the batch.kubernetes.io/job-tracking finalizer until they are counted in the Job's status
// (through status.uncountedTerminatedPods), a Job first gets the interim SuccessCriteriaMet or
// FailureTarget condition and only then, once no pod is left running or terminating,
// Complete or Failed.
package job

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	batchlisters "k8s.io/client-go/listers/batch/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/reconcile"
)

// controllerName is the value of spec.managedBy that this controller serves (as does an
// empty one).
const controllerName = "kubernetes.io/job-controller"

// Legacy, unprefixed labels the Job controller has always put on pods, still set for tools
// that select on them.
const (
	legacyControllerUIDLabel = "controller-uid"
	legacyJobNameLabel       = "job-name"
)

// kind is the Job's group, version and kind, as written into the pods' ownerReferences.
var kind = batchv1.SchemeGroupVersion.WithKind("Job")

// Options tune the controller; the zero value is ready to use.
type Options struct {
	// Workers is how many Jobs are synced at once (5 by default, as kube-controller-manager).
	Workers int
	// Log receives the controller's messages (slog.Default() by default).
	Log *slog.Logger
	// Recorder receives the Jobs' events (none when nil).
	Recorder record.EventRecorder
	// Now returns the current time (time.Now by default; tests set it).
	Now func() time.Time
}

// Controller is the Job controller.
type Controller struct {
	kube     kubernetes.Interface
	opts     Options
	log      *slog.Logger
	recorder record.EventRecorder
	jobs     batchlisters.JobLister
	pods     corelisters.PodLister
	queue    workqueue.TypedRateLimitingInterface[string]
	synced   []cache.InformerSynced
	backoff  *backoffStore
}

// New builds the controller and registers its informers (jobs, pods) with factory; start the
// factory after New, then call Run.
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
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "job"}),
		backoff: newBackoffStore(),
	}
	if c.recorder == nil {
		c.recorder = &record.FakeRecorder{} // drops events: no channel
	}
	jobInf := factory.Batch().V1().Jobs()
	podInf := factory.Core().V1().Pods()
	c.jobs, c.pods = jobInf.Lister(), podInf.Lister()

	reg, err := jobInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueJob,
		UpdateFunc: func(_, obj any) { c.enqueueJob(obj) },
		// A deleted Job's pods may still carry the tracking finalizer: the sync releases them.
		DeleteFunc: c.enqueueJob,
	})
	if err != nil {
		return nil, fmt.Errorf("watch jobs: %w", err)
	}
	c.synced = append(c.synced, reg.HasSynced)
	reg, err = podInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueuePodOwner,
		UpdateFunc: func(_, obj any) { c.enqueuePodOwner(obj) },
		DeleteFunc: c.enqueuePodOwner,
	})
	if err != nil {
		return nil, fmt.Errorf("watch pods: %w", err)
	}
	c.synced = append(c.synced, reg.HasSynced)
	return c, nil
}

// Run syncs Jobs until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.log.Info("starting job controller", "workers", c.opts.Workers)
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.opts.Workers, c.log)
	return nil
}

func (c *Controller) enqueueJob(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	if j, ok := obj.(*batchv1.Job); ok {
		c.queue.Add(j.Namespace + "/" + j.Name)
	}
}

// enqueuePodOwner queues the Job controlling a pod or, for an orphan, every Job whose
// selector matches it (one of them may adopt it).
func (c *Controller) enqueuePodOwner(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if ref := metav1.GetControllerOf(pod); ref != nil {
		if ref.Kind == kind.Kind && ref.APIVersion == kind.GroupVersion().String() {
			c.queue.Add(pod.Namespace + "/" + ref.Name)
		}
		return
	}
	if pod.DeletionTimestamp != nil || len(pod.Labels) == 0 {
		return
	}
	jobs, err := c.jobs.Jobs(pod.Namespace).List(labels.Everything())
	if err != nil {
		return
	}
	for _, j := range jobs {
		if sel, err := selector(j); err == nil && sel.Matches(labels.Set(pod.Labels)) {
			c.queue.Add(j.Namespace + "/" + j.Name)
		}
	}
}
