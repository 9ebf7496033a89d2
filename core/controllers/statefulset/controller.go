// Package statefulset is the StatefulSet controller: it gives each replica a stable name
// (<set>-<ordinal>), hostname and PersistentVolumeClaims from the volumeClaimTemplates,
// creates the pods in order (OrderedReady: each once the lower ones are running and ready)
// or all at once (Parallel), scales down from the highest ordinal, keeps ControllerRevisions
// of the pod template and rolls pods to a new one from the highest ordinal down to the
// partition (RollingUpdate) or leaves that to the user (OnDelete). It follows Kubernetes
// 1.33's pkg/controller/statefulset, with maxUnavailable fixed at 1 (the
// MaxUnavailableStatefulSet feature is alpha there and off by default).
package statefulset

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
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/history"
	"berth.dev/berth/core/controllers/ownership"
	"berth.dev/berth/core/controllers/reconcile"
)

// Options tune the controller; the zero value is ready to use.
type Options struct {
	// Workers is how many StatefulSets are reconciled at once (5 by default, as Kubernetes).
	Workers int
	// Log receives the controller's messages (slog.Default() by default).
	Log *slog.Logger
	// Recorder receives the controller's events (dropped when nil).
	Recorder record.EventRecorder
	// Now returns the current time (time.Now by default; tests set it).
	Now func() time.Time
}

// Controller is the StatefulSet controller.
type Controller struct {
	kube      kubernetes.Interface
	opts      Options
	recorder  record.EventRecorder
	sets      appslisters.StatefulSetLister
	pods      corelisters.PodLister
	claims    corelisters.PersistentVolumeClaimLister
	revisions appslisters.ControllerRevisionLister
	queue     workqueue.TypedRateLimitingInterface[string]
	synced    []cache.InformerSynced
}

// New builds the controller and registers its informers (statefulsets, pods, claims and
// controllerrevisions) with factory; start the factory after New, then call Run.
func New(kube kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 5
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
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "statefulset"}),
	}
	if c.recorder == nil {
		c.recorder = &record.FakeRecorder{} // drops events: no channel
	}
	setInf := factory.Apps().V1().StatefulSets()
	podInf := factory.Core().V1().Pods()
	claimInf := factory.Core().V1().PersistentVolumeClaims()
	revInf := factory.Apps().V1().ControllerRevisions()
	c.sets, c.pods, c.claims, c.revisions = setInf.Lister(), podInf.Lister(), claimInf.Lister(), revInf.Lister()

	handlers := []struct {
		inf cache.SharedIndexInformer
		fn  func(any)
	}{
		{setInf.Informer(), c.enqueueSet},
		{podInf.Informer(), c.enqueueOwner},
		{revInf.Informer(), c.enqueueOwner},
		{claimInf.Informer(), func(any) {}}, // read through the lister only
	}
	for _, h := range handlers {
		fn := h.fn
		reg, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    fn,
			UpdateFunc: func(_, obj any) { fn(obj) },
			DeleteFunc: func(obj any) {
				if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = d.Obj
				}
				fn(obj)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

func (c *Controller) enqueueSet(obj any) {
	if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
		c.queue.Add(key)
	}
}

// enqueueOwner queues the set that controls a pod or revision; for an orphan, every set
// whose selector matches it (one of them may adopt it).
func (c *Controller) enqueueOwner(obj any) {
	m, ok := obj.(metav1.Object)
	if !ok {
		return
	}
	if ref := metav1.GetControllerOf(m); ref != nil {
		if ref.Kind == kindName && ref.APIVersion == kind.GroupVersion().String() {
			c.queue.Add(m.GetNamespace() + "/" + ref.Name)
		}
		return
	}
	sets, err := c.sets.StatefulSets(m.GetNamespace()).List(labels.Everything())
	if err != nil {
		return
	}
	for _, s := range sets {
		sel, err := metav1.LabelSelectorAsSelector(s.Spec.Selector)
		if err == nil && !sel.Empty() && sel.Matches(labels.Set(m.GetLabels())) {
			c.queue.Add(s.Namespace + "/" + s.Name)
		}
	}
}

// Run reconciles StatefulSets until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.opts.Log.Info("starting statefulset controller", "workers", c.opts.Workers)
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.opts.Workers, c.opts.Log)
	return nil
}

// Reconcile takes the StatefulSet with key "namespace/name" one step towards its spec and
// writes its status.
func (c *Controller) Reconcile(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	set, err := c.sets.StatefulSets(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	set = set.DeepCopy()
	selector, err := metav1.LabelSelectorAsSelector(set.Spec.Selector)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(fmt.Errorf("statefulset %s selector: %w", key, err))
	}
	if selector.Empty() {
		// Validation forbids it; adopting every pod of the namespace would be worse.
		return reconcile.Result{}, reconcile.Terminal(fmt.Errorf("statefulset %s selects all pods", key))
	}
	owner := ownership.Owner{Object: set, Kind: kind, Selector: selector, CanAdopt: c.canAdopt(set)}

	pods, err := c.claimPods(ctx, owner)
	if err != nil {
		return reconcile.Result{}, err
	}
	revs, err := c.claimRevisions(ctx, owner)
	if err != nil {
		return reconcile.Result{}, err
	}
	current, update, revs, collisionCount, err := c.chooseRevisions(ctx, set, revs)
	if err != nil {
		return reconcile.Result{}, err
	}

	now := c.opts.Now()
	p, err := newPass(set, current, update, pods, now)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	wait, syncErr := c.sync(ctx, p)
	status := computeStatus(set, p.pods(), current.Name, update.Name, collisionCount, now)
	if err := c.writeStatus(ctx, set, status); err != nil {
		return reconcile.Result{}, err
	}
	if syncErr != nil {
		return reconcile.Result{}, fmt.Errorf("sync statefulset %s: %w", key, syncErr)
	}
	if err := c.truncateHistory(ctx, set, p.pods(), revs, current, update); err != nil {
		return reconcile.Result{}, err
	}
	if wait || (set.Spec.MinReadySeconds > 0 && status.AvailableReplicas < status.ReadyReplicas) {
		// Nothing but time makes a ready pod available: look again then.
		return reconcile.Result{RequeueAfter: time.Duration(set.Spec.MinReadySeconds) * time.Second}, nil
	}
	return reconcile.Result{}, nil
}

// claimPods returns the set's pods: those named <set>-<ordinal> that it controls or adopts.
func (c *Controller) claimPods(ctx context.Context, owner ownership.Owner) ([]*corev1.Pod, error) {
	set := owner.Object
	all, err := c.pods.Pods(set.GetNamespace()).List(labels.Everything())
	if err != nil {
		return nil, err
	}
	var members []*corev1.Pod
	for _, p := range all {
		if parent, _ := parentAndOrdinal(p.Name); parent == set.GetName() {
			members = append(members, p)
		}
	}
	return ownership.Claim(ctx, owner, members, func(ctx context.Context, name string, data []byte) error {
		_, err := c.kube.CoreV1().Pods(set.GetNamespace()).Patch(ctx, name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
		return err
	})
}

// claimRevisions returns the set's revisions, oldest first.
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

// canAdopt re-reads the set from the API server: adopting for a set that was deleted and
// recreated under the same name would hand pods to the wrong owner.
func (c *Controller) canAdopt(set *appsv1.StatefulSet) func(context.Context) error {
	return ownership.Recheck(set, "StatefulSet", func(ctx context.Context) (*appsv1.StatefulSet, error) {
		return c.kube.AppsV1().StatefulSets(set.Namespace).Get(ctx, set.Name, metav1.GetOptions{})
	})
}
