package ingress

import (
	"context"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/core/internal/testserver"
)

// TestStatusMerge: nodes add their own address to an Ingress's status without dropping
// each other's, leave it alone when it is there, and take it back from an Ingress that is
// no longer theirs. On the real API server, whose resourceVersion checks the merge relies on.
func TestStatusMerge(t *testing.T) {
	ctx := context.Background()
	kube := testserver.Start(t).Kube
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"}, Spec: networkingv1.IngressSpec{
		DefaultBackend: &networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "web", Port: networkingv1.ServiceBackendPort{Number: 80}}}}}
	if _, err := kube.NetworkingV1().Ingresses("default").Create(ctx, ing, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	writer := func(node, ip string) *statusWriter {
		c, err := New(Config{Kube: kube, NodeName: node, NodeIP: ip})
		if err != nil {
			t.Fatal(err)
		}
		return &statusWriter{c: c}
	}
	current := func() *networkingv1.Ingress {
		got, err := kube.NetworkingV1().Ingresses("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	ips := func() []string {
		var out []string
		for _, i := range current().Status.LoadBalancer.Ingress {
			out = append(out, i.IP)
		}
		return out
	}
	a, b := writer("a", "10.0.0.2"), writer("b", "10.0.0.1")
	// Both work from the same stale copy, as two nodes' informers would.
	stale := current()
	if err := a.sync(ctx, []*networkingv1.Ingress{stale}, nil); err != nil {
		t.Fatal(err)
	}
	if err := b.sync(ctx, []*networkingv1.Ingress{stale}, nil); err != nil {
		t.Fatal(err)
	}
	if got := ips(); len(got) != 2 || got[0] != "10.0.0.1" || got[1] != "10.0.0.2" {
		t.Fatalf("status after two nodes: %v, want both addresses, sorted", got)
	}
	before := current().ResourceVersion
	if err := a.sync(ctx, []*networkingv1.Ingress{current()}, nil); err != nil {
		t.Fatal(err)
	}
	if current().ResourceVersion != before {
		t.Error("a node whose address is there already wrote the status again")
	}
	if err := a.sync(ctx, nil, []*networkingv1.Ingress{current()}); err != nil {
		t.Fatal(err)
	}
	if got := ips(); len(got) != 1 || got[0] != "10.0.0.1" {
		t.Errorf("status after node a let go: %v, want only b's address", got)
	}
}
