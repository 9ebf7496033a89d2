// Package nodelifecycle is the node lifecycle controller: it notices nodes whose agent stopped
// renewing its Lease in kube-node-lease, marks their conditions Unknown, taints them
// node.kubernetes.io/unreachable (or not-ready, when the agent reports Ready=False) with
// NoSchedule and NoExecute, marks their pods not ready, and evicts (deletes) their pods once
// the pods' tolerations of those taints run out, so that controllers replace them on healthy
// nodes. It follows Kubernetes' pkg/controller/nodelifecycle and tainteviction, without zones
// and eviction rate limits.
package nodelifecycle

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	coordlisters "k8s.io/client-go/listers/coordination/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/reconcile"
)

// leaseNamespace is where node agents renew their Leases, as kubelets do.
const leaseNamespace = corev1.NamespaceNodeLease

// podNodeIndex indexes pods by spec.nodeName.
const podNodeIndex = "spec.nodeName"

// Options tune the controller; the zero value is ready to use.
type Options struct {
	// GracePeriod is how long a node may go without renewing its Lease (or posting status)
	// before it is marked Unknown (40 s by default, as --node-monitor-grace-period).
	GracePeriod time.Duration
	// Workers is how many nodes are reconciled at once (2 by default).
	Workers int
	// Now returns the current time (time.Now by default; tests set it).
	Now func() time.Time
	Log *slog.Logger
	// Recorder receives the NodeNotReady and TaintManagerEviction events (none when nil).
	Recorder record.EventRecorder
}

// Controller is the node lifecycle controller.
type Controller struct {
	kube     kubernetes.Interface
	opts     Options
	nodes    corelisters.NodeLister
	leases   coordlisters.LeaseLister
	pods     cache.Indexer
	queue    workqueue.TypedRateLimitingInterface[string]
	synced   []cache.InformerSynced
	recorder record.EventRecorder
}

// New builds the controller and registers its informers (nodes, leases, pods) with factory.
func New(kube kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.GracePeriod <= 0 {
		opts.GracePeriod = 40 * time.Second
	}
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		kube: kube,
		opts: opts,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "nodelifecycle"}),
		recorder: opts.Recorder,
	}
	if c.recorder == nil {
		c.recorder = &record.FakeRecorder{} // drops events: no channel
	}
	nodeInf := factory.Core().V1().Nodes()
	leaseInf := factory.Coordination().V1().Leases()
	podInf := factory.Core().V1().Pods()
	if err := podInf.Informer().AddIndexers(cache.Indexers{podNodeIndex: func(obj any) ([]string, error) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
			return []string{p.Spec.NodeName}, nil
		}
		return nil, nil
	}}); err != nil {
		return nil, fmt.Errorf("index pods by node: %w", err)
	}
	c.nodes, c.leases, c.pods = nodeInf.Lister(), leaseInf.Lister(), podInf.Informer().GetIndexer()

	enqueueNode := func(obj any) {
		if n, ok := obj.(*corev1.Node); ok {
			c.queue.Add(n.Name)
		}
	}
	enqueueLease := func(obj any) {
		if l, ok := obj.(*coordinationv1.Lease); ok && l.Namespace == leaseNamespace {
			c.queue.Add(l.Name)
		}
	}
	enqueuePod := func(obj any) {
		if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
			c.queue.Add(p.Spec.NodeName)
		}
	}
	for _, h := range []struct {
		inf cache.SharedIndexInformer
		fn  func(any)
	}{{nodeInf.Informer(), enqueueNode}, {leaseInf.Informer(), enqueueLease}, {podInf.Informer(), enqueuePod}} {
		fn := h.fn
		reg, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    fn,
			UpdateFunc: func(_, obj any) { fn(obj) },
		})
		if err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

// Run reconciles nodes until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.opts.Log.Info("starting node lifecycle controller", "gracePeriod", c.opts.GracePeriod)
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.opts.Workers, c.opts.Log)
	return nil
}

