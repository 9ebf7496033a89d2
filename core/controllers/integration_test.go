package controllers_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"berth.dev/berth/core/controllers"
	"berth.dev/berth/core/internal/testserver"
)

// TestControllersAgainstServer runs the real API server in-process and the controllers
// against it, and checks with client-go what users see: ownerReferences honoured under
// each propagation policy, and a deleted namespace emptied and then gone.
func TestControllersAgainstServer(t *testing.T) {
	kube := startCluster(t)

	t.Run("background", func(t *testing.T) {
		ctx := context.Background()
		ns := namespace(t, kube, "gc-background")
		owner := configMap(t, kube, ns, "owner")
		dep := configMap(t, kube, ns, "dep", ownerRef(owner, false))
		secret, err := kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "dep-secret", OwnerReferences: []metav1.OwnerReference{ownerRef(owner, true)}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		bystander := configMap(t, kube, ns, "bystander")

		deleteConfigMap(t, kube, ns, "owner", metav1.DeletePropagationBackground)
		testserver.WaitFor(t, "the dependents are collected", func() (bool, error) {
			_, err1 := kube.CoreV1().ConfigMaps(ns).Get(ctx, dep.Name, metav1.GetOptions{})
			_, err2 := kube.CoreV1().Secrets(ns).Get(ctx, secret.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err1) && apierrors.IsNotFound(err2), nil
		})
		if _, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, bystander.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("an object without owners was touched: %v", err)
		}
	})

	t.Run("orphan", func(t *testing.T) {
		ctx := context.Background()
		ns := namespace(t, kube, "gc-orphan")
		owner := configMap(t, kube, ns, "owner")
		other := configMap(t, kube, ns, "other")
		dep := configMap(t, kube, ns, "dep", ownerRef(owner, true), ownerRef(other, false))

		deleteConfigMap(t, kube, ns, "owner", metav1.DeletePropagationOrphan)
		testserver.WaitFor(t, "the owner goes once orphaned", gone(kube, ns, owner.Name))
		got, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, dep.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the orphaned dependent: %v", err)
		}
		if len(got.OwnerReferences) != 1 || got.OwnerReferences[0].UID != other.UID {
			t.Errorf("the orphan keeps ownerReferences %+v, want only the one to %s", got.OwnerReferences, other.Name)
		}
	})

	t.Run("foreground", func(t *testing.T) {
		ctx := context.Background()
		ns := namespace(t, kube, "gc-foreground")
		owner := configMap(t, kube, ns, "owner")
		// The dependent's own finalizer keeps it for a while after the collector deletes it;
		// the owner must wait all that time.
		dep := configMap(t, kube, ns, "dep", ownerRef(owner, true))
		dep.Finalizers = []string{"example.com/hold"}
		dep, err := kube.CoreV1().ConfigMaps(ns).Update(ctx, dep, metav1.UpdateOptions{})
		if err != nil {
			t.Fatal(err)
		}

		deleteConfigMap(t, kube, ns, "owner", metav1.DeletePropagationForeground)
		testserver.WaitFor(t, "the collector deletes the blocking dependent", func() (bool, error) {
			d, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, dep.Name, metav1.GetOptions{})
			return err == nil && d.DeletionTimestamp != nil, err
		})
		time.Sleep(500 * time.Millisecond) // room for the collector to get it wrong
		o, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, owner.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatalf("the owner went before its blocking dependent: %v", err)
		}
		if o.DeletionTimestamp == nil || !contains(o.Finalizers, metav1.FinalizerDeleteDependents) {
			t.Fatalf("owner: deletionTimestamp %v, finalizers %v; want foreground deletion", o.DeletionTimestamp, o.Finalizers)
		}

		d, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, dep.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d.Finalizers = nil
		if _, err := kube.CoreV1().ConfigMaps(ns).Update(ctx, d, metav1.UpdateOptions{}); err != nil {
			t.Fatalf("release the dependent: %v", err)
		}
		testserver.WaitFor(t, "the dependent goes", gone(kube, ns, dep.Name))
		testserver.WaitFor(t, "the owner goes after its dependent", gone(kube, ns, owner.Name))
	})

	t.Run("node lifecycle", func(t *testing.T) {
		ctx := context.Background()
		ns := namespace(t, kube, "nodes")
		now := metav1.Now()
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "silent"}}
		node, err := kube.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		node.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}}
		if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// One pod tolerates the unreachable taint for 1 s; the other gets the default
		// tolerations (300 s) from admission.
		one := int64(1)
		quick := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "quick"}, Spec: corev1.PodSpec{
			NodeName:    node.Name,
			Containers:  []corev1.Container{{Name: "c", Image: "busybox"}},
			Tolerations: []corev1.Toleration{{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &one}},
		}}
		if _, err := kube.CoreV1().Pods(ns).Create(ctx, quick, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		patient, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "patient"}, Spec: corev1.PodSpec{
			NodeName: node.Name, Containers: []corev1.Container{{Name: "c", Image: "busybox"}},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defaults := 0
		for _, tol := range patient.Spec.Tolerations {
			if tol.Effect == corev1.TaintEffectNoExecute && tol.TolerationSeconds != nil && *tol.TolerationSeconds == 300 &&
				(tol.Key == corev1.TaintNodeNotReady || tol.Key == corev1.TaintNodeUnreachable) {
				defaults++
			}
		}
		if defaults != 2 {
			t.Errorf("admitted pod tolerations %+v, want not-ready and unreachable NoExecute for 300 s", patient.Spec.Tolerations)
		}

		// No agent renews a Lease for the node: after the 2 s grace period it is Unknown and
		// tainted, and the quick pod is evicted (it stays Terminating: no agent confirms).
		testserver.WaitFor(t, "the silent node is marked Unknown and tainted unreachable", func() (bool, error) {
			n, err := kube.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			tainted := false
			for _, taint := range n.Spec.Taints {
				tainted = tainted || (taint.Key == corev1.TaintNodeUnreachable && taint.Effect == corev1.TaintEffectNoExecute)
			}
			return tainted && len(n.Status.Conditions) > 0 && n.Status.Conditions[0].Status == corev1.ConditionUnknown, nil
		})
		testserver.WaitFor(t, "the pod tolerating 1 s is evicted", func() (bool, error) {
			p, err := kube.CoreV1().Pods(ns).Get(ctx, "quick", metav1.GetOptions{})
			return apierrors.IsNotFound(err) || (err == nil && p.DeletionTimestamp != nil), nil
		})
		p, err := kube.CoreV1().Pods(ns).Get(ctx, "patient", metav1.GetOptions{})
		if err != nil || p.DeletionTimestamp != nil {
			t.Errorf("the pod tolerating 300 s went early (err %v)", err)
		}
	})

	t.Run("quota and limit range", func(t *testing.T) {
		ctx := context.Background()
		ns := namespace(t, kube, "quota")
		if _, err := kube.CoreV1().ResourceQuotas(ns).Create(ctx, &corev1.ResourceQuota{
			ObjectMeta: metav1.ObjectMeta{Name: "compute"},
			Spec:       corev1.ResourceQuotaSpec{Hard: corev1.ResourceList{"pods": resource.MustParse("2"), "requests.cpu": resource.MustParse("1")}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kube.CoreV1().LimitRanges(ns).Create(ctx, &corev1.LimitRange{
			ObjectMeta: metav1.ObjectMeta{Name: "defaults"},
			Spec: corev1.LimitRangeSpec{Limits: []corev1.LimitRangeItem{{
				Type:           corev1.LimitTypeContainer,
				DefaultRequest: corev1.ResourceList{"cpu": resource.MustParse("400m")},
				Max:            corev1.ResourceList{"cpu": resource.MustParse("1")},
			}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// Creates wait until the controller has filled the quota's status in.
		testserver.WaitFor(t, "the quota controller publishes status.hard", func() (bool, error) {
			q, err := kube.CoreV1().ResourceQuotas(ns).Get(ctx, "compute", metav1.GetOptions{})
			return err == nil && len(q.Status.Hard) == 2, err
		})
		newPod := func(name, cpuLimit string) *corev1.Pod {
			c := corev1.Container{Name: "c", Image: "busybox"}
			if cpuLimit != "" {
				c.Resources.Limits = corev1.ResourceList{"cpu": resource.MustParse(cpuLimit)}
			}
			return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.PodSpec{Containers: []corev1.Container{c}}}
		}
		p1, err := kube.CoreV1().Pods(ns).Create(ctx, newPod("p1", ""), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := p1.Spec.Containers[0].Resources.Requests.Cpu().String(); got != "400m" {
			t.Errorf("the LimitRange's default request: cpu %s, want 400m", got)
		}
		_, err = kube.CoreV1().Pods(ns).Create(ctx, newPod("toobig", "2"), metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "maximum cpu usage per Container is 1, but limit is 2") {
			t.Errorf("a pod over the LimitRange's max: %v, want Forbidden naming the maximum", err)
		}
		if _, err := kube.CoreV1().Pods(ns).Create(ctx, newPod("p2", ""), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, err = kube.CoreV1().Pods(ns).Create(ctx, newPod("p3", ""), metav1.CreateOptions{})
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "exceeded quota: compute") {
			t.Fatalf("a third pod: %v, want Forbidden: exceeded quota: compute", err)
		}
		if _, err := kube.CoreV1().Pods(ns).Get(ctx, "p3", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("the refused pod was stored: %v", err)
		}
		// Deleting a pod gives its share back, so another fits.
		if err := kube.CoreV1().Pods(ns).Delete(ctx, "p1", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, "the quota's usage drops to 1 pod", func() (bool, error) {
			q, err := kube.CoreV1().ResourceQuotas(ns).Get(ctx, "compute", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			used := q.Status.Used["pods"]
			return used.Value() == 1, nil
		})
		if _, err := kube.CoreV1().Pods(ns).Create(ctx, newPod("p3", ""), metav1.CreateOptions{}); err != nil {
			t.Errorf("a pod after another was deleted: %v", err)
		}
	})

	t.Run("disruption budget and eviction", func(t *testing.T) {
		ctx := context.Background()
		ns := namespace(t, kube, "budget")
		// No agent runs these pods: the test marks them Running and Ready itself.
		for _, name := range []string{"a", "b"} {
			p, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "db"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			p.Status.Phase = corev1.PodRunning
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
			if _, err := kube.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		one := intstr.FromInt32(1)
		if _, err := kube.PolicyV1().PodDisruptionBudgets(ns).Create(ctx, &policyv1.PodDisruptionBudget{
			ObjectMeta: metav1.ObjectMeta{Name: "db"},
			Spec:       policyv1.PodDisruptionBudgetSpec{MinAvailable: &one, Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, "the budget allows one disruption of two healthy pods", func() (bool, error) {
			b, err := kube.PolicyV1().PodDisruptionBudgets(ns).Get(ctx, "db", metav1.GetOptions{})
			return err == nil && b.Status.ObservedGeneration == b.Generation && b.Status.CurrentHealthy == 2 &&
				b.Status.DesiredHealthy == 1 && b.Status.ExpectedPods == 2 && b.Status.DisruptionsAllowed == 1, err
		})
		evict := func(name string) error {
			return kube.PolicyV1().Evictions(ns).Evict(ctx, &policyv1.Eviction{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns}})
		}
		if err := evict("a"); err != nil {
			t.Fatalf("the first eviction: %v", err)
		}
		err := evict("b")
		if !apierrors.IsTooManyRequests(err) || !strings.Contains(err.Error(), "disruption budget") {
			t.Fatalf("the second eviction: %v, want 429 naming the disruption budget", err)
		}
		if p, err := kube.CoreV1().Pods(ns).Get(ctx, "b", metav1.GetOptions{}); err != nil || p.DeletionTimestamp != nil {
			t.Errorf("the pod whose eviction was refused is being deleted (err %v)", err)
		}
	})

	t.Run("namespace", func(t *testing.T) {
		ctx := context.Background()
		ns := namespace(t, kube, "doomed")
		configMap(t, kube, ns, "a")
		if _, err := kube.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "s"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "p"},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
		}
		if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}

		if err := kube.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, "the namespace goes", func() (bool, error) {
			_, err := kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, nil
			}
			return false, err
		})
		cms, err := kube.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		secrets, err := kube.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if n := len(cms.Items) + len(secrets.Items) + len(pods.Items); n != 0 {
			t.Errorf("%d objects outlived their namespace", n)
		}
	})

	t.Run("namespace waits for finalizers", func(t *testing.T) {
		ctx := context.Background()
		ns := namespace(t, kube, "held")
		cm := configMap(t, kube, ns, "held")
		cm.Finalizers = []string{"example.com/hold"}
		if _, err := kube.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := kube.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		want := "Some content in the namespace has finalizers remaining: example.com/hold in 1 resource instances"
		testserver.WaitFor(t, "the namespace reports the finalizer holding it", func() (bool, error) {
			n, err := kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			for _, c := range n.Status.Conditions {
				if c.Type == corev1.NamespaceFinalizersRemaining && c.Status == corev1.ConditionTrue && c.Message == want {
					return n.Status.Phase == corev1.NamespaceTerminating, nil
				}
			}
			return false, fmt.Errorf("conditions %+v", n.Status.Conditions)
		})
		held, err := kube.CoreV1().ConfigMaps(ns).Get(ctx, cm.Name, metav1.GetOptions{})
		if err != nil || held.DeletionTimestamp == nil {
			t.Fatalf("the held configmap: %v, %+v", err, held)
		}
		held.Finalizers = nil
		if _, err := kube.CoreV1().ConfigMaps(ns).Update(ctx, held, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, "the namespace goes once its content does", func() (bool, error) {
			_, err := kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, nil
			}
			return false, err
		})
	})
}

// startCluster starts the API server and the controllers; both stop when the test ends.
func startCluster(t *testing.T) kubernetes.Interface {
	t.Helper()
	srv := testserver.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- controllers.Run(ctx, srv.Config, controllers.Options{Log: srv.Log.With("component", "controllers"), NodeGracePeriod: 2 * time.Second})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controllers.Run: %v", err)
		}
	})
	return srv.Kube
}

