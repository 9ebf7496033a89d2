// Package servicelb is the LoadBalancer controller for clusters without a cloud, as k3s's
// ServiceLB: every Service of type LoadBalancer gets the InternalIPs of the Ready nodes in
// status.loadBalancer.ingress, and the node proxy (core/proxy) serves those addresses on
// the Service's ports. Services with a spec.loadBalancerClass belong to another
// implementation and are left alone.
package servicelb

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/reconcile"
)

// Options tune the controller; the zero value is ready to use.
type Options struct {
	Workers int
	Log     *slog.Logger
}

// Controller publishes node addresses as LoadBalancer ingress.
type Controller struct {
	kube     kubernetes.Interface
	opts     Options
	services corelisters.ServiceLister
	nodes    corelisters.NodeLister
	queue    workqueue.TypedRateLimitingInterface[string]
	synced   []cache.InformerSynced
}

// New builds the controller and registers its informers with factory.
func New(kube kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		kube: kube, opts: opts,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "servicelb"}),
	}
	svcInf, nodeInf := factory.Core().V1().Services(), factory.Core().V1().Nodes()
	c.services, c.nodes = svcInf.Lister(), nodeInf.Lister()
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			c.queue.Add(key)
		}
	}
	// A node joining, leaving or changing address or readiness changes every
	// LoadBalancer's ingress.
	onNode := func(any) {
		svcs, _ := c.services.List(labels.Everything())
		for _, s := range svcs {
			if s.Spec.Type == corev1.ServiceTypeLoadBalancer {
				enqueue(s)
			}
		}
	}
	for _, x := range []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{svcInf.Informer(), cache.ResourceEventHandlerFuncs{AddFunc: enqueue, UpdateFunc: func(_, o any) { enqueue(o) }}},
		{nodeInf.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc: onNode, DeleteFunc: onNode,
			UpdateFunc: func(old, o any) {
				if !slices.Equal(nodeIngress(old.(*corev1.Node)), nodeIngress(o.(*corev1.Node))) {
					onNode(o)
				}
			},
		}},
	} {
		reg, err := x.inf.AddEventHandler(x.h)
		if err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

// Run keeps the ingress of LoadBalancer Services up to date until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.opts.Log.Info("starting servicelb controller")
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.opts.Workers, c.opts.Log)
	return nil
}

// nodeIngress is the node's InternalIP when it is Ready (none otherwise).
func nodeIngress(n *corev1.Node) []string {
	ready := false
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			ready = cond.Status == corev1.ConditionTrue
		}
	}
	if !ready {
		return nil
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return []string{a.Address}
		}
	}
	return nil
}

// Ingress is the status.loadBalancer.ingress for these nodes: their InternalIPs, sorted.
func Ingress(nodes []*corev1.Node) []corev1.LoadBalancerIngress {
	var ips []string
	for _, n := range nodes {
		ips = append(ips, nodeIngress(n)...)
	}
	slices.Sort(ips)
	ips = slices.Compact(ips)
	var in []corev1.LoadBalancerIngress
	for _, ip := range ips {
		in = append(in, corev1.LoadBalancerIngress{IP: ip})
	}
	return in
}

// Reconcile sets the ingress of one Service: the nodes' addresses for a LoadBalancer, none
// for a Service that stopped being one.
func (c *Controller) Reconcile(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	svc, err := c.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if svc.Spec.LoadBalancerClass != nil {
		return reconcile.Result{}, nil
	}
	var want []corev1.LoadBalancerIngress
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		nodes, err := c.nodes.List(labels.Everything())
		if err != nil {
			return reconcile.Result{}, err
		}
		want = Ingress(nodes)
	}
	if apiequality.Semantic.DeepEqual(svc.Status.LoadBalancer.Ingress, want) {
		return reconcile.Result{}, nil
	}
	upd := svc.DeepCopy()
	upd.Status.LoadBalancer.Ingress = want
	if _, err := c.kube.CoreV1().Services(ns).UpdateStatus(ctx, upd, metav1.UpdateOptions{}); err != nil {
		return reconcile.Result{}, fmt.Errorf("set the load balancer ingress of service %s: %w", key, err)
	}
	c.opts.Log.Debug("load balancer ingress set", "service", key, "ingress", want)
	return reconcile.Result{}, nil
}
