package replicaset

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync/atomic"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"berth.dev/berth/core/controllers/reconcile"
)

// harness runs the controller against client-go's fake clientset. The informers are never
// started: the test fills their caches with observe(), so that it decides when the
// controller sees its own writes (the fake does not generate names; a reactor does).
type harness struct {
	t        *testing.T
	kube     *fake.Clientset
	factory  informers.SharedInformerFactory
	c        *Controller
	recorder *record.FakeRecorder
}

func newHarness(t *testing.T, objs ...runtime.Object) *harness {
	t.Helper()
	kube := fake.NewClientset(objs...)
	var n atomic.Int64
	kube.PrependReactor("create", "pods", func(action clienttesting.Action) (bool, runtime.Object, error) {
		pod := action.(clienttesting.CreateAction).GetObject().(*corev1.Pod)
		if pod.Name == "" && pod.GenerateName != "" {
			pod.Name = fmt.Sprintf("%s%05d", pod.GenerateName, n.Add(1))
			pod.UID = types.UID("uid-" + pod.Name)
		}
		return false, nil, nil
	})
	factory := informers.NewSharedInformerFactory(kube, 0)
	recorder := record.NewFakeRecorder(1000)
	c, err := New(kube, factory, Options{Log: slog.New(slog.DiscardHandler), Recorder: recorder})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, kube: kube, factory: factory, c: c, recorder: recorder}
	h.observe()
	return h
}

// observe plays the informers: it copies the fake's ReplicaSets, ReplicationControllers
// and pods into the caches and calls the pod handlers for what changed.
func (h *harness) observe() {
	h.t.Helper()
	ctx := context.Background()
	rss, err := h.kube.AppsV1().ReplicaSets("").List(ctx, metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	rsStore := h.factory.Apps().V1().ReplicaSets().Informer().GetIndexer()
	for i := range rss.Items {
		_ = rsStore.Update(&rss.Items[i])
	}
	rcs, err := h.kube.CoreV1().ReplicationControllers("").List(ctx, metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	rcStore := h.factory.Core().V1().ReplicationControllers().Informer().GetIndexer()
	for i := range rcs.Items {
		_ = rcStore.Update(&rcs.Items[i])
	}
	pods, err := h.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	podStore := h.factory.Core().V1().Pods().Informer().GetIndexer()
	seen := map[string]bool{}
	for i := range pods.Items {
		pod := &pods.Items[i]
		key, _ := cache.MetaNamespaceKeyFunc(pod)
		seen[key] = true
		old, exists, _ := podStore.GetByKey(key)
		_ = podStore.Update(pod)
		if !exists {
			h.c.addPod(pod)
		} else if old.(*corev1.Pod).ResourceVersion != pod.ResourceVersion || pod.ResourceVersion == "" {
			// The fake leaves resourceVersion empty; count every pass as a change.
			if pod.ResourceVersion == "" {
				old = old.(*corev1.Pod).DeepCopy()
				old.(*corev1.Pod).ResourceVersion = "old"
			}
			h.c.updatePod(old, pod)
		}
	}
	for _, key := range podStore.ListKeys() {
		if !seen[key] {
			obj, _, _ := podStore.GetByKey(key)
			_ = podStore.Delete(obj)
			h.c.deletePod(obj)
		}
	}
}

// reconcile runs one pass for the key.
func (h *harness) reconcile(key Key) (reconcile.Result, error) {
	h.t.Helper()
	return h.c.Reconcile(context.Background(), key)
}

// pods lists the namespace's pods from the fake, sorted by name.
func (h *harness) pods(ns string) []corev1.Pod {
	h.t.Helper()
	list, err := h.kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	return list.Items
}

// replicaSet reads a ReplicaSet from the fake.
func (h *harness) replicaSet(ns, name string) *appsv1.ReplicaSet {
	h.t.Helper()
	rs, err := h.kube.AppsV1().ReplicaSets(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return rs
}

// count counts the fake's actions of a verb on a resource (and subresource).
func (h *harness) count(verb, resource, subresource string) int {
	n := 0
	for _, a := range h.kube.Actions() {
		if a.GetVerb() == verb && a.GetResource().Resource == resource && a.GetSubresource() == subresource {
			n++
		}
	}
	return n
}

// events drains the recorded events.
func (h *harness) events() []string {
	var out []string
	for {
		select {
		case e := <-h.recorder.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

// queued drains the controller's queue.
func (h *harness) queued() []Key {
	var out []Key
	for h.c.queue.Len() > 0 {
		k, _ := h.c.queue.Get()
		h.c.queue.Done(k)
		out = append(out, k)
	}
	return out
}

func countPrefix(list []string, prefix string) int {
	n := 0
	for _, s := range list {
		if strings.HasPrefix(s, prefix) {
			n++
		}
	}
	return n
}

func newRS(name string, replicas int32) *appsv1.ReplicaSet {
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID("uid-" + name), Generation: 1},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      map[string]string{"app": name, "tier": "web"},
					Annotations: map[string]string{"note": "from-template"},
				},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
			},
		},
	}
}

func newRC(name string, replicas int32) *corev1.ReplicationController {
	return &corev1.ReplicationController{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID("uid-" + name), Generation: 1},
		Spec: corev1.ReplicationControllerSpec{
			Replicas: &replicas,
			Selector: map[string]string{"app": name},
			Template: &corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
			},
		},
	}
}

// newPod is a pod with the labels; owner, if not nil, controls it.
func newPod(name string, lbls map[string]string, owner metav1.Object, kind string) *corev1.Pod {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID("uid-" + name), Labels: lbls},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	if owner != nil {
		gv := appsv1.SchemeGroupVersion
		if kind == KindReplicationController {
			gv = corev1.SchemeGroupVersion
		}
		pod.OwnerReferences = []metav1.OwnerReference{*metav1.NewControllerRef(owner, gv.WithKind(kind))}
	}
	return pod
}

func rsKey(name string) Key { return Key{Kind: KindReplicaSet, Namespace: "ns", Name: name} }