func namespace(t *testing.T, kube kubernetes.Interface, name string) string {
	t.Helper()
	_, err := kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	return name
}

func configMap(t *testing.T, kube kubernetes.Interface, ns, name string, owners ...metav1.OwnerReference) *corev1.ConfigMap {
	t.Helper()
	cm, err := kube.CoreV1().ConfigMaps(ns).Create(context.Background(), &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: name, OwnerReferences: owners},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create configmap %s/%s: %v", ns, name, err)
	}
	return cm
}

func ownerRef(cm *corev1.ConfigMap, block bool) metav1.OwnerReference {
	return metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: cm.Name, UID: cm.UID, BlockOwnerDeletion: &block}
}

func deleteConfigMap(t *testing.T, kube kubernetes.Interface, ns, name string, policy metav1.DeletionPropagation) {
	t.Helper()
	if err := kube.CoreV1().ConfigMaps(ns).Delete(context.Background(), name, metav1.DeleteOptions{PropagationPolicy: &policy}); err != nil {
		t.Fatalf("delete configmap %s/%s (%s): %v", ns, name, policy, err)
	}
}

func gone(kube kubernetes.Interface, ns, name string) func() (bool, error) {
	return func() (bool, error) {
		_, err := kube.CoreV1().ConfigMaps(ns).Get(context.Background(), name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
