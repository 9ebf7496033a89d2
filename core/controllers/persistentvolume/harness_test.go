package persistentvolume

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/controllers/reconcile"
)

// harness runs the controller against client-go's fake clientset. A reactor (storageRules)
// gives volumes and claims what the controller relies on and the fake lacks: a status
// subresource (Update keeps the stored status, UpdateStatus changes only status) and
// resourceVersions with conflicts on stale updates. The fake's other limits, which the
// integration test (real API server) covers instead:
//   - no defaulting, validation or admission (no finalizers added on create, no default
//     class);
//   - no deletionTimestamp handling: a delete removes the object at once, finalizers or not;
//   - other resources (pods, classes, nodes) have no resourceVersions or subresources.
//
// Passes are driven by hand (drain) rather than by Run's workers, so a test sees the state
// after the controller has nothing left to do.
type harness struct {
	t      *testing.T
	kube   *fake.Clientset
	c      *Controller
	events *record.FakeRecorder
	ctx    context.Context
}

func newHarness(t *testing.T, objs ...runtime.Object) *harness {
	t.Helper()
	kube := fake.NewClientset(objs...)
	storageRules(kube)
	factory := informers.NewSharedInformerFactory(kube, 0)
	events := record.NewFakeRecorder(1000)
	c, err := New(kube, factory, Options{Log: slog.New(slog.DiscardHandler), Recorder: events})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		factory.Shutdown()
		c.claimQueue.ShutDown()
		c.volumeQueue.ShutDown()
	})
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	h := &harness{t: t, kube: kube, c: c, events: events, ctx: ctx}
	c.resync()
	h.drain()
	return h
}

// storageRules makes the fake's volumes and claims behave as the API server's do for the
// controller: a resourceVersion per write, 409 Conflict for an update that names an older
// one, and a status subresource.
func storageRules(kube *fake.Clientset) {
	var mu sync.Mutex
	rv := 100
	next := func() string {
		rv++
		return strconv.Itoa(rv)
	}
	for _, resource := range []string{"persistentvolumes", "persistentvolumeclaims"} {
		kube.PrependReactor("create", resource, func(action clienttesting.Action) (bool, runtime.Object, error) {
			mu.Lock()
			defer mu.Unlock()
			obj := action.(clienttesting.CreateAction).GetObject()
			m, _ := meta.Accessor(obj)
			m.SetResourceVersion(next())
			return false, nil, nil // the tracker stores it
		})
		kube.PrependReactor("update", resource, func(action clienttesting.Action) (bool, runtime.Object, error) {
			mu.Lock()
			defer mu.Unlock()
			u := action.(clienttesting.UpdateAction)
			obj := u.GetObject().DeepCopyObject()
			m, _ := meta.Accessor(obj)
			gvr := u.GetResource()
			current, err := kube.Tracker().Get(gvr, u.GetNamespace(), m.GetName())
			if err != nil {
				return true, nil, err
			}
			cm, _ := meta.Accessor(current)
			if m.GetResourceVersion() != "" && cm.GetResourceVersion() != "" && m.GetResourceVersion() != cm.GetResourceVersion() {
				return true, nil, apierrors.NewConflict(gvr.GroupResource(), m.GetName(), errors.New("the object has been modified; please apply your changes to the latest version and try again"))
			}
			var stored runtime.Object
			switch o := obj.(type) {
			case *corev1.PersistentVolume:
				cur := current.(*corev1.PersistentVolume).DeepCopy()
				if u.GetSubresource() == "status" {
					cur.Status = o.Status
				} else {
					o.Status = cur.Status
					cur = o
				}
				stored = cur
			case *corev1.PersistentVolumeClaim:
				cur := current.(*corev1.PersistentVolumeClaim).DeepCopy()
				if u.GetSubresource() == "status" {
					cur.Status = o.Status
				} else {
					o.Status = cur.Status
					cur = o
				}
				stored = cur
			}
			sm, _ := meta.Accessor(stored)
			sm.SetResourceVersion(next())
			if err := kube.Tracker().Update(gvr, stored, u.GetNamespace()); err != nil {
				return true, nil, err
			}
			return true, stored.DeepCopyObject(), nil
		})
	}
}

