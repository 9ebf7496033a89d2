package apiserver

//lint:file-ignore SA1019 v1 Endpoints are deprecated in 1.33 but still served and read; kube-apiserver keeps writing default/kubernetes's too.

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// The Services every cluster has, kept by the API server as kube-apiserver keeps
// default/kubernetes (and kubeadm adds kube-system/kube-dns):
//
//   - default/kubernetes: the API itself, at the first address of the service CIDR, port
//     443 (https) to the server's port, with an Endpoints and an EndpointSlice naming the
//     server's advertised address. With several servers, the last one started is named; a
//     server bound to loopback leaves it without endpoints (pods could not reach it).
//   - kube-system/kube-dns: the cluster DNS, at the tenth address of the service CIDR
//     (10.96.0.10 by default), ports 53/UDP (dns) and 53/TCP (dns-tcp), without a selector:
//     each node agent running a DNS server adds its own EndpointSlice (core/dns, ADR 0011).
const (
	kubernetesService = "kubernetes"
	kubeDNSService    = "kube-dns"
	// defaultServicesManager is the managed-by label of the kubernetes EndpointSlice.
	defaultServicesManager = "berth-apiserver"
)

// KubernetesServiceIP is the ClusterIP of default/kubernetes: the first address of cidr.
func KubernetesServiceIP(cidr netip.Prefix) netip.Addr { return nthAddr(cidr, 1) }

// DNSServiceIP is the ClusterIP of kube-system/kube-dns: the tenth address of cidr.
func DNSServiceIP(cidr netip.Prefix) netip.Addr { return nthAddr(cidr, 10) }

func nthAddr(cidr netip.Prefix, n int) netip.Addr {
	a := cidr.Masked().Addr()
	for range n {
		a = a.Next()
	}
	return a
}

// ensureDefaultServices makes default/kubernetes and kube-system/kube-dns through the
// server's own API (so that their addresses are claimed as any Service's), retrying until
// it succeeds or ctx ends. host:port is where the API is advertised.
func ensureDefaultServices(ctx context.Context, kubeconfig string, cidr netip.Prefix, host string, port int, log *slog.Logger) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		log.Error("default services: read the admin kubeconfig", "err", err)
		return
	}
	cfg.UserAgent = "berth-apiserver"
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		log.Error("default services: API client", "err", err)
		return
	}
	ip, err := advertiseAddr(host)
	if err != nil {
		log.Error("default services", "err", err)
		return
	}
	for delay := 100 * time.Millisecond; ; delay = min(2*delay, 5*time.Second) {
		err := ensureDNSService(ctx, kube, DNSServiceIP(cidr))
		if err == nil {
			err = ensureKubernetesService(ctx, kube, KubernetesServiceIP(cidr), ip, int32(port))
		}
		if err == nil || ctx.Err() != nil {
			return
		}
		if apierrors.IsInvalid(err) {
			// The address is taken by another Service: retrying will not help.
			log.Error("default services", "err", err)
			return
		}
		log.Info("default services: retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// advertiseAddr is the address that default/kubernetes names: the bind address, or for a
// wildcard bind the host's first non-loopback address.
func advertiseAddr(host string) (netip.Addr, error) {
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("bind address %q is not an IP", host)
	}
	if !ip.IsUnspecified() {
		return ip, nil
	}
	addrs, err := net.InterfaceAddrs()
	if err == nil {
		for _, a := range addrs {
			if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
				return p.Addr(), nil
			}
		}
	}
	return netip.MustParseAddr("127.0.0.1"), nil
}

