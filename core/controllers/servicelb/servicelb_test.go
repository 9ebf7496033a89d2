package servicelb

import (
	"context"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

func node(name, ip string, ready bool) *corev1.Node {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status: corev1.NodeStatus{
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status}},
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeHostName, Address: name}, {Type: corev1.NodeInternalIP, Address: ip}},
		},
	}
}

func TestReconcile(t *testing.T) {
	lb := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "lb"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer}}
	classed := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "classed"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, LoadBalancerClass: ptr.To("example.com/other")}}
	former := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "former"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP},
		Status: corev1.ServiceStatus{LoadBalancer: corev1.LoadBalancerStatus{Ingress: []corev1.LoadBalancerIngress{{IP: "192.0.2.1"}}}}}
	objs := []*corev1.Node{node("b", "192.0.2.2", true), node("a", "192.0.2.1", true), node("c", "192.0.2.3", false)}
	kube := fake.NewClientset(lb, classed, former, objs[0], objs[1], objs[2])
	factory := informers.NewSharedInformerFactory(kube, 0)
	c, err := New(kube, factory, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	defer func() {
		cancel()
		factory.Shutdown()
	}()
	for _, key := range []string{"ns/lb", "ns/classed", "ns/former", "ns/missing"} {
		if _, err := c.Reconcile(ctx, key); err != nil {
			t.Errorf("%s: %v", key, err)
		}
	}
	get := func(name string) []corev1.LoadBalancerIngress {
		s, err := kube.CoreV1().Services("ns").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s.Status.LoadBalancer.Ingress
	}
	if in := get("lb"); len(in) != 2 || in[0].IP != "192.0.2.1" || in[1].IP != "192.0.2.2" {
		t.Errorf("lb ingress %+v, want the two Ready nodes' InternalIPs, sorted", in)
	}
	if in := get("classed"); len(in) != 0 {
		t.Errorf("a Service of another load balancer class got %+v", in)
	}
	if in := get("former"); len(in) != 0 {
		t.Errorf("a Service that is no LoadBalancer kept %+v", in)
	}
}
