// Package kubeclient is the API client of the node's components (the node agent, its
// proxy, cluster DNS server, Ingress controller and CSI sidecars): the few typed API
// groups they use, and shared informers built straight from those groups' List and Watch.
//
// It exists for the size of bin/berth-agent. client-go's Clientset and
// SharedInformerFactory reference every API group's typed client, informer, lister and
// apply configurations, so the linker keeps them all although the node uses five groups:
// 14 MB of the 87 MB binary, and since the kernel maps code in by fault-around, 8 MB of
// every node agent's RSS (measured with 50 pods). A *kubernetes.Clientset and client-go's
// fake clientset satisfy Interface unchanged, so callers that have one anyway (`berth up`,
// tests) pass it as it is.
package kubeclient

import (
	"errors"

	coordinationv1client "k8s.io/client-go/kubernetes/typed/coordination/v1"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	discoveryv1client "k8s.io/client-go/kubernetes/typed/discovery/v1"
	networkingv1client "k8s.io/client-go/kubernetes/typed/networking/v1"
	storagev1client "k8s.io/client-go/kubernetes/typed/storage/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

// Interface is the part of kubernetes.Interface the node's components use, with the same
// method names and types.
type Interface interface {
	CoreV1() corev1client.CoreV1Interface
	CoordinationV1() coordinationv1client.CoordinationV1Interface
	DiscoveryV1() discoveryv1client.DiscoveryV1Interface
	NetworkingV1() networkingv1client.NetworkingV1Interface
	StorageV1() storagev1client.StorageV1Interface
}

// Clientset is the typed clients of Interface's groups over one connection pool and one
// rate limiter, as kubernetes.Clientset has them for every group.
type Clientset struct {
	coreV1         *corev1client.CoreV1Client
	coordinationV1 *coordinationv1client.CoordinationV1Client
	discoveryV1    *discoveryv1client.DiscoveryV1Client
	networkingV1   *networkingv1client.NetworkingV1Client
	storageV1      *storagev1client.StorageV1Client
}

// CoreV1 is the core/v1 client.
func (c *Clientset) CoreV1() corev1client.CoreV1Interface { return c.coreV1 }

// CoordinationV1 is the coordination.k8s.io/v1 client.
func (c *Clientset) CoordinationV1() coordinationv1client.CoordinationV1Interface {
	return c.coordinationV1
}

// DiscoveryV1 is the discovery.k8s.io/v1 client.
func (c *Clientset) DiscoveryV1() discoveryv1client.DiscoveryV1Interface { return c.discoveryV1 }

// NetworkingV1 is the networking.k8s.io/v1 client.
func (c *Clientset) NetworkingV1() networkingv1client.NetworkingV1Interface { return c.networkingV1 }

// StorageV1 is the storage.k8s.io/v1 client.
func (c *Clientset) StorageV1() storagev1client.StorageV1Interface { return c.storageV1 }

// NewForConfig makes the clients of c as kubernetes.NewForConfig does: one HTTP client, so
// that the groups share connections, and one token bucket of c's QPS and Burst, so that
// together they keep to the budget c gives.
func NewForConfig(c *rest.Config) (*Clientset, error) {
	cfg := *c
	if cfg.UserAgent == "" {
		cfg.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	httpClient, err := rest.HTTPClientFor(&cfg)
	if err != nil {
		return nil, err
	}
	if cfg.RateLimiter == nil && cfg.QPS > 0 {
		if cfg.Burst <= 0 {
			return nil, errors.New("burst is required to be greater than 0 when RateLimiter is not set and QPS is set to greater than 0")
		}
		cfg.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(cfg.QPS, cfg.Burst)
	}
	var cs Clientset
	if cs.coreV1, err = corev1client.NewForConfigAndClient(&cfg, httpClient); err != nil {
		return nil, err
	}
	if cs.coordinationV1, err = coordinationv1client.NewForConfigAndClient(&cfg, httpClient); err != nil {
		return nil, err
	}
	if cs.discoveryV1, err = discoveryv1client.NewForConfigAndClient(&cfg, httpClient); err != nil {
		return nil, err
	}
	if cs.networkingV1, err = networkingv1client.NewForConfigAndClient(&cfg, httpClient); err != nil {
		return nil, err
	}
	if cs.storageV1, err = storagev1client.NewForConfigAndClient(&cfg, httpClient); err != nil {
		return nil, err
	}
	return &cs, nil
}
