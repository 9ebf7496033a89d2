package dns

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/kubeclient"
)

// The kube-dns Service: the API server keeps it (without a selector, at the tenth address
// of the service CIDR), and each node whose agent runs a DNS server adds itself to it with
// an EndpointSlice of its own, so that no two agents write the same object.
const (
	ServiceNamespace = "kube-system"
	ServiceName      = "kube-dns"
	// ManagedBy is the endpointslice.kubernetes.io/managed-by label of the nodes' slices.
	ManagedBy = "berth-agent"
)

// SliceName is the name of the EndpointSlice that node keeps in the kube-dns Service.
func SliceName(node string) string { return ServiceName + "-" + node }

// Publish keeps the node's EndpointSlice of the kube-dns Service, naming addr (host:port,
// where the node's DNS server listens), until ctx ends; then it deletes it, so that the
// Service stops sending queries to a node that no longer answers. It re-checks the slice
// every interval (30 s when zero), recreating it when someone removed it. Errors of the
// API are logged and retried; only a bad addr is returned.
func Publish(ctx context.Context, kube kubeclient.Interface, node, addr string, interval time.Duration, log *slog.Logger) error {
	slice, err := nodeSlice(node, addr)
	if err != nil {
		return err
	}
	if interval <= 0 {
		interval = 30 * time.Second
	}
	if n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{}); err == nil {
		// Owned by the Node: a node deleted for good takes its slice with it.
		slice.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID}}
	}
	api := kube.DiscoveryV1().EndpointSlices(ServiceNamespace)
	ensure := func() {
		cur, err := api.Get(ctx, slice.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = api.Create(ctx, slice, metav1.CreateOptions{})
		case err == nil && !sameEndpoints(cur, slice):
			upd := slice.DeepCopy()
			upd.ResourceVersion = cur.ResourceVersion
			_, err = api.Update(ctx, upd, metav1.UpdateOptions{})
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("dns: publish the node's kube-dns endpoint", "slice", ServiceNamespace+"/"+slice.Name, "err", err)
		}
	}
	ensure()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			err := api.Delete(dctx, slice.Name, metav1.DeleteOptions{})
			cancel()
			if err != nil && !apierrors.IsNotFound(err) {
				// Not a failure of the agent's: the slice stays until the node is back
				// (and rewrites it) or is deleted (and takes it along as its owner).
				log.Warn("dns: remove the node's kube-dns endpoint", "slice", ServiceNamespace+"/"+slice.Name, "err", err)
			}
			return nil
		case <-tick.C:
			ensure()
		}
	}
}

func nodeSlice(node, addr string) (*discoveryv1.EndpointSlice, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dns: endpoint address %q: %w", addr, err)
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return nil, fmt.Errorf("dns: endpoint address %q: the host is not an IP", addr)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("dns: endpoint address %q: bad port", addr)
	}
	family := discoveryv1.AddressTypeIPv4
	if ip.Is6() {
		family = discoveryv1.AddressTypeIPv6
	}
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: SliceName(node), Namespace: ServiceNamespace,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: ServiceName,
				discoveryv1.LabelManagedBy:   ManagedBy,
			},
		},
		AddressType: family,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{ip.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			NodeName:   ptr.To(node),
		}},
		Ports: []discoveryv1.EndpointPort{
			{Name: ptr.To("dns"), Protocol: ptr.To(corev1.ProtocolUDP), Port: ptr.To(int32(port))},
			{Name: ptr.To("dns-tcp"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(int32(port))},
		},
	}, nil
}

func sameEndpoints(a, b *discoveryv1.EndpointSlice) bool {
	if a.AddressType != b.AddressType || len(a.Endpoints) != 1 || len(a.Ports) != len(b.Ports) ||
		a.Labels[discoveryv1.LabelServiceName] != ServiceName {
		return false
	}
	if len(a.Endpoints[0].Addresses) != 1 || a.Endpoints[0].Addresses[0] != b.Endpoints[0].Addresses[0] {
		return false
	}
	for i := range a.Ports {
		if ptr.Deref(a.Ports[i].Port, 0) != ptr.Deref(b.Ports[i].Port, 0) {
			return false
		}
	}
	return true
}
