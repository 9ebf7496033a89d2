// Package disruption is the PodDisruptionBudget controller: it keeps each budget's status
// (expectedPods, currentHealthy, desiredHealthy, disruptionsAllowed, disruptedPods and the
// DisruptionAllowed condition) true to the pods it selects, so that the API server's
// Eviction subresource can tell whether a voluntary disruption (kubectl drain, for example)
// is allowed. It follows Kubernetes' pkg/controller/disruption.
package disruption

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	policylisters "k8s.io/client-go/listers/policy/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/reconcile"
)

// disruptedPodTimeout is how long an eviction the API server recorded in disruptedPods is
// awaited: if the pod is not being deleted by then, the eviction is taken as failed.
const disruptedPodTimeout = 2 * time.Minute

// Options tune the controller; the zero value is ready to use.
type Options struct {
	Workers int
	Log     *slog.Logger
	// Recorder receives CalculateExpectedPodCountFailed events (none when nil).
	Recorder record.EventRecorder
	// Now returns the current time (time.Now by default; tests set it).
	Now func() time.Time
}

// Controller is the disruption controller.
type Controller struct {
	kube     kubernetes.Interface
	opts     Options
	pdbs     policylisters.PodDisruptionBudgetLister
	pods     corelisters.PodLister
	rss      appslisters.ReplicaSetLister
	deploys  appslisters.DeploymentLister
	sets     appslisters.StatefulSetLister
	rcs      corelisters.ReplicationControllerLister
	queue    workqueue.TypedRateLimitingInterface[string]
	synced   []cache.InformerSynced
	recorder record.EventRecorder
}

// New builds the controller and registers its informers with factory.
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
		kube: kube, opts: opts, recorder: opts.Recorder,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "disruption"}),
	}
	if c.recorder == nil {
		c.recorder = &record.FakeRecorder{} // no channel: drops events
	}
	pdbInf := factory.Policy().V1().PodDisruptionBudgets()
	podInf := factory.Core().V1().Pods()
	rsInf := factory.Apps().V1().ReplicaSets()
	depInf := factory.Apps().V1().Deployments()
	stsInf := factory.Apps().V1().StatefulSets()
	rcInf := factory.Core().V1().ReplicationControllers()
	c.pdbs, c.pods, c.rss, c.deploys, c.sets, c.rcs = pdbInf.Lister(), podInf.Lister(), rsInf.Lister(), depInf.Lister(), stsInf.Lister(), rcInf.Lister()

	enqueuePDB := func(obj any) {
		if key, err := cache.MetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	// A pod change concerns the budgets of its namespace that select it.
	enqueueForPod := func(obj any) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			return
		}
		pdbs, _ := c.pdbs.PodDisruptionBudgets(pod.Namespace).List(labels.Everything())
		for _, pdb := range pdbs {
			if sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector); err == nil && sel.Matches(labels.Set(pod.Labels)) {
				c.queue.Add(pdb.Namespace + "/" + pdb.Name)
			}
		}
	}
	// A controller's scale change concerns every budget of its namespace (there are few).
	enqueueNamespace := func(obj any) {
		m, err := apimeta.Accessor(obj)
		if err != nil {
			return
		}
		pdbs, _ := c.pdbs.PodDisruptionBudgets(m.GetNamespace()).List(labels.Everything())
		for _, pdb := range pdbs {
			c.queue.Add(pdb.Namespace + "/" + pdb.Name)
		}
	}
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{pdbInf.Informer(), cache.ResourceEventHandlerFuncs{AddFunc: enqueuePDB, UpdateFunc: func(_, o any) { enqueuePDB(o) }}},
		{podInf.Informer(), cache.ResourceEventHandlerFuncs{AddFunc: enqueueForPod, UpdateFunc: func(_, o any) { enqueueForPod(o) }, DeleteFunc: enqueueForPod}},
		{rsInf.Informer(), cache.ResourceEventHandlerFuncs{UpdateFunc: func(_, o any) { enqueueNamespace(o) }}},
		{depInf.Informer(), cache.ResourceEventHandlerFuncs{UpdateFunc: func(_, o any) { enqueueNamespace(o) }}},
		{stsInf.Informer(), cache.ResourceEventHandlerFuncs{UpdateFunc: func(_, o any) { enqueueNamespace(o) }}},
		{rcInf.Informer(), cache.ResourceEventHandlerFuncs{UpdateFunc: func(_, o any) { enqueueNamespace(o) }}},
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

