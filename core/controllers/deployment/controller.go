// Package deployment is the Deployment controller: it rolls a Deployment's pod template out
// through ReplicaSets (one per template, named <deployment>-<pod-template-hash>), with the
// RollingUpdate and Recreate strategies, proportional scaling, pause, revision history and
// the status and conditions kubectl rollout reads. It follows Kubernetes 1.33's
// pkg/controller/deployment: same annotations, condition reasons and event wording.
package deployment

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/reconcile"
)

// kind is what the controller writes into the ownerReferences of its ReplicaSets.
var kind = appsv1.SchemeGroupVersion.WithKind("Deployment")

// Options tune the Deployment controller; the zero value is ready to use.
type Options struct {
	// Workers is how many deployments are synced at once (5 by default).
	Workers int
	// Log receives the controller's messages (slog.Default() by default).
	Log *slog.Logger
	// Recorder receives the controller's events; nil drops them.
	Recorder record.EventRecorder
}

// Controller is the Deployment controller.
type Controller struct {
	kube        kubernetes.Interface
	log         *slog.Logger
	recorder    record.EventRecorder
	workers     int
	queue       workqueue.TypedRateLimitingInterface[string]
	deployments appslisters.DeploymentLister
	replicaSets appslisters.ReplicaSetLister
	pods        corelisters.PodLister
	synced      []cache.InformerSynced
	// now is the clock of conditions and progress deadlines; tests replace it.
	now func() time.Time
}

// New builds a Deployment controller and registers its Deployment, ReplicaSet and Pod
// informers with factory; start the factory after New, then call Run.
func New(kube kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 5
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Recorder == nil {
		// A FakeRecorder without a channel drops every event.
		opts.Recorder = &record.FakeRecorder{}
	}
	c := &Controller{
		kube:     kube,
		log:      opts.Log,
		recorder: opts.Recorder,
		workers:  opts.Workers,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "deployment"}),
		deployments: factory.Apps().V1().Deployments().Lister(),
		replicaSets: factory.Apps().V1().ReplicaSets().Lister(),
		pods:        factory.Core().V1().Pods().Lister(),
		now:         time.Now,
	}
	dreg, err := factory.Apps().V1().Deployments().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueObject,
		UpdateFunc: func(_, obj any) { c.enqueueObject(obj) },
		DeleteFunc: c.enqueueObject,
	})
	if err != nil {
		return nil, fmt.Errorf("watch deployments: %w", err)
	}
	rsreg, err := factory.Apps().V1().ReplicaSets().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.addReplicaSet,
		UpdateFunc: c.updateReplicaSet,
		DeleteFunc: c.deleteReplicaSet,
	})
	if err != nil {
		return nil, fmt.Errorf("watch replicasets: %w", err)
	}
	preg, err := factory.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		DeleteFunc: c.deletePod,
	})
	if err != nil {
		return nil, fmt.Errorf("watch pods: %w", err)
	}
	c.synced = []cache.InformerSynced{dreg.HasSynced, rsreg.HasSynced, preg.HasSynced}
	return c, nil
}

// Run syncs deployments until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.log.Info("starting deployment controller", "workers", c.workers)
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.workers, c.log)
	return nil
}

// enqueueObject queues the key of a Deployment (or of a deleted one's tombstone).
func (c *Controller) enqueueObject(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		c.log.Info("cannot key object", "err", err)
		return
	}
	c.queue.Add(key)
}

func (c *Controller) enqueue(d *appsv1.Deployment) { c.queue.Add(d.Namespace + "/" + d.Name) }

func (c *Controller) addReplicaSet(obj any) {
	rs, ok := obj.(*appsv1.ReplicaSet)
	if !ok {
		return
	}
	if rs.DeletionTimestamp != nil {
		// Seen for the first time already deleting (after a relist): treat it as a delete.
		c.deleteReplicaSet(rs)
		return
	}
	if ref := metav1.GetControllerOf(rs); ref != nil {
		if d := c.resolveControllerRef(rs.Namespace, ref); d != nil {
			c.enqueue(d)
		}
		return
	}
	// An orphan: every deployment that selects it may want to adopt it.
	for _, d := range c.deploymentsSelecting(rs) {
		c.enqueue(d)
	}
}

