// Package daemonset is the DaemonSet controller: it keeps one pod of each DaemonSet on every
// node the pod fits (nodeSelector, required node affinity, taints against the pod's
// tolerations plus those every daemon gets), deletes surplus pods and pods on nodes that no
// longer fit, replaces failed pods with a backoff, keeps ControllerRevisions of the template
// and rolls pods to a new one within maxUnavailable and maxSurge (RollingUpdate) or leaves
// that to the user (OnDelete). It follows Kubernetes 1.33's pkg/controller/daemon.
//
// As in Kubernetes 1.33 the pods are not bound here: each carries a required node affinity
// on metadata.name and the scheduler binds it. Until berth's scheduler lands such pods stay
// Pending with no spec.nodeName; the controller still counts them as scheduled on their node,
// as Kubernetes does.
package daemonset

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/flowcontrol"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/history"
	"berth.dev/berth/core/controllers/ownership"
	"berth.dev/berth/core/controllers/reconcile"
)

var kind = appsv1.SchemeGroupVersion.WithKind("DaemonSet")

// Options tune the controller; the zero value is ready to use.
type Options struct {
	// Workers is how many DaemonSets are reconciled at once (2 by default, as Kubernetes).
	Workers int
	// Log receives the controller's messages (slog.Default() by default).
	Log *slog.Logger
	// Recorder receives the controller's events (dropped when nil).
	Recorder record.EventRecorder
	// Now returns the current time (time.Now by default; tests set it).
	Now func() time.Time
}

// Controller is the DaemonSet controller.
type Controller struct {
	kube      kubernetes.Interface
	opts      Options
	recorder  record.EventRecorder
	sets      appslisters.DaemonSetLister
	pods      corelisters.PodLister
	nodes     corelisters.NodeLister
	revisions appslisters.ControllerRevisionLister
	queue     workqueue.TypedRateLimitingInterface[string]
	synced    []cache.InformerSynced
	expect    *expectations
	// backoff spaces out the replacement of a node's failed daemon pods (1 s doubling to
	// 15 min, as Kubernetes), so a pod that fails at once does not hot-loop.
	backoff *flowcontrol.Backoff
}

// New builds the controller and registers its informers (daemonsets, pods, nodes and
// controllerrevisions) with factory; start the factory after New, then call Run.
func New(kube kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	c := &Controller{
		kube:     kube,
		opts:     opts,
		recorder: opts.Recorder,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "daemonset"}),
		expect:  newExpectations(),
		backoff: flowcontrol.NewBackOff(time.Second, 15*time.Minute),
	}
	if c.recorder == nil {
		c.recorder = &record.FakeRecorder{} // drops events: no channel
	}
	dsInf := factory.Apps().V1().DaemonSets()
	podInf := factory.Core().V1().Pods()
	nodeInf := factory.Core().V1().Nodes()
	revInf := factory.Apps().V1().ControllerRevisions()
	c.sets, c.pods, c.nodes, c.revisions = dsInf.Lister(), podInf.Lister(), nodeInf.Lister(), revInf.Lister()

	add := func(fn func(any)) cache.ResourceEventHandlerFuncs {
		return cache.ResourceEventHandlerFuncs{AddFunc: fn, UpdateFunc: func(_, obj any) { fn(obj) }, DeleteFunc: func(obj any) { fn(unwrap(obj)) }}
	}
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{dsInf.Informer(), add(c.enqueueSet)},
		{podInf.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { c.podEvent(obj, true, false) },
			UpdateFunc: func(_, obj any) { c.podEvent(obj, false, false) },
			DeleteFunc: func(obj any) { c.podEvent(unwrap(obj), false, true) },
		}},
		{revInf.Informer(), add(c.enqueueOwner)},
		// Any node change may change where daemons should run.
		{nodeInf.Informer(), add(func(any) { c.enqueueAll() })},
	}
	for _, h := range handlers {
		reg, err := h.inf.AddEventHandler(h.h)
		if err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

func unwrap(obj any) any {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return d.Obj
	}
	return obj
}

func (c *Controller) enqueueSet(obj any) {
	if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
		c.queue.Add(key)
	}
}

func (c *Controller) enqueueAll() {
	sets, err := c.sets.List(labels.Everything())
	if err != nil {
		return
	}
	for _, ds := range sets {
		c.enqueueSet(ds)
	}
}

// podEvent settles the expectations of the pod's DaemonSet and queues it.
func (c *Controller) podEvent(obj any, created, deleted bool) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if ref := metav1.GetControllerOf(pod); ref != nil && ref.Kind == kind.Kind && ref.APIVersion == kind.GroupVersion().String() {
		key := pod.Namespace + "/" + ref.Name
		switch {
		case created:
			c.expect.observe(key, true)
		case deleted:
			c.expect.observe(key, false)
		}
	}
	c.enqueueOwner(pod)
}

// enqueueOwner queues the DaemonSet controlling obj; for an orphan, every DaemonSet whose
// selector matches it.
func (c *Controller) enqueueOwner(obj any) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return
	}
	if ref := metav1.GetControllerOf(m); ref != nil {
		if ref.Kind == kind.Kind && ref.APIVersion == kind.GroupVersion().String() {
			c.queue.Add(m.GetNamespace() + "/" + ref.Name)
		}
		return
	}
	sets, err := c.sets.DaemonSets(m.GetNamespace()).List(labels.Everything())
	if err != nil {
		return
	}
	for _, ds := range sets {
		sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
		if err == nil && !sel.Empty() && sel.Matches(labels.Set(m.GetLabels())) {
			c.enqueueSet(ds)
		}
	}
}

