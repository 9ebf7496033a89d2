// Package resourcequota is the resource quota controller: it keeps each ResourceQuota's
// status (hard and used) true to the objects in its namespace, with Kubernetes' own quota
// evaluators (k8s.io/kubernetes/pkg/quota/v1). The API server's ResourceQuota admission
// charges creates to status.used as they happen and refuses those over a limit; this
// controller fills status in for new quotas (admission refuses to charge a quota whose
// status is unknown) and gives usage back when objects go or change.
package resourcequota

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	quota "k8s.io/apiserver/pkg/quota/v1"
	"k8s.io/apiserver/pkg/quota/v1/generic"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	quotainstall "k8s.io/kubernetes/pkg/quota/v1/install"

	"berth.dev/berth/core/controllers/reconcile"
)

// measured are the resources whose usage Kubernetes' core evaluators compute from the
// objects' specs (requests, limits, service types, claim sizes): they need whole objects.
var measured = []schema.GroupVersionResource{
	{Version: "v1", Resource: "pods"},
	{Version: "v1", Resource: "services"},
	{Version: "v1", Resource: "persistentvolumeclaims"},
}

// counted are the resources quotas only count (the legacy object counts, and the workloads
// count/<resource>.<group> quotas name most): their metadata is enough, so they come from
// the metadata informers the garbage collector keeps anyway, not from a second, whole-object
// cache. A count/ quota of any other resource stays without usage, so admission refuses to
// charge it ("status unknown").
var counted = []schema.GroupVersionResource{
	{Version: "v1", Resource: "configmaps"},
	{Version: "v1", Resource: "secrets"},
	{Version: "v1", Resource: "replicationcontrollers"},
	{Version: "v1", Resource: "resourcequotas"},
	{Group: "apps", Version: "v1", Resource: "deployments"},
	{Group: "apps", Version: "v1", Resource: "replicasets"},
	{Group: "apps", Version: "v1", Resource: "statefulsets"},
	{Group: "apps", Version: "v1", Resource: "daemonsets"},
	{Group: "batch", Version: "v1", Resource: "jobs"},
	{Group: "batch", Version: "v1", Resource: "cronjobs"},
}

// Options tune the controller; the zero value is ready to use.
type Options struct {
	// Workers is how many quotas are recomputed at once (2 by default).
	Workers int
	// ResyncPeriod is how often every quota is recomputed regardless of events (5 minutes
	// by default, as kube-controller-manager's --resource-quota-sync-period).
	ResyncPeriod time.Duration
	Log          *slog.Logger
}

// Controller is the resource quota controller.
type Controller struct {
	kube     kubernetes.Interface
	opts     Options
	quotas   corelisters.ResourceQuotaLister
	registry quota.Registry
	queue    workqueue.TypedRateLimitingInterface[string]
	synced   []cache.InformerSynced
}

