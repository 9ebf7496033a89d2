// Package ephemeral is the controller of generic ephemeral volumes, as
// kube-controller-manager's ephemeral-volume controller: for every volume of a pod with
// spec.volumes[].ephemeral it creates the PersistentVolumeClaim <pod>-<volume> from the
// volume's claim template, owned (as controller) by the pod, so that the claim is bound and
// provisioned like any other and the garbage collector deletes it with the pod.
package ephemeral

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/component-helpers/storage/ephemeral"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/controllers/reconcile"
)

// ReasonFailedBinding is the event reason on a pod whose ephemeral claim cannot be made,
// as Kubernetes records it.
const ReasonFailedBinding = "FailedBinding"

// errNotSeenYet: the claim exists but the informer has not shown it yet.
var errNotSeenYet = errors.New("claim exists but is not in the informer yet")

// podsByClaim indexes pods by the namespace/name of the claims of their ephemeral volumes.
const podsByClaim = "ephemeral/claim"

// Options tune the controller; the zero value is ready to use.
type Options struct {
	Workers int
	Log     *slog.Logger
	// Recorder records failures on pods (none when nil).
	Recorder record.EventRecorder
}

// Controller creates the claims of generic ephemeral volumes.
type Controller struct {
	kube   kubernetes.Interface
	opts   Options
	pods   corelisters.PodLister
	claims corelisters.PersistentVolumeClaimLister
	queue  workqueue.TypedRateLimitingInterface[string] // pod keys
	synced []cache.InformerSynced
}

// New builds the controller and registers its informers (and an index) with factory.
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
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "ephemeral-volume"}),
	}
	podInf, claimInf := factory.Core().V1().Pods(), factory.Core().V1().PersistentVolumeClaims()
	c.pods, c.claims = podInf.Lister(), claimInf.Lister()
	if err := podInf.Informer().AddIndexers(cache.Indexers{podsByClaim: func(obj any) ([]string, error) {
		p, ok := obj.(*corev1.Pod)
		if !ok {
			return nil, nil
		}
		var keys []string
		for i := range p.Spec.Volumes {
			if p.Spec.Volumes[i].Ephemeral != nil {
				keys = append(keys, p.Namespace+"/"+ephemeral.VolumeClaimName(p, &p.Spec.Volumes[i]))
			}
		}
		return keys, nil
	}}); err != nil {
		return nil, fmt.Errorf("index pods: %w", err)
	}
	index := podInf.Informer().GetIndexer()
	onPod := func(obj any) {
		p, ok := obj.(*corev1.Pod)
		if !ok || p.DeletionTimestamp != nil || !hasEphemeral(p) {
			return
		}
		if key, err := cache.MetaNamespaceKeyFunc(p); err == nil {
			c.queue.Add(key)
		}
	}
	// A claim deleted (or a conflicting one changed) sends its pod back: it may need the
	// claim made again.
	onClaim := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		pvc, ok := obj.(*corev1.PersistentVolumeClaim)
		if !ok {
			return
		}
		pods, _ := index.ByIndex(podsByClaim, pvc.Namespace+"/"+pvc.Name)
		for _, p := range pods {
			onPod(p)
		}
	}
	for _, x := range []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{podInf.Informer(), cache.ResourceEventHandlerFuncs{AddFunc: onPod, UpdateFunc: func(_, o any) { onPod(o) }}},
		{claimInf.Informer(), cache.ResourceEventHandlerFuncs{UpdateFunc: func(_, o any) { onClaim(o) }, DeleteFunc: onClaim}},
	} {
		reg, err := x.inf.AddEventHandler(x.h)
		if err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

func hasEphemeral(p *corev1.Pod) bool {
	for i := range p.Spec.Volumes {
		if p.Spec.Volumes[i].Ephemeral != nil {
			return true
		}
	}
	return false
}

// Run creates ephemeral claims until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.opts.Log.Info("starting ephemeral volume controller")
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.opts.Workers, c.opts.Log)
	return nil
}

// Reconcile makes sure every ephemeral volume of one pod has its claim. A claim of that
// name that the pod does not own is reported on the pod and retried with backoff, as in
// Kubernetes: the pod cannot start until it is gone.
func (c *Controller) Reconcile(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	pod, err := c.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if pod.DeletionTimestamp != nil {
		return reconcile.Result{}, nil
	}
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		if v.Ephemeral == nil {
			continue
		}
		err := c.ensureClaim(ctx, pod, v)
		if errors.Is(err, errNotSeenYet) {
			return reconcile.Result{Requeue: true}, nil
		}
		if err != nil {
			if c.opts.Recorder != nil {
				c.opts.Recorder.Event(pod, corev1.EventTypeWarning, ReasonFailedBinding, fmt.Sprintf("ephemeral volume %s: %v", v.Name, err))
			}
			return reconcile.Result{}, fmt.Errorf("pod %s, ephemeral volume %s: %w", key, v.Name, err)
		}
	}
	return reconcile.Result{}, nil
}

// ensureClaim creates the volume's claim unless the pod's claim exists already.
func (c *Controller) ensureClaim(ctx context.Context, pod *corev1.Pod, v *corev1.Volume) error {
	name := ephemeral.VolumeClaimName(pod, v)
	existing, err := c.claims.PersistentVolumeClaims(pod.Namespace).Get(name)
	if err == nil {
		return ephemeral.VolumeIsForPod(pod, existing)
	}
	if !apierrors.IsNotFound(err) {
		return err
	}
	tmpl := v.Ephemeral.VolumeClaimTemplate
	if tmpl == nil {
		return fmt.Errorf("no volumeClaimTemplate")
	}
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   pod.Namespace,
			Labels:      tmpl.Labels,
			Annotations: tmpl.Annotations,
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID,
				Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true),
			}},
		},
		Spec: tmpl.Spec,
	}
	_, err = c.kube.CoreV1().PersistentVolumeClaims(pod.Namespace).Create(ctx, pvc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// Made meanwhile (by us, before the informer saw it, or by someone else): look
		// again once the informer has it.
		return errNotSeenYet
	}
	if err != nil {
		return fmt.Errorf("PVC creation failed: %w", err)
	}
	c.opts.Log.Info("created ephemeral volume claim", "pod", pod.Namespace+"/"+pod.Name, "claim", name)
	return nil
}
