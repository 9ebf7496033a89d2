// Package namespace is the namespace lifecycle controller: once a namespace is being deleted
// and still carries the "kubernetes" finalizer in spec.finalizers, it deletes everything in
// it, waits until nothing is left, and then finalizes the namespace (PUT .../finalize without
// "kubernetes"), after which the API server deletes it. It follows Kubernetes'
// pkg/controller/namespace: pods go first (OrderedNamespaceDeletion), objects are deleted
// with Background propagation, and the NamespaceDeletion* conditions report progress.
package namespace

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/reconcile"
	"berth.dev/berth/core/registry"
)

// Options tune the namespace controller; the zero value is ready to use.
type Options struct {
	// Workers is how many namespaces are cleaned at once (2 by default).
	Workers int
	// Resources are the resources to empty (the namespaced ones of registry.All() by default).
	Resources []*registry.Resource
	// Delay is how long after seeing a namespace's deletion the controller starts, so that a
	// create admitted just before it (the API server admits from a watch cache) is in the
	// store by then; Kubernetes waits 5 seconds for HA servers. 1 second by default; a
	// negative value means no delay.
	Delay time.Duration
	// Log receives the controller's messages (slog.Default() by default).
	Log *slog.Logger
}

// Controller is the namespace lifecycle controller.
type Controller struct {
	kube      kubernetes.Interface
	meta      metadata.Interface
	log       *slog.Logger
	workers   int
	delay     time.Duration
	resources []*registry.Resource // namespaced, pods first
	queue     workqueue.TypedRateLimitingInterface[string]
	synced    cache.InformerSynced
}

// New builds a namespace controller and registers its namespace informer with factory;
// start the factory after New, then call Run.
func New(kube kubernetes.Interface, meta metadata.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	if opts.Resources == nil {
		opts.Resources = registry.All()
	}
	switch {
	case opts.Delay == 0:
		opts.Delay = time.Second
	case opts.Delay < 0:
		opts.Delay = 0
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		kube:    kube,
		meta:    meta,
		log:     opts.Log,
		workers: opts.Workers,
		delay:   opts.Delay,
		// As Kubernetes' nsControllerRateLimiter: quick first retries, never more than a
		// minute apart, 10 per second overall.
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedMaxOfRateLimiter(
				workqueue.NewTypedItemExponentialFailureRateLimiter[string](5*time.Millisecond, time.Minute),
				&workqueue.TypedBucketRateLimiter[string]{Limiter: rate.NewLimiter(rate.Limit(10), 100)},
			),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "namespace"}),
	}
	for _, r := range opts.Resources {
		if r.Namespaced && isPods(r) {
			c.resources = append([]*registry.Resource{r}, c.resources...)
		} else if r.Namespaced {
			c.resources = append(c.resources, r)
		}
	}
	enqueue := func(obj any) {
		if ns, ok := obj.(*corev1.Namespace); ok && ns.DeletionTimestamp != nil {
			c.queue.AddAfter(ns.Name, c.delay)
		}
	}
	reg, err := factory.Core().V1().Namespaces().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("watch namespaces: %w", err)
	}
	c.synced = reg.HasSynced
	return c, nil
}

// Run reconciles terminating namespaces until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.log.Info("starting namespace controller", "workers", c.workers)
	if !cache.WaitForCacheSync(ctx.Done(), c.synced) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.workers, c.log)
	return nil
}

// Reconcile empties the namespace if it is being deleted and still has the "kubernetes"
// finalizer, then finalizes it. It asks to be called again while content remains.
func (c *Controller) Reconcile(ctx context.Context, name string) (reconcile.Result, error) {
	// Read the namespace from the server, not the informer: other controllers edit it during
	// termination, and a stale copy would make the finalize call conflict.
	ns, err := c.kube.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("get namespace %s: %w", name, err)
	}
	if ns.DeletionTimestamp == nil {
		return reconcile.Result{}, nil
	}
	if ns.Status.Phase != corev1.NamespaceTerminating {
		if ns, err = c.markTerminating(ctx, ns); ns == nil || err != nil {
			return reconcile.Result{}, err
		}
	}
	if !hasFinalizer(ns) {
		return reconcile.Result{}, nil
	}
	log := c.log.With("namespace", name)

	left := c.deleteContent(ctx, log, ns)
	if updateConditions(&ns.Status, left.conditions()) {
		// As in Kubernetes, conditions are informative: failing to write them is no reason to
		// stop.
		if updated, err := c.kube.CoreV1().Namespaces().UpdateStatus(ctx, ns, metav1.UpdateOptions{}); err != nil {
			log.Info("could not update the namespace's conditions", "err", err)
		} else {
			ns = updated
		}
	}
	switch {
	case len(left.errs) > 0:
		return reconcile.Result{}, fmt.Errorf("delete the content of namespace %s: %w", name, errors.Join(left.errs...))
	case !left.empty() && left.estimate > 0:
		// Pods are running out their grace periods: look again halfway, as Kubernetes does.
		wait := time.Duration(left.estimate/2+1) * time.Second
		log.Info("waiting for pods to terminate", "remaining", left.remaining, "recheck", wait)
		return reconcile.Result{RequeueAfter: wait}, nil
	case !left.empty():
		log.Info("waiting for content to be finalized", "remaining", left.remaining, "finalizers", left.finalizers)
		return reconcile.Result{Requeue: true}, nil
	}
	if err := c.finalize(ctx, ns); err != nil {
		return reconcile.Result{}, err
	}
	log.Info("namespace emptied and finalized")
	return reconcile.Result{}, nil
}