// Run keeps the budgets' status true until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.opts.Log.Info("starting disruption controller")
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.opts.Workers, c.opts.Log)
	return nil
}

// Reconcile recomputes one budget's status.
func (c *Controller) Reconcile(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	pdb, err := c.pdbs.PodDisruptionBudgets(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(fmt.Errorf("budget %s: selector: %w", key, err))
	}
	var pods []*corev1.Pod
	if pdb.Spec.Selector != nil { // policy/v1: a null selector selects nothing, an empty one everything
		pods, err = c.pods.Pods(ns).List(sel)
		if err != nil {
			return reconcile.Result{}, err
		}
	}
	now := c.opts.Now()
	expected, desired, err := c.expectations(pdb, pods)
	if err != nil {
		c.recorder.Event(pdb, corev1.EventTypeWarning, "CalculateExpectedPodCountFailed", err.Error())
		return reconcile.Result{}, c.writeStatus(ctx, pdb, failedStatus(pdb, err.Error()))
	}
	disrupted, recheck := disruptedPods(pdb, pods, now)
	healthy := int32(0)
	for _, p := range pods {
		if p.DeletionTimestamp == nil && podReady(p) {
			if _, evicted := disrupted[p.Name]; !evicted {
				healthy++
			}
		}
	}
	allowed := max(healthy-desired, 0)
	status := policyv1.PodDisruptionBudgetStatus{
		ObservedGeneration: pdb.Generation,
		DisruptedPods:      disrupted,
		DisruptionsAllowed: allowed,
		CurrentHealthy:     healthy,
		DesiredHealthy:     desired,
		ExpectedPods:       expected,
		Conditions:         pdb.Status.Conditions,
	}
	cond := metav1.Condition{Type: policyv1.DisruptionAllowedCondition, Status: metav1.ConditionTrue, Reason: policyv1.SufficientPodsReason, ObservedGeneration: pdb.Generation}
	if allowed == 0 {
		cond.Status, cond.Reason = metav1.ConditionFalse, policyv1.InsufficientPodsReason
	}
	status.Conditions = append([]metav1.Condition(nil), status.Conditions...)
	apimeta.SetStatusCondition(&status.Conditions, cond)
	if err := c.writeStatus(ctx, pdb, status); err != nil {
		return reconcile.Result{}, err
	}
	return reconcile.Result{RequeueAfter: recheck}, nil
}

// expectations returns how many pods the budget expects and how many must stay healthy. An
// integer minAvailable needs no controller; maxUnavailable and percentages are taken of the
// scale of the pods' controllers, as Kubernetes does.
func (c *Controller) expectations(pdb *policyv1.PodDisruptionBudget, pods []*corev1.Pod) (expected, desired int32, err error) {
	if min := pdb.Spec.MinAvailable; min != nil && min.Type == intstr.Int {
		return int32(len(pods)), min.IntVal, nil
	}
	expected, err = c.controllersScale(pods)
	if err != nil {
		return 0, 0, err
	}
	switch {
	case pdb.Spec.MaxUnavailable != nil:
		n, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MaxUnavailable, int(expected), true)
		if err != nil {
			return 0, 0, fmt.Errorf("maxUnavailable: %w", err)
		}
		return expected, max(expected-int32(n), 0), nil
	case pdb.Spec.MinAvailable != nil:
		n, err := intstr.GetScaledValueFromIntOrPercent(pdb.Spec.MinAvailable, int(expected), true)
		if err != nil {
			return 0, 0, fmt.Errorf("minAvailable: %w", err)
		}
		return expected, int32(n), nil
	}
	return expected, expected, nil
}

// controllersScale sums spec.replicas of the distinct controllers of the pods (a
// ReplicaSet's Deployment standing in for it), and fails for a pod without one.
func (c *Controller) controllersScale(pods []*corev1.Pod) (int32, error) {
	seen := map[types.UID]bool{}
	var total int32
	for _, p := range pods {
		ref := metav1.GetControllerOf(p)
		if ref == nil {
			return 0, fmt.Errorf("found no controllers for pod %q", p.Name)
		}
		uid, replicas, err := c.scaleOf(p.Namespace, ref)
		if err != nil {
			return 0, err
		}
		if !seen[uid] {
			seen[uid] = true
			total += replicas
		}
	}
	return total, nil
}

