package statefulset_test

import (
	"context"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"berth.dev/berth/core/controllers/statefulset"
	"berth.dev/berth/core/internal/testserver"
)

// TestAgainstServer runs the real API server in-process with this controller alone. There
// is no kubelet or scheduler yet, so the test plays the kubelet: it marks pods Running and
// Ready through UpdateStatus, one at a time, and checks what the controller did before each.
func TestAgainstServer(t *testing.T) {
	kube := startServer(t)
	ctx := context.Background()
	const ns = "sts"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	three := int32(3)
	labels := map[string]string{"app": "web"}
	set := &appsv1.StatefulSet{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.StatefulSetSpec{
			Replicas:    &three,
			Selector:    &metav1.LabelSelector{MatchLabels: labels},
			ServiceName: "nginx",
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
	if _, err := kube.AppsV1().StatefulSets(ns).Create(ctx, set, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// Creation in order: each pod only once the one before is Running and Ready.
	for i, name := range []string{"web-0", "web-1", "web-2"} {
		pod := waitPod(t, kube, ns, name, func(*corev1.Pod) bool { return true })
		if _, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "www-"+name, metav1.GetOptions{}); err != nil {
			t.Errorf("claim of %s: %v", name, err)
		}
		if pod.Spec.Hostname != name || pod.Spec.Subdomain != "nginx" || pod.Spec.Volumes[0].PersistentVolumeClaim.ClaimName != "www-"+name {
			t.Errorf("%s: hostname %q subdomain %q volumes %+v", name, pod.Spec.Hostname, pod.Spec.Subdomain, pod.Spec.Volumes)
		}
		if i < 2 {
			time.Sleep(300 * time.Millisecond) // room for the controller to get the order wrong
			next := []string{"web-1", "web-2"}[i]
			if _, err := kube.CoreV1().Pods(ns).Get(ctx, next, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
				t.Fatalf("%s exists before %s is ready (err %v)", next, name, err)
			}
		}
		markReady(t, kube, ns, name)
	}
	s := waitSet(t, kube, ns, func(s *appsv1.StatefulSet) bool { return s.Status.ReadyReplicas == 3 && s.Status.UpdateRevision != "" })
	oldRev := s.Status.UpdateRevision

	// A template change rolls the pods from the highest ordinal down.
	s.Spec.Template.Spec.Containers[0].Image = "nginx:1.28"
	if _, err := kube.AppsV1().StatefulSets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	s = waitSet(t, kube, ns, func(s *appsv1.StatefulSet) bool { return s.Status.UpdateRevision != oldRev })
	newRev := s.Status.UpdateRevision
	for i, name := range []string{"web-2", "web-1", "web-0"} {
		waitPod(t, kube, ns, name, func(p *corev1.Pod) bool { return p.Labels[appsv1.ControllerRevisionHashLabelKey] == newRev })
		for _, lower := range []string{"web-2", "web-1", "web-0"}[i+1:] {
			p, err := kube.CoreV1().Pods(ns).Get(ctx, lower, metav1.GetOptions{})
			if err != nil || p.Labels[appsv1.ControllerRevisionHashLabelKey] != oldRev {
				t.Fatalf("%s changed before %s was ready (err %v)", lower, name, err)
			}
		}
		markReady(t, kube, ns, name)
	}
	waitSet(t, kube, ns, func(s *appsv1.StatefulSet) bool {
		return s.Status.CurrentRevision == newRev && s.Status.UpdatedReplicas == 3 && s.Status.ReadyReplicas == 3
	})
	revs, err := kube.AppsV1().ControllerRevisions(ns).List(ctx, metav1.ListOptions{})
	if err != nil || len(revs.Items) != 2 {
		t.Errorf("revisions: %v, %d, want 2 (for kubectl rollout history)", err, len(revs.Items))
	}

	// Scaling to 1 deletes web-2, then web-1.
	s, err = kube.AppsV1().StatefulSets(ns).Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	one := int32(1)
	s.Spec.Replicas = &one
	if _, err := kube.AppsV1().StatefulSets(ns).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web-2 goes first", func() bool {
		_, err2 := kube.CoreV1().Pods(ns).Get(ctx, "web-2", metav1.GetOptions{})
		_, err1 := kube.CoreV1().Pods(ns).Get(ctx, "web-1", metav1.GetOptions{})
		if apierrors.IsNotFound(err1) && !apierrors.IsNotFound(err2) {
			t.Fatal("web-1 went before web-2")
		}
		return apierrors.IsNotFound(err2)
	})
	waitFor(t, "web-1 goes", func() bool {
		_, err := kube.CoreV1().Pods(ns).Get(ctx, "web-1", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	waitSet(t, kube, ns, func(s *appsv1.StatefulSet) bool { return s.Status.Replicas == 1 })
	claims, err := kube.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
	if err != nil || len(claims.Items) != 3 {
		t.Errorf("claims after scale-down: %v, %d, want 3 (retained)", err, len(claims.Items))
	}
}

func startServer(t *testing.T) kubernetes.Interface {
	t.Helper()
	srv := testserver.Start(t)
	factory := srv.Informers()
	c, err := statefulset.New(srv.Kube, factory, statefulset.Options{Log: srv.Log.With("component", "statefulset"), Recorder: srv.Recorder(t, "statefulset-controller")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, factory, c)
	return srv.Kube
}

// markReady plays the kubelet: the pod is Running and Ready.
func markReady(t *testing.T, kube kubernetes.Interface, ns, name string) {
	t.Helper()
	ctx := context.Background()
	p, err := kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	p.Status.Phase = corev1.PodRunning
	p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}}
	if _, err := kube.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("mark %s ready: %v", name, err)
	}
}

func waitPod(t *testing.T, kube kubernetes.Interface, ns, name string, ok func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitFor(t, "pod "+name, func() bool {
		p, err := kube.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && p.DeletionTimestamp == nil && ok(p) {
			pod = p
			return true
		}
		return false
	})
	return pod
}

func waitSet(t *testing.T, kube kubernetes.Interface, ns string, ok func(*appsv1.StatefulSet) bool) *appsv1.StatefulSet {
	t.Helper()
	var set *appsv1.StatefulSet
	waitFor(t, "statefulset status", func() bool {
		s, err := kube.AppsV1().StatefulSets(ns).Get(context.Background(), "web", metav1.GetOptions{})
		if err == nil && s.Status.ObservedGeneration == s.Generation && ok(s) {
			set = s
			return true
		}
		return false
	})
	return set
}

// waitFor polls cond for up to 30 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testserver.WaitFor(t, what, func() (bool, error) { return cond(), nil })
}
