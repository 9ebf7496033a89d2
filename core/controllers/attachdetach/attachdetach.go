// Package attachdetach is the attach-detach controller for CSI volumes, as
// kube-controller-manager's: for every scheduled, running pod whose claim is bound to a CSI
// volume of a driver that needs attaching, it keeps a VolumeAttachment for the volume and
// the pod's node, which the driver's attacher (the sidecar's, core/agent/csi/sidecar) acts
// on; once no pod on the node uses the volume and the node's agent no longer lists it in
// status.volumesInUse (it has unmounted it), the VolumeAttachment is deleted and the
// attacher detaches. Inline CSI volumes never attach.
package attachdetach

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/component-helpers/storage/ephemeral"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/controllers/reconcile"
)

// Event reasons, as Kubernetes' attach-detach controller records them on the pod.
const (
	ReasonFailedAttach     = "FailedAttachVolume"
	ReasonSuccessfulAttach = "SuccessfulAttachVolume"
)

// Index names on the shared informers; prefixed so that they cannot clash with another
// controller's.
const (
	podsByNode        = "attachdetach/node"
	podsByClaim       = "attachdetach/claim"
	attachmentsByNode = "attachdetach/node"
)

// AttachmentName is the VolumeAttachment name of a volume on a node:
// csi-<hex sha256 of volumeHandle+driver+nodeName>, as Kubernetes' CSI plugin names it, so
// that attachers written for Kubernetes find theirs.
func AttachmentName(driver, volumeHandle, nodeName string) string {
	sum := sha256.Sum256([]byte(volumeHandle + driver + nodeName))
	return "csi-" + hex.EncodeToString(sum[:])
}

// UniqueVolumeName is how the agent lists a CSI volume in node.status.volumesInUse, as
// kubelet does: kubernetes.io/csi/<driver>^<volumeHandle>.
func UniqueVolumeName(driver, volumeHandle string) corev1.UniqueVolumeName {
	return corev1.UniqueVolumeName("kubernetes.io/csi/" + driver + "^" + volumeHandle)
}

// Options tune the controller; the zero value is ready to use.
type Options struct {
	Workers int
	Log     *slog.Logger
	// Recorder records the attach events on pods (none when nil).
	Recorder record.EventRecorder
}

// Controller keeps VolumeAttachments for the CSI volumes the nodes' pods use.
type Controller struct {
	kube        kubernetes.Interface
	opts        Options
	pods        cache.Indexer
	claims      corelisters.PersistentVolumeClaimLister
	volumes     corelisters.PersistentVolumeLister
	nodes       corelisters.NodeLister
	drivers     storagelisters.CSIDriverLister
	attachments cache.Indexer
	queue       workqueue.TypedRateLimitingInterface[string] // node names
	synced      []cache.InformerSynced

	mu sync.Mutex
	// reported remembers the last event each pod got about each attachment (the error
	// message, or success), so that an unchanged status is not reported again.
	reported map[string]string
}

