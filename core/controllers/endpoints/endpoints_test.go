package endpoints

//lint:file-ignore SA1019 v1 Endpoints are deprecated in 1.33 but still served and read (kubectl describe svc, older clients); Kubernetes keeps writing them too.

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
)

func service(mut ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", UID: "svc-uid", Labels: map[string]string{"tier": "front"}},
		Spec: corev1.ServiceSpec{
			Selector:  map[string]string{"app": "web"},
			ClusterIP: "10.0.0.10",
			Ports: []corev1.ServicePort{
				{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("http")},
			},
		},
	}
	for _, m := range mut {
		m(s)
	}
	return s
}

func pod(name, ip string, ready bool, mut ...func(*corev1.Pod)) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns", UID: types.UID(name + "-uid"), Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
			{Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP},
		}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}},
	}
	for _, m := range mut {
		m(p)
	}
	return p
}

func addr(p *corev1.Pod) corev1.EndpointAddress {
	node := p.Spec.NodeName
	return corev1.EndpointAddress{IP: p.Status.PodIP, NodeName: &node,
		TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, UID: p.UID}}
}

func TestSubsets(t *testing.T) {
	now := metav1.Now()
	a, b, c := pod("a", "10.1.0.1", true), pod("b", "10.1.0.2", false), pod("c", "10.1.0.3", true)
	terminating := pod("t", "10.1.0.4", true, func(p *corev1.Pod) { p.DeletionTimestamp = &now })
	noIP := pod("n", "", true, func(p *corev1.Pod) { p.Status.PodIPs = nil })
	done := pod("d", "10.1.0.5", false, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })
	// A pod whose container calls the named port differently: resolved per pod.
	other := pod("o", "10.1.0.6", true, func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].ContainerPort = 8081 })
	httpPort := func(n int32) []corev1.EndpointPort {
		return []corev1.EndpointPort{{Name: "http", Port: n, Protocol: corev1.ProtocolTCP}}
	}
	http2 := "kubernetes.io/h2c"
	tests := []struct {
		name string
		svc  *corev1.Service
		pods []*corev1.Pod
		want []corev1.EndpointSubset
	}{
		{"ready and not-ready kept apart", service(), []*corev1.Pod{c, b, a},
			[]corev1.EndpointSubset{{Addresses: []corev1.EndpointAddress{addr(a), addr(c)}, NotReadyAddresses: []corev1.EndpointAddress{addr(b)}, Ports: httpPort(8080)}}},
		{"terminating, finished and IP-less pods left out", service(), []*corev1.Pod{a, terminating, noIP, done},
			[]corev1.EndpointSubset{{Addresses: []corev1.EndpointAddress{addr(a)}, Ports: httpPort(8080)}}},
		{"publishNotReadyAddresses lists every pod as ready, terminating ones too",
			service(func(s *corev1.Service) { s.Spec.PublishNotReadyAddresses = true }), []*corev1.Pod{a, b, terminating},
			[]corev1.EndpointSubset{{Addresses: []corev1.EndpointAddress{addr(a), addr(b), addr(terminating)}, Ports: httpPort(8080)}}},
		{"named target port resolved per pod", service(), []*corev1.Pod{a, other},
			[]corev1.EndpointSubset{
				{Addresses: []corev1.EndpointAddress{addr(a)}, Ports: httpPort(8080)},
				{Addresses: []corev1.EndpointAddress{addr(other)}, Ports: httpPort(8081)},
			}},
		{"several ports, numbers and names, with appProtocol", service(func(s *corev1.Service) {
			s.Spec.Ports = append(s.Spec.Ports,
				corev1.ServicePort{Name: "metrics", Port: 9000, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromString("metrics")},
				corev1.ServicePort{Name: "grpc", Port: 9001, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(7000), AppProtocol: &http2},
				corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP, TargetPort: intstr.FromString("http")}, // no UDP port named http
			)
		}), []*corev1.Pod{a},
			[]corev1.EndpointSubset{{Addresses: []corev1.EndpointAddress{addr(a)}, Ports: []corev1.EndpointPort{
				{Name: "grpc", Port: 7000, Protocol: corev1.ProtocolTCP, AppProtocol: &http2},
				{Name: "http", Port: 8080, Protocol: corev1.ProtocolTCP},
				{Name: "metrics", Port: 9090, Protocol: corev1.ProtocolTCP},
			}}}},
		{"hostname when the pod's subdomain is the Service", service(), []*corev1.Pod{pod("h", "10.1.0.7", true, func(p *corev1.Pod) {
			p.Spec.Hostname, p.Spec.Subdomain = "h0", "web"
		})}, []corev1.EndpointSubset{{Addresses: []corev1.EndpointAddress{func() corev1.EndpointAddress {
			x := addr(pod("h", "10.1.0.7", true))
			x.Hostname = "h0"
			return x
		}()}, Ports: httpPort(8080)}}},
		{"headless without ports lists addresses alone", service(func(s *corev1.Service) { s.Spec.ClusterIP, s.Spec.Ports = corev1.ClusterIPNone, nil }),
			[]*corev1.Pod{a}, []corev1.EndpointSubset{{Addresses: []corev1.EndpointAddress{addr(a)}}}},
		{"no pods, no subsets", service(), nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, truncated := Subsets(tt.svc, tt.pods, nil)
			if truncated {
				t.Error("truncated")
			}
			if !apiequality.Semantic.DeepEqual(got, tt.want) {
				t.Errorf("subsets:\n got %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestSubsetsTruncated(t *testing.T) {
	var pods []*corev1.Pod
	for i := range MaxAddresses + 5 {
		pods = append(pods, pod(fmt.Sprintf("p%d", i), fmt.Sprintf("10.2.%d.%d", i/250, i%250), i%2 == 0))
	}
	got, truncated := Subsets(service(), pods, nil)
	if !truncated || len(got) != 1 {
		t.Fatalf("truncated %v, %d subsets", truncated, len(got))
	}
	if n := len(got[0].Addresses); n != (MaxAddresses+5+1)/2 {
		t.Errorf("%d ready addresses kept, want all of them", n)
	}
	if n := len(got[0].Addresses) + len(got[0].NotReadyAddresses); n != MaxAddresses {
		t.Errorf("%d addresses kept", n)
	}
}

// fixture is a controller on a fake clientset whose listers are filled by hand (the
// informers never run): the fake clientset records the writes.
type fixture struct {
	c       *Controller
	kube    *fake.Clientset
	factory informers.SharedInformerFactory
}

func newFixture(t *testing.T, objs ...any) *fixture {
	t.Helper()
	kube := fake.NewClientset()
	factory := informers.NewSharedInformerFactory(kube, 0)
	c, err := New(kube, factory, Options{})
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{c: c, kube: kube, factory: factory}
	for _, o := range objs {
		f.add(t, o)
	}
	return f
}

func (f *fixture) add(t *testing.T, o any) {
	t.Helper()
	var err error
	switch o := o.(type) {
	case *corev1.Service:
		err = f.factory.Core().V1().Services().Informer().GetStore().Add(o)
	case *corev1.Pod:
		err = f.factory.Core().V1().Pods().Informer().GetStore().Add(o)
	case *corev1.Endpoints:
		err = f.factory.Core().V1().Endpoints().Informer().GetStore().Update(o)
		if err == nil {
			_, err = f.kube.Tracker().Get(corev1.SchemeGroupVersion.WithResource("endpoints"), o.Namespace, o.Name)
			if err == nil {
				err = f.kube.Tracker().Update(corev1.SchemeGroupVersion.WithResource("endpoints"), o, o.Namespace)
			} else {
				err = f.kube.Tracker().Add(o)
			}
		}
	}
	if err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) reconcile(t *testing.T) {
	t.Helper()
	if _, err := f.c.Reconcile(context.Background(), "ns/web"); err != nil {
		t.Fatal(err)
	}
}

// writes counts the create, update and delete calls so far.
func (f *fixture) writes() int {
	n := 0
	for _, a := range f.kube.Actions() {
		switch a.GetVerb() {
		case "create", "update", "delete":
			n++
		}
	}
	return n
}

func TestReconcile(t *testing.T) {
	ctx := context.Background()
	svc := service()
	a, b := pod("a", "10.1.0.1", true), pod("b", "10.1.0.2", false)
	f := newFixture(t, svc, a, b)
	f.reconcile(t)
	ep, err := f.kube.CoreV1().Endpoints("ns").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(ep.Subsets) != 1 || len(ep.Subsets[0].Addresses) != 1 || len(ep.Subsets[0].NotReadyAddresses) != 1 {
		t.Fatalf("subsets %+v", ep.Subsets)
	}
	if ep.Labels["tier"] != "front" {
		t.Errorf("labels %v: want the Service's", ep.Labels)
	}

	// Nothing changed: nothing written.
	f.add(t, ep)
	before := f.writes()
	f.reconcile(t)
	if n := f.writes() - before; n != 0 {
		t.Errorf("%d writes when nothing changed: %v", n, f.kube.Actions()[before:])
	}

	// b turns ready: one update.
	f.add(t, pod("b", "10.1.0.2", true))
	f.reconcile(t)
	ep, _ = f.kube.CoreV1().Endpoints("ns").Get(ctx, "web", metav1.GetOptions{})
	if len(ep.Subsets) != 1 || len(ep.Subsets[0].Addresses) != 2 || len(ep.Subsets[0].NotReadyAddresses) != 0 {
		t.Fatalf("after b turned ready: subsets %+v", ep.Subsets)
	}

	// The Service goes: so do its Endpoints.
	if err := f.factory.Core().V1().Services().Informer().GetStore().Delete(svc); err != nil {
		t.Fatal(err)
	}
	f.reconcile(t)
	if _, err := f.kube.CoreV1().Endpoints("ns").Get(ctx, "web", metav1.GetOptions{}); err == nil {
		t.Error("endpoints left after the Service was deleted")
	}
}

func TestSelectorlessServiceLeftAlone(t *testing.T) {
	svc := service(func(s *corev1.Service) { s.Spec.Selector = nil })
	users := &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns"},
		Subsets: []corev1.EndpointSubset{{Addresses: []corev1.EndpointAddress{{IP: "192.0.2.1"}}}}}
	f := newFixture(t, svc, pod("a", "10.1.0.1", true), users)
	before := f.writes()
	f.reconcile(t)
	if n := f.writes() - before; n != 0 {
		t.Errorf("%d writes for a Service without selector", n)
	}
}