// drain runs passes until both queues stay empty for a while (the informers have delivered
// the controller's own writes and nothing more is queued).
func (h *harness) drain() {
	h.t.Helper()
	quiet := 0
	for round := 0; round < 400 && quiet < 5; round++ {
		worked := h.pass(h.c.claimQueue, h.c.reconcileClaim) || h.pass(h.c.volumeQueue, h.c.reconcileVolume)
		if worked {
			quiet = 0
			continue
		}
		quiet++
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) pass(q workqueue.TypedRateLimitingInterface[string], f func(context.Context, string) (reconcile.Result, error)) bool {
	if q.Len() == 0 {
		return false
	}
	key, _ := q.Get()
	defer q.Done(key)
	if _, err := f(h.ctx, key); err != nil {
		h.t.Logf("pass %s: %v (retrying)", key, err)
		q.AddAfter(key, 20*time.Millisecond)
	}
	return true
}

// sync runs a full resync and drains: what the periodic resync gives a claim that waits.
func (h *harness) sync() {
	h.t.Helper()
	time.Sleep(20 * time.Millisecond) // let the informers see the test's own writes
	h.c.resync()
	h.drain()
}

func (h *harness) pv(name string) *corev1.PersistentVolume {
	h.t.Helper()
	pv, err := h.kube.CoreV1().PersistentVolumes().Get(h.ctx, name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatalf("get volume %s: %v", name, err)
	}
	return pv
}

func (h *harness) pvc(name string) *corev1.PersistentVolumeClaim {
	h.t.Helper()
	pvc, err := h.kube.CoreV1().PersistentVolumeClaims("default").Get(h.ctx, name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatalf("get claim %s: %v", name, err)
	}
	return pvc
}

func (h *harness) create(obj runtime.Object) {
	h.t.Helper()
	var err error
	switch o := obj.(type) {
	case *corev1.PersistentVolume:
		_, err = h.kube.CoreV1().PersistentVolumes().Create(h.ctx, o, metav1.CreateOptions{})
	case *corev1.PersistentVolumeClaim:
		_, err = h.kube.CoreV1().PersistentVolumeClaims(o.Namespace).Create(h.ctx, o, metav1.CreateOptions{})
	case *corev1.Pod:
		_, err = h.kube.CoreV1().Pods(o.Namespace).Create(h.ctx, o, metav1.CreateOptions{})
	case *storagev1.StorageClass:
		_, err = h.kube.StorageV1().StorageClasses().Create(h.ctx, o, metav1.CreateOptions{})
	default:
		h.t.Fatalf("create %T: not handled", obj)
	}
	if err != nil {
		h.t.Fatal(err)
	}
}

// eventsSeen returns the events recorded so far ("Type Reason message").
func (h *harness) eventsSeen() []string {
	var out []string
	for {
		select {
		case e := <-h.events.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// expectEvent fails unless an event with reason and a message containing text was recorded.
func (h *harness) expectEvent(reason, text string) {
	h.t.Helper()
	seen := h.eventsSeen()
	for _, e := range seen {
		if strings.Contains(e, " "+reason+" ") && strings.Contains(e, text) {
			return
		}
	}
	h.t.Errorf("no %s event saying %q among %q", reason, text, seen)
}

// Fixtures.

func volume(name, size string, mods ...func(*corev1.PersistentVolume)) *corev1.PersistentVolume {
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name)},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/tmp/data"}},
		},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumePending},
	}
	for _, m := range mods {
		m(pv)
	}
	return pv
}

func claim(name, size string, mods ...func(*corev1.PersistentVolumeClaim)) *corev1.PersistentVolumeClaim {
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name)},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
		},
		Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimPending},
	}
	for _, m := range mods {
		m(pvc)
	}
	return pvc
}

func class(name, provisioner string, mode storagev1.VolumeBindingMode, mods ...func(*storagev1.StorageClass)) *storagev1.StorageClass {
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: provisioner, VolumeBindingMode: &mode}
	for _, m := range mods {
		m(sc)
	}
	return sc
}

func node(name string, labels map[string]string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Status:     corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}},
	}
}

func csiNode(name string, drivers ...string) *storagev1.CSINode {
	cn := &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, d := range drivers {
		cn.Spec.Drivers = append(cn.Spec.Drivers, storagev1.CSINodeDriver{Name: d, NodeID: name})
	}
	return cn
}

func withClass(name string) func(*corev1.PersistentVolumeClaim) {
	return func(pvc *corev1.PersistentVolumeClaim) { pvc.Spec.StorageClassName = &name }
}

func pvClass(name string) func(*corev1.PersistentVolume) {
	return func(pv *corev1.PersistentVolume) { pv.Spec.StorageClassName = name }
}

// pvOnNode gives a volume node affinity for one node (kubernetes.io/hostname).
func pvOnNode(n string) func(*corev1.PersistentVolume) {
	return func(pv *corev1.PersistentVolume) {
		pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{n}}},
		}}}}
	}
}

func annotate(key, value string) func(*corev1.PersistentVolumeClaim) {
	return func(pvc *corev1.PersistentVolumeClaim) {
		metav1.SetMetaDataAnnotation(&pvc.ObjectMeta, key, value)
	}
}
