package replicaset_test

import (
	"context"
	"fmt"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"berth.dev/berth/core/controllers/replicaset"
	"berth.dev/berth/core/internal/testserver"
)

// TestAgainstServer runs the real API server in-process and this controller alone against
// it, and checks with client-go what users see. There is no kubelet yet: the test marks
// pods Ready itself through the status subresource, and no scheduler, so pods stay
// unassigned and their deletion is immediate.
func TestAgainstServer(t *testing.T) {
	kube := start(t)
	ctx := context.Background()
	ns := "workloads"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("replicaset", func(t *testing.T) {
		rs, err := kube.AppsV1().ReplicaSets(ns).Create(ctx, &appsv1.ReplicaSet{
			ObjectMeta: metav1.ObjectMeta{Name: "web"},
			Spec: appsv1.ReplicaSetSpec{
				Replicas: ptr(int32(3)),
				// Availability then waits a second after readiness: the controller must
				// come back on its own to record it.
				MinReadySeconds: 1,
				Selector:        &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Template:        template("web"),
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods := waitForPods(t, kube, ns, rs.UID, 3)
		for _, p := range pods {
			ref := metav1.GetControllerOf(&p)
			if ref.Kind != "ReplicaSet" || ref.APIVersion != "apps/v1" || ref.Name != "web" || ref.BlockOwnerDeletion == nil || !*ref.BlockOwnerDeletion {
				t.Errorf("pod %s: controller reference %+v", p.Name, ref)
			}
		}
		testserver.WaitFor(t, "status.replicas is 3", func() (bool, error) {
			got, err := kube.AppsV1().ReplicaSets(ns).Get(ctx, "web", metav1.GetOptions{})
			return err == nil && got.Status.Replicas == 3 && got.Status.ObservedGeneration == got.Generation, err
		})

		// A deleted pod is replaced.
		victim := pods[0].Name
		if err := kube.CoreV1().Pods(ns).Delete(ctx, victim, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, "the deleted pod is replaced", func() (bool, error) {
			pods, err := controlledPods(kube, ns, rs.UID)
			if err != nil || len(pods) != 3 {
				return false, err
			}
			for _, p := range pods {
				if p.Name == victim {
					return false, nil
				}
			}
			return true, nil
		})

		// Readiness and, a second later, availability reach the status.
		for _, p := range waitForPods(t, kube, ns, rs.UID, 3) {
			markReady(t, kube, &p)
		}
		testserver.WaitFor(t, "3 ready and 3 available replicas", func() (bool, error) {
			got, err := kube.AppsV1().ReplicaSets(ns).Get(ctx, "web", metav1.GetOptions{})
			return err == nil && got.Status.ReadyReplicas == 3 && got.Status.AvailableReplicas == 3, err
		})

		// A pod whose labels no longer match is released and replaced.
		stray := waitForPods(t, kube, ns, rs.UID, 3)[0]
		err = retry.RetryOnConflict(retry.DefaultBackoff, func() error {
			p, err := kube.CoreV1().Pods(ns).Get(ctx, stray.Name, metav1.GetOptions{})
			if err != nil {
				return err
			}
			p.Labels = map[string]string{"app": "stray"}
			_, err = kube.CoreV1().Pods(ns).Update(ctx, p, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, "the relabelled pod is released", func() (bool, error) {
			p, err := kube.CoreV1().Pods(ns).Get(ctx, stray.Name, metav1.GetOptions{})
			return err == nil && metav1.GetControllerOf(p) == nil, err
		})
		testserver.WaitFor(t, "the released pod is replaced", func() (bool, error) {
			pods, err := controlledPods(kube, ns, rs.UID)
			return err == nil && len(pods) == 3, err
		})

		// Scaling down deletes the surplus.
		err = retry.RetryOnConflict(retry.DefaultBackoff, func() error {
			got, err := kube.AppsV1().ReplicaSets(ns).Get(ctx, "web", metav1.GetOptions{})
			if err != nil {
				return err
			}
			got.Spec.Replicas = ptr(int32(1))
			_, err = kube.AppsV1().ReplicaSets(ns).Update(ctx, got, metav1.UpdateOptions{})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, "scaled down to 1", func() (bool, error) {
			all, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
			if err != nil {
				return false, err
			}
			got, err := kube.AppsV1().ReplicaSets(ns).Get(ctx, "web", metav1.GetOptions{})
			return err == nil && len(all.Items) == 1 && got.Status.Replicas == 1, err
		})
		if _, err := kube.CoreV1().Pods(ns).Get(ctx, stray.Name, metav1.GetOptions{}); err != nil {
			t.Errorf("the released pod was touched: %v", err)
		}
	})

	t.Run("replicationcontroller", func(t *testing.T) {
		rc, err := kube.CoreV1().ReplicationControllers(ns).Create(ctx, &corev1.ReplicationController{
			ObjectMeta: metav1.ObjectMeta{Name: "legacy"},
			Spec: corev1.ReplicationControllerSpec{
				Replicas: ptr(int32(2)),
				Selector: map[string]string{"app": "legacy"},
				Template: ptr(template("legacy")),
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods := waitForPods(t, kube, ns, rc.UID, 2)
		for _, p := range pods {
			if ref := metav1.GetControllerOf(&p); ref.Kind != "ReplicationController" || ref.APIVersion != "v1" {
				t.Errorf("pod %s: controller reference %+v", p.Name, ref)
			}
			markReady(t, kube, &p)
		}
		testserver.WaitFor(t, "2 ready and available replicas", func() (bool, error) {
			got, err := kube.CoreV1().ReplicationControllers(ns).Get(ctx, "legacy", metav1.GetOptions{})
			s := got.Status
			return err == nil && s.Replicas == 2 && s.ReadyReplicas == 2 && s.AvailableReplicas == 2, err
		})
		testserver.WaitFor(t, "a SuccessfulCreate event about the ReplicationController", func() (bool, error) {
			events, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false, err
			}
			for _, e := range events.Items {
				if e.Reason == "SuccessfulCreate" && e.InvolvedObject.Kind == "ReplicationController" && e.InvolvedObject.UID == rc.UID {
					return true, nil
				}
			}
			return false, nil
		})
	})
}

// start starts the API server and the controller alone; both stop when the test ends.
func start(t *testing.T) kubernetes.Interface {
	t.Helper()
	srv := testserver.Start(t)
	factory := srv.Informers()
	c, err := replicaset.New(srv.Kube, factory, replicaset.Options{Log: srv.Log.With("component", "replicaset"), Recorder: srv.Recorder(t, "replicaset-controller")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, factory, c)
	return srv.Kube
}

func template(app string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
}

// controlledPods lists the active pods the owner controls.
func controlledPods(kube kubernetes.Interface, ns string, owner types.UID) ([]corev1.Pod, error) {
	list, err := kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if ref := metav1.GetControllerOf(&p); ref != nil && ref.UID == owner && p.DeletionTimestamp == nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// waitForPods waits until the owner controls exactly n active pods and returns them.
func waitForPods(t *testing.T, kube kubernetes.Interface, ns string, owner types.UID, n int) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	testserver.WaitFor(t, fmt.Sprintf("%d pods", n), func() (bool, error) {
		var err error
		pods, err = controlledPods(kube, ns, owner)
		return err == nil && len(pods) == n, err
	})
	return pods
}

// markReady does the kubelet's part: the pod runs and is Ready.
func markReady(t *testing.T, kube kubernetes.Interface, pod *corev1.Pod) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		p, err := kube.CoreV1().Pods(pod.Namespace).Get(context.Background(), pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()}}
		_, err = kube.CoreV1().Pods(p.Namespace).UpdateStatus(context.Background(), p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("mark pod %s ready: %v", pod.Name, err)
	}
}

func ptr[T any](v T) *T { return &v }
