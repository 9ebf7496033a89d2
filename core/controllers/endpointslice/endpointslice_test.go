package endpointslice

import (
	"context"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

func service(mut ...func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", UID: "svc-uid", Labels: map[string]string{"tier": "front"}},
		Spec: corev1.ServiceSpec{
			Selector:   map[string]string{"app": "web"},
			ClusterIP:  "10.0.0.10",
			IPFamilies: []corev1.IPFamily{corev1.IPv4Protocol},
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

// fixture is a controller on a fake clientset whose listers are filled by hand (the
// informers never run). The fake clientset does not implement generateName: a reactor
// names the slices it creates.
type fixture struct {
	c       *Controller
	kube    *fake.Clientset
	factory informers.SharedInformerFactory
}

func newFixture(t *testing.T, objs ...any) *fixture {
	t.Helper()
	kube := fake.NewClientset()
	n := 0
	kube.PrependReactor("create", "endpointslices", func(a k8stesting.Action) (bool, runtime.Object, error) {
		s := a.(k8stesting.CreateAction).GetObject().(*discoveryv1.EndpointSlice)
		if s.Name == "" {
			n++
			s.Name = fmt.Sprintf("%s%05d", s.GenerateName, n)
		}
		return false, nil, nil
	})
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
		err = f.factory.Core().V1().Services().Informer().GetStore().Update(o)
	case *corev1.Pod:
		err = f.factory.Core().V1().Pods().Informer().GetStore().Update(o)
	}
	if err != nil {
		t.Fatal(err)
	}
}

// sync reconciles, then shows the informer what the fake API server holds, as the watch
// would.
func (f *fixture) sync(t *testing.T) []discoveryv1.EndpointSlice {
	t.Helper()
	if _, err := f.c.Reconcile(context.Background(), "ns/web"); err != nil {
		t.Fatal(err)
	}
	list, err := f.kube.DiscoveryV1().EndpointSlices("ns").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var objs []any
	for i := range list.Items {
		objs = append(objs, &list.Items[i])
	}
	if err := f.factory.Discovery().V1().EndpointSlices().Informer().GetStore().Replace(objs, ""); err != nil {
		t.Fatal(err)
	}
	return list.Items
}

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

// endpoints maps each listed address to its conditions, over all the slices.
func endpoints(slices []discoveryv1.EndpointSlice) map[string]discoveryv1.EndpointConditions {
	out := map[string]discoveryv1.EndpointConditions{}
	for _, s := range slices {
		for _, ep := range s.Endpoints {
			out[ep.Addresses[0]] = ep.Conditions
		}
	}
	return out
}

func TestSliceContents(t *testing.T) {
	svc := service()
	a := pod("a", "10.1.0.1", true, func(p *corev1.Pod) { p.Spec.Hostname, p.Spec.Subdomain = "a0", "web" })
	f := newFixture(t, svc, a)
	got := f.sync(t)
	if len(got) != 1 {
		t.Fatalf("%d slices", len(got))
	}
	s := got[0]
	if s.Labels[discoveryv1.LabelServiceName] != "web" || s.Labels[discoveryv1.LabelManagedBy] != ControllerName || s.Labels["tier"] != "front" {
		t.Errorf("labels %v", s.Labels)
	}
	if ref := metav1.GetControllerOf(&s); ref == nil || ref.UID != svc.UID || ref.Kind != "Service" || ref.APIVersion != "v1" {
		t.Errorf("owner %+v", ref)
	}
	if s.AddressType != discoveryv1.AddressTypeIPv4 || s.GenerateName != "web-" {
		t.Errorf("addressType %s, generateName %q", s.AddressType, s.GenerateName)
	}
	if len(s.Ports) != 1 || *s.Ports[0].Name != "http" || *s.Ports[0].Port != 8080 || *s.Ports[0].Protocol != corev1.ProtocolTCP {
		t.Errorf("ports %+v", s.Ports)
	}
	ep := s.Endpoints[0]
	if *ep.NodeName != "node-1" || *ep.Hostname != "a0" || ep.TargetRef.Kind != "Pod" || ep.TargetRef.Name != "a" || ep.TargetRef.UID != a.UID {
		t.Errorf("endpoint %+v", ep)
	}
}

func TestConditions(t *testing.T) {
	now := metav1.Now()
	terminating := func(p *corev1.Pod) { p.DeletionTimestamp = &now }
	pods := []*corev1.Pod{
		pod("ready", "10.1.0.1", true),
		pod("unready", "10.1.0.2", false),
		pod("terminating", "10.1.0.3", true, terminating),
		pod("noip", "", true, func(p *corev1.Pod) { p.Status.PodIPs = nil }),
		pod("failed", "10.1.0.4", true, func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }),
	}
	type cond struct{ ready, serving, terminating bool }
	tests := []struct {
		name    string
		publish bool
		want    map[string]cond
	}{
		{"default", false, map[string]cond{"10.1.0.1": {true, true, false}, "10.1.0.2": {false, false, false}, "10.1.0.3": {false, true, true}}},
		{"publishNotReadyAddresses", true, map[string]cond{"10.1.0.1": {true, true, false}, "10.1.0.2": {true, false, false}, "10.1.0.3": {true, true, true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs := []any{service(func(s *corev1.Service) { s.Spec.PublishNotReadyAddresses = tt.publish })}
			for _, p := range pods {
				objs = append(objs, p)
			}
			got := endpoints(newFixture(t, objs...).sync(t))
			if len(got) != len(tt.want) {
				t.Errorf("%d endpoints, want %d: %v", len(got), len(tt.want), got)
			}
			for ip, w := range tt.want {
				c, ok := got[ip]
				if !ok {
					t.Errorf("%s missing", ip)
					continue
				}
				if g := (cond{*c.Ready, *c.Serving, *c.Terminating}); g != w {
					t.Errorf("%s: conditions %+v, want %+v", ip, g, w)
				}
			}
		})
	}
}

func TestPortsPerPod(t *testing.T) {
	h2c := "kubernetes.io/h2c"
	svc := service(func(s *corev1.Service) {
		s.Spec.Ports = append(s.Spec.Ports,
			corev1.ServicePort{Name: "grpc", Port: 9001, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(7000), AppProtocol: &h2c})
	})
	// b calls its http port differently: it needs a slice of its own.
	f := newFixture(t, svc, pod("a", "10.1.0.1", true),
		pod("b", "10.1.0.2", true, func(p *corev1.Pod) { p.Spec.Containers[0].Ports[0].ContainerPort = 8081 }))
	got := f.sync(t)
	if len(got) != 2 {
		t.Fatalf("%d slices, want one per port set", len(got))
	}
	for _, s := range got {
		if len(s.Ports) != 2 || len(s.Endpoints) != 1 {
			t.Fatalf("slice ports %+v, endpoints %d", s.Ports, len(s.Endpoints))
		}
		want := map[string]int32{"10.1.0.1": 8080, "10.1.0.2": 8081}[s.Endpoints[0].Addresses[0]]
		for _, p := range s.Ports {
			switch *p.Name {
			case "http":
				if *p.Port != want {
					t.Errorf("%s: http port %d, want %d", s.Endpoints[0].Addresses[0], *p.Port, want)
				}
			case "grpc":
				if *p.Port != 7000 || p.AppProtocol == nil || *p.AppProtocol != h2c {
					t.Errorf("grpc port %+v", p)
				}
			}
		}
	}
}

func TestSlicingAndNoWriteWhenUnchanged(t *testing.T) {
	objs := []any{service()}
	for i := range 250 {
		objs = append(objs, pod(fmt.Sprintf("p%03d", i), fmt.Sprintf("10.1.%d.%d", i/200, i%200+1), true))
	}
	f := newFixture(t, objs...)
	got := f.sync(t)
	if len(got) != 3 {
		t.Fatalf("%d slices for 250 endpoints, want 3", len(got))
	}
	for _, s := range got {
		if len(s.Endpoints) > MaxEndpointsPerSlice {
			t.Errorf("slice %s holds %d endpoints", s.Name, len(s.Endpoints))
		}
	}
	if n := len(endpoints(got)); n != 250 {
		t.Errorf("%d distinct endpoints, want 250", n)
	}

	before := f.writes()
	f.sync(t)
	if n := f.writes() - before; n != 0 {
		t.Errorf("%d writes when nothing changed", n)
	}

	// One pod turns unready: one slice rewritten, no other write.
	f.add(t, pod("p007", "10.1.0.8", false))
	before = f.writes()
	got = f.sync(t)
	if n := f.writes() - before; n != 1 {
		t.Errorf("%d writes for one changed pod, want 1", n)
	}
	if c := endpoints(got)["10.1.0.8"]; *c.Ready {
		t.Error("p007 still ready")
	}

	// A pod goes away; a new one fills its place without a new slice.
	if err := f.factory.Core().V1().Pods().Informer().GetStore().Delete(pod("p010", "10.1.0.11", true)); err != nil {
		t.Fatal(err)
	}
	f.add(t, pod("new", "10.9.0.1", true))
	got = f.sync(t)
	if len(got) != 3 || len(endpoints(got)) != 250 {
		t.Errorf("%d slices, %d endpoints after replacing a pod", len(got), len(endpoints(got)))
	}
	if _, ok := endpoints(got)["10.1.0.11"]; ok {
		t.Error("the deleted pod is still listed")
	}
}

func TestPlaceholderAndDeletion(t *testing.T) {
	svc := service()
	f := newFixture(t, svc)
	got := f.sync(t)
	if len(got) != 1 || len(got[0].Endpoints) != 0 || len(got[0].Ports) != 0 {
		t.Fatalf("want one empty placeholder slice, got %+v", got)
	}
	placeholder := got[0].Name

	before := f.writes()
	f.sync(t)
	if n := f.writes() - before; n != 0 {
		t.Errorf("%d writes for an unchanged placeholder", n)
	}

	// A pod replaces the placeholder.
	f.add(t, pod("a", "10.1.0.1", true))
	got = f.sync(t)
	if len(got) != 1 || got[0].Name == placeholder || len(got[0].Endpoints) != 1 {
		t.Fatalf("after a pod came: %+v", got)
	}

	// A Service without selector is left alone.
	f.add(t, service(func(s *corev1.Service) { s.Spec.Selector = nil }))
	before = f.writes()
	f.sync(t)
	if n := f.writes() - before; n != 0 {
		t.Errorf("%d writes for a Service without selector", n)
	}

	// The Service goes: so do its slices.
	if err := f.factory.Core().V1().Services().Informer().GetStore().Delete(svc); err != nil {
		t.Fatal(err)
	}
	if got := f.sync(t); len(got) != 0 {
		t.Errorf("%d slices left after the Service was deleted", len(got))
	}
}