// New builds the controller and registers its informers (and indexes) with factory.
func New(kube kubernetes.Interface, factory informers.SharedInformerFactory, opts Options) (*Controller, error) {
	if opts.Workers <= 0 {
		opts.Workers = 2
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	c := &Controller{
		kube: kube, opts: opts, reported: map[string]string{},
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[string](),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "attachdetach"}),
	}
	core, storage := factory.Core().V1(), factory.Storage().V1()
	podInf, claimInf, pvInf := core.Pods().Informer(), core.PersistentVolumeClaims().Informer(), core.PersistentVolumes().Informer()
	nodeInf, driverInf, vaInf := core.Nodes().Informer(), storage.CSIDrivers().Informer(), storage.VolumeAttachments().Informer()
	if err := podInf.AddIndexers(cache.Indexers{
		podsByNode: func(obj any) ([]string, error) {
			if p, ok := obj.(*corev1.Pod); ok && p.Spec.NodeName != "" {
				return []string{p.Spec.NodeName}, nil
			}
			return nil, nil
		},
		podsByClaim: func(obj any) ([]string, error) {
			p, ok := obj.(*corev1.Pod)
			if !ok {
				return nil, nil
			}
			var keys []string
			for i := range p.Spec.Volumes {
				if name := claimName(p, &p.Spec.Volumes[i]); name != "" {
					keys = append(keys, p.Namespace+"/"+name)
				}
			}
			return keys, nil
		},
	}); err != nil {
		return nil, fmt.Errorf("index pods: %w", err)
	}
	if err := vaInf.AddIndexers(cache.Indexers{attachmentsByNode: func(obj any) ([]string, error) {
		if va, ok := obj.(*storagev1.VolumeAttachment); ok {
			return []string{va.Spec.NodeName}, nil
		}
		return nil, nil
	}}); err != nil {
		return nil, fmt.Errorf("index volumeattachments: %w", err)
	}
	c.pods, c.attachments = podInf.GetIndexer(), vaInf.GetIndexer()
	c.claims, c.volumes, c.nodes = core.PersistentVolumeClaims().Lister(), core.PersistentVolumes().Lister(), core.Nodes().Lister()
	c.drivers = storage.CSIDrivers().Lister()

	onPod := func(obj any) {
		if p, ok := tombstone(obj).(*corev1.Pod); ok && p.Spec.NodeName != "" {
			c.queue.Add(p.Spec.NodeName)
		}
	}
	onClaimKey := func(key string) {
		pods, _ := c.pods.ByIndex(podsByClaim, key)
		for _, o := range pods {
			onPod(o)
		}
	}
	onClaim := func(obj any) {
		if pvc, ok := tombstone(obj).(*corev1.PersistentVolumeClaim); ok {
			onClaimKey(pvc.Namespace + "/" + pvc.Name)
		}
	}
	onVolume := func(obj any) {
		pv, ok := tombstone(obj).(*corev1.PersistentVolume)
		if !ok {
			return
		}
		if ref := pv.Spec.ClaimRef; ref != nil {
			onClaimKey(ref.Namespace + "/" + ref.Name)
		}
		for _, o := range c.attachments.List() {
			if va := o.(*storagev1.VolumeAttachment); ptr.Deref(va.Spec.Source.PersistentVolumeName, "") == pv.Name {
				c.queue.Add(va.Spec.NodeName)
			}
		}
	}
	onAttachment := func(obj any) {
		if va, ok := tombstone(obj).(*storagev1.VolumeAttachment); ok {
			c.queue.Add(va.Spec.NodeName)
		}
	}
	// Whether a driver needs attaching can change everywhere.
	onDriver := func(any) {
		nodes, _ := c.nodes.List(labels.Everything())
		for _, n := range nodes {
			c.queue.Add(n.Name)
		}
		for _, o := range c.attachments.List() {
			c.queue.Add(o.(*storagev1.VolumeAttachment).Spec.NodeName)
		}
	}
	onNode := func(obj any) {
		if n, ok := tombstone(obj).(*corev1.Node); ok {
			c.queue.Add(n.Name)
		}
	}
	for _, x := range []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{podInf, handler(onPod, func(old, cur any) {
			onPod(cur)
			if o, ok := old.(*corev1.Pod); ok && o.Spec.NodeName != cur.(*corev1.Pod).Spec.NodeName {
				onPod(old)
			}
		})},
		{claimInf, handler(onClaim, nil)},
		{pvInf, handler(onVolume, nil)},
		{vaInf, handler(onAttachment, nil)},
		{driverInf, handler(onDriver, nil)},
		{nodeInf, handler(onNode, func(old, cur any) {
			o, ok1 := old.(*corev1.Node)
			n, ok2 := cur.(*corev1.Node)
			// Only volumesInUse matters here: the agent's heartbeats change nothing else we read.
			if ok1 && ok2 && !slices.Equal(o.Status.VolumesInUse, n.Status.VolumesInUse) {
				c.queue.Add(n.Name)
			}
		})},
	} {
		reg, err := x.inf.AddEventHandler(x.h)
		if err != nil {
			return nil, fmt.Errorf("watch: %w", err)
		}
		c.synced = append(c.synced, reg.HasSynced)
	}
	return c, nil
}

// handler calls on for adds and deletes, and update (on of the new object when nil) for
// updates.
func handler(on func(any), update func(old, cur any)) cache.ResourceEventHandler {
	if update == nil {
		update = func(_, cur any) { on(cur) }
	}
	return cache.ResourceEventHandlerFuncs{AddFunc: on, UpdateFunc: update, DeleteFunc: on}
}

