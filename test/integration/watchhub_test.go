package integration

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
)

// TestWatchesShareOneFeed runs what node agents do, many watches of pods each with its
// own spec.nodeName field selector, and checks each sees exactly its pods: ADDED when a
// pod is bound to its node (the selector starts matching), MODIFIED on updates, DELETED
// on deletion, and nothing of the others'. It also checks that a watch from a revision
// older than the server's shared buffer still gets every event in order (it falls back
// to a watch of its own on etcd).
func TestWatchesShareOneFeed(t *testing.T) {
	srv := sharedServer(t)
	cs := clientset(t, srv.Kubeconfig)
	ctx := testContext(t)
	ns := createNamespace(t, cs, "watchhub")

	const nodes = 20
	// A first watch of pods starts the server's shared feed of pods; the list after it
	// is at a revision the feed has, so the watches below are served from it.
	primer, err := cs.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer primer.Stop()
	start, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	watchers := make([]watch.Interface, nodes)
	for i := range watchers {
		w, err := cs.CoreV1().Pods("").Watch(ctx, metav1.ListOptions{
			FieldSelector:   fields.OneTermEqualSelector("spec.nodeName", fmt.Sprintf("hub-node-%d", i)).String(),
			ResourceVersion: start.ResourceVersion,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		watchers[i] = w
	}
	// Two pods per node: one created bound, one created unbound and then bound.
	for i := range nodes {
		node := fmt.Sprintf("hub-node-%d", i)
		bound := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("bound-%d", i)},
			Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "berth.local/busybox:1.35"}}},
		}
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, bound, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		later := bound.DeepCopy()
		later.Name, later.Spec.NodeName = fmt.Sprintf("later-%d", i), ""
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, later, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		binding := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: later.Name}, Target: corev1.ObjectReference{Kind: "Node", Name: node}}
		if err := cs.CoreV1().Pods(ns).Bind(ctx, binding, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := cs.CoreV1().Pods(ns).Delete(ctx, bound.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
			t.Fatal(err)
		}
	}
	for i, w := range watchers {
		want := []string{
			fmt.Sprintf("ADDED bound-%d", i), fmt.Sprintf("ADDED later-%d", i), fmt.Sprintf("DELETED bound-%d", i),
		}
		got := collect(t, w, len(want))
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("watch of hub-node-%d saw %v, want %v", i, got, want)
		}
	}

	// A watch from the first revision, after more than the shared buffer's worth of events.
	const extra = 1100
	for i := range extra {
		cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("cm-%d", i)}}
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	old, err := cs.CoreV1().ConfigMaps(ns).Watch(ctx, metav1.ListOptions{ResourceVersion: start.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Stop()
	got := collect(t, old, extra)
	for i, g := range got {
		if want := fmt.Sprintf("ADDED cm-%d", i); g != want {
			t.Fatalf("event %d of the watch from an old revision: %s, want %s", i, g, want)
		}
	}
}

// collect reads n events of a watch as "TYPE name", failing the test after 30 s.
func collect(t *testing.T, w watch.Interface, n int) []string {
	t.Helper()
	var out []string
	timeout := time.After(30 * time.Second)
	for len(out) < n {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				t.Fatalf("watch closed after %v", out)
			}
			m, err := metaName(ev.Object)
			if err != nil {
				t.Fatalf("event %s: %v", ev.Type, err)
			}
			if ev.Type == watch.Modified {
				continue // status and metadata updates of the same pod
			}
			out = append(out, string(ev.Type)+" "+m)
		case <-timeout:
			t.Fatalf("after 30 s the watch had %d of %d events: %v", len(out), n, out)
		}
	}
	return out
}

func metaName(obj any) (string, error) {
	o, ok := obj.(metav1.Object)
	if !ok {
		return "", fmt.Errorf("%T is not an object", obj)
	}
	return o.GetName(), nil
}