// Reconcile checks one node's heartbeat, conditions, taints and the eviction of its pods,
// and asks to be called again when the next of those deadlines comes.
func (c *Controller) Reconcile(ctx context.Context, name string) (reconcile.Result, error) {
	node, err := c.nodes.Get(name)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	now := c.opts.Now()
	var next time.Duration
	later := func(d time.Duration) {
		if d > 0 && (next == 0 || d < next) {
			next = d
		}
	}

	// 1. Heartbeat: the Lease's renewTime, or the Ready condition's heartbeat, or creation.
	beat := node.CreationTimestamp.Time
	if ready := condition(node, corev1.NodeReady); ready != nil && ready.LastHeartbeatTime.After(beat) {
		beat = ready.LastHeartbeatTime.Time
	}
	if lease, err := c.leases.Leases(leaseNamespace).Get(name); err == nil && lease.Spec.RenewTime != nil && lease.Spec.RenewTime.After(beat) {
		beat = lease.Spec.RenewTime.Time
	}
	if silent := now.Sub(beat); silent > c.opts.GracePeriod {
		if node, err = c.markUnknown(ctx, node, now); err != nil {
			return reconcile.Result{}, err
		}
	} else {
		later(c.opts.GracePeriod - silent + time.Second)
	}

	// 2. Taints follow the Ready condition.
	if node, err = c.syncTaints(ctx, node, now); err != nil {
		return reconcile.Result{}, err
	}

	// 3. Pods: not ready on an unhealthy node, evicted when their tolerations run out.
	wait, err := c.syncPods(ctx, node, now)
	if err != nil {
		return reconcile.Result{}, err
	}
	later(wait)
	return reconcile.Result{RequeueAfter: next}, nil
}

// markUnknown sets every condition the agent reports to Unknown, as Kubernetes does when the
// kubelet stops posting status.
func (c *Controller) markUnknown(ctx context.Context, node *corev1.Node, now time.Time) (*corev1.Node, error) {
	if ready := condition(node, corev1.NodeReady); ready != nil && ready.Status == corev1.ConditionUnknown {
		return node, nil
	}
	n := node.DeepCopy()
	t := metav1.NewTime(now)
	types := []corev1.NodeConditionType{corev1.NodeReady, corev1.NodeMemoryPressure, corev1.NodeDiskPressure, corev1.NodePIDPressure}
	for _, ct := range types {
		cond := condition(n, ct)
		if cond == nil {
			n.Status.Conditions = append(n.Status.Conditions, corev1.NodeCondition{
				Type: ct, Status: corev1.ConditionUnknown, Reason: "NodeStatusNeverUpdated",
				Message: "Kubelet never posted node status.", LastHeartbeatTime: node.CreationTimestamp, LastTransitionTime: t,
			})
			continue
		}
		if cond.Status != corev1.ConditionUnknown {
			cond.Status, cond.Reason, cond.Message = corev1.ConditionUnknown, "NodeStatusUnknown", "Kubelet stopped posting node status."
			cond.LastTransitionTime = t
		}
	}
	updated, err := c.kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("mark node %s Unknown: %w", node.Name, err)
	}
	c.opts.Log.Info("node stopped renewing its lease: marked Unknown", "node", node.Name)
	c.recorder.Eventf(nodeRef(node), corev1.EventTypeNormal, "NodeNotReady", "Node %s status is now: NodeNotReady", node.Name)
	return updated, nil
}

// syncTaints puts the not-ready or unreachable taints (NoSchedule and NoExecute) that match
// the Ready condition on the node and removes the others.
func (c *Controller) syncTaints(ctx context.Context, node *corev1.Node, now time.Time) (*corev1.Node, error) {
	want := ""
	if ready := condition(node, corev1.NodeReady); ready != nil {
		switch ready.Status {
		case corev1.ConditionFalse:
			want = corev1.TaintNodeNotReady
		case corev1.ConditionUnknown:
			want = corev1.TaintNodeUnreachable
		}
	}
	var taints []corev1.Taint
	changed := false
	have := map[corev1.TaintEffect]bool{}
	for _, t := range node.Spec.Taints {
		managed := t.Key == corev1.TaintNodeNotReady || t.Key == corev1.TaintNodeUnreachable
		managedEffect := t.Effect == corev1.TaintEffectNoExecute || t.Effect == corev1.TaintEffectNoSchedule
		if managed && managedEffect && t.Key != want {
			changed = true
			continue
		}
		if managed && managedEffect {
			have[t.Effect] = true
		}
		taints = append(taints, t)
	}
	if want != "" {
		added := metav1.NewTime(now)
		for _, effect := range []corev1.TaintEffect{corev1.TaintEffectNoSchedule, corev1.TaintEffectNoExecute} {
			if !have[effect] {
				taint := corev1.Taint{Key: want, Effect: effect}
				if effect == corev1.TaintEffectNoExecute {
					taint.TimeAdded = &added
				}
				taints = append(taints, taint)
				changed = true
			}
		}
	}
	if !changed {
		return node, nil
	}
	n := node.DeepCopy()
	n.Spec.Taints = taints
	updated, err := c.kube.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("taint node %s: %w", node.Name, err)
	}
	c.opts.Log.Info("node taints updated", "node", node.Name, "taint", want)
	return updated, nil
}

