package endpointslice_test

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"berth.dev/berth/core/controllers/endpointslice"
	"berth.dev/berth/core/internal/testserver"
)

// TestAgainstServer runs the real API server in-process and this controller alone against
// it. No agent runs there: the test plays the kubelet's part and marks pods Running and
// Ready, with an IP, through the status subresource. No scheduler either, so pods stay
// unassigned and their deletion is immediate; no garbage collector, so the slices' going
// with their Service is this controller's doing.
func TestAgainstServer(t *testing.T) {
	srv := testserver.Start(t)
	factory := srv.Informers()
	c, err := endpointslice.New(srv.Kube, factory, endpointslice.Options{Log: srv.Log.With("component", "endpointslice"), Recorder: srv.Recorder(t, "endpointslice-controller")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, factory, c)
	kube, ctx, ns := srv.Kube, context.Background(), "default"

	svc, err := kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
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

	list := func() ([]discoveryv1.EndpointSlice, error) {
		l, err := kube.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
		if err != nil {
			return nil, err
		}
		return l.Items, nil
	}
	// readiness of each listed pod, when there is exactly one slice.
	state := func() (map[string]bool, *discoveryv1.EndpointSlice, error) {
		slices, err := list()
		if err != nil || len(slices) != 1 {
			return nil, nil, err
		}
		out := map[string]bool{}
		for _, ep := range slices[0].Endpoints {
			out[ep.TargetRef.Name] = ep.Conditions.Ready != nil && *ep.Conditions.Ready
		}
		return out, &slices[0], nil
	}
	testserver.WaitFor(t, "one slice with 3 ready endpoints", func() (bool, error) {
		eps, s, err := state()
		if err != nil || s == nil {
			return false, err
		}
		ok := len(eps) == 3 && eps["web-0"] && eps["web-1"] && eps["web-2"]
		if ok {
			ref := metav1.GetControllerOf(s)
			if s.Labels[discoveryv1.LabelManagedBy] != endpointslice.ControllerName || ref == nil || ref.UID != svc.UID ||
				s.AddressType != discoveryv1.AddressTypeIPv4 || len(s.Ports) != 1 || *s.Ports[0].Port != 8080 {
				t.Errorf("slice %+v", s)
			}
		}
		return ok, nil
	})

	setReady(t, kube, ns, "web-1", "10.244.0.11", false)
	testserver.WaitFor(t, "web-1 not ready", func() (bool, error) {
		eps, _, err := state()
		return err == nil && len(eps) == 3 && eps["web-0"] && !eps["web-1"] && eps["web-2"], err
	})

	if err := kube.CoreV1().Pods(ns).Delete(ctx, "web-2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testserver.WaitFor(t, "web-2 gone from the slice", func() (bool, error) {
		eps, _, err := state()
		_, listed := eps["web-2"]
		return err == nil && len(eps) == 2 && !listed, err
	})

	if err := kube.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testserver.WaitFor(t, "the slices deleted with the Service", func() (bool, error) {
		slices, err := list()
		return err == nil && len(slices) == 0, err
	})
	if _, err := kube.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("service: %v", err)
	}
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
