package dns

import (
	"context"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

// TestPublish: the node's slice names its address under kube-dns, comes back when
// removed, and goes when the agent stops.
func TestPublish(t *testing.T) {
	kube := fake.NewClientset(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", UID: "uid-n1"}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Publish(ctx, kube, "n1", "192.0.2.2:53", 20*time.Millisecond, slog.Default()) }()
	api := kube.DiscoveryV1().EndpointSlices(ServiceNamespace)
	get := func() *discoveryv1.EndpointSlice {
		for range 200 {
			if s, err := api.Get(context.Background(), "kube-dns-n1", metav1.GetOptions{}); err == nil {
				return s
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("no slice kube-dns-n1")
		return nil
	}
	s := get()
	if s.Labels[discoveryv1.LabelServiceName] != ServiceName || s.Labels[discoveryv1.LabelManagedBy] != ManagedBy ||
		s.Endpoints[0].Addresses[0] != "192.0.2.2" || *s.Ports[0].Port != 53 || *s.Ports[1].Protocol != corev1.ProtocolTCP ||
		len(s.OwnerReferences) != 1 || s.OwnerReferences[0].UID != "uid-n1" {
		t.Errorf("slice %+v", s)
	}
	if err := api.Delete(context.Background(), "kube-dns-n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	get() // recreated
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if _, err := api.Get(context.Background(), "kube-dns-n1", metav1.GetOptions{}); err == nil {
		t.Error("the slice outlived the agent")
	}
}