func (c *Controller) updateReplicaSet(oldObj, newObj any) {
	old, ok1 := oldObj.(*appsv1.ReplicaSet)
	cur, ok2 := newObj.(*appsv1.ReplicaSet)
	if !ok1 || !ok2 || old.ResourceVersion == cur.ResourceVersion {
		return // a resync: nothing changed
	}
	curRef, oldRef := metav1.GetControllerOf(cur), metav1.GetControllerOf(old)
	refChanged := !refEqual(curRef, oldRef)
	if refChanged && oldRef != nil {
		// The former owner must notice that it lost the ReplicaSet.
		if d := c.resolveControllerRef(old.Namespace, oldRef); d != nil {
			c.enqueue(d)
		}
	}
	if curRef != nil {
		if d := c.resolveControllerRef(cur.Namespace, curRef); d != nil {
			c.enqueue(d)
		}
		return
	}
	if refChanged || !labels.Equals(cur.Labels, old.Labels) {
		for _, d := range c.deploymentsSelecting(cur) {
			c.enqueue(d)
		}
	}
}

func (c *Controller) deleteReplicaSet(obj any) {
	rs, ok := obj.(*appsv1.ReplicaSet)
	if !ok {
		tomb, ok := obj.(cache.DeletedFinalStateUnknown)
		if !ok {
			return
		}
		if rs, ok = tomb.Obj.(*appsv1.ReplicaSet); !ok {
			return
		}
	}
	if ref := metav1.GetControllerOf(rs); ref != nil {
		if d := c.resolveControllerRef(rs.Namespace, ref); d != nil {
			c.enqueue(d)
		}
	}
}

// deletePod wakes a Recreate deployment once the last of its pods is gone: it waits for
// that before it scales the new ReplicaSet up, and no ReplicaSet event says so.
func (c *Controller) deletePod(obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		tomb, ok := obj.(cache.DeletedFinalStateUnknown)
		if !ok {
			return
		}
		if pod, ok = tomb.Obj.(*corev1.Pod); !ok {
			return
		}
	}
	ref := metav1.GetControllerOf(pod)
	if ref == nil || ref.Kind != "ReplicaSet" {
		return
	}
	rs, err := c.replicaSets.ReplicaSets(pod.Namespace).Get(ref.Name)
	if err != nil || rs.UID != ref.UID {
		return
	}
	rsRef := metav1.GetControllerOf(rs)
	if rsRef == nil {
		return
	}
	d := c.resolveControllerRef(rs.Namespace, rsRef)
	if d == nil || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
		return
	}
	owned, err := c.ownedReplicaSets(d)
	if err != nil {
		return
	}
	pods, err := c.podsByReplicaSet(d, owned)
	if err != nil {
		return
	}
	for _, list := range pods {
		if len(list) > 0 {
			return
		}
	}
	c.enqueue(d)
}

// resolveControllerRef returns the Deployment a controller reference names, if it is the
// same object (same UID) as in the cache.
func (c *Controller) resolveControllerRef(namespace string, ref *metav1.OwnerReference) *appsv1.Deployment {
	if ref.Kind != kind.Kind {
		return nil
	}
	d, err := c.deployments.Deployments(namespace).Get(ref.Name)
	if err != nil || d.UID != ref.UID {
		return nil
	}
	return d
}

// deploymentsSelecting lists the deployments of the ReplicaSet's namespace whose non-empty
// selector matches it.
func (c *Controller) deploymentsSelecting(rs *appsv1.ReplicaSet) []*appsv1.Deployment {
	if len(rs.Labels) == 0 {
		return nil
	}
	all, err := c.deployments.Deployments(rs.Namespace).List(labels.Everything())
	if err != nil {
		return nil
	}
	var out []*appsv1.Deployment
	for _, d := range all {
		sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
		if err != nil || sel.Empty() || !sel.Matches(labels.Set(rs.Labels)) {
			continue
		}
		out = append(out, d)
	}
	return out
}

func refEqual(a, b *metav1.OwnerReference) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.UID == b.UID && a.Name == b.Name && a.Kind == b.Kind && a.APIVersion == b.APIVersion
}
