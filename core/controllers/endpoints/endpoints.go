// Package endpoints is the Endpoints controller: for every Service with a selector it keeps
// the v1 Endpoints object of the same name true to the pods the selector picks, ready
// addresses apart from not-ready ones, with the port each Service port reaches on each pod.
// Services without a selector are left alone: their users manage the Endpoints. It follows
// Kubernetes' pkg/controller/endpoint (1.33).
package endpoints

//lint:file-ignore SA1019 v1 Endpoints are deprecated in 1.33 but still served and read (kubectl describe svc, older clients); Kubernetes keeps writing them too.

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/internal/podaddr"
	"berth.dev/berth/core/controllers/reconcile"
)

// MaxAddresses is how many addresses one Endpoints object holds at most, as in Kubernetes;
// the rest is left out and the object annotated OverCapacityAnnotation=truncated.
const MaxAddresses = 1000

// OverCapacityAnnotation marks an Endpoints object whose addresses were truncated.
const OverCapacityAnnotation = "endpoints.kubernetes.io/over-capacity"

// leaderAnnotation marks the Endpoints objects that old components used as leader-election
// locks: they have no Service and must not be deleted as leftovers.
const leaderAnnotation = "control-plane.alpha.kubernetes.io/leader"

// Options tune the controller; the zero value is ready to use.
type Options struct {
	Workers int
	Log     *slog.Logger
	// Recorder receives FailedToUpdateEndpoint events (none when nil).
	Recorder record.EventRecorder
}

// Controller is the Endpoints controller.
type Controller struct {
	kube      kubernetes.Interface
	opts      Options
	services  corelisters.ServiceLister
	pods      corelisters.PodLister
	endpoints corelisters.EndpointsLister
	queue     workqueue.TypedRateLimitingInterface[string]
	synced    []cache.InformerSynced
	recorder  record.EventRecorder
}

// New builds the controller and registers its informers with factory.
func New(kube kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 5
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		kube: kube, opts: opts, recorder: opts.Recorder,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "endpoints"}),
	}
	if c.recorder == nil {
		c.recorder = &record.FakeRecorder{} // no channel: drops events
	}
	svcInf := factory.Core().V1().Services()
	podInf := factory.Core().V1().Pods()
	epInf := factory.Core().V1().Endpoints()
	c.services, c.pods, c.endpoints = svcInf.Lister(), podInf.Lister(), epInf.Lister()

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
		// Someone else changing or deleting an Endpoints object: put it right again.
		{epInf.Informer(), cache.ResourceEventHandlerFuncs{UpdateFunc: func(_, o any) { enqueue(o) }, DeleteFunc: enqueue}},
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

// Run keeps the Endpoints true until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.opts.Log.Info("starting endpoints controller")
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	c.enqueueLeftovers()
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.opts.Workers, c.opts.Log)
	return nil
}

// enqueueLeftovers queues the Endpoints whose Service was deleted while no controller ran,
// so that they are deleted too, as Kubernetes does at start.
func (c *Controller) enqueueLeftovers() {
	eps, _ := c.endpoints.List(labels.Everything())
	for _, ep := range eps {
		if _, ok := ep.Annotations[leaderAnnotation]; ok {
			continue
		}
		if _, err := c.services.Services(ep.Namespace).Get(ep.Name); apierrors.IsNotFound(err) {
			c.queue.Add(ep.Namespace + "/" + ep.Name)
		}
	}
}

// Reconcile makes the Endpoints of one Service right.
func (c *Controller) Reconcile(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	svc, err := c.services.Services(ns).Get(name)
	if apierrors.IsNotFound(err) {
		// Endpoints have no owner reference: the Service's go with it here.
		err := c.kube.CoreV1().Endpoints(ns).Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return reconcile.Result{}, fmt.Errorf("delete endpoints %s: %w", key, err)
		}
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if svc.Spec.Selector == nil {
		return reconcile.Result{}, nil // the user's own Endpoints
	}
	pods, err := c.pods.Pods(ns).List(labels.SelectorFromValidatedSet(svc.Spec.Selector))
	if err != nil {
		return reconcile.Result{}, err
	}
	subsets, truncated := Subsets(svc, pods, c.opts.Log)

	current, err := c.endpoints.Endpoints(ns).Get(name)
	if err != nil && !apierrors.IsNotFound(err) {
		return reconcile.Result{}, err
	}
	create := current == nil
	if create {
		current = &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}}
	}
	wantLabels := endpointsLabels(svc)
	_, wasTruncated := current.Annotations[OverCapacityAnnotation]
	if !create && truncated == wasTruncated &&
		apiequality.Semantic.DeepEqual(current.Subsets, subsets) && apiequality.Semantic.DeepEqual(current.Labels, wantLabels) {
		return reconcile.Result{}, nil
	}
	next := current.DeepCopy()
	next.Labels = wantLabels
	next.Subsets = subsets
	if truncated {
		if next.Annotations == nil {
			next.Annotations = map[string]string{}
		}
		next.Annotations[OverCapacityAnnotation] = "truncated"
	} else {
		delete(next.Annotations, OverCapacityAnnotation)
	}
	if create {
		_, err = c.kube.CoreV1().Endpoints(ns).Create(ctx, next, metav1.CreateOptions{})
	} else {
		_, err = c.kube.CoreV1().Endpoints(ns).Update(ctx, next, metav1.UpdateOptions{})
	}
	if err != nil {
		if apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
			return reconcile.Result{}, nil // the namespace is going away, and the Endpoints with it
		}
		if apierrors.IsConflict(err) || apierrors.IsAlreadyExists(err) {
			// The cache is behind this controller's own last write: try again once it has
			// caught up, without a warning event (nothing is wrong).
			return reconcile.Result{Requeue: true}, nil
		}
		c.recorder.Eventf(svc, corev1.EventTypeWarning, "FailedToUpdateEndpoint", "Failed to update endpoint %s: %v", key, err)
		return reconcile.Result{}, fmt.Errorf("write endpoints %s: %w", key, err)
	}
	return reconcile.Result{}, nil
}

