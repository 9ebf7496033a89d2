// Package persistentvolume is the PersistentVolume controller, as kube-controller-manager's
// persistentvolume-binder, pvc-protection and pv-protection controllers together (1.33): it
// binds claims to volumes (FindMatchingVolume's rules: capacity, access modes, class, volume
// mode, selector, pre-binding, the smallest volume that fits), keeps both objects' phases
// (Available, Bound, Released, Failed; Pending, Bound, Lost), hands claims that no volume
// fits to the external provisioner of their class (a CSI driver, whose sidecar creates the
// volume pre-bound to the claim), applies the reclaim policy when a bound claim goes, and
// removes the kubernetes.io/pvc-protection and kubernetes.io/pv-protection finalizers once a
// claim is no longer used by a pod and a volume no longer bound.
//
// berth has no in-tree volume plugins: every volume it provisions or deletes goes through a
// CSI driver's sidecar (core/agent/csi/sidecar). Where Kubernetes would call an in-tree
// deleter or recycler, the volume is marked Failed with Kubernetes' words.
package persistentvolume

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/component-helpers/storage/ephemeral"

	"berth.dev/berth/core/controllers/reconcile"
)

// Finalizers the API server's StorageObjectInUseProtection admission adds and this controller
// removes.
const (
	PVCProtectionFinalizer = "kubernetes.io/pvc-protection"
	PVProtectionFinalizer  = "kubernetes.io/pv-protection"
)

// DefaultResyncPeriod is how often every claim and volume is looked at again although
// nothing changed, as kube-controller-manager's --pvclaimbinder-sync-period (15 s): it
// retries what failed for reasons no watch reports.
const DefaultResyncPeriod = 15 * time.Second

// Options tune the controller; the zero value is ready to use.
type Options struct {
	// Workers per queue (claims, volumes); 8 when zero (a burst of claims is a burst of
	// API writes, each waiting on etcd). Concurrent workers are safe: every
	// write carries the resourceVersion it was decided on, so two workers that pick the same
	// volume for different claims cannot both succeed.
	Workers int
	Log     *slog.Logger
	// Recorder receives the events on claims and volumes (none when nil); the manager gives
	// it the component name persistentvolume-controller, as Kubernetes.
	Recorder record.EventRecorder
	// ResyncPeriod is DefaultResyncPeriod when zero.
	ResyncPeriod time.Duration
}

// Controller is the PersistentVolume controller.
type Controller struct {
	kube     kubernetes.Interface
	opts     Options
	recorder record.EventRecorder

	volumes     corelisters.PersistentVolumeLister
	volumeIndex cache.Indexer // by claimIndex
	claims      corelisters.PersistentVolumeClaimLister
	classes     storagelisters.StorageClassLister
	drivers     storagelisters.CSIDriverLister
	csiNodes    storagelisters.CSINodeLister
	nodes       corelisters.NodeLister
	podIndex    cache.Indexer // by claimIndex
	picks       recentPicks
	waiting     waitingSaid

	claimQueue  workqueue.TypedRateLimitingInterface[string]
	volumeQueue workqueue.TypedRateLimitingInterface[string]
	synced      []cache.InformerSynced
}

// claimIndex indexes volumes by the claim their claimRef names and pods by the claims their
// volumes use, both as "namespace/name".
const claimIndex = "persistentvolume.claim" // unique: other controllers share the pod informer