// New builds the controller and registers its informers with factory (whole objects, for the
// measured resources and quotas) and metaFactory (metadata, for the counted ones).
func New(kube kubernetes.Interface, factory informers.SharedInformerFactory, metaFactory metadatainformer.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	if opts.ResyncPeriod <= 0 {
		opts.ResyncPeriod = 5 * time.Minute
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		kube: kube,
		opts: opts,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "resourcequota"}),
	}
	quotaInf := factory.Core().V1().ResourceQuotas()
	c.quotas = quotaInf.Lister()
	isMeasured := func(gvr schema.GroupVersionResource) bool { return slices.Contains(measured, gvr) }
	informerFor := func(gvr schema.GroupVersionResource) (informers.GenericInformer, error) {
		if isMeasured(gvr) {
			return factory.ForResource(gvr)
		}
		return metaFactory.ForResource(gvr), nil
	}
	listers := generic.ListerFuncForResourceFunc(informerFor)
	evaluators := quotainstall.NewQuotaConfigurationForControllers(listers).Evaluators()
	for _, gvr := range counted[4:] { // the workloads; the legacy counts are among the core evaluators
		evaluators = append(evaluators, generic.NewObjectCountEvaluator(gvr.GroupResource(), generic.ListResourceUsingListerFunc(listers, gvr), ""))
	}
	c.registry = generic.NewRegistry(evaluators)
	changed := quotainstall.DefaultUpdateFilter()

	enqueueQuota := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	// Only a new quota or a changed spec.hard needs a recount: admission's charges to
	// status.used are quota updates too, and recounting on those from a pod informer that has
	// not seen the charged pod yet (it is stored after its charge) would undo them.
	reg, err := quotaInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueQuota,
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*corev1.ResourceQuota)
			n, ok2 := obj.(*corev1.ResourceQuota)
			if ok1 && ok2 && (!quota.Equals(o.Spec.Hard, n.Spec.Hard) || !quota.Equals(n.Spec.Hard, n.Status.Hard)) {
				enqueueQuota(obj)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("watch resourcequotas: %w", err)
	}
	c.synced = append(c.synced, reg.HasSynced)
	// A delete, or an update that lowers usage (a pod finishing, a service changing type),
	// gives usage back: recompute the namespace's quotas (there are few). Creates are not
	// watched, as in Kubernetes: admission charged them already, and a recount from an
	// informer that has not seen the newest create yet would undo that charge.
	enqueueNamespace := func(obj any) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		m, err := meta.Accessor(obj)
		if err != nil {
			return
		}
		quotas, err := c.quotas.ResourceQuotas(m.GetNamespace()).List(labels.Everything())
		if err != nil {
			return
		}
		for _, q := range quotas {
			c.queue.Add(q.Namespace + "/" + q.Name)
		}
	}
	for _, gvr := range slices.Concat(measured, counted) {
		inf, err := informerFor(gvr)
		if err != nil {
			return nil, fmt.Errorf("informer for %s: %w", gvr, err)
		}
		reg, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			UpdateFunc: func(old, obj any) {
				if changed(gvr, old, obj) {
					enqueueNamespace(obj)
				}
			},
			DeleteFunc: enqueueNamespace,
		})
		if err != nil {
			return nil, fmt.Errorf("watch %s: %w", gvr, err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

// Run keeps the quotas' status true until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.opts.Log.Info("starting resource quota controller")
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	go c.resync(ctx)
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.opts.Workers, c.opts.Log)
	return nil
}

// resync enqueues every quota each ResyncPeriod.
func (c *Controller) resync(ctx context.Context) {
	t := time.NewTicker(c.opts.ResyncPeriod)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			quotas, _ := c.quotas.List(labels.Everything())
			for _, q := range quotas {
				c.queue.Add(q.Namespace + "/" + q.Name)
			}
		}
	}
}

// Reconcile recomputes one quota's usage and writes status.hard and status.used when they
// changed.
func (c *Controller) Reconcile(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	q, err := c.quotas.ResourceQuotas(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	used, err := quota.CalculateUsage(ns, q.Spec.Scopes, q.Spec.Hard, c.registry, q.Spec.ScopeSelector)
	if err != nil {
		// Some resources could not be measured (not served, not synced): keep what could.
		c.opts.Log.Debug("quota usage partly unknown", "quota", key, "err", err)
	}
	// Keep usage already recorded for resources this controller cannot measure, as
	// Kubernetes does, so an admission charge is not wiped out.
	merged := q.Status.Used.DeepCopy()
	if merged == nil {
		merged = corev1.ResourceList{}
	}
	for k, v := range used {
		merged[k] = v
	}
	merged = quota.Mask(merged, quota.ResourceNames(q.Spec.Hard))
	if quota.Equals(q.Status.Hard, q.Spec.Hard) && quota.Equals(q.Status.Used, merged) {
		return reconcile.Result{}, nil
	}
	updated := q.DeepCopy()
	updated.Status.Hard = q.Spec.Hard.DeepCopy()
	updated.Status.Used = merged
	c.opts.Log.Debug("quota usage recounted", "quota", key, "used", merged, "was", q.Status.Used)
	if _, err := c.kube.CoreV1().ResourceQuotas(ns).UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		if apierrors.IsConflict(err) {
			return reconcile.Result{Requeue: true}, nil // admission charged it meanwhile: recount
		}
		return reconcile.Result{}, fmt.Errorf("update status of quota %s: %w", key, err)
	}
	return reconcile.Result{}, nil
}
