// Package endpointslice is the EndpointSlice controller: for every Service with a selector
// it keeps the discovery.k8s.io/v1 EndpointSlices labelled with the Service's name true to
// the pods the selector picks, at most MaxEndpointsPerSlice endpoints a slice, one slice
// group per address type and per distinct set of resolved ports. It follows Kubernetes'
// pkg/controller/endpointslice and k8s.io/endpointslice (1.33); it is its own package,
// apart from the Endpoints controller, because the two objects differ in what they list
// (slices keep terminating pods, with conditions) and in how they are written (many slices,
// owned by the Service, against one Endpoints object of the Service's name).
package endpointslice

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/internal/podaddr"
	"berth.dev/berth/core/controllers/reconcile"
)

// MaxEndpointsPerSlice is Kubernetes' default --max-endpoints-per-slice.
const MaxEndpointsPerSlice = 100

// ControllerName is the value of the endpointslice.kubernetes.io/managed-by label on the
// slices this controller manages; slices managed by others are left alone.
const ControllerName = "endpointslice-controller.k8s.io"

// expectationTimeout bounds how long a write of ours may stay unseen by the informer before
// the controller stops waiting for it (someone else may have deleted the slice meanwhile).
const expectationTimeout = 30 * time.Second

// Options tune the controller; the zero value is ready to use.
type Options struct {
	Workers int
	Log     *slog.Logger
	// Recorder receives FailedToUpdateEndpointSlices events (none when nil).
	Recorder record.EventRecorder
	// MaxEndpointsPerSlice overrides MaxEndpointsPerSlice (tests set it).
	MaxEndpointsPerSlice int
}

// Controller is the EndpointSlice controller.
type Controller struct {
	kube     kubernetes.Interface
	opts     Options
	services corelisters.ServiceLister
	pods     corelisters.PodLister
	slices   discoverylisters.EndpointSliceLister
	queue    workqueue.TypedRateLimitingInterface[string]
	synced   []cache.InformerSynced
	recorder record.EventRecorder
	tracker  *tracker
}

// New builds the controller and registers its informers with factory.
func New(kube kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 5
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.MaxEndpointsPerSlice <= 0 {
		opts.MaxEndpointsPerSlice = MaxEndpointsPerSlice
	}
	c := &Controller{
		kube: kube, opts: opts, recorder: opts.Recorder, tracker: newTracker(),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "endpointslice"}),
	}
	if c.recorder == nil {
		c.recorder = &record.FakeRecorder{} // no channel: drops events
	}
	svcInf := factory.Core().V1().Services()
	podInf := factory.Core().V1().Pods()
	sliceInf := factory.Discovery().V1().EndpointSlices()
	c.services, c.pods, c.slices = svcInf.Lister(), podInf.Lister(), sliceInf.Lister()

	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	onPod := func(objs ...any) {
		for _, key := range podaddr.ServicesFor(c.services, objs...) {
			c.queue.Add(key)
		}
	}
	// A slice of ours changing (our own writes arriving, or someone else's) concerns its
	// Service.
	onSlice := func(obj any) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		s, ok := obj.(*discoveryv1.EndpointSlice)
		if !ok || s.Labels[discoveryv1.LabelManagedBy] != ControllerName || s.Labels[discoveryv1.LabelServiceName] == "" {
			return
		}
		c.queue.Add(s.Namespace + "/" + s.Labels[discoveryv1.LabelServiceName])
	}
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{svcInf.Informer(), cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue}},
		{podInf.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc: func(o any) { onPod(o) },
			UpdateFunc: func(old, o any) {
				if old.(*corev1.Pod).ResourceVersion != o.(*corev1.Pod).ResourceVersion {
					onPod(old, o)
				}
			},
			DeleteFunc: func(o any) { onPod(o) },
		}},
		{sliceInf.Informer(), cache.ResourceEventHandlerFuncs{AddFunc: onSlice, UpdateFunc: func(_, o any) { onSlice(o) }, DeleteFunc: onSlice}},
	}
	for _, x := range handlers {
		reg, err := x.inf.AddEventHandler(x.h)
		if err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

// Run keeps the EndpointSlices true until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.opts.Log.Info("starting endpointslice controller")
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.opts.Workers, c.opts.Log)
	return nil
}

