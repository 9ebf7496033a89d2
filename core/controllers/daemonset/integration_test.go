package daemonset_test

import (
	"context"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"berth.dev/berth/core/controllers/daemonset"
	"berth.dev/berth/core/internal/testserver"
)

// TestAgainstServer runs the real API server in-process with this controller alone. There
// is no scheduler or kubelet yet: the daemon pods stay Pending and unbound, pinned to their
// nodes by node affinity, and the test creates the Node objects itself.
func TestAgainstServer(t *testing.T) {
	kube := startServer(t)
	ctx := context.Background()
	const ns = "ds"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	yes := map[string]string{"daemon": "yes"}
	createNode(t, kube, "n1", yes)
	createNode(t, kube, "n2", yes)
	createNode(t, kube, "n3", yes, corev1.Taint{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule})

	labels := map[string]string{"app": "agent"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "agent"},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector: yes,
					Containers:   []corev1.Container{{Name: "agent", Image: "busybox"}},
				},
			},
		},
	}
	if _, err := kube.AppsV1().DaemonSets(ns).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	waitFor(t, "a pod pinned to each of n1 and n2, none to the tainted n3", func() bool {
		nodes := podNodes(t, kube, ns)
		return slices.Equal(nodes, []string{"n1", "n2"})
	})
	waitFor(t, "status counts 2 desired and scheduled", func() bool {
		d, err := kube.AppsV1().DaemonSets(ns).Get(ctx, "agent", metav1.GetOptions{})
		return err == nil && d.Status.ObservedGeneration == d.Generation && d.Status.DesiredNumberScheduled == 2 &&
			d.Status.CurrentNumberScheduled == 2 && d.Status.UpdatedNumberScheduled == 2 && d.Status.NumberUnavailable == 2
	})
	revs, err := kube.AppsV1().ControllerRevisions(ns).List(ctx, metav1.ListOptions{})
	if err != nil || len(revs.Items) != 1 {
		t.Errorf("revisions: %v, %d, want 1", err, len(revs.Items))
	}

	// Labelling n2 out of the nodeSelector removes its pod.
	n2, err := kube.CoreV1().Nodes().Get(ctx, "n2", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n2.Labels["daemon"] = "no"
	if _, err := kube.CoreV1().Nodes().Update(ctx, n2, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "n2's pod goes", func() bool { return slices.Equal(podNodes(t, kube, ns), []string{"n1"}) })
	waitFor(t, "status counts 1 desired", func() bool {
		d, err := kube.AppsV1().DaemonSets(ns).Get(ctx, "agent", metav1.GetOptions{})
		return err == nil && d.Status.DesiredNumberScheduled == 1 && d.Status.CurrentNumberScheduled == 1 && d.Status.NumberMisscheduled == 0
	})
}

// podNodes lists the nodes the live daemon pods are pinned to, checking each pod's shape.
func podNodes(t *testing.T, kube kubernetes.Interface, ns string) []string {
	t.Helper()
	pods, err := kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var nodes []string
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		if p.Spec.NodeName != "" {
			t.Fatalf("pod %s bound to %s by the controller; the scheduler binds", p.Name, p.Spec.NodeName)
		}
		a := p.Spec.Affinity
		if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
			t.Fatalf("pod %s has no required node affinity", p.Name)
		}
		terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
		if len(terms) != 1 || len(terms[0].MatchFields) != 1 || terms[0].MatchFields[0].Key != "metadata.name" || len(terms[0].MatchFields[0].Values) != 1 {
			t.Fatalf("pod %s affinity %+v, want matchFields metadata.name In [node]", p.Name, terms)
		}
		nodes = append(nodes, terms[0].MatchFields[0].Values[0])
	}
	slices.Sort(nodes)
	return nodes
}

func createNode(t *testing.T, kube kubernetes.Interface, name string, labels map[string]string, taints ...corev1.Taint) {
	t.Helper()
	ctx := context.Background()
	n, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       corev1.NodeSpec{Taints: taints},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}}
	if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func startServer(t *testing.T) kubernetes.Interface {
	t.Helper()
	srv := testserver.Start(t)
	factory := srv.Informers()
	c, err := daemonset.New(srv.Kube, factory, daemonset.Options{Log: srv.Log.With("component", "daemonset"), Recorder: srv.Recorder(t, "daemonset-controller")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, factory, c)
	return srv.Kube
}

// waitFor polls cond for up to 30 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testserver.WaitFor(t, what, func() (bool, error) { return cond(), nil })
}
