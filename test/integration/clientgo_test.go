package integration

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"berth.dev/berth/core/registry"
)

// cgServer returns a client for the shared in-process server and a fresh namespace.
func cgServer(t *testing.T, ns string) (*kubernetes.Clientset, string) {
	t.Helper()
	srv := sharedServer(t)
	cs := clientset(t, srv.Kubeconfig)
	return cs, createNamespace(t, cs, ns)
}

func configMap(name string, labels map[string]string, data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}, Data: data}
}

func testDeployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptrTo(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox:1.36"}}},
			},
		},
	}
}

func testPod(name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "c", Image: "busybox:1.36"}}},
	}
}

// names returns the sorted names of a list's items.
func names[T any](items []T, name func(*T) string) []string {
	out := make([]string, 0, len(items))
	for i := range items {
		out = append(out, name(&items[i]))
	}
	sort.Strings(out)
	return out
}

func cmNames(l *corev1.ConfigMapList) []string {
	return names(l.Items, func(c *corev1.ConfigMap) string { return c.Name })
}

func podNames(l *corev1.PodList) []string {
	return names(l.Items, func(p *corev1.Pod) string { return p.Name })
}

func statusCode(err error) int32 {
	if s, ok := err.(apierrors.APIStatus); ok {
		return s.Status().Code
	}
	return 0
}