func tombstone(obj any) any {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}

// claimName is the claim a pod volume uses: its persistentVolumeClaim's, or the
// <pod>-<volume> claim of a generic ephemeral volume; "" for other volumes.
func claimName(pod *corev1.Pod, v *corev1.Volume) string {
	switch {
	case v.PersistentVolumeClaim != nil:
		return v.PersistentVolumeClaim.ClaimName
	case v.Ephemeral != nil:
		return ephemeral.VolumeClaimName(pod, v)
	}
	return ""
}

// Run keeps the VolumeAttachments right until ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	c.opts.Log.Info("starting attach-detach controller")
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return nil
	}
	reconcile.Work(ctx, c.queue, reconcile.Func[string](c.Reconcile), c.opts.Workers, c.opts.Log)
	return nil
}

// wanted is a volume the node's pods need attached.
type wanted struct {
	driver, handle, pv string
	pods               []*corev1.Pod
}

// desired lists what the node's pods need attached, by VolumeAttachment name. Pods that
// have finished need nothing; claims not bound yet are left for their bind event.
func (c *Controller) desired(nodeName string) (map[string]*wanted, error) {
	out := map[string]*wanted{}
	objs, err := c.pods.ByIndex(podsByNode, nodeName)
	if err != nil {
		return nil, fmt.Errorf("pods of node %s: %w", nodeName, err)
	}
	for _, o := range objs {
		pod := o.(*corev1.Pod)
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			continue
		}
		for i := range pod.Spec.Volumes {
			v := &pod.Spec.Volumes[i]
			name := claimName(pod, v)
			if name == "" {
				continue
			}
			claim, err := c.claims.PersistentVolumeClaims(pod.Namespace).Get(name)
			if apierrors.IsNotFound(err) || (err == nil && claim.Spec.VolumeName == "") {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("claim %s/%s: %w", pod.Namespace, name, err)
			}
			if v.Ephemeral != nil && ephemeral.VolumeIsForPod(pod, claim) != nil {
				continue
			}
			pv, err := c.volumes.Get(claim.Spec.VolumeName)
			if apierrors.IsNotFound(err) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("volume %s: %w", claim.Spec.VolumeName, err)
			}
			if pv.Spec.CSI == nil {
				continue
			}
			need, err := c.attachRequired(pv.Spec.CSI.Driver)
			if err != nil {
				return nil, err
			}
			if !need {
				continue
			}
			key := AttachmentName(pv.Spec.CSI.Driver, pv.Spec.CSI.VolumeHandle, nodeName)
			w := out[key]
			if w == nil {
				w = &wanted{driver: pv.Spec.CSI.Driver, handle: pv.Spec.CSI.VolumeHandle, pv: pv.Name}
				out[key] = w
			}
			w.pods = append(w.pods, pod)
		}
	}
	return out, nil
}

// attachRequired reports whether the driver's volumes need attaching: its CSIDriver's
// attachRequired, true when it has no CSIDriver object (as Kubernetes).
func (c *Controller) attachRequired(driver string) (bool, error) {
	d, err := c.drivers.Get(driver)
	if apierrors.IsNotFound(err) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("csidriver %s: %w", driver, err)
	}
	return ptr.Deref(d.Spec.AttachRequired, true), nil
}