// Reconcile makes the EndpointSlices of one Service right.
func (c *Controller) Reconcile(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	existing, err := c.slices.EndpointSlices(ns).List(labels.SelectorFromValidatedSet(labels.Set{
		discoveryv1.LabelServiceName: name, discoveryv1.LabelManagedBy: ControllerName,
	}))
	if err != nil {
		return reconcile.Result{}, err
	}
	// Acting on a cache that has not seen our last writes would create slices twice.
	if c.tracker.stale(key, existing) {
		return reconcile.Result{RequeueAfter: time.Second}, nil
	}
	svc, err := c.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		// The garbage collector deletes them too, through their owner reference; doing it
		// here does not leave them to a controller that may not run.
		err := c.apply(ctx, key, plan{remove: existing})
		c.tracker.forget(key)
		return reconcile.Result{}, err
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if svc.Spec.Selector == nil || svc.Spec.Type == corev1.ServiceTypeExternalName {
		return reconcile.Result{}, nil
	}
	pods, err := c.pods.Pods(ns).List(labels.SelectorFromValidatedSet(svc.Spec.Selector))
	if err != nil {
		return reconcile.Result{}, err
	}
	p := planFor(svc, pods, existing, c.opts.MaxEndpointsPerSlice)
	if err := c.apply(ctx, key, p); err != nil {
		c.recorder.Eventf(svc, corev1.EventTypeWarning, "FailedToUpdateEndpointSlices", "Error updating Endpoint Slices for Service %s: %v", key, err)
		return reconcile.Result{}, err
	}
	return reconcile.Result{}, nil
}

// apply deletes, updates and creates the slices of a plan, in that order, and records what
// the informer must show before the Service is reconciled again.
func (c *Controller) apply(ctx context.Context, key string, p plan) error {
	api := c.kube.DiscoveryV1()
	for _, s := range p.remove {
		err := api.EndpointSlices(s.Namespace).Delete(ctx, s.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &s.UID}})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete EndpointSlice %s/%s: %w", s.Namespace, s.Name, err)
		}
		c.tracker.expectDeleted(key, s.Name)
	}
	for _, s := range p.update {
		got, err := api.EndpointSlices(s.Namespace).Update(ctx, s, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update EndpointSlice %s/%s: %w", s.Namespace, s.Name, err)
		}
		c.tracker.expect(key, got)
	}
	for _, s := range p.create {
		got, err := api.EndpointSlices(s.Namespace).Create(ctx, s, metav1.CreateOptions{})
		if err != nil {
			if apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
				return nil
			}
			return fmt.Errorf("create EndpointSlice for %s: %w", key, err)
		}
		c.tracker.expect(key, got)
	}
	return nil
}

// tracker remembers, per Service, the slices this controller wrote or deleted until the
// informer shows them so (Kubernetes' endpointSliceTracker does the same with generations).
type tracker struct {
	mu   sync.Mutex
	bySv map[string]map[string]expectation // service key -> slice name -> what we wrote
}

type expectation struct {
	resourceVersion int64 // 0 for a deletion
	at              time.Time
}

func newTracker() *tracker { return &tracker{bySv: map[string]map[string]expectation{}} }

func (t *tracker) expect(key string, s *discoveryv1.EndpointSlice) {
	rv, err := strconv.ParseInt(s.ResourceVersion, 10, 64)
	if err != nil || s.Name == "" {
		return // a server whose versions are not numbers: nothing to compare with
	}
	t.set(key, s.Name, expectation{resourceVersion: rv, at: time.Now()})
}

func (t *tracker) expectDeleted(key, name string) {
	t.set(key, name, expectation{at: time.Now()})
}

func (t *tracker) set(key, name string, e expectation) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.bySv[key] == nil {
		t.bySv[key] = map[string]expectation{}
	}
	t.bySv[key][name] = e
}

func (t *tracker) forget(key string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.bySv, key)
}

// stale reports whether the listed slices miss a write of ours; expectations met, or too
// old to wait for, are dropped.
func (t *tracker) stale(key string, listed []*discoveryv1.EndpointSlice) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	exp := t.bySv[key]
	stale := false
	for name, e := range exp {
		var seen *discoveryv1.EndpointSlice
		for _, s := range listed {
			if s.Name == name {
				seen = s
			}
		}
		met := false
		switch {
		case e.resourceVersion == 0:
			met = seen == nil
		case seen != nil:
			rv, err := strconv.ParseInt(seen.ResourceVersion, 10, 64)
			met = err != nil || rv >= e.resourceVersion
		}
		if met || time.Since(e.at) > expectationTimeout {
			delete(exp, name)
			continue
		}
		stale = true
	}
	if len(exp) == 0 {
		delete(t.bySv, key)
	}
	return stale
}
