// Package replicaset is the ReplicaSet and ReplicationController controller: it keeps the
// number of active pods each one controls at spec.replicas, adopting matching orphans and
// releasing pods that stop matching, and reports the counts in status. It follows
// Kubernetes 1.33's pkg/controller/replicaset, which serves ReplicationControllers by
// converting them to ReplicaSets (pkg/controller/replication); one Controller here runs
// both kinds, told apart by the kind in its keys.
package replicaset

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
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/ownership"
	"berth.dev/berth/core/controllers/reconcile"
)

// Options tune the controller; the zero value is ready to use.
type Options struct {
	// Workers is how many owners are synced at once (5 by default).
	Workers int
	// Log receives the controller's messages (slog.Default() by default).
	Log *slog.Logger
	// Recorder receives the SuccessfulCreate, FailedDelete ... events (dropped when nil).
	Recorder record.EventRecorder
	// BurstReplicas caps the pods one sync creates or deletes (500 by default).
	BurstReplicas int
}

// Key names one owner: its kind (KindReplicaSet or KindReplicationController), namespace
// and name.
type Key struct {
	Kind, Namespace, Name string
}

// String formats the key for logs: "ReplicaSet ns/name".
func (k Key) String() string { return k.Kind + " " + k.Namespace + "/" + k.Name }

// Controller is the ReplicaSet and ReplicationController controller.
type Controller struct {
	kube         kubernetes.Interface
	log          *slog.Logger
	recorder     record.EventRecorder
	workers      int
	burst        int
	kinds        map[string]kindAPI
	pods         corelisters.PodLister
	expectations *expectations
	queue        workqueue.TypedRateLimitingInterface[Key]
	synced       []cache.InformerSynced
}

// New builds the controller and registers its ReplicaSet, ReplicationController and pod
// informers with factory; start the factory after New, then call Run.
func New(kube kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 5
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.Recorder == nil {
		opts.Recorder = discard{}
	}
	if opts.BurstReplicas <= 0 {
		opts.BurstReplicas = 500
	}
	rsInformer := factory.Apps().V1().ReplicaSets()
	rcInformer := factory.Core().V1().ReplicationControllers()
	podInformer := factory.Core().V1().Pods()
	c := &Controller{
		kube:     kube,
		log:      opts.Log,
		recorder: opts.Recorder,
		workers:  opts.Workers,
		burst:    opts.BurstReplicas,
		kinds: map[string]kindAPI{
			KindReplicaSet:            replicaSets{kube: kube, lister: rsInformer.Lister()},
			KindReplicationController: replicationControllers{kube: kube, lister: rcInformer.Lister()},
		},
		pods:         podInformer.Lister(),
		expectations: newExpectations(),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.DefaultTypedControllerRateLimiter[Key](),
			workqueue.TypedRateLimitingQueueConfig[Key]{Name: "replicaset"}),
	}
	for kind, inf := range map[string]cache.SharedIndexInformer{
		KindReplicaSet:            rsInformer.Informer(),
		KindReplicationController: rcInformer.Informer(),
	} {
		reg, err := inf.AddEventHandler(c.ownerHandler(kind))
		if err != nil {
			return nil, fmt.Errorf("watch %ss: %w", kind, err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	reg, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.addPod,
		UpdateFunc: c.updatePod,
		DeleteFunc: c.deletePod,
	})
	if err != nil {
		return nil, fmt.Errorf("watch pods: %w", err)
	}
	c.synced = append(c.synced, reg.HasSynced)
	return c, nil
}

// Run syncs ReplicaSets and ReplicationControllers until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.log.Info("starting replicaset controller", "workers", c.workers)
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[Key](c.Reconcile), c.workers, c.log)
	return nil
}