func TestConfigMapCRUD(t *testing.T) {
	cs, ns := cgServer(t, "cg-crud")
	ctx := testContext(t)
	cms := cs.CoreV1().ConfigMaps(ns)

	created, err := cms.Create(ctx, configMap("c1", nil, map[string]string{"a": "1"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if created.UID == "" || created.CreationTimestamp.IsZero() || created.ResourceVersion == "" {
		t.Errorf("create did not set uid, creationTimestamp and resourceVersion: %+v", created.ObjectMeta)
	}
	if d := time.Since(created.CreationTimestamp.Time); d < -5*time.Second || d > time.Minute {
		t.Errorf("creationTimestamp %s is not now", created.CreationTimestamp)
	}

	got, err := cms.Get(ctx, "c1", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if got.UID != created.UID || got.ResourceVersion != created.ResourceVersion || got.Data["a"] != "1" {
		t.Errorf("get returned %+v, want what create returned (%s, rv %s)", got, created.UID, created.ResourceVersion)
	}

	got.Data["a"] = "2"
	updated, err := cms.Update(ctx, got, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("update: %v", err)
	}
	if updated.ResourceVersion == created.ResourceVersion || updated.UID != created.UID || !updated.CreationTimestamp.Equal(&created.CreationTimestamp) {
		t.Errorf("update: rv %s -> %s, uid %s -> %s: want a new resourceVersion, the same uid and creationTimestamp",
			created.ResourceVersion, updated.ResourceVersion, created.UID, updated.UID)
	}

	t.Run("stale resourceVersion is a 409 Conflict", func(t *testing.T) {
		stale := created.DeepCopy()
		stale.Data["a"] = "stale"
		_, err := cms.Update(ctx, stale, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			t.Fatalf("update with resourceVersion %s (now %s): want Conflict, got %v", created.ResourceVersion, updated.ResourceVersion, err)
		}
		want := `Operation cannot be fulfilled on configmaps "c1": the object has been modified; please apply your changes to the latest version and try again`
		if err.Error() != want {
			t.Errorf("conflict message:\n got %q\nwant %q", err.Error(), want)
		}
		now, _ := cms.Get(ctx, "c1", metav1.GetOptions{})
		if now.Data["a"] != "2" {
			t.Errorf("the refused update was stored: data %v", now.Data)
		}
	})

	t.Run("update without resourceVersion is unconditional", func(t *testing.T) {
		u := configMap("c1", nil, map[string]string{"a": "3"})
		out, err := cms.Update(ctx, u, metav1.UpdateOptions{})
		if err != nil {
			t.Fatalf("update: %v", err)
		}
		if out.Data["a"] != "3" || out.UID != created.UID {
			t.Errorf("unconditional update returned %+v", out)
		}
	})

	t.Run("create twice is a 409 AlreadyExists", func(t *testing.T) {
		_, err := cms.Create(ctx, configMap("c1", nil, nil), metav1.CreateOptions{})
		if !apierrors.IsAlreadyExists(err) || statusCode(err) != http.StatusConflict {
			t.Fatalf("want AlreadyExists (409), got %v (code %d)", err, statusCode(err))
		}
		if want := `configmaps "c1" already exists`; err.Error() != want {
			t.Errorf("message %q, want %q", err.Error(), want)
		}
	})

	t.Run("generateName", func(t *testing.T) {
		out, err := cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "gen-"}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create with generateName: %v", err)
		}
		if !strings.HasPrefix(out.Name, "gen-") || len(out.Name) != len("gen-")+5 || out.GenerateName != "gen-" {
			t.Errorf("generated name %q (generateName %q): want gen- and 5 characters", out.Name, out.GenerateName)
		}
		if _, err := cms.Get(ctx, out.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("get %s: %v", out.Name, err)
		}
	})

	t.Run("delete, then 404 NotFound", func(t *testing.T) {
		if err := cms.Delete(ctx, "c1", metav1.DeleteOptions{}); err != nil {
			t.Fatalf("delete: %v", err)
		}
		_, err := cms.Get(ctx, "c1", metav1.GetOptions{})
		if !apierrors.IsNotFound(err) || statusCode(err) != http.StatusNotFound {
			t.Fatalf("get after delete: want NotFound (404), got %v", err)
		}
		if want := `configmaps "c1" not found`; err.Error() != want {
			t.Errorf("message %q, want %q", err.Error(), want)
		}
		if err := cms.Delete(ctx, "c1", metav1.DeleteOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("second delete: want NotFound, got %v", err)
		}
		if _, err := cms.Get(ctx, "x", metav1.GetOptions{}); err == nil || err.Error() != `configmaps "x" not found` {
			t.Errorf("get of a name never created: want `configmaps \"x\" not found`, got %v", err)
		}
	})
}

func TestDeploymentGeneration(t *testing.T) {
	cs, ns := cgServer(t, "cg-generation")
	ctx := testContext(t)
	deps := cs.AppsV1().Deployments(ns)
	d, err := deps.Create(ctx, testDeployment("gen", 1), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Generation != 1 {
		t.Errorf("generation after create = %d, want 1", d.Generation)
	}
	d.Spec.Replicas = ptrTo[int32](4)
	if d, err = deps.Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if d.Generation != 2 {
		t.Errorf("generation after a spec change = %d, want 2", d.Generation)
	}
	d.Labels["extra"] = "yes"
	if d, err = deps.Update(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if d.Generation != 2 || d.Labels["extra"] != "yes" {
		t.Errorf("after a label change: generation %d (want 2), labels %v", d.Generation, d.Labels)
	}
	d.Status.ObservedGeneration = 2
	if d, err = deps.UpdateStatus(ctx, d, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if d.Generation != 2 {
		t.Errorf("generation after a status change = %d, want 2", d.Generation)
	}
}

func TestSelectorsOnListAndWatch(t *testing.T) {
	cs, ns := cgServer(t, "cg-selectors")
	ctx := testContext(t)
	cms := cs.CoreV1().ConfigMaps(ns)
	for name, labels := range map[string]map[string]string{
		"x1": {"a": "x"}, "y1": {"a": "y"}, "z1": {"a": "z"}, "none": {"b": "x"},
	} {
		if _, err := cms.Create(ctx, configMap(name, labels, nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("label selectors on list", func(t *testing.T) {
		for _, c := range []struct{ selector, want string }{
			{"a=x", "x1"}, {"a==y", "y1"}, {"a!=x", "none y1 z1"}, {"a in (x,y)", "x1 y1"},
			{"a notin (x,y)", "none z1"}, {"!a", "none"}, {"a", "x1 y1 z1"}, {"a=x,b=x", ""},
		} {
			l, err := cms.List(ctx, metav1.ListOptions{LabelSelector: c.selector})
			if err != nil {
				t.Errorf("list %q: %v", c.selector, err)
				continue
			}
			if got := strings.Join(cmNames(l), " "); got != c.want {
				t.Errorf("labelSelector %q: got [%s], want [%s]", c.selector, got, c.want)
			}
		}
	})

	t.Run("field selector metadata.name on list", func(t *testing.T) {
		l, err := cms.List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=y1"})
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(cmNames(l), " "); got != "y1" {
			t.Errorf("metadata.name=y1: got [%s]", got)
		}
		l, err = cms.List(ctx, metav1.ListOptions{FieldSelector: "metadata.name!=y1", LabelSelector: "a"})
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Join(cmNames(l), " "); got != "x1 z1" {
			t.Errorf("metadata.name!=y1 with label a: got [%s], want [x1 z1]", got)
		}
	})

	t.Run("label selector on watch", func(t *testing.T) {
		w, err := cms.Watch(ctx, metav1.ListOptions{LabelSelector: "a in (x,y)", ResourceVersion: listRV(t, cs, ns)})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		steps := []func() error{
			func() error {
				_, err := cms.Create(ctx, configMap("w-z", map[string]string{"a": "z"}, nil), metav1.CreateOptions{})
				return err
			},
			func() error {
				_, err := cms.Create(ctx, configMap("w-y", map[string]string{"a": "y"}, nil), metav1.CreateOptions{})
				return err
			},
			func() error {
				_, err := cms.Patch(ctx, "w-y", types.MergePatchType, []byte(`{"metadata":{"labels":{"a":"z"}}}`), metav1.PatchOptions{})
				return err
			},
			func() error {
				_, err := cms.Patch(ctx, "w-z", types.MergePatchType, []byte(`{"metadata":{"labels":{"a":"x"}}}`), metav1.PatchOptions{})
				return err
			},
			func() error { return cms.Delete(ctx, "w-z", metav1.DeleteOptions{}) },
		}
		for _, step := range steps {
			if err := step(); err != nil {
				t.Fatal(err)
			}
		}
		// w-z does not match at first (no event), w-y does until relabelled (it leaves: DELETED),
		// w-z is relabelled into the selector (ADDED), then deleted.
		want := []string{"ADDED w-y", "DELETED w-y", "ADDED w-z", "DELETED w-z"}
		for _, e := range want {
			if got := eventName(nextEvent(t, w, 10*time.Second)); got != e {
				t.Fatalf("watch with labelSelector: got event %q, want %q (all: %v)", got, e, want)
			}
		}
	})

	t.Run("field selector metadata.name on watch", func(t *testing.T) {
		w, err := cms.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=fw2", ResourceVersion: listRV(t, cs, ns)})
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		for _, n := range []string{"fw1", "fw2", "fw3"} {
			if _, err := cms.Create(ctx, configMap(n, nil, nil), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		if err := cms.Delete(ctx, "fw2", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		for _, e := range []string{"ADDED fw2", "DELETED fw2"} {
			if got := eventName(nextEvent(t, w, 10*time.Second)); got != e {
				t.Fatalf("got event %q, want %q", got, e)
			}
		}
	})

	t.Run("unsupported field selector is a 400", func(t *testing.T) {
		_, err := cms.List(ctx, metav1.ListOptions{FieldSelector: "spec.foo=bar"})
		if !apierrors.IsBadRequest(err) {
			t.Errorf("list with fieldSelector spec.foo: want BadRequest (400), got %v", err)
		}
		_, err = cms.Watch(ctx, metav1.ListOptions{FieldSelector: "spec.foo=bar"})
		if !apierrors.IsBadRequest(err) {
			t.Errorf("watch with fieldSelector spec.foo: want BadRequest (400), got %v", err)
		}
		_, err = cms.List(ctx, metav1.ListOptions{LabelSelector: "a in (x"})
		if !apierrors.IsBadRequest(err) {
			t.Errorf("list with a malformed labelSelector: want BadRequest (400), got %v", err)
		}
	})
}

// listRV is the resourceVersion of a namespace's config maps now (where a watch starts).
func listRV(t *testing.T, cs kubernetes.Interface, ns string) string {
	t.Helper()
	l, err := cs.CoreV1().ConfigMaps(ns).List(testContext(t), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return l.ResourceVersion
}

func TestPodFieldSelectors(t *testing.T) {
	cs, ns := cgServer(t, "cg-podfields")
	ctx := testContext(t)
	pods := cs.CoreV1().Pods(ns)
	if _, err := pods.Create(ctx, testPod("on-n1", "n1", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	unscheduled, err := pods.Create(ctx, testPod("unscheduled", "", nil), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if unscheduled.Status.Phase != corev1.PodPending {
		t.Errorf("a new pod's status.phase = %q, want Pending (set on create, as in Kubernetes)", unscheduled.Status.Phase)
	}
	running, err := pods.Get(ctx, "on-n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	running.Status.Phase = corev1.PodRunning
	if _, err := pods.UpdateStatus(ctx, running, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ selector, want string }{
		{"spec.nodeName=n1", "on-n1"}, {"spec.nodeName=", "unscheduled"}, {"spec.nodeName!=", "on-n1"},
		{"status.phase=Running", "on-n1"}, {"status.phase=Pending", "unscheduled"},
		{"status.phase!=Running,spec.nodeName=", "unscheduled"}, {"metadata.namespace=" + ns, "on-n1 unscheduled"},
	} {
		l, err := pods.List(ctx, metav1.ListOptions{FieldSelector: c.selector})
		if err != nil {
			t.Errorf("list %q: %v", c.selector, err)
			continue
		}
		if got := strings.Join(podNames(l), " "); got != c.want {
			t.Errorf("fieldSelector %q: got [%s], want [%s]", c.selector, got, c.want)
		}
	}

	// A node agent watches spec.nodeName=<node>: a pod bound to it arrives as ADDED.
	l, err := pods.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := pods.Watch(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=n2", ResourceVersion: l.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if err := pods.Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: "unscheduled"}, Target: corev1.ObjectReference{Kind: "Node", Name: "n2"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ev := nextEvent(t, w, 10*time.Second)
	if eventName(ev) != "ADDED unscheduled" {
		t.Fatalf("watch spec.nodeName=n2 after binding: got %q, want ADDED unscheduled", eventName(ev))
	}
	if p := ev.Object.(*corev1.Pod); p.Spec.NodeName != "n2" {
		t.Errorf("event's pod has spec.nodeName %q", p.Spec.NodeName)
	}
	// And a pod on another node never shows up.
	if _, err := pods.Create(ctx, testPod("on-n3", "n3", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.Create(ctx, testPod("on-n2", "n2", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := eventName(nextEvent(t, w, 10*time.Second)); got != "ADDED on-n2" {
		t.Errorf("next event %q, want ADDED on-n2 (on-n3 must be filtered out)", got)
	}

	if _, err := pods.List(ctx, metav1.ListOptions{FieldSelector: "spec.dnsPolicy=ClusterFirst"}); !apierrors.IsBadRequest(err) {
		t.Errorf("pods fieldSelector spec.dnsPolicy: want BadRequest (400, not a selectable field), got %v", err)
	}
}

func TestPaging(t *testing.T) {
	cs, ns := cgServer(t, "cg-paging")
	ctx := testContext(t)
	cms := cs.CoreV1().ConfigMaps(ns)
	var want []string
	for i := range 25 {
		n := fmt.Sprintf("cm-%02d", i)
		want = append(want, n)
		if _, err := cms.Create(ctx, configMap(n, nil, nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	var rv string
	cont := ""
	for page := 0; ; page++ {
		l, err := cms.List(ctx, metav1.ListOptions{Limit: 10, Continue: cont})
		if err != nil {
			t.Fatalf("page %d: %v", page, err)
		}
		if page == 0 {
			rv = l.ResourceVersion
			if l.RemainingItemCount == nil || *l.RemainingItemCount != 15 {
				t.Errorf("first page: remainingItemCount %v, want 15", l.RemainingItemCount)
			}
			// Written after the first page: the paged list is a snapshot and must not show it.
			if _, err := cms.Create(ctx, configMap("cm-late", nil, nil), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		} else if l.ResourceVersion != rv {
			t.Errorf("page %d: resourceVersion %s, want the first page's %s", page, l.ResourceVersion, rv)
		}
		wantLen := min(10, 25-page*10)
		if len(l.Items) != wantLen {
			t.Errorf("page %d: %d items, want %d", page, len(l.Items), wantLen)
		}
		for _, c := range l.Items {
			got = append(got, c.Name)
		}
		cont = l.Continue
		if cont == "" {
			break
		}
		if page > 5 {
			t.Fatalf("more pages than 25 objects need (continue %q)", cont)
		}
	}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("paged list returned (in order):\n%v\nwant each of the 25 exactly once:\n%v", got, want)
	}
	all, err := cms.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all.Items) != 26 {
		t.Errorf("a fresh list has %d items, want 26", len(all.Items))
	}
}

func TestWatchFromResourceVersion(t *testing.T) {
	cs, ns := cgServer(t, "cg-watch")
	ctx := testContext(t)
	cms := cs.CoreV1().ConfigMaps(ns)
	a, err := cms.Create(ctx, configMap("a", nil, map[string]string{"v": "1"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a.Data["v"] = "2"
	if _, err := cms.Update(ctx, a, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cms.Create(ctx, configMap("b", nil, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cms.Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	w, err := cms.Watch(ctx, metav1.ListOptions{ResourceVersion: a.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if _, err := cms.Create(ctx, configMap("c", nil, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, want := range []string{"MODIFIED a", "ADDED b", "DELETED a", "ADDED c"} {
		ev := nextEvent(t, w, 10*time.Second)
		seen = append(seen, eventName(ev))
		if eventName(ev) != want {
			t.Fatalf("events from resourceVersion %s: got %v, want MODIFIED a, ADDED b, DELETED a, ADDED c", a.ResourceVersion, seen)
		}
		if want == "MODIFIED a" {
			if cm := ev.Object.(*corev1.ConfigMap); cm.Data["v"] != "2" {
				t.Errorf("MODIFIED a carries data %v, want v=2", cm.Data)
			}
		}
	}
}

func TestWatchBookmarks(t *testing.T) {
	cs, ns := cgServer(t, "cg-bookmarks")
	ctx := testContext(t)
	cms := cs.CoreV1().ConfigMaps(ns)
	for _, n := range []string{"one", "two"} {
		if _, err := cms.Create(ctx, configMap(n, nil, nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// The watch-list protocol: initial ADDED events, then a bookmark marking their end.
	w, err := cms.Watch(ctx, metav1.ListOptions{
		AllowWatchBookmarks: true, SendInitialEvents: ptrTo(true),
		ResourceVersionMatch: metav1.ResourceVersionMatchNotOlderThan,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	var got []string
	for range 2 {
		got = append(got, eventName(nextEvent(t, w, 10*time.Second)))
	}
	sort.Strings(got)
	if strings.Join(got, ",") != "ADDED one,ADDED two" {
		t.Fatalf("initial events %v, want ADDED one, ADDED two", got)
	}
	ev := nextEvent(t, w, 10*time.Second)
	if ev.Type != watch.Bookmark {
		t.Fatalf("after the initial events: got %s, want BOOKMARK", eventName(ev))
	}
	m := ev.Object.(*corev1.ConfigMap)
	if m.Annotations[metav1.InitialEventsAnnotationKey] != "true" || m.ResourceVersion == "" {
		t.Errorf("bookmark: annotations %v, resourceVersion %q: want %s=true and a resourceVersion", m.Annotations, m.ResourceVersion, metav1.InitialEventsAnnotationKey)
	}
}

func TestCompactedResourceVersionIsGone(t *testing.T) {
	srv := startServer(t) // of its own: compaction would break the other tests' watches
	cs := clientset(t, srv.Kubeconfig)
	ns := createNamespace(t, cs, "cg-compact")
	ctx := testContext(t)
	cms := cs.CoreV1().ConfigMaps(ns)
	old, err := cms.Create(ctx, configMap("a", nil, map[string]string{"v": "0"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cms.Create(ctx, configMap("b", nil, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	page, err := cms.List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil || page.Continue == "" {
		t.Fatalf("first page of 2 with limit 1: continue %q, err %v", page.Continue, err)
	}
	cur := old
	for i := 1; i <= 3; i++ {
		cur.Data["v"] = fmt.Sprint(i)
		if cur, err = cms.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	rev, err := srv.Store.Revision(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Store.Compact(ctx, rev); err != nil {
		t.Fatalf("compact to %d: %v", rev, err)
	}
	gone := func(err error) bool { return apierrors.IsResourceExpired(err) || apierrors.IsGone(err) }

	t.Run("watch", func(t *testing.T) {
		w, err := cms.Watch(ctx, metav1.ListOptions{ResourceVersion: old.ResourceVersion})
		if err != nil {
			if !gone(err) {
				t.Fatalf("watch from compacted %s: want 410 Gone/Expired, got %v", old.ResourceVersion, err)
			}
			return
		}
		defer w.Stop()
		// kube-apiserver answers 200 and sends one ERROR event carrying the 410 Status.
		ev := nextEvent(t, w, 10*time.Second)
		if ev.Type != watch.Error || !gone(apierrors.FromObject(ev.Object)) {
			t.Fatalf("watch from compacted %s: first event %s, want ERROR with a 410 Status", old.ResourceVersion, eventName(ev))
		}
	})
	t.Run("list at an exact compacted resourceVersion", func(t *testing.T) {
		_, err := cms.List(ctx, metav1.ListOptions{ResourceVersion: old.ResourceVersion, ResourceVersionMatch: metav1.ResourceVersionMatchExact})
		if !gone(err) {
			t.Errorf("list at compacted %s: want 410 Gone/Expired, got %v", old.ResourceVersion, err)
		}
	})
	t.Run("continue of a compacted list", func(t *testing.T) {
		_, err := cms.List(ctx, metav1.ListOptions{Limit: 1, Continue: page.Continue})
		if !gone(err) {
			t.Errorf("continue from before the compaction: want 410 Gone/Expired, got %v", err)
		}
	})
	t.Run("current state still readable", func(t *testing.T) {
		got, err := cms.Get(ctx, "a", metav1.GetOptions{})
		if err != nil || got.Data["v"] != "3" || got.ResourceVersion != cur.ResourceVersion {
			t.Errorf("get after compaction: %v, %v", got, err)
		}
		w, err := cms.Watch(ctx, metav1.ListOptions{ResourceVersion: cur.ResourceVersion})
		if err != nil {
			t.Fatalf("watch from the current resourceVersion: %v", err)
		}
		defer w.Stop()
		if _, err := cms.Create(ctx, configMap("after", nil, nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if got := eventName(nextEvent(t, w, 10*time.Second)); got != "ADDED after" {
			t.Errorf("watch from current after compaction: got %s, want ADDED after", got)
		}
	})
}

func TestPatches(t *testing.T) {
	cs, ns := cgServer(t, "cg-patch")
	ctx := testContext(t)
	deps := cs.AppsV1().Deployments(ns)
	d := testDeployment("p", 1)
	d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers, corev1.Container{Name: "side", Image: "busybox:1.36"})
	if _, err := deps.Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("strategic merge merges containers by name", func(t *testing.T) {
		patch := `{"spec":{"replicas":3,"template":{"spec":{"containers":[{"name":"c","env":[{"name":"A","value":"1"}]}]}}}}`
		out, err := deps.Patch(ctx, "p", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ctrs := out.Spec.Template.Spec.Containers
		if *out.Spec.Replicas != 3 || len(ctrs) != 2 || ctrs[0].Name != "c" || ctrs[0].Image != "busybox:1.36" || len(ctrs[0].Env) != 1 || ctrs[0].Env[0].Value != "1" || ctrs[1].Name != "side" {
			t.Errorf("after the strategic merge patch: replicas %d, containers %+v; want replicas 3, c (busybox, env A=1) and side", *out.Spec.Replicas, ctrs)
		}
		patch = `{"spec":{"template":{"spec":{"containers":[{"name":"side","$patch":"delete"}]}}}}`
		out, err = deps.Patch(ctx, "p", types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(out.Spec.Template.Spec.Containers); n != 1 {
			t.Errorf("$patch: delete left %d containers, want 1", n)
		}
	})

	cms := cs.CoreV1().ConfigMaps(ns)
	if _, err := cms.Create(ctx, configMap("m", map[string]string{"keep": "1"}, map[string]string{"a": "1", "b": "1"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Run("merge patch", func(t *testing.T) {
		out, err := cms.Patch(ctx, "m", types.MergePatchType, []byte(`{"data":{"a":null,"b":"2","c":"3"},"metadata":{"labels":{"new":"x"}}}`), metav1.PatchOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(out.Data) != "map[b:2 c:3]" || fmt.Sprint(out.Labels) != "map[keep:1 new:x]" {
			t.Errorf("after the merge patch: data %v labels %v; want data b=2 c=3, labels keep=1 new=x", out.Data, out.Labels)
		}
	})
	t.Run("json patch", func(t *testing.T) {
		out, err := cms.Patch(ctx, "m", types.JSONPatchType, []byte(`[{"op":"test","path":"/data/b","value":"2"},{"op":"add","path":"/data/d","value":"4"},{"op":"remove","path":"/data/c"}]`), metav1.PatchOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(out.Data) != "map[b:2 d:4]" {
			t.Errorf("after the JSON patch: data %v, want b=2 d=4", out.Data)
		}
		_, err = cms.Patch(ctx, "m", types.JSONPatchType, []byte(`[{"op":"test","path":"/data/b","value":"wrong"},{"op":"add","path":"/data/e","value":"5"}]`), metav1.PatchOptions{})
		if err == nil || statusCode(err) != http.StatusUnprocessableEntity {
			t.Errorf("a JSON patch whose test fails: want 422, got %v (code %d)", err, statusCode(err))
		}
		now, _ := cms.Get(ctx, "m", metav1.GetOptions{})
		if _, ok := now.Data["e"]; ok {
			t.Errorf("the failed JSON patch was partly applied: %v", now.Data)
		}
	})
	t.Run("patch with a stale resourceVersion conflicts", func(t *testing.T) {
		_, err := cms.Patch(ctx, "m", types.MergePatchType, []byte(`{"metadata":{"resourceVersion":"1"},"data":{"z":"1"}}`), metav1.PatchOptions{})
		if !apierrors.IsConflict(err) {
			t.Errorf("merge patch naming resourceVersion 1: want Conflict, got %v", err)
		}
	})
	t.Run("patch of a missing object is 404", func(t *testing.T) {
		_, err := cms.Patch(ctx, "missing", types.MergePatchType, []byte(`{"data":{"z":"1"}}`), metav1.PatchOptions{})
		if !apierrors.IsNotFound(err) {
			t.Errorf("want NotFound, got %v", err)
		}
	})
}

func TestStatusSubresource(t *testing.T) {
	cs, ns := cgServer(t, "cg-status")
	ctx := testContext(t)
	deps := cs.AppsV1().Deployments(ns)
	d, err := deps.Create(ctx, testDeployment("s", 2), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Status.Replicas != 0 {
		t.Errorf("status on create must be cleared, got replicas %d", d.Status.Replicas)
	}
	d.Status.Replicas, d.Status.ObservedGeneration = 2, 1
	d.Spec.Replicas = ptrTo[int32](9)
	d.Labels["via-status"] = "yes"
	out, err := deps.UpdateStatus(ctx, d, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if out.Status.Replicas != 2 || out.Status.ObservedGeneration != 1 {
		t.Errorf("status after /status update: %+v, want replicas 2, observedGeneration 1", out.Status)
	}
	if *out.Spec.Replicas != 2 || out.Labels["via-status"] != "" {
		t.Errorf("/status update changed spec.replicas to %d or labels to %v; it must change status only", *out.Spec.Replicas, out.Labels)
	}

	out.Status.Replicas = 7
	out.Labels["via-main"] = "yes"
	main, err := deps.Update(ctx, out, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if main.Status.Replicas != 2 || main.Labels["via-main"] != "yes" {
		t.Errorf("main update: status.replicas %d (want 2: ignored), labels %v (want via-main)", main.Status.Replicas, main.Labels)
	}
	stored, err := deps.Get(ctx, "s", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if stored.Status.Replicas != 2 || *stored.Spec.Replicas != 2 {
		t.Errorf("stored: status.replicas %d spec.replicas %d, want 2 and 2", stored.Status.Replicas, *stored.Spec.Replicas)
	}
}

func TestScaleSubresource(t *testing.T) {
	cs, ns := cgServer(t, "cg-scale")
	ctx := testContext(t)

	t.Run("deployments", func(t *testing.T) {
		deps := cs.AppsV1().Deployments(ns)
		if _, err := deps.Create(ctx, testDeployment("d", 2), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		s, err := deps.GetScale(ctx, "d", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if s.Spec.Replicas != 2 || s.Status.Selector != "app=d" || s.Name != "d" || s.Namespace != ns {
			t.Errorf("scale = %+v, want spec.replicas 2, status.selector app=d", s)
		}
		s.Spec.Replicas = 4
		out, err := deps.UpdateScale(ctx, "d", s, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if out.Spec.Replicas != 4 {
			t.Errorf("UpdateScale returned spec.replicas %d, want 4", out.Spec.Replicas)
		}
		if d, _ := deps.Get(ctx, "d", metav1.GetOptions{}); d == nil || *d.Spec.Replicas != 4 || d.Generation != 2 {
			t.Errorf("deployment after scale: %+v, want spec.replicas 4 and generation 2", d)
		}
		s.Spec.Replicas = 5 // s still has the old resourceVersion
		if _, err := deps.UpdateScale(ctx, "d", s, metav1.UpdateOptions{}); !apierrors.IsConflict(err) {
			t.Errorf("UpdateScale with a stale resourceVersion: want Conflict, got %v", err)
		}
	})

	t.Run("replicationcontrollers", func(t *testing.T) {
		rcs := cs.CoreV1().ReplicationControllers(ns)
		labels := map[string]string{"app": "rc"}
		rc := &corev1.ReplicationController{
			ObjectMeta: metav1.ObjectMeta{Name: "rc"},
			Spec: corev1.ReplicationControllerSpec{
				Replicas: ptrTo[int32](1), Selector: labels,
				Template: &corev1.PodTemplateSpec{
					ObjectMeta: metav1.ObjectMeta{Labels: labels},
					Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox:1.36"}}},
				},
			},
		}
		if _, err := rcs.Create(ctx, rc, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		s, err := rcs.GetScale(ctx, "rc", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if s.Spec.Replicas != 1 || s.Status.Selector != "app=rc" {
			t.Errorf("scale = %+v, want spec.replicas 1, status.selector app=rc", s)
		}
		out, err := rcs.UpdateScale(ctx, "rc", &autoscalingv1.Scale{ObjectMeta: metav1.ObjectMeta{Name: "rc", Namespace: ns}, Spec: autoscalingv1.ScaleSpec{Replicas: 3}}, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if out.Spec.Replicas != 3 {
			t.Errorf("UpdateScale returned spec.replicas %d, want 3", out.Spec.Replicas)
		}
		if got, _ := rcs.Get(ctx, "rc", metav1.GetOptions{}); got == nil || *got.Spec.Replicas != 3 {
			t.Errorf("rc after scale: %+v, want spec.replicas 3", got)
		}
	})
}

func TestPodBinding(t *testing.T) {
	cs, ns := cgServer(t, "cg-binding")
	ctx := testContext(t)
	pods := cs.CoreV1().Pods(ns)
	if _, err := pods.Create(ctx, testPod("b", "", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	bind := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: "b"}, Target: corev1.ObjectReference{Kind: "Node", Name: "node-1"}}
	if err := pods.Bind(ctx, bind, metav1.CreateOptions{}); err != nil {
		t.Fatalf("bind: %v", err)
	}
	p, err := pods.Get(ctx, "b", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.Spec.NodeName != "node-1" {
		t.Errorf("spec.nodeName = %q after binding, want node-1", p.Spec.NodeName)
	}
	var scheduled *corev1.PodCondition
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == corev1.PodScheduled {
			scheduled = &p.Status.Conditions[i]
		}
	}
	if scheduled == nil || scheduled.Status != corev1.ConditionTrue {
		t.Errorf("conditions %+v: want PodScheduled True", p.Status.Conditions)
	}
	bind.Target.Name = "node-2"
	if err := pods.Bind(ctx, bind, metav1.CreateOptions{}); !apierrors.IsConflict(err) {
		t.Errorf("binding a bound pod again: want Conflict, got %v", err)
	}
	if err := pods.Bind(ctx, &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: "nobody"}, Target: corev1.ObjectReference{Kind: "Node", Name: "n"}}, metav1.CreateOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("binding a missing pod: want NotFound, got %v", err)
	}
}

func TestGracefulPodDeletion(t *testing.T) {
	cs, ns := cgServer(t, "cg-graceful")
	ctx := testContext(t)
	pods := cs.CoreV1().Pods(ns)
	if _, err := pods.Create(ctx, testPod("on-node", "n1", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.Create(ctx, testPod("no-node", "", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	if err := pods.Delete(ctx, "no-node", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.Get(ctx, "no-node", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("a pod on no node is deleted at once: want NotFound, got %v", err)
	}

	if err := pods.Delete(ctx, "on-node", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	p, err := pods.Get(ctx, "on-node", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("a pod on a node waits for its node agent: want it still there, got %v", err)
	}
	if p.DeletionTimestamp == nil || p.DeletionGracePeriodSeconds == nil || *p.DeletionGracePeriodSeconds != 30 {
		t.Errorf("deletionTimestamp %v, deletionGracePeriodSeconds %v: want set, 30 (the default terminationGracePeriodSeconds)", p.DeletionTimestamp, p.DeletionGracePeriodSeconds)
	}
	// The node agent's (or a force) delete with grace period 0 removes it.
	if err := pods.Delete(ctx, "on-node", metav1.DeleteOptions{GracePeriodSeconds: ptrTo[int64](0)}); err != nil {
		t.Fatal(err)
	}
	if _, err := pods.Get(ctx, "on-node", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after a delete with gracePeriodSeconds 0: want NotFound, got %v", err)
	}
}

func TestFinalizers(t *testing.T) {
	cs, ns := cgServer(t, "cg-finalizers")
	ctx := testContext(t)
	cms := cs.CoreV1().ConfigMaps(ns)
	cm := configMap("held", nil, nil)
	cm.Finalizers = []string{"example.com/hold"}
	if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := cms.Delete(ctx, "held", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := cms.Get(ctx, "held", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("an object with a finalizer stays after delete: %v", err)
	}
	if got.DeletionTimestamp == nil {
		t.Fatalf("no deletionTimestamp after delete: %+v", got.ObjectMeta)
	}
	got.Finalizers = append(got.Finalizers, "example.com/another")
	if _, err := cms.Update(ctx, got, metav1.UpdateOptions{}); !apierrors.IsInvalid(err) {
		t.Errorf("adding a finalizer to an object being deleted: want Invalid (422), got %v", err)
	}
	got.Finalizers = nil
	if _, err := cms.Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("remove the finalizer: %v", err)
	}
	if _, err := cms.Get(ctx, "held", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("after its last finalizer is removed: want NotFound, got %v", err)
	}
}

func TestCreateInMissingNamespace(t *testing.T) {
	cs := clientset(t, sharedServer(t).Kubeconfig)
	_, err := cs.CoreV1().ConfigMaps("no-such-ns").Create(testContext(t), configMap("c", nil, nil), metav1.CreateOptions{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("create in a missing namespace: want NotFound, got %v", err)
	}
	if want := `namespaces "no-such-ns" not found`; err.Error() != want {
		t.Errorf("message %q, want %q", err.Error(), want)
	}
	if d := err.(apierrors.APIStatus).Status().Details; d == nil || d.Kind != "namespaces" || d.Name != "no-such-ns" {
		t.Errorf("status details %+v, want kind namespaces, name no-such-ns", d)
	}
}

func TestDeleteCollection(t *testing.T) {
	cs, ns := cgServer(t, "cg-deletecollection")
	ctx := testContext(t)
	cms := cs.CoreV1().ConfigMaps(ns)
	for i, l := range []string{"gone", "gone", "gone", "stay", "stay"} {
		if _, err := cms.Create(ctx, configMap(fmt.Sprintf("%s-%d", l, i), map[string]string{"fate": l}, nil), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := cms.DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{LabelSelector: "fate=gone"}); err != nil {
		t.Fatal(err)
	}
	l, err := cms.List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(cmNames(l), " "); got != "stay-3 stay-4" {
		t.Errorf("after deletecollection fate=gone: [%s], want [stay-3 stay-4]", got)
	}
}

func TestDiscovery(t *testing.T) {
	cs := clientset(t, sharedServer(t).Kubeconfig)
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.Major != "1" || v.Minor == "" || !strings.HasPrefix(v.GitVersion, "v1.") {
		t.Errorf("server version %+v, want major 1 and a v1.x gitVersion", v)
	}
	groups, lists, err := cs.Discovery().ServerGroupsAndResources()
	if err != nil {
		t.Fatal(err)
	}
	served := map[string]*metav1.APIResourceList{}
	for _, l := range lists {
		served[l.GroupVersion] = l
	}
	preferred := map[string]bool{}
	for _, g := range groups {
		preferred[g.PreferredVersion.GroupVersion] = true
	}
	for _, r := range registry.All() {
		gv := r.GroupVersion()
		if !preferred[gv] {
			t.Errorf("%s: group/version not in /api or /apis", gv)
		}
		l := served[gv]
		if l == nil {
			t.Errorf("%s: no resource list", gv)
			continue
		}
		byName := map[string]metav1.APIResource{}
		for _, ar := range l.APIResources {
			byName[ar.Name] = ar
		}
		ar, ok := byName[r.Resource]
		if !ok {
			t.Errorf("%s: %s not listed", gv, r.Resource)
			continue
		}
		if ar.Kind != r.Kind || ar.Namespaced != r.Namespaced || ar.SingularName != r.Singular || !slices.Equal(ar.ShortNames, r.ShortNames) || !slices.Equal(ar.Categories, r.Categories) {
			t.Errorf("%s %s: %+v, want kind %s namespaced %v singular %s shortNames %v categories %v", gv, r.Resource, ar, r.Kind, r.Namespaced, r.Singular, r.ShortNames, r.Categories)
		}
		want := []string{"create", "delete", "get", "list", "patch", "update", "watch"}
		if r.Resource != "namespaces" {
			want = append(want, "deletecollection")
		}
		for _, verb := range want {
			if !slices.Contains(ar.Verbs, verb) {
				t.Errorf("%s %s: verbs %v lack %s", gv, r.Resource, ar.Verbs, verb)
			}
		}
		if _, ok := byName[r.Resource+"/status"]; ok != r.Status {
			t.Errorf("%s %s/status listed: %v, want %v", gv, r.Resource, ok, r.Status)
		}
		if s, ok := byName[r.Resource+"/scale"]; ok != r.Scale || (ok && s.Kind != "Scale") {
			t.Errorf("%s %s/scale listed: %v (%+v), want %v with kind Scale", gv, r.Resource, ok, s, r.Scale)
		}
	}
	core := served["v1"]
	for _, sub := range []string{"pods/binding", "pods/eviction", "pods/log", "pods/exec", "namespaces/finalize"} {
		found := false
		for _, ar := range core.APIResources {
			found = found || ar.Name == sub
		}
		if !found {
			t.Errorf("v1 does not list %s", sub)
		}
	}
}

func TestDryRun(t *testing.T) {
	cs, ns := cgServer(t, "cg-dryrun")
	ctx := testContext(t)
	cms := cs.CoreV1().ConfigMaps(ns)
	all := []string{metav1.DryRunAll}
	out, err := cms.Create(ctx, configMap("dry", nil, map[string]string{"a": "1"}), metav1.CreateOptions{DryRun: all})
	if err != nil {
		t.Fatal(err)
	}
	if out.Name != "dry" || out.Data["a"] != "1" {
		t.Errorf("dry-run create returned %+v", out)
	}
	if _, err := cms.Get(ctx, "dry", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("dry-run create stored the object: get gave %v", err)
	}

	real, err := cms.Create(ctx, configMap("real", nil, map[string]string{"a": "1"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	changed := real.DeepCopy()
	changed.Data["a"] = "2"
	if _, err := cms.Update(ctx, changed, metav1.UpdateOptions{DryRun: all}); err != nil {
		t.Fatal(err)
	}
	if _, err := cms.Patch(ctx, "real", types.MergePatchType, []byte(`{"data":{"b":"2"}}`), metav1.PatchOptions{DryRun: all}); err != nil {
		t.Fatal(err)
	}
	if err := cms.Delete(ctx, "real", metav1.DeleteOptions{DryRun: all}); err != nil {
		t.Fatal(err)
	}
	now, err := cms.Get(ctx, "real", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("dry-run delete removed the object: %v", err)
	}
	if now.ResourceVersion != real.ResourceVersion || fmt.Sprint(now.Data) != "map[a:1]" {
		t.Errorf("dry-run update/patch changed the object: rv %s -> %s, data %v", real.ResourceVersion, now.ResourceVersion, now.Data)
	}
	if _, err := cms.Create(ctx, configMap("bad_name", nil, nil), metav1.CreateOptions{DryRun: all}); !apierrors.IsInvalid(err) {
		t.Errorf("dry-run of an invalid object: want Invalid, got %v", err)
	}
}

func TestInformer(t *testing.T) {
	cs, ns := cgServer(t, "cg-informer")
	ctx := testContext(t)
	cms := cs.CoreV1().ConfigMaps(ns)
	if _, err := cms.Create(ctx, configMap("before", nil, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	factory := informers.NewSharedInformerFactoryWithOptions(cs, 0, informers.WithNamespace(ns))
	informer := factory.Core().V1().ConfigMaps()
	events := make(chan string, 64)
	_, err := informer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(o any) { events <- "add " + o.(*corev1.ConfigMap).Name },
		UpdateFunc: func(_, o any) {
			cm := o.(*corev1.ConfigMap)
			events <- "update " + cm.Name + " v=" + cm.Data["v"]
		},
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			events <- "delete " + o.(*corev1.ConfigMap).Name
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	stop, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		factory.Shutdown()
	}()
	factory.Start(stop.Done())
	for typ, ok := range factory.WaitForCacheSync(stop.Done()) {
		if !ok {
			t.Fatalf("informer for %v did not sync", typ)
		}
	}
	if _, err := informer.Lister().ConfigMaps(ns).Get("before"); err != nil {
		t.Errorf("lister after sync: %v", err)
	}
	expect := func(want string) {
		t.Helper()
		select {
		case got := <-events:
			if got != want {
				t.Fatalf("informer event %q, want %q", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no informer event; want %q", want)
		}
	}
	expect("add before")
	c, err := cms.Create(ctx, configMap("c", nil, map[string]string{"v": "1"}), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	expect("add c")
	c.Data["v"] = "2"
	if _, err := cms.Update(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("update c v=2")
	if err := cms.Delete(ctx, "c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	expect("delete c")
	if _, err := informer.Lister().ConfigMaps(ns).Get("c"); !apierrors.IsNotFound(err) {
		t.Errorf("lister after delete: want NotFound, got %v", err)
	}
}
