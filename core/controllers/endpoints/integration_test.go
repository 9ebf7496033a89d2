package endpoints_test

//lint:file-ignore SA1019 v1 Endpoints are deprecated in 1.33 but still served and read (kubectl describe svc, older clients); Kubernetes keeps writing them too.

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"berth.dev/berth/core/controllers/endpoints"
	"berth.dev/berth/core/internal/testserver"
)

// TestAgainstServer runs the real API server in-process and this controller alone against
// it. No agent runs there: the test plays the kubelet's part and marks pods Running and
// Ready, with an IP, through the status subresource. No scheduler either, so pods stay
// unassigned and their deletion is immediate.
func TestAgainstServer(t *testing.T) {
	srv := testserver.Start(t)
	factory := srv.Informers()
	c, err := endpoints.New(srv.Kube, factory, endpoints.Options{Log: srv.Log.With("component", "endpoints"), Recorder: srv.Recorder(t, "endpoint-controller")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, factory, c)
	kube, ctx, ns := srv.Kube, context.Background(), "default"

	if _, err := kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http")}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		name := fmt.Sprintf("web-%d", i)
		if _, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox",
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}}}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		setReady(t, kube, ns, name, fmt.Sprintf("10.244.0.%d", i+10), true)
	}

	get := func() (*corev1.Endpoints, error) {
		return kube.CoreV1().Endpoints(ns).Get(ctx, "web", metav1.GetOptions{})
	}
	counts := func(ep *corev1.Endpoints) (ready, notReady int) {
		for _, s := range ep.Subsets {
			ready += len(s.Addresses)
			notReady += len(s.NotReadyAddresses)
		}
		return ready, notReady
	}
	testserver.WaitFor(t, "3 ready addresses on port 8080", func() (bool, error) {
		ep, err := get()
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		r, n := counts(ep)
		return r == 3 && n == 0 && ep.Subsets[0].Ports[0].Port == 8080 && ep.Subsets[0].Addresses[0].TargetRef.Kind == "Pod", nil
	})

	setReady(t, kube, ns, "web-1", "10.244.0.11", false)
	testserver.WaitFor(t, "web-1 among the not-ready addresses", func() (bool, error) {
		ep, err := get()
		if err != nil {
			return false, err
		}
		r, n := counts(ep)
		return r == 2 && n == 1 && ep.Subsets[0].NotReadyAddresses[0].TargetRef.Name == "web-1", nil
	})

	if err := kube.CoreV1().Pods(ns).Delete(ctx, "web-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testserver.WaitFor(t, "web-2 gone from the Endpoints", func() (bool, error) {
		ep, err := get()
		if err != nil {
			return false, err
		}
		r, n := counts(ep)
		return r == 1 && n == 1, nil
	})

	if err := kube.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testserver.WaitFor(t, "the Endpoints deleted with the Service", func() (bool, error) {
		_, err := get()
		return apierrors.IsNotFound(err), nil
	})
}

// setReady does the kubelet's part: the pod runs with an IP, Ready or not.
func setReady(t *testing.T, kube kubernetes.Interface, ns, name, ip string, ready bool) {
	t.Helper()
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	err := retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		p, err := kube.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		p.Status.Phase = corev1.PodRunning
		p.Status.PodIP, p.Status.PodIPs = ip, []corev1.PodIP{{IP: ip}}
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: status, LastTransitionTime: metav1.Now()}}
		_, err = kube.CoreV1().Pods(ns).UpdateStatus(context.Background(), p, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("set pod %s ready=%v: %v", name, ready, err)
	}
}