// Reconcile claims the owner's pods, creates or deletes pods until spec.replicas are
// active (unless it still waits to observe its previous creates and deletes), and writes
// the status.
func (c *Controller) Reconcile(ctx context.Context, key Key) (reconcile.Result, error) {
	api, ok := c.kinds[key.Kind]
	if !ok {
		return reconcile.Result{}, reconcile.Terminal(fmt.Errorf("sync %s: unknown kind", key))
	}
	o, err := api.cached(key.Namespace, key.Name)
	if apierrors.IsNotFound(err) {
		c.expectations.forget(key)
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("get %s: %w", key, err)
	}
	rs := o.rs
	// Read before listing pods: an observation that lands in between then makes the next
	// pass, not this one, act on it.
	needsSync := c.expectations.satisfied(key)
	selector, err := metav1.LabelSelectorAsSelector(rs.Spec.Selector)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(fmt.Errorf("%s has an invalid selector: %w", key, err))
	}
	// Every pod of the namespace, not only the selected ones: owned pods whose labels
	// changed must be found to be released.
	all, err := c.pods.Pods(key.Namespace).List(labels.Everything())
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("list pods of %s: %w", key, err)
	}
	active, err := c.claim(ctx, api, o, selector, filterActive(all))
	if err != nil {
		return reconcile.Result{}, err
	}

	var manageErr error
	if needsSync && rs.DeletionTimestamp == nil {
		manageErr = c.manageReplicas(ctx, key, o, active)
	}
	now := time.Now()
	status, availableIn := calculateStatus(rs, active, manageErr, now)
	updated, err := c.writeStatus(ctx, api, o, status)
	if err != nil {
		return reconcile.Result{}, fmt.Errorf("update status of %s: %w", key, err)
	}
	if manageErr != nil {
		return reconcile.Result{}, fmt.Errorf("sync %s: %w", key, manageErr)
	}
	// Nothing tells the controller when a ready pod becomes available: look again then.
	if updated.Spec.MinReadySeconds > 0 && availableIn > 0 {
		return reconcile.Result{RequeueAfter: availableIn}, nil
	}
	return reconcile.Result{}, nil
}

// claim adopts the orphans that match the owner and releases the pods that stopped matching;
// it returns the active pods the owner controls.
func (c *Controller) claim(ctx context.Context, api kindAPI, o *owner, selector labels.Selector, pods []*corev1.Pod) ([]*corev1.Pod, error) {
	rs := o.rs
	// Adopting is only safe if the owner still exists, as the same object, and is not being
	// deleted: the cache may be behind on all three (Kubernetes issue 42639).
	canAdopt := ownership.Recheck(rs, api.gvk().Kind, func(ctx context.Context) (*appsv1.ReplicaSet, error) {
		fresh, err := api.fresh(ctx, rs.Namespace, rs.Name)
		if err != nil {
			return nil, err
		}
		return fresh.rs, nil
	})
	patch := func(ctx context.Context, name string, data []byte) error {
		_, err := c.kube.CoreV1().Pods(rs.Namespace).Patch(ctx, name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
		return err
	}
	claimed, err := ownership.Claim(ctx, ownership.Owner{Object: rs, Kind: api.gvk(), Selector: selector, CanAdopt: canAdopt}, pods, patch)
	if err != nil {
		return nil, err
	}
	return claimed, nil
}

// filterActive keeps the pods that count as replicas: neither finished nor being deleted.
func filterActive(pods []*corev1.Pod) []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range pods {
		if isActive(p) {
			out = append(out, p)
		}
	}
	return out
}

func isActive(p *corev1.Pod) bool {
	return p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed && p.DeletionTimestamp == nil
}

// desiredReplicas is spec.replicas; the API server defaults it to 1.
func desiredReplicas(rs *appsv1.ReplicaSet) int32 {
	if rs.Spec.Replicas == nil {
		return 1
	}
	return *rs.Spec.Replicas
}

// discard is the recorder used when Options.Recorder is nil: it drops every event.
type discard struct{}

func (discard) Event(runtime.Object, string, string, string)          {}
func (discard) Eventf(runtime.Object, string, string, string, ...any) {}
func (discard) AnnotatedEventf(runtime.Object, map[string]string, string, string, string, ...any) {
}