// New builds the controller and registers its informers with factory.
func New(kube kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 8
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.ResyncPeriod <= 0 {
		opts.ResyncPeriod = DefaultResyncPeriod
	}
	// Retries back off per key only (5 ms doubling to 5 min): client-go's default
	// controller limiter adds a shared bucket of 10 retries/s, which turns the write
	// conflicts of a burst of claims (a hundred binding at once) into seconds of waiting.
	retry := func() workqueue.TypedRateLimiter[string] {
		return workqueue.NewTypedItemExponentialFailureRateLimiter[string](5*time.Millisecond, 5*time.Minute)
	}
	c := &Controller{
		kube: kube, opts: opts, recorder: opts.Recorder,
		claimQueue: workqueue.NewTypedRateLimitingQueueWithConfig(retry(),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "claims"}),
		volumeQueue: workqueue.NewTypedRateLimitingQueueWithConfig(retry(),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "volumes"}),
	}
	if c.recorder == nil {
		c.recorder = &record.FakeRecorder{} // no channel: drops events
	}
	pvInf := factory.Core().V1().PersistentVolumes()
	pvcInf := factory.Core().V1().PersistentVolumeClaims()
	podInf := factory.Core().V1().Pods()
	nodeInf := factory.Core().V1().Nodes()
	scInf := factory.Storage().V1().StorageClasses()
	driverInf := factory.Storage().V1().CSIDrivers()
	csiNodeInf := factory.Storage().V1().CSINodes()
	c.volumes, c.claims, c.nodes = pvInf.Lister(), pvcInf.Lister(), nodeInf.Lister()
	c.classes, c.drivers, c.csiNodes = scInf.Lister(), driverInf.Lister(), csiNodeInf.Lister()

	// The indexers must be added before the factory starts the informers.
	if err := pvInf.Informer().AddIndexers(cache.Indexers{claimIndex: volumeClaimKeys}); err != nil {
		return nil, fmt.Errorf("index volumes by claim: %w", err)
	}
	if err := podInf.Informer().AddIndexers(cache.Indexers{claimIndex: podClaimKeys}); err != nil {
		return nil, fmt.Errorf("index pods by claim: %w", err)
	}
	c.volumeIndex, c.podIndex = pvInf.Informer().GetIndexer(), podInf.Informer().GetIndexer()

	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{pvInf.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(o any) { c.volumeChanged(o, true) },
			UpdateFunc: func(_, o any) { c.volumeChanged(o, true) },
			DeleteFunc: func(o any) { c.volumeChanged(o, false) },
		}},
		{pvcInf.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    c.claimChanged,
			UpdateFunc: func(_, o any) { c.claimChanged(o) },
			DeleteFunc: c.claimChanged,
		}},
		// A pod that stops using a claim may let a deleted claim go.
		{podInf.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    c.podChanged,
			UpdateFunc: func(_, o any) { c.podChanged(o) },
			DeleteFunc: c.podChanged,
		}},
		// What a pending claim waits for: a default class, its class, its driver registering,
		// the node it was given.
		{scInf.Informer(), c.pendingClaimsHandler()},
		{driverInf.Informer(), c.pendingClaimsHandler()},
		{csiNodeInf.Informer(), c.pendingClaimsHandler()},
		{nodeInf.Informer(), cache.ResourceEventHandlerFuncs{AddFunc: func(any) { c.enqueuePendingClaims() }}},
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

// Run binds, reclaims and unprotects until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.claimQueue.ShutDown()
	defer c.volumeQueue.ShutDown()
	c.opts.Log.Info("starting persistentvolume controller")
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	var wg sync.WaitGroup
	wg.Add(3)
	go func() {
		defer wg.Done()
		reconcile.Work(ctx, c.claimQueue, reconcile.Func[string](c.reconcileClaim), c.opts.Workers, c.opts.Log.With("queue", "claims"))
	}()
	go func() {
		defer wg.Done()
		reconcile.Work(ctx, c.volumeQueue, reconcile.Func[string](c.reconcileVolume), c.opts.Workers, c.opts.Log.With("queue", "volumes"))
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(c.opts.ResyncPeriod)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				c.resync()
			}
		}
	}()
	wg.Wait()
	return nil
}

// resync queues every claim and volume, as Kubernetes' periodic sync does.
func (c *Controller) resync() {
	if pvs, err := c.volumes.List(labels.Everything()); err == nil {
		for _, pv := range pvs {
			c.volumeQueue.Add(pv.Name)
		}
	}
	if pvcs, err := c.claims.List(labels.Everything()); err == nil {
		for _, pvc := range pvcs {
			c.claimQueue.Add(pvc.Namespace + "/" + pvc.Name)
		}
	}
}