// syncPods marks the pods of an unhealthy node not ready and deletes those whose tolerations
// of its NoExecute taints have run out; it returns how long until the next one does.
func (c *Controller) syncPods(ctx context.Context, node *corev1.Node, now time.Time) (time.Duration, error) {
	var noExecute []corev1.Taint
	for _, t := range node.Spec.Taints {
		if t.Effect == corev1.TaintEffectNoExecute {
			noExecute = append(noExecute, t)
		}
	}
	ready := condition(node, corev1.NodeReady)
	unhealthy := ready != nil && ready.Status != corev1.ConditionTrue
	objs, err := c.pods.ByIndex(podNodeIndex, node.Name)
	if err != nil {
		return 0, err
	}
	var next time.Duration
	for _, obj := range objs {
		pod := obj.(*corev1.Pod)
		if pod.DeletionTimestamp != nil || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		if unhealthy {
			if err := c.markPodNotReady(ctx, pod, now); err != nil {
				return 0, err
			}
		}
		if len(noExecute) == 0 {
			continue
		}
		wait, evict := evictionDue(pod, noExecute, now)
		if !evict {
			if wait > 0 && (next == 0 || wait < next) {
				next = wait
			}
			continue
		}
		c.recorder.Eventf(pod, corev1.EventTypeNormal, "TaintManagerEviction", "Marking for deletion Pod %s/%s", pod.Namespace, pod.Name)
		err := c.kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}})
		if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			return 0, fmt.Errorf("evict pod %s/%s from node %s: %w", pod.Namespace, pod.Name, node.Name, err)
		}
		c.opts.Log.Info("evicted pod from tainted node", "pod", pod.Namespace+"/"+pod.Name, "node", node.Name)
	}
	return next, nil
}

// evictionDue says whether a pod must go now because of a node's NoExecute taints, and if
// not, how long its tolerations still last (0: forever). A taint it does not tolerate evicts
// at once; tolerations with tolerationSeconds last that long from the taint's timeAdded, the
// shortest one winning, as Kubernetes' taint eviction controller does.
func evictionDue(pod *corev1.Pod, taints []corev1.Taint, now time.Time) (time.Duration, bool) {
	var deadline time.Time
	for i := range taints {
		taint := &taints[i]
		var tol *corev1.Toleration
		for j := range pod.Spec.Tolerations {
			if pod.Spec.Tolerations[j].ToleratesTaint(taint) {
				tol = &pod.Spec.Tolerations[j]
				break
			}
		}
		if tol == nil {
			return 0, true
		}
		if tol.TolerationSeconds == nil {
			continue
		}
		added := now
		if taint.TimeAdded != nil {
			added = taint.TimeAdded.Time
		}
		secs := max(*tol.TolerationSeconds, 0)
		d := added.Add(time.Duration(secs) * time.Second)
		if deadline.IsZero() || d.Before(deadline) {
			deadline = d
		}
	}
	if deadline.IsZero() {
		return 0, false
	}
	if !now.Before(deadline) {
		return 0, true
	}
	return deadline.Sub(now), false
}

// markPodNotReady sets the pod's Ready condition to False: its agent cannot vouch for it.
func (c *Controller) markPodNotReady(ctx context.Context, pod *corev1.Pod, now time.Time) error {
	for i, cond := range pod.Status.Conditions {
		if cond.Type != corev1.PodReady || cond.Status == corev1.ConditionFalse {
			continue
		}
		p := pod.DeepCopy()
		p.Status.Conditions[i].Status = corev1.ConditionFalse
		p.Status.Conditions[i].LastTransitionTime = metav1.NewTime(now)
		_, err := c.kube.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("mark pod %s/%s not ready: %w", pod.Namespace, pod.Name, err)
		}
		return nil
	}
	return nil
}

func condition(node *corev1.Node, t corev1.NodeConditionType) *corev1.NodeCondition {
	for i := range node.Status.Conditions {
		if node.Status.Conditions[i].Type == t {
			return &node.Status.Conditions[i]
		}
	}
	return nil
}

// nodeRef is how Kubernetes refers to a node in its events (the UID is the node's name).
func nodeRef(node *corev1.Node) *corev1.ObjectReference {
	return &corev1.ObjectReference{Kind: "Node", Name: node.Name, UID: node.UID}
}
