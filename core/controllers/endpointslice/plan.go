package endpointslice

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"berth.dev/berth/core/controllers/internal/podaddr"
)

// plan is what one reconcile writes.
type plan struct {
	create, update, remove []*discoveryv1.EndpointSlice
}

// planFor computes the writes that bring the Service's existing slices (those labelled as
// its, managed by this controller) to the endpoints of pods. Endpoints already in a slice
// stay there; new ones go first into slices being written anyway, then into slices with
// room, then into new slices; emptied slices are deleted, and a Service with no endpoints
// of an address type keeps one empty placeholder slice of it, as Kubernetes does.
func planFor(svc *corev1.Service, pods []*corev1.Pod, existing []*discoveryv1.EndpointSlice, maxPerSlice int) plan {
	var p plan
	byType := map[discoveryv1.AddressType][]*discoveryv1.EndpointSlice{}
	wanted := map[discoveryv1.AddressType]bool{}
	for _, f := range podaddr.Families(svc) {
		wanted[addressType(f)] = true
	}
	for _, s := range existing {
		if !ownedBy(s, svc) || !wanted[s.AddressType] {
			p.remove = append(p.remove, s) // a former Service's of the same name, or a family dropped
			continue
		}
		byType[s.AddressType] = append(byType[s.AddressType], s)
	}
	for _, f := range podaddr.Families(svc) {
		at := addressType(f)
		t := planType(svc, pods, f, byType[at], maxPerSlice)
		p.create = append(p.create, t.create...)
		p.update = append(p.update, t.update...)
		p.remove = append(p.remove, t.remove...)
	}
	return p
}

// group is the endpoints sharing one set of resolved ports.
type group struct {
	ports []discoveryv1.EndpointPort
	eps   map[string]discoveryv1.Endpoint // by address
}

// slot is an existing slice and the endpoints it is to hold.
type slot struct {
	slice   *discoveryv1.EndpointSlice
	eps     []discoveryv1.Endpoint
	changed bool
}