// volumeChanged queues a volume and the claim it names; a volume that appears or changes
// may be what a pending claim waits for.
func (c *Controller) volumeChanged(obj any, exists bool) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pv, ok := obj.(*corev1.PersistentVolume)
	if !ok {
		return
	}
	if exists {
		c.volumeQueue.Add(pv.Name)
	}
	if ref := pv.Spec.ClaimRef; ref != nil {
		c.claimQueue.Add(ref.Namespace + "/" + ref.Name)
	}
	if exists && pv.Spec.ClaimRef == nil && pv.DeletionTimestamp == nil {
		c.enqueuePendingClaims()
	}
}

// claimChanged queues a claim and the volumes bound or pre-bound to it (a deleted claim
// releases them).
func (c *Controller) claimChanged(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pvc, ok := obj.(*corev1.PersistentVolumeClaim)
	if !ok {
		return
	}
	key := pvc.Namespace + "/" + pvc.Name
	c.claimQueue.Add(key)
	if pvc.Spec.VolumeName != "" {
		c.volumeQueue.Add(pvc.Spec.VolumeName)
	}
	objs, _ := c.volumeIndex.ByIndex(claimIndex, key)
	for _, o := range objs {
		c.volumeQueue.Add(o.(*corev1.PersistentVolume).Name)
	}
}

// podChanged queues the claims a pod uses: a claim being deleted waits for its pods, and a
// claim waiting for its first consumer says which pod it waits for.
func (c *Controller) podChanged(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	keys, _ := podClaimKeys(obj)
	for _, k := range keys {
		c.claimQueue.Add(k)
	}
}

func (c *Controller) pendingClaimsHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.enqueuePendingClaims() },
		UpdateFunc: func(any, any) { c.enqueuePendingClaims() },
		DeleteFunc: func(any) { c.enqueuePendingClaims() },
	}
}

// enqueuePendingClaims queues every claim that is not bound yet. Kubernetes leaves these to
// its 15 s resync; berth looks at once, so that a claim binds as soon as what it waits for
// appears.
func (c *Controller) enqueuePendingClaims() {
	pvcs, err := c.claims.List(labels.Everything())
	if err != nil {
		return
	}
	for _, pvc := range pvcs {
		if pvc.Spec.VolumeName == "" || pvc.Status.Phase == corev1.ClaimPending {
			c.claimQueue.Add(pvc.Namespace + "/" + pvc.Name)
		}
	}
}

// volumeClaimKeys is the claimIndex of volumes: the claim of claimRef.
func volumeClaimKeys(obj any) ([]string, error) {
	pv, ok := obj.(*corev1.PersistentVolume)
	if !ok || pv.Spec.ClaimRef == nil {
		return nil, nil
	}
	return []string{pv.Spec.ClaimRef.Namespace + "/" + pv.Spec.ClaimRef.Name}, nil
}

// podClaimKeys is the claimIndex of pods: the claims of their persistentVolumeClaim and
// ephemeral volumes.
func podClaimKeys(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	var keys []string
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		switch {
		case v.PersistentVolumeClaim != nil:
			keys = append(keys, pod.Namespace+"/"+v.PersistentVolumeClaim.ClaimName)
		case v.Ephemeral != nil:
			keys = append(keys, pod.Namespace+"/"+ephemeral.VolumeClaimName(pod, v))
		}
	}
	return keys, nil
}

// knownDriver reports whether name is a CSI driver this cluster knows: a CSIDriver object of
// that name, or a node whose CSINode lists it.
func (c *Controller) knownDriver(name string) bool {
	if _, err := c.drivers.Get(name); err == nil {
		return true
	}
	csiNodes, err := c.csiNodes.List(labels.Everything())
	if err != nil {
		return false
	}
	for _, n := range csiNodes {
		if csiNodeHasDriver(n, name) {
			return true
		}
	}
	return false
}

func csiNodeHasDriver(n *storagev1.CSINode, driver string) bool {
	for _, d := range n.Spec.Drivers {
		if d.Name == driver {
			return true
		}
	}
	return false
}
