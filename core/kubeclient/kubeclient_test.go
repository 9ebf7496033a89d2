package kubeclient_test

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/flowcontrol"

	"berth.dev/berth/core/kubeclient"
)

// Callers outside the node (`berth up`, tests) pass these clientsets as they are.
var (
	_ kubeclient.Interface = (*kubernetes.Clientset)(nil)
	_ kubeclient.Interface = (*fake.Clientset)(nil)
	_ kubeclient.Interface = (*kubeclient.Clientset)(nil)
)

func pod(ns, name, node string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.PodSpec{NodeName: node}}
}

// TestInformersTweakAndLister: the set's list options reach the API's List and Watch, and
// objects listed at start and watched afterwards reach the lister, by namespace too.
func TestInformersTweakAndLister(t *testing.T) {
	kube := fake.NewClientset(pod("a", "listed", "n1"))
	selector := fields.OneTermEqualSelector("spec.nodeName", "n1")
	listed := make(chan fields.Selector, 10)
	watching := make(chan fields.Selector, 10)
	kube.PrependReactor("list", "pods", func(a clienttesting.Action) (bool, runtime.Object, error) {
		listed <- a.(clienttesting.ListAction).GetListRestrictions().Fields
		return false, nil, nil
	})
	kube.PrependWatchReactor("pods", func(a clienttesting.Action) (bool, watch.Interface, error) {
		watching <- a.(clienttesting.WatchAction).GetWatchRestrictions().Fields
		return false, nil, nil
	})

	set := kubeclient.NewInformers(kube, 0, func(o *metav1.ListOptions) { o.FieldSelector = selector.String() })
	inf := set.Pods()
	if set.Pods() != inf {
		t.Fatal("a second Pods() made a second informer")
	}
	lister := corelisters.NewPodLister(inf.GetIndexer())
	ctx, cancel := context.WithCancel(t.Context())
	set.Start(ctx.Done())
	t.Cleanup(func() { cancel(); set.Shutdown() })
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("informer did not sync")
	}
	for what, ch := range map[string]chan fields.Selector{"List": listed, "Watch": watching} {
		select {
		case got := <-ch:
			if got.String() != selector.String() {
				t.Errorf("%s's field selector = %q, want %q", what, got, selector)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no %s call", what)
		}
	}
	if _, err := lister.Pods("a").Get("listed"); err != nil {
		t.Errorf("listed pod: %v", err)
	}

	if _, err := kube.CoreV1().Pods("b").Create(ctx, pod("b", "watched", "n1"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(ctx, 10*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		_, err := lister.Pods("b").Get("watched")
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("created pod never reached the lister: %v", err)
	}
	inB, err := lister.Pods("b").List(labels.Everything())
	if err != nil || len(inB) != 1 {
		t.Errorf("pods of namespace b = %d (%v), want 1", len(inB), err)
	}
	// Listers find a namespace's objects by the index the generated informers have.
	if byNS, err := inf.GetIndexer().ByIndex(cache.NamespaceIndex, "b"); err != nil || len(byNS) != 1 {
		t.Errorf("namespace index of b = %d objects (%v), want 1", len(byNS), err)
	}
}

// TestInformersStartAfterShutdown: as with client-go's factory, a set that is shutting
// down starts nothing more.
func TestInformersStartAfterShutdown(t *testing.T) {
	set := kubeclient.NewInformers(fake.NewClientset(), 0, nil)
	set.Shutdown()
	inf := set.Services()
	stop := make(chan struct{})
	defer close(stop)
	set.Start(stop)
	time.Sleep(100 * time.Millisecond)
	if inf.HasSynced() {
		t.Error("an informer started after Shutdown")
	}
}

// TestNewForConfigSharesRateLimiter: like kubernetes.NewForConfig, all groups draw from
// one token bucket of the config's QPS and Burst, so the node keeps to its budget.
func TestNewForConfigSharesRateLimiter(t *testing.T) {
	cs, err := kubeclient.NewForConfig(&rest.Config{Host: "https://127.0.0.1:6443", QPS: 100, Burst: 300})
	if err != nil {
		t.Fatal(err)
	}
	core := cs.CoreV1().RESTClient().GetRateLimiter()
	if core == nil || core.QPS() != 100 {
		t.Fatalf("core/v1 rate limiter = %v, want one of 100 QPS", core)
	}
	for name, rl := range map[string]flowcontrol.RateLimiter{
		"coordination": cs.CoordinationV1().RESTClient().GetRateLimiter(),
		"discovery":    cs.DiscoveryV1().RESTClient().GetRateLimiter(),
		"networking":   cs.NetworkingV1().RESTClient().GetRateLimiter(),
		"storage":      cs.StorageV1().RESTClient().GetRateLimiter(),
	} {
		if rl != core {
			t.Errorf("%s has a rate limiter of its own", name)
		}
	}
	if _, err := kubeclient.NewForConfig(&rest.Config{Host: "https://127.0.0.1:6443", QPS: 5}); err == nil {
		t.Error("QPS without Burst: no error")
	}
}