func ensureKubernetesService(ctx context.Context, kube kubernetes.Interface, clusterIP, ip netip.Addr, port int32) error {
	svcs := kube.CoreV1().Services(metav1.NamespaceDefault)
	svc, err := svcs.Get(ctx, kubernetesService, metav1.GetOptions{})
	want := []corev1.ServicePort{{Name: "https", Protocol: corev1.ProtocolTCP, Port: 443, TargetPort: intstr.FromInt32(port)}}
	switch {
	case apierrors.IsNotFound(err):
		_, err = svcs.Create(ctx, &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: kubernetesService, Labels: map[string]string{"component": "apiserver", "provider": "kubernetes"}},
			Spec: corev1.ServiceSpec{
				Type: corev1.ServiceTypeClusterIP, ClusterIP: clusterIP.String(), Ports: want,
				SessionAffinity: corev1.ServiceAffinityNone,
			},
		}, metav1.CreateOptions{})
	case err == nil && (len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].TargetPort != want[0].TargetPort || svc.Spec.Ports[0].Port != 443):
		svc.Spec.Ports = want
		_, err = svcs.Update(ctx, svc, metav1.UpdateOptions{})
	}
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("service default/kubernetes: %w", err)
	}
	if ip.IsLoopback() {
		// Endpoints may not name loopback addresses, and no pod could reach a server bound
		// there anyway: the Service is left without endpoints.
		return nil
	}

	eps := kube.CoreV1().Endpoints(metav1.NamespaceDefault)
	ep := &corev1.Endpoints{
		// Mirroring to an EndpointSlice is not wanted: the server writes its own below.
		ObjectMeta: metav1.ObjectMeta{Name: kubernetesService, Labels: map[string]string{discoveryv1.LabelSkipMirror: "true"}},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{{IP: ip.String()}},
			Ports:     []corev1.EndpointPort{{Name: "https", Port: port, Protocol: corev1.ProtocolTCP}},
		}},
	}
	if err := upsert(ctx, func() (string, error) {
		cur, err := eps.Get(ctx, kubernetesService, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if len(cur.Subsets) == 1 && len(cur.Subsets[0].Addresses) == 1 && cur.Subsets[0].Addresses[0].IP == ip.String() &&
			len(cur.Subsets[0].Ports) == 1 && cur.Subsets[0].Ports[0].Port == port {
			return "same", nil
		}
		return cur.ResourceVersion, nil
	}, func() error {
		_, err := eps.Create(ctx, ep, metav1.CreateOptions{})
		return err
	}, func(rv string) error {
		ep.ResourceVersion = rv
		_, err := eps.Update(ctx, ep, metav1.UpdateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("endpoints default/kubernetes: %w", err)
	}

	slices := kube.DiscoveryV1().EndpointSlices(metav1.NamespaceDefault)
	family := discoveryv1.AddressTypeIPv4
	if ip.Is6() {
		family = discoveryv1.AddressTypeIPv6
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: kubernetesService, Labels: map[string]string{
			discoveryv1.LabelServiceName: kubernetesService, discoveryv1.LabelManagedBy: defaultServicesManager,
		}},
		AddressType: family,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{ip.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr.To("https"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(port)}},
	}
	if err := upsert(ctx, func() (string, error) {
		cur, err := slices.Get(ctx, kubernetesService, metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if cur.AddressType == family && len(cur.Endpoints) == 1 && len(cur.Endpoints[0].Addresses) == 1 &&
			cur.Endpoints[0].Addresses[0] == ip.String() && len(cur.Ports) == 1 && ptr.Deref(cur.Ports[0].Port, 0) == port {
			return "same", nil
		}
		return cur.ResourceVersion, nil
	}, func() error {
		_, err := slices.Create(ctx, slice, metav1.CreateOptions{})
		return err
	}, func(rv string) error {
		slice.ResourceVersion = rv
		_, err := slices.Update(ctx, slice, metav1.UpdateOptions{})
		return err
	}); err != nil {
		return fmt.Errorf("endpointslice default/kubernetes: %w", err)
	}
	return nil
}

// upsert creates an object when get finds none, updates it when get returns its
// resourceVersion, and leaves it when get says "same".
func upsert(ctx context.Context, get func() (string, error), create func() error, update func(rv string) error) error {
	rv, err := get()
	switch {
	case apierrors.IsNotFound(err):
		return create()
	case err != nil:
		return err
	case rv == "same":
		return nil
	}
	return update(rv)
}

// ensureDNSService creates kube-system/kube-dns when missing; one that exists is left as
// it is (an administrator may have changed it).
func ensureDNSService(ctx context.Context, kube kubernetes.Interface, clusterIP netip.Addr) error {
	svcs := kube.CoreV1().Services(metav1.NamespaceSystem)
	_, err := svcs.Get(ctx, kubeDNSService, metav1.GetOptions{})
	if err == nil {
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("service kube-system/kube-dns: %w", err)
	}
	_, err = svcs.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: kubeDNSService, Labels: map[string]string{
			"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true", "kubernetes.io/name": "berth-dns",
		}},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: clusterIP.String(), SessionAffinity: corev1.ServiceAffinityNone,
			Ports: []corev1.ServicePort{
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(53)},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("service kube-system/kube-dns: %w", err)
	}
	return nil
}