func (c *Controller) scaleOf(ns string, ref *metav1.OwnerReference) (types.UID, int32, error) {
	replicas := func(r *int32) int32 {
		if r == nil {
			return 1
		}
		return *r
	}
	switch ref.Kind {
	case "ReplicaSet":
		rs, err := c.rss.ReplicaSets(ns).Get(ref.Name)
		if err != nil || rs.UID != ref.UID {
			return "", 0, fmt.Errorf("controller ReplicaSet %s of a pod: not found", ref.Name)
		}
		if dref := metav1.GetControllerOf(rs); dref != nil && dref.Kind == "Deployment" {
			d, err := c.deploys.Deployments(ns).Get(dref.Name)
			if err == nil && d.UID == dref.UID {
				return d.UID, replicas(d.Spec.Replicas), nil
			}
		}
		return rs.UID, replicas(rs.Spec.Replicas), nil
	case "ReplicationController":
		rc, err := c.rcs.ReplicationControllers(ns).Get(ref.Name)
		if err != nil || rc.UID != ref.UID {
			return "", 0, fmt.Errorf("controller ReplicationController %s of a pod: not found", ref.Name)
		}
		return rc.UID, replicas(rc.Spec.Replicas), nil
	case "StatefulSet":
		s, err := c.sets.StatefulSets(ns).Get(ref.Name)
		if err != nil || s.UID != ref.UID {
			return "", 0, fmt.Errorf("controller StatefulSet %s of a pod: not found", ref.Name)
		}
		return s.UID, replicas(s.Spec.Replicas), nil
	}
	return "", 0, fmt.Errorf("pods controlled by %s %s have no scale this controller knows", ref.Kind, ref.Name)
}

// disruptedPods keeps the evictions the API server recorded that are still in progress:
// pods not yet being deleted, within disruptedPodTimeout. It returns when to look again.
func disruptedPods(pdb *policyv1.PodDisruptionBudget, pods []*corev1.Pod, now time.Time) (map[string]metav1.Time, time.Duration) {
	if len(pdb.Status.DisruptedPods) == 0 {
		return nil, 0
	}
	byName := map[string]*corev1.Pod{}
	for _, p := range pods {
		byName[p.Name] = p
	}
	out := map[string]metav1.Time{}
	var recheck time.Duration
	for name, at := range pdb.Status.DisruptedPods {
		p := byName[name]
		if p == nil || p.DeletionTimestamp != nil {
			continue
		}
		expires := at.Add(disruptedPodTimeout)
		if !now.Before(expires) {
			continue
		}
		out[name] = at
		if d := expires.Sub(now); recheck == 0 || d < recheck {
			recheck = d
		}
	}
	if len(out) == 0 {
		return nil, 0
	}
	return out, recheck
}

// failedStatus allows no disruption and says why the budget could not be computed.
func failedStatus(pdb *policyv1.PodDisruptionBudget, msg string) policyv1.PodDisruptionBudgetStatus {
	s := *pdb.Status.DeepCopy()
	s.ObservedGeneration = pdb.Generation
	s.DisruptionsAllowed = 0
	apimeta.SetStatusCondition(&s.Conditions, metav1.Condition{
		Type: policyv1.DisruptionAllowedCondition, Status: metav1.ConditionFalse,
		Reason: policyv1.SyncFailedReason, Message: msg, ObservedGeneration: pdb.Generation,
	})
	return s
}

// writeStatus updates the budget's status when it changed.
func (c *Controller) writeStatus(ctx context.Context, pdb *policyv1.PodDisruptionBudget, status policyv1.PodDisruptionBudgetStatus) error {
	if apiequality.Semantic.DeepEqual(pdb.Status, status) {
		return nil
	}
	updated := pdb.DeepCopy()
	updated.Status = status
	if _, err := c.kube.PolicyV1().PodDisruptionBudgets(pdb.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update status of budget %s/%s: %w", pdb.Namespace, pdb.Name, err)
	}
	return nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