// Run reconciles DaemonSets until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.opts.Log.Info("starting daemonset controller", "workers", c.opts.Workers)
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.opts.Workers, c.opts.Log)
	return nil
}

// Reconcile takes the DaemonSet with key "namespace/name" one step towards a pod on every
// eligible node at its template, and writes its status.
func (c *Controller) Reconcile(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	ds, err := c.sets.DaemonSets(ns).Get(name)
	if apierrors.IsNotFound(err) {
		c.expect.forget(key)
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	ds = ds.DeepCopy()
	selector, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(fmt.Errorf("daemonset %s selector: %w", key, err))
	}
	if selector.Empty() {
		c.recorder.Eventf(ds, corev1.EventTypeWarning, "SelectingAll", "This daemon set is selecting all pods. A non-empty selector is required.")
		return reconcile.Result{}, nil
	}
	owner := ownership.Owner{Object: ds, Kind: kind, Selector: selector, CanAdopt: c.canAdopt(ds)}
	nodes, err := c.nodes.List(labels.Everything())
	if err != nil {
		return reconcile.Result{}, err
	}
	revs, err := c.claimRevisions(ctx, owner)
	if err != nil {
		return reconcile.Result{}, err
	}
	cur, old, err := c.constructHistory(ctx, ds, revs)
	if err != nil {
		return reconcile.Result{}, err
	}
	hash := cur.Labels[appsv1.DefaultDaemonSetUniqueLabelKey]
	pods, err := c.claimPods(ctx, owner)
	if err != nil {
		return reconcile.Result{}, err
	}
	byNode := podsByNode(pods)
	now := c.opts.Now()

	var res reconcile.Result
	var syncErr error
	if c.expect.satisfied(key) && ds.DeletionTimestamp == nil {
		res, syncErr = c.update(ctx, key, ds, nodes, byNode, hash, now)
		if syncErr == nil {
			syncErr = c.cleanupHistory(ctx, ds, pods, old, cur)
		}
	}
	if err := c.writeStatus(ctx, ds, computeStatus(ds, nodes, byNode, hash, now)); err != nil {
		return reconcile.Result{}, err
	}
	if syncErr != nil {
		return reconcile.Result{}, fmt.Errorf("sync daemonset %s: %w", key, syncErr)
	}
	if ds.Spec.MinReadySeconds > 0 && res.RequeueAfter == 0 {
		// Nothing but time makes a ready pod available.
		res.RequeueAfter = time.Duration(ds.Spec.MinReadySeconds) * time.Second
	}
	return res, nil
}

// update runs the core loop (pods where they belong, none elsewhere) and, once that has
// nothing to do, one step of the rolling update.
func (c *Controller) update(ctx context.Context, key string, ds *appsv1.DaemonSet, nodes []*corev1.Node, byNode map[string][]*corev1.Pod, hash string, now time.Time) (reconcile.Result, error) {
	plan := c.manage(ds, nodes, byNode, hash, now)
	if len(plan.create) == 0 && len(plan.remove) == 0 && ds.Spec.UpdateStrategy.Type == appsv1.RollingUpdateDaemonSetStrategyType {
		plan.create, plan.remove = rollingUpdate(ds, nodes, byNode, hash, now)
	}
	if err := c.syncNodes(ctx, key, ds, plan.remove, plan.create, hash); err != nil {
		return reconcile.Result{}, err
	}
	return reconcile.Result{RequeueAfter: plan.retryAfter}, nil
}

// claimPods returns the pods the DaemonSet controls or adopts.
func (c *Controller) claimPods(ctx context.Context, owner ownership.Owner) ([]*corev1.Pod, error) {
	ns := owner.Object.GetNamespace()
	all, err := c.pods.Pods(ns).List(labels.Everything())
	if err != nil {
		return nil, err
	}
	return ownership.Claim(ctx, owner, all, func(ctx context.Context, name string, data []byte) error {
		_, err := c.kube.CoreV1().Pods(ns).Patch(ctx, name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
		return err
	})
}

// claimRevisions returns the DaemonSet's revisions, oldest first.
func (c *Controller) claimRevisions(ctx context.Context, owner ownership.Owner) ([]*appsv1.ControllerRevision, error) {
	all, err := c.revisions.ControllerRevisions(owner.Object.GetNamespace()).List(owner.Selector)
	if err != nil {
		return nil, err
	}
	revs, err := history.Claim(ctx, c.kube, owner, all)
	if err != nil {
		return nil, err
	}
	history.Sort(revs)
	return revs, nil
}

// canAdopt re-reads the DaemonSet: one deleted and recreated under the same name must not
// adopt for the old one.
func (c *Controller) canAdopt(ds *appsv1.DaemonSet) func(context.Context) error {
	return ownership.Recheck(ds, "DaemonSet", func(ctx context.Context) (*appsv1.DaemonSet, error) {
		return c.kube.AppsV1().DaemonSets(ds.Namespace).Get(ctx, ds.Name, metav1.GetOptions{})
	})
}

// podsByNode groups pods by the node they are for; terminal pods already being deleted are
// left out (nothing remains to do with them).
func podsByNode(pods []*corev1.Pod) map[string][]*corev1.Pod {
	out := map[string][]*corev1.Pod{}
	for _, p := range pods {
		if p.DeletionTimestamp != nil && (p.Status.Phase == corev1.PodFailed || p.Status.Phase == corev1.PodSucceeded) {
			continue
		}
		node, err := targetNode(p)
		if err != nil {
			continue
		}
		out[node] = append(out[node], p)
	}
	return out
}