// Reconcile makes one node's VolumeAttachments match what its pods use: it creates the
// missing ones, reports attach errors on the pods, and deletes those no pod needs and the
// node has unmounted.
func (c *Controller) Reconcile(ctx context.Context, nodeName string) (reconcile.Result, error) {
	node, err := c.nodes.Get(nodeName)
	if err != nil && !apierrors.IsNotFound(err) {
		return reconcile.Result{}, err
	}
	if apierrors.IsNotFound(err) {
		node = nil
	}
	want := map[string]*wanted{}
	if node != nil {
		if want, err = c.desired(nodeName); err != nil {
			return reconcile.Result{}, err
		}
	}
	for name, w := range want {
		obj, exists, err := c.attachments.GetByKey(name)
		if err != nil {
			return reconcile.Result{}, err
		}
		if !exists {
			if err := c.create(ctx, name, nodeName, w); err != nil {
				return reconcile.Result{}, err
			}
			continue
		}
		c.report(obj.(*storagev1.VolumeAttachment), w)
	}
	objs, err := c.attachments.ByIndex(attachmentsByNode, nodeName)
	if err != nil {
		return reconcile.Result{}, err
	}
	for _, o := range objs {
		va := o.(*storagev1.VolumeAttachment)
		if want[va.Name] != nil || va.DeletionTimestamp != nil || va.Spec.Source.PersistentVolumeName == nil {
			continue
		}
		if c.inUse(node, va) {
			continue // the agent has not unmounted it yet; its status update brings us back
		}
		uid := va.UID
		err := c.kube.StorageV1().VolumeAttachments().Delete(ctx, va.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
		if err != nil && !apierrors.IsNotFound(err) {
			return reconcile.Result{}, fmt.Errorf("delete volumeattachment %s of volume %s on node %s: %w", va.Name, *va.Spec.Source.PersistentVolumeName, nodeName, err)
		}
		c.forget(va.Name)
		c.opts.Log.Info("detaching volume", "volumeattachment", va.Name, "volume", *va.Spec.Source.PersistentVolumeName, "node", nodeName)
	}
	return reconcile.Result{}, nil
}

func (c *Controller) create(ctx context.Context, name, nodeName string, w *wanted) error {
	va := &storagev1.VolumeAttachment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: storagev1.VolumeAttachmentSpec{
			Attacher: w.driver,
			NodeName: nodeName,
			Source:   storagev1.VolumeAttachmentSource{PersistentVolumeName: ptr.To(w.pv)},
		},
	}
	_, err := c.kube.StorageV1().VolumeAttachments().Create(ctx, va, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("create volumeattachment %s for volume %s on node %s: %w", name, w.pv, nodeName, err)
	}
	c.opts.Log.Info("attaching volume", "volumeattachment", name, "volume", w.pv, "driver", w.driver, "node", nodeName)
	return nil
}

// inUse reports whether the node still has the attachment's volume mounted, by its
// status.volumesInUse. When the volume object is gone (so its handle is unknown), any
// volume of the same driver in use counts, to stay on the safe side.
func (c *Controller) inUse(node *corev1.Node, va *storagev1.VolumeAttachment) bool {
	if node == nil {
		return false // a deleted node mounts nothing
	}
	pv, err := c.volumes.Get(*va.Spec.Source.PersistentVolumeName)
	if err == nil && pv.Spec.CSI != nil {
		return slices.Contains(node.Status.VolumesInUse, UniqueVolumeName(pv.Spec.CSI.Driver, pv.Spec.CSI.VolumeHandle))
	}
	prefix := string(UniqueVolumeName(va.Spec.Attacher, ""))
	return slices.ContainsFunc(node.Status.VolumesInUse, func(u corev1.UniqueVolumeName) bool {
		return strings.HasPrefix(string(u), prefix)
	})
}

// report records, once per change, an attach error or success on each pod that waits for
// the attachment.
func (c *Controller) report(va *storagev1.VolumeAttachment, w *wanted) {
	if c.opts.Recorder == nil {
		return
	}
	var reason, msg, typ string
	switch {
	case va.Status.AttachError != nil:
		typ, reason = corev1.EventTypeWarning, ReasonFailedAttach
		msg = fmt.Sprintf("AttachVolume.Attach failed for volume %q : %s", w.pv, va.Status.AttachError.Message)
	case va.Status.Attached:
		typ, reason = corev1.EventTypeNormal, ReasonSuccessfulAttach
		msg = fmt.Sprintf("AttachVolume.Attach succeeded for volume %q", w.pv)
	default:
		return
	}
	for _, pod := range w.pods {
		if c.firstReport(va.Name, pod.UID, msg) {
			c.opts.Recorder.Event(pod, typ, reason, msg)
		}
	}
}

// firstReport notes msg for the attachment and pod, and reports whether it is new.
func (c *Controller) firstReport(va string, pod types.UID, msg string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	key := va + "/" + string(pod)
	if c.reported[key] == msg {
		return false
	}
	c.reported[key] = msg
	return true
}

// forget drops what was reported about a deleted attachment.
func (c *Controller) forget(va string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.reported {
		if strings.HasPrefix(k, va+"/") {
			delete(c.reported, k)
		}
	}
}