// endpointsLabels are the Service's labels, plus service.kubernetes.io/headless for a
// headless Service.
func endpointsLabels(svc *corev1.Service) map[string]string {
	out := make(map[string]string, len(svc.Labels)+1)
	for k, v := range svc.Labels {
		out[k] = v
	}
	if podaddr.Headless(svc) {
		out[corev1.IsHeadlessService] = ""
	} else {
		delete(out, corev1.IsHeadlessService)
	}
	return out
}

// Subsets computes the Endpoints subsets of the Service from the pods its selector picks:
// one subset per distinct set of resolved ports, with the ready addresses apart from the
// not-ready ones, sorted so that equal inputs give equal outputs. Terminating pods are left
// out and every pod counts as ready when the Service publishes not-ready addresses. It
// reports whether addresses beyond MaxAddresses were dropped.
func Subsets(svc *corev1.Service, pods []*corev1.Pod, log *slog.Logger) ([]corev1.EndpointSubset, bool) {
	family := podaddr.Families(svc)[0]
	publish := svc.Spec.PublishNotReadyAddresses
	byPorts := map[string]*corev1.EndpointSubset{}
	for _, pod := range pods {
		if !podaddr.Include(pod, publish) {
			continue
		}
		ip := podaddr.IP(pod, family)
		if ip == "" {
			continue
		}
		addr := corev1.EndpointAddress{
			IP:        ip,
			TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		}
		if pod.Spec.NodeName != "" {
			addr.NodeName = &pod.Spec.NodeName
		}
		if podaddr.SetHostname(pod, svc) {
			addr.Hostname = pod.Spec.Hostname
		}
		var ports []corev1.EndpointPort
		for i := range svc.Spec.Ports {
			sp := &svc.Spec.Ports[i]
			n, err := podaddr.FindPort(pod, sp)
			if err != nil {
				if log != nil {
					log.Debug("service port not found on pod", "service", svc.Namespace+"/"+svc.Name, "port", sp.Name, "err", err)
				}
				continue
			}
			ports = append(ports, corev1.EndpointPort{Name: sp.Name, Port: n, Protocol: sp.Protocol, AppProtocol: sp.AppProtocol})
		}
		// A pod none of whose ports resolve is not listed; a Service without ports (headless)
		// lists its pods' addresses alone.
		if len(ports) == 0 && len(svc.Spec.Ports) > 0 {
			continue
		}
		slices.SortFunc(ports, func(a, b corev1.EndpointPort) int {
			return cmp.Or(cmp.Compare(a.Name, b.Name), cmp.Compare(a.Port, b.Port), cmp.Compare(a.Protocol, b.Protocol))
		})
		key := portsKey(ports)
		s := byPorts[key]
		if s == nil {
			s = &corev1.EndpointSubset{Ports: ports}
			byPorts[key] = s
		}
		if publish || podaddr.Ready(pod) {
			s.Addresses = append(s.Addresses, addr)
		} else {
			s.NotReadyAddresses = append(s.NotReadyAddresses, addr)
		}
	}
	keys := make([]string, 0, len(byPorts))
	for k := range byPorts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var out []corev1.EndpointSubset
	for _, k := range keys {
		s := byPorts[k]
		slices.SortFunc(s.Addresses, compareAddress)
		slices.SortFunc(s.NotReadyAddresses, compareAddress)
		out = append(out, *s)
	}
	return truncate(out)
}

// truncate keeps at most MaxAddresses addresses, ready ones first.
func truncate(subsets []corev1.EndpointSubset) ([]corev1.EndpointSubset, bool) {
	total := 0
	for _, s := range subsets {
		total += len(s.Addresses) + len(s.NotReadyAddresses)
	}
	if total <= MaxAddresses {
		return subsets, false
	}
	left := MaxAddresses
	for i := range subsets {
		n := min(left, len(subsets[i].Addresses))
		subsets[i].Addresses = subsets[i].Addresses[:n]
		left -= n
	}
	for i := range subsets {
		n := min(left, len(subsets[i].NotReadyAddresses))
		subsets[i].NotReadyAddresses = subsets[i].NotReadyAddresses[:n]
		left -= n
	}
	kept := subsets[:0]
	for _, s := range subsets {
		if len(s.Addresses)+len(s.NotReadyAddresses) > 0 {
			kept = append(kept, s)
		}
	}
	return kept, true
}

func portsKey(ports []corev1.EndpointPort) string {
	var b strings.Builder
	for _, p := range ports {
		ap := ""
		if p.AppProtocol != nil {
			ap = *p.AppProtocol
		}
		fmt.Fprintf(&b, "%s/%d/%s/%s,", p.Name, p.Port, p.Protocol, ap)
	}
	return b.String()
}

func compareAddress(a, b corev1.EndpointAddress) int {
	return cmp.Or(cmp.Compare(a.IP, b.IP), cmp.Compare(a.TargetRef.Name, b.TargetRef.Name))
}