func planType(svc *corev1.Service, pods []*corev1.Pod, family corev1.IPFamily, existing []*discoveryv1.EndpointSlice, maxPerSlice int) plan {
	var p plan
	desired := map[string]*group{}
	for _, pod := range pods {
		// Slices keep terminating pods, marked so, for graceful connection draining.
		if !podaddr.Include(pod, true) {
			continue
		}
		ip := podaddr.IP(pod, family)
		if ip == "" {
			continue
		}
		ports := endpointPorts(svc, pod)
		k := portsKey(ports)
		g := desired[k]
		if g == nil {
			g = &group{ports: ports, eps: map[string]discoveryv1.Endpoint{}}
			desired[k] = g
		}
		if _, dup := g.eps[ip]; !dup {
			g.eps[ip] = podEndpoint(svc, pod, ip)
		}
	}

	existingByKey := map[string][]*discoveryv1.EndpointSlice{}
	for _, s := range existing {
		k := portsKey(s.Ports)
		existingByKey[k] = append(existingByKey[k], s)
	}
	wantLabels := sliceLabels(svc)
	var removed []*discoveryv1.EndpointSlice
	kept := 0
	for _, k := range sortedKeys(existingByKey) {
		if _, ok := desired[k]; !ok {
			removed = append(removed, existingByKey[k]...)
		}
	}
	for _, k := range sortedKeys(desired) {
		g := desired[k]
		placed := map[string]bool{}
		var slots []*slot
		group := existingByKey[k]
		slices.SortFunc(group, func(a, b *discoveryv1.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
		for _, s := range group {
			sl := &slot{slice: s}
			for _, ep := range s.Endpoints {
				if len(ep.Addresses) == 0 {
					continue
				}
				a := ep.Addresses[0]
				if d, ok := g.eps[a]; ok && !placed[a] {
					sl.eps = append(sl.eps, d)
					placed[a] = true
				}
			}
			sl.changed = !apiequality.Semantic.DeepEqual(sl.eps, s.Endpoints)
			slots = append(slots, sl)
		}
		var rest []string
		for a := range g.eps {
			if !placed[a] {
				rest = append(rest, a)
			}
		}
		slices.Sort(rest)
		// Fill slices being written anyway first, then emptied ones (an update instead of a
		// delete and a create), then untouched ones with room.
		rank := func(s *slot) int {
			switch {
			case s.changed && len(s.eps) > 0:
				return 0
			case len(s.eps) == 0:
				return 1
			}
			return 2
		}
		slices.SortStableFunc(slots, func(a, b *slot) int { return cmp.Compare(rank(a), rank(b)) })
		for _, s := range slots {
			for len(rest) > 0 && len(s.eps) < maxPerSlice {
				s.eps = append(s.eps, g.eps[rest[0]])
				rest = rest[1:]
				s.changed = true
			}
		}
		for len(rest) > 0 {
			n := min(len(rest), maxPerSlice)
			s := newSlice(svc, addressType(family), g.ports)
			for _, a := range rest[:n] {
				s.Endpoints = append(s.Endpoints, g.eps[a])
			}
			rest = rest[n:]
			p.create = append(p.create, s)
		}
		for _, s := range slots {
			if len(s.eps) == 0 {
				removed = append(removed, s.slice)
				continue
			}
			kept++
			if s.changed || !apiequality.Semantic.DeepEqual(s.slice.Labels, wantLabels) {
				u := s.slice.DeepCopy()
				u.Endpoints, u.Labels = s.eps, wantLabels
				p.update = append(p.update, u)
			}
		}
	}
	if kept+len(p.create) == 0 {
		if len(removed) == 1 && len(removed[0].Endpoints) == 0 && len(removed[0].Ports) == 0 {
			// The placeholder is there already.
			if s := removed[0]; !apiequality.Semantic.DeepEqual(s.Labels, wantLabels) {
				u := s.DeepCopy()
				u.Labels = wantLabels
				p.update = append(p.update, u)
			}
			removed = nil
		} else {
			p.create = append(p.create, newSlice(svc, addressType(family), []discoveryv1.EndpointPort{}))
		}
	}
	p.remove = append(p.remove, removed...)
	return p
}

// endpointPorts resolves every Service port on the pod, leaving out those it lacks.
func endpointPorts(svc *corev1.Service, pod *corev1.Pod) []discoveryv1.EndpointPort {
	ports := []discoveryv1.EndpointPort{}
	for i := range svc.Spec.Ports {
		sp := &svc.Spec.Ports[i]
		n, err := podaddr.FindPort(pod, sp)
		if err != nil {
			continue
		}
		name, proto := sp.Name, sp.Protocol
		ports = append(ports, discoveryv1.EndpointPort{Name: &name, Port: &n, Protocol: &proto, AppProtocol: sp.AppProtocol})
	}
	return ports
}

// podEndpoint is the pod's endpoint: ready when it serves and is not terminating (or
// always, when the Service publishes not-ready addresses), serving when Ready.
func podEndpoint(svc *corev1.Service, pod *corev1.Pod, ip string) discoveryv1.Endpoint {
	serving := podaddr.Ready(pod)
	terminating := pod.DeletionTimestamp != nil
	ready := svc.Spec.PublishNotReadyAddresses || (serving && !terminating)
	ep := discoveryv1.Endpoint{
		Addresses:  []string{ip},
		Conditions: discoveryv1.EndpointConditions{Ready: &ready, Serving: &serving, Terminating: &terminating},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
	}
	if pod.Spec.NodeName != "" {
		n := pod.Spec.NodeName
		ep.NodeName = &n
	}
	if podaddr.SetHostname(pod, svc) {
		h := pod.Spec.Hostname
		ep.Hostname = &h
	}
	return ep
}

func newSlice(svc *corev1.Service, at discoveryv1.AddressType, ports []discoveryv1.EndpointPort) *discoveryv1.EndpointSlice {
	prefix := svc.Name + "-"
	if len(validation.IsDNS1123Subdomain(prefix+"xxxxx")) != 0 {
		prefix = svc.Name
	}
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName:    prefix,
			Namespace:       svc.Namespace,
			Labels:          sliceLabels(svc),
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(svc, corev1.SchemeGroupVersion.WithKind("Service"))},
		},
		AddressType: at,
		Ports:       ports,
		Endpoints:   []discoveryv1.Endpoint{},
	}
}

// sliceLabels are the Service's labels, its name and this controller's, and
// service.kubernetes.io/headless for a headless Service.
func sliceLabels(svc *corev1.Service) map[string]string {
	out := map[string]string{}
	for k, v := range svc.Labels {
		if k == discoveryv1.LabelServiceName || k == discoveryv1.LabelManagedBy || k == corev1.IsHeadlessService {
			continue
		}
		out[k] = v
	}
	if podaddr.Headless(svc) {
		out[corev1.IsHeadlessService] = ""
	}
	out[discoveryv1.LabelServiceName] = svc.Name
	out[discoveryv1.LabelManagedBy] = ControllerName
	return out
}

func ownedBy(s *discoveryv1.EndpointSlice, svc *corev1.Service) bool {
	for _, o := range s.OwnerReferences {
		if o.UID == svc.UID && o.Kind == "Service" && o.APIVersion == "v1" {
			return true
		}
	}
	return false
}

func addressType(f corev1.IPFamily) discoveryv1.AddressType {
	if f == corev1.IPv6Protocol {
		return discoveryv1.AddressTypeIPv6
	}
	return discoveryv1.AddressTypeIPv4
}

func portsKey(ports []discoveryv1.EndpointPort) string {
	str := func(s *string) string {
		if s == nil {
			return ""
		}
		return *s
	}
	parts := make([]string, 0, len(ports))
	for _, p := range ports {
		var n int32
		if p.Port != nil {
			n = *p.Port
		}
		var proto string
		if p.Protocol != nil {
			proto = string(*p.Protocol)
		}
		parts = append(parts, fmt.Sprintf("%s/%d/%s/%s", str(p.Name), n, proto, str(p.AppProtocol)))
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