// markTerminating sets status.phase Terminating; it returns nil if the namespace is gone.
func (c *Controller) markTerminating(ctx context.Context, ns *corev1.Namespace) (*corev1.Namespace, error) {
	var out *corev1.Namespace
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		next := ns.DeepCopy()
		next.Status.Phase = corev1.NamespaceTerminating
		updated, err := c.kube.CoreV1().Namespaces().UpdateStatus(ctx, next, metav1.UpdateOptions{})
		if err == nil {
			out = updated
			return nil
		}
		if apierrors.IsConflict(err) {
			latest, gerr := c.kube.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{})
			if gerr != nil {
				return gerr
			}
			ns = latest
			if ns.Status.Phase == corev1.NamespaceTerminating {
				out = ns
				return nil
			}
		}
		return err
	})
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mark namespace %s terminating: %w", ns.Name, err)
	}
	return out, nil
}

// deleteContent deletes every namespaced resource in ns, pods first: other content is left
// alone while pods remain, so that controllers do not recreate what the pods use.
func (c *Controller) deleteContent(ctx context.Context, log *slog.Logger, ns *corev1.Namespace) *content {
	left := &content{remaining: map[string]int{}, finalizers: map[string]int{}}
	for i, res := range c.resources {
		c.deleteResource(ctx, log, res, ns.Name, left)
		if i == 0 && isPods(res) && left.remaining[remainingKey(res)] > 0 {
			break
		}
	}
	return left
}

// deleteResource deletes the collection of one resource in a namespace and counts what is
// left (objects with finalizers, pods in their grace period) into left.
func (c *Controller) deleteResource(ctx context.Context, log *slog.Logger, res *registry.Resource, namespace string, left *content) {
	client := c.meta.Resource(res.GVR()).Namespace(namespace)
	// Background, so that the server does not add the orphan finalizer a resource may default
	// to: everything in the namespace goes anyway.
	background := metav1.DeletePropagationBackground
	opts := metav1.DeleteOptions{PropagationPolicy: &background}
	err := client.DeleteCollection(ctx, opts, metav1.ListOptions{})
	if apierrors.IsMethodNotSupported(err) || apierrors.IsNotFound(err) {
		err = c.deleteEach(ctx, client, opts)
	}
	if err != nil {
		left.errs = append(left.errs, fmt.Errorf("delete %s in %s: %w", res.GVR().GroupResource(), namespace, err))
		return
	}
	list, err := client.List(ctx, metav1.ListOptions{})
	if apierrors.IsMethodNotSupported(err) || apierrors.IsNotFound(err) {
		return
	}
	if err != nil {
		left.errs = append(left.errs, fmt.Errorf("list %s in %s: %w", res.GVR().GroupResource(), namespace, err))
		return
	}
	if len(list.Items) == 0 {
		return
	}
	left.remaining[remainingKey(res)] += len(list.Items)
	withFinalizers, estimate := 0, int64(0)
	for _, item := range list.Items {
		for _, f := range item.Finalizers {
			left.finalizers[f]++
		}
		if len(item.Finalizers) > 0 {
			withFinalizers++
		}
		if isPods(res) && item.DeletionTimestamp != nil {
			// The server sets a graceful deletion's timestamp to its deadline.
			if s := int64(math.Ceil(time.Until(item.DeletionTimestamp.Time).Seconds())); s > estimate {
				estimate = s
			}
		}
	}
	left.estimate = max(left.estimate, estimate)
	if estimate == 0 && withFinalizers < len(list.Items) {
		log.Info("objects remain after deletion", "resource", res.GVR().String(), "remaining", len(list.Items))
		left.errs = append(left.errs, fmt.Errorf("unexpected items still remain in namespace: %s for gvr: %v", namespace, res.GVR()))
	}
}

// deleteEach deletes a collection one object at a time, for a resource without
// deletecollection.
func (c *Controller) deleteEach(ctx context.Context, client metadata.ResourceInterface, opts metav1.DeleteOptions) error {
	list, err := client.List(ctx, metav1.ListOptions{})
	if apierrors.IsMethodNotSupported(err) || apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, item := range list.Items {
		err := client.Delete(ctx, item.Name, opts)
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsMethodNotSupported(err) {
			return err
		}
	}
	return nil
}

// finalize removes "kubernetes" from spec.finalizers through the finalize subresource.
func (c *Controller) finalize(ctx context.Context, ns *corev1.Namespace) error {
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		next := ns.DeepCopy()
		next.Spec.Finalizers = nil
		for _, f := range ns.Spec.Finalizers {
			if f != corev1.FinalizerKubernetes {
				next.Spec.Finalizers = append(next.Spec.Finalizers, f)
			}
		}
		_, err := c.kube.CoreV1().Namespaces().Finalize(ctx, next, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			latest, gerr := c.kube.CoreV1().Namespaces().Get(ctx, ns.Name, metav1.GetOptions{})
			if gerr != nil {
				return gerr
			}
			ns = latest
		}
		return err
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("finalize namespace %s: %w", ns.Name, err)
	}
	return nil
}

func hasFinalizer(ns *corev1.Namespace) bool {
	for _, f := range ns.Spec.Finalizers {
		if f == corev1.FinalizerKubernetes {
			return true
		}
	}
	return false
}

func isPods(r *registry.Resource) bool { return r.Group == "" && r.Resource == "pods" }

// remainingKey names a resource as Kubernetes' conditions do: "pods.", "deployments.apps".
func remainingKey(r *registry.Resource) string { return r.Resource + "." + r.Group }
