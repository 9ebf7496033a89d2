package integration

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestNodeFailureSelfHealing is the seeds' self-healing with the whole control plane of
// `berth server` (controllers and scheduler): a Deployment's pods run on two nodes; one
// node stops renewing its Lease; it is marked unreachable and tainted, its pods are
// evicted once their tolerations (shortened by flags) run out, and the Deployment is whole
// again on the other node. The nodes are API-only: the test renews their Leases and plays
// their agents (bound pods reported Running and Ready), as `berth bench workloads` does.
func TestNodeFailureSelfHealing(t *testing.T) {
	skipShort(t)
	p := startBerth(t, t.TempDir(), "--node-monitor-grace-period=3s", "--default-toleration-seconds=2")
	cs := clientset(t, p.kubeconfig)
	ctx, stop := context.WithCancel(testContext(t))
	defer stop()

	var aAlive atomic.Bool
	aAlive.Store(true)
	for _, name := range []string{"node-a", "node-b"} {
		createReadyNode(t, cs, name)
	}
	go func() {
		for ctx.Err() == nil {
			renewLease(ctx, cs, "node-b")
			if aAlive.Load() {
				renewLease(ctx, cs, "node-a")
			}
			time.Sleep(500 * time.Millisecond)
		}
	}()
	// The agents: pods bound to a live node become Running and Ready.
	go func() {
		for ctx.Err() == nil {
			pods, err := cs.CoreV1().Pods("heal").List(ctx, metav1.ListOptions{})
			if err == nil {
				for i := range pods.Items {
					pod := &pods.Items[i]
					alive := pod.Spec.NodeName == "node-b" || (pod.Spec.NodeName == "node-a" && aAlive.Load())
					if alive && pod.DeletionTimestamp == nil && !podIsReady(pod) {
						pod.Status.Phase = corev1.PodRunning
						pod.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
						_, _ = cs.CoreV1().Pods("heal").UpdateStatus(ctx, pod, metav1.UpdateOptions{})
					}
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	createNamespace(t, cs, "heal")
	replicas := int32(4)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "busybox",
					Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m")}}}}},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments("heal").Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// readyOn counts the live, ready pods per node.
	readyOn := func() map[string]int {
		out := map[string]int{}
		pods, err := cs.CoreV1().Pods("heal").List(ctx, metav1.ListOptions{})
		if err != nil {
			return out
		}
		for i := range pods.Items {
			if pod := &pods.Items[i]; pod.DeletionTimestamp == nil && podIsReady(pod) {
				out[pod.Spec.NodeName]++
			}
		}
		return out
	}
	waitUntil(t, 60*time.Second, "4 ready pods spread over both nodes", func() bool {
		r := readyOn()
		return r["node-a"]+r["node-b"] == 4 && r["node-a"] > 0 && r["node-b"] > 0
	})

	aAlive.Store(false) // node-a's agent dies
	waitUntil(t, 60*time.Second, "node-a is tainted unreachable and its pods evicted and replaced on node-b", func() bool {
		n, err := cs.CoreV1().Nodes().Get(ctx, "node-a", metav1.GetOptions{})
		if err != nil {
			return false
		}
		tainted := false
		for _, taint := range n.Spec.Taints {
			tainted = tainted || (taint.Key == corev1.TaintNodeUnreachable && taint.Effect == corev1.TaintEffectNoExecute)
		}
		r := readyOn()
		return tainted && r["node-b"] == 4 && r["node-a"] == 0
	})
	dep, err := cs.AppsV1().Deployments("heal").Get(ctx, "web", metav1.GetOptions{})
	if err != nil || dep.Status.AvailableReplicas != 4 {
		t.Errorf("deployment after the failover: available %d (err %v), want 4", dep.Status.AvailableReplicas, err)
	}
}

func createReadyNode(t *testing.T, cs kubernetes.Interface, name string) {
	t.Helper()
	ctx := testContext(t)
	n, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi"), corev1.ResourcePods: resource.MustParse("20")}
	now := metav1.Now()
	n.Status = corev1.NodeStatus{Capacity: res, Allocatable: res, Conditions: []corev1.NodeCondition{
		{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now},
	}}
	if _, err := cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// renewLease renews (or creates) a node's Lease in kube-node-lease, as its agent would.
func renewLease(ctx context.Context, cs kubernetes.Interface, node string) {
	now := metav1.NewMicroTime(time.Now())
	leases := cs.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	l, err := leases.Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		secs := int32(40)
		_, _ = leases.Create(ctx, &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: node},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &node, LeaseDurationSeconds: &secs, RenewTime: &now}}, metav1.CreateOptions{})
		return
	}
	l.Spec.RenewTime = &now
	_, _ = leases.Update(ctx, l, metav1.UpdateOptions{})
}
