package resourcequota

import (
	"context"
	"log/slog"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	metadatafake "k8s.io/client-go/metadata/fake"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
)

func TestReconcileCountsUsage(t *testing.T) {
	quota := &corev1.ResourceQuota{
		ObjectMeta: metav1.ObjectMeta{Name: "q", Namespace: "ns"},
		Spec: corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{
			"pods": resource.MustParse("10"), "requests.cpu": resource.MustParse("4"), "count/deployments.apps": resource.MustParse("5"),
		}},
		// Usage of a resource the quota no longer limits is dropped.
		Status: corev1.ResourceQuotaStatus{Used: corev1.ResourceList{"example.com/widgets": resource.MustParse("2")}},
	}
	pod := func(name, cpu string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{"cpu": resource.MustParse(cpu)},
			}}}},
			Status: corev1.PodStatus{Phase: phase},
		}
	}
	// Two pending or running pods count; a finished one counts for nothing.
	kube := fake.NewClientset(quota, pod("a", "500m", corev1.PodRunning), pod("b", "1", corev1.PodPending), pod("done", "2", corev1.PodSucceeded))
	factory := informers.NewSharedInformerFactory(kube, 0)
	scheme := metadatafake.NewTestScheme()
	if err := metav1.AddMetaToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	meta := metadatafake.NewSimpleMetadataClient(scheme, &metav1.PartialObjectMetadata{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns"},
	})
	metaFactory := metadatainformer.NewSharedInformerFactory(meta, 0)
	c, err := New(kube, factory, metaFactory, Options{Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	factory.Start(ctx.Done())
	metaFactory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		t.Fatal("caches did not sync")
	}

	if _, err := c.Reconcile(context.Background(), "ns/q"); err != nil {
		t.Fatal(err)
	}
	got, err := kube.CoreV1().ResourceQuotas("ns").Get(context.Background(), "q", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[corev1.ResourceName]string{"pods": "2", "requests.cpu": "1500m", "count/deployments.apps": "1"}
	for name, q := range want {
		used := got.Status.Used[name]
		if used.Cmp(resource.MustParse(q)) != 0 {
			t.Errorf("used %s = %s, want %s", name, used.String(), q)
		}
	}
	if len(got.Status.Hard) != 3 {
		t.Errorf("status.hard %v, want the spec's three limits", got.Status.Hard)
	}
	if _, ok := got.Status.Used["example.com/widgets"]; ok {
		t.Errorf("status.used keeps a resource the quota no longer limits: %v", got.Status.Used)
	}
}
