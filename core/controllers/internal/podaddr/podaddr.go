// Package podaddr holds what the endpoints and endpointslice controllers both decide about a
// pod behind a Service: which Services select it, whether it is listed at all, its address for an IP family, the port
// a Service port reaches on it, and its readiness. It follows Kubernetes'
// k8s.io/endpointslice/util and pkg/api/v1/pod.
package podaddr

import (
	"fmt"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Include reports whether pod belongs in a Service's endpoints at all: it has an IP and has
// not finished (Succeeded, or Failed), and it is not terminating unless includeTerminating.
func Include(pod *corev1.Pod, includeTerminating bool) bool {
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return false
	}
	if pod.Status.PodIP == "" && len(pod.Status.PodIPs) == 0 {
		return false
	}
	return includeTerminating || pod.DeletionTimestamp == nil
}

// Ready reports whether the pod's Ready condition is True.
func Ready(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// IP returns the pod's first address of the family ("" when it has none).
func IP(pod *corev1.Pod, family corev1.IPFamily) string {
	ips := make([]string, 0, 1+len(pod.Status.PodIPs))
	for _, ip := range pod.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 {
		ips = append(ips, pod.Status.PodIP)
	}
	for _, s := range ips {
		a, err := netip.ParseAddr(s)
		if err != nil {
			continue
		}
		if (family == corev1.IPv6Protocol) == (a.Is6() && !a.Is4In6()) {
			return s
		}
	}
	return ""
}

// Families returns the IP families the Service's endpoints are listed for: its
// spec.ipFamilies, or IPv4 when the API server left them empty.
func Families(svc *corev1.Service) []corev1.IPFamily {
	if len(svc.Spec.IPFamilies) == 0 {
		return []corev1.IPFamily{corev1.IPv4Protocol}
	}
	return svc.Spec.IPFamilies
}

// SetHostname reports whether the pod's address carries its hostname: the pod names the
// Service as its subdomain (the DNS records of a headless Service use it).
func SetHostname(pod *corev1.Pod, svc *corev1.Service) bool {
	return pod.Spec.Hostname != "" && pod.Spec.Subdomain == svc.Name && pod.Namespace == svc.Namespace
}

// Headless reports whether the Service has no cluster IP.
func Headless(svc *corev1.Service) bool {
	return svc.Spec.ClusterIP == corev1.ClusterIPNone
}

// FindPort resolves the Service port's targetPort on the pod: a number is taken as is, a
// name is looked up among the ports of the pod's containers and sidecars (init containers
// that always restart) with the same protocol.
func FindPort(pod *corev1.Pod, sp *corev1.ServicePort) (int32, error) {
	if sp.TargetPort.Type == intstr.Int {
		if sp.TargetPort.IntVal == 0 { // not defaulted: the Service port itself
			return sp.Port, nil
		}
		return sp.TargetPort.IntVal, nil
	}
	name := sp.TargetPort.StrVal
	proto := sp.Protocol
	if proto == "" {
		proto = corev1.ProtocolTCP
	}
	match := func(cs []corev1.Container, sidecarsOnly bool) (int32, bool) {
		for _, c := range cs {
			if sidecarsOnly && (c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways) {
				continue
			}
			for _, p := range c.Ports {
				pp := p.Protocol
				if pp == "" {
					pp = corev1.ProtocolTCP
				}
				if p.Name == name && pp == proto {
					return p.ContainerPort, true
				}
			}
		}
		return 0, false
	}
	if n, ok := match(pod.Spec.Containers, false); ok {
		return n, nil
	}
	if n, ok := match(pod.Spec.InitContainers, true); ok {
		return n, nil
	}
	return 0, fmt.Errorf("pod %s/%s has no %s port named %q", pod.Namespace, pod.Name, proto, name)
}

// ServicesFor returns the keys (namespace/name) of the Services whose selectors pick any of
// the pods given (the old and new versions of an updated pod, whose labels may differ; a
// deleted pod's tombstone), so that a pod change wakes exactly the Services it concerns.
func ServicesFor(services corelisters.ServiceLister, objs ...any) []string {
	var keys []string
	for _, obj := range objs {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		pod, ok := obj.(*corev1.Pod)
		if !ok {
			continue
		}
		svcs, _ := services.Services(pod.Namespace).List(labels.Everything())
		for _, s := range svcs {
			if s.Spec.Selector != nil && labels.SelectorFromValidatedSet(s.Spec.Selector).Matches(labels.Set(pod.Labels)) {
				if key := s.Namespace + "/" + s.Name; !slices.Contains(keys, key) {
					keys = append(keys, key)
				}
			}
		}
	}
	return keys
}
