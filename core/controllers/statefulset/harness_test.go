package statefulset

import (
	"context"
	"log/slog"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

var start = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// harness runs Reconcile by hand against client-go's fake clientset, syncing the informers
// with the fake before each pass. The fake's limits matter here: no defaulting (the tests
// set what the API server would), no resourceVersions or conflicts, no generateName, and a
// delete removes the object at once (no grace period, no garbage collector).
type harness struct {
	t        *testing.T
	kube     *fake.Clientset
	c        *Controller
	factory  informers.SharedInformerFactory
	recorder *record.FakeRecorder
	now      time.Time
}

func newHarness(t *testing.T, objs ...runtime.Object) *harness {
	h := &harness{t: t, kube: fake.NewClientset(objs...), recorder: record.NewFakeRecorder(100), now: start}
	h.factory = informers.NewSharedInformerFactory(h.kube, 0)
	c, err := New(h.kube, h.factory, Options{Log: slog.New(slog.DiscardHandler), Recorder: h.recorder, Now: func() time.Time { return h.now }})
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	h.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		t.Fatal("caches did not sync")
	}
	return h
}

// reconcile runs one pass for the set once the informers have caught up.
func (h *harness) reconcile(name string) {
	h.t.Helper()
	h.settle()
	if _, err := h.c.Reconcile(context.Background(), "default/"+name); err != nil {
		h.t.Fatalf("Reconcile(%s): %v", name, err)
	}
	h.settle()
}

// settle waits until the informers hold exactly what the fake does.
func (h *harness) settle() {
	h.t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		pods, _ := h.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
		claims, _ := h.kube.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
		sets, _ := h.kube.AppsV1().StatefulSets("").List(ctx, metav1.ListOptions{})
		revs, _ := h.kube.AppsV1().ControllerRevisions("").List(ctx, metav1.ListOptions{})
		var want []runtime.Object
		for i := range pods.Items {
			want = append(want, &pods.Items[i])
		}
		for i := range claims.Items {
			want = append(want, &claims.Items[i])
		}
		for i := range sets.Items {
			want = append(want, &sets.Items[i])
		}
		for i := range revs.Items {
			want = append(want, &revs.Items[i])
		}
		stores := []cache.Store{
			h.factory.Core().V1().Pods().Informer().GetStore(),
			h.factory.Core().V1().PersistentVolumeClaims().Informer().GetStore(),
			h.factory.Apps().V1().StatefulSets().Informer().GetStore(),
			h.factory.Apps().V1().ControllerRevisions().Informer().GetStore(),
		}
		ok := len(stores[0].List()) == len(pods.Items) && len(stores[1].List()) == len(claims.Items) &&
			len(stores[2].List()) == len(sets.Items) && len(stores[3].List()) == len(revs.Items)
		for _, obj := range want {
			found := false
			for _, s := range stores {
				if got, exists, _ := s.Get(obj); exists {
					found = apiequality.Semantic.DeepEqual(got, obj)
					break
				}
			}
			ok = ok && found
		}
		if ok {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.t.Fatal("informers did not catch up with the fake clientset")
}

func (h *harness) set(name string) *appsv1.StatefulSet {
	h.t.Helper()
	s, err := h.kube.AppsV1().StatefulSets("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return s
}

func (h *harness) updateSet(s *appsv1.StatefulSet) {
	h.t.Helper()
	s.Generation++ // the API server bumps it on spec changes; the fake does not
	if _, err := h.kube.AppsV1().StatefulSets("default").Update(context.Background(), s, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

// podNames lists the pods of the namespace by name.
func (h *harness) podNames() map[string]*corev1.Pod {
	h.t.Helper()
	pods, err := h.kube.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[string]*corev1.Pod{}
	for i := range pods.Items {
		out[pods.Items[i].Name] = &pods.Items[i]
	}
	return out
}

// ready plays the kubelet: the pod is Running and Ready since the harness's now.
func (h *harness) ready(name string) {
	h.t.Helper()
	ctx := context.Background()
	p, err := h.kube.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(h.now)}}
	if _, err := h.kube.CoreV1().Pods("default").UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

// rollOut reconciles and readies pods until the set's pods all exist and are ready.
func (h *harness) rollOut(name string, n int) {
	h.t.Helper()
	for range 3 * n {
		h.reconcile(name)
		all := true
		for pname, p := range h.podNames() {
			if !runningAndReady(p) {
				h.ready(pname)
				all = false
			}
		}
		if all && len(h.podNames()) == n {
			h.reconcile(name)
			return
		}
	}
	h.t.Fatalf("statefulset %s did not reach %d ready pods: %v", name, n, keys(h.podNames()))
}

func keys(m map[string]*corev1.Pod) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// webSet is the StatefulSet the tests use, defaulted as the API server would.
func webSet(replicas int32, policy appsv1.PodManagementPolicyType) *appsv1.StatefulSet {
	zero := int32(0)
	ten := int32(10)
	labels := map[string]string{"app": "web"}
	return &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default", UID: types.UID("set-uid"), Generation: 1},
		Spec: appsv1.StatefulSetSpec{
			Replicas:             &replicas,
			Selector:             &metav1.LabelSelector{MatchLabels: labels},
			ServiceName:          "nginx",
			PodManagementPolicy:  policy,
			RevisionHistoryLimit: &ten,
			UpdateStrategy: appsv1.StatefulSetUpdateStrategy{
				Type:          appsv1.RollingUpdateStatefulSetStrategyType,
				RollingUpdate: &appsv1.RollingUpdateStatefulSetStrategy{Partition: &zero},
			},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "nginx", Image: "nginx:1.27",
					VolumeMounts: []corev1.VolumeMount{{Name: "www", MountPath: "/usr/share/nginx/html"}},
				}}},
			},
			VolumeClaimTemplates: []corev1.PersistentVolumeClaim{{
				ObjectMeta: metav1.ObjectMeta{Name: "www"},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
				},
			}},
		},
	}
}
