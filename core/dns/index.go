package dns

import (
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// index is what the server answers from: the Services, EndpointSlices and Namespaces of
// the cluster, kept up to date by informer event handlers, so that an answer changes as
// soon as the watch event arrives.
type index struct {
	mu         sync.RWMutex
	services   map[string]*corev1.Service                       // by ns/name
	slices     map[string]map[string]*discoveryv1.EndpointSlice // by the service's ns/name, then the slice's name
	sliceOwner map[string]string                                // slice ns/name -> the service key it is filed under
	namespaces map[string]bool
	// reverse maps a ClusterIP to the name of its Service, for PTR.
	reverse map[netip.Addr]string // ip -> "svc.ns"
	// serial is the SOA serial: the Unix time of the last change.
	serial atomic.Uint32
	// synced reports whether every informer has listed once; allSynced caches a yes.
	synced    []cache.InformerSynced
	allSynced atomic.Bool
}

func newIndex() *index {
	ix := &index{
		services:   map[string]*corev1.Service{},
		slices:     map[string]map[string]*discoveryv1.EndpointSlice{},
		sliceOwner: map[string]string{},
		namespaces: map[string]bool{},
		reverse:    map[netip.Addr]string{},
	}
	ix.touch()
	return ix
}

func (ix *index) touch() { ix.serial.Store(uint32(time.Now().Unix())) }

func (ix *index) hasSynced() bool {
	if ix.allSynced.Load() {
		return true
	}
	for _, s := range ix.synced {
		if !s() {
			return false
		}
	}
	ix.allSynced.Store(true)
	return true
}

// unwrap returns the object of an event, looking through a tombstone.
func unwrap(obj any) any {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		return t.Obj
	}
	return obj
}

func (ix *index) setService(svc *corev1.Service) {
	key := svc.Namespace + "/" + svc.Name
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if old := ix.services[key]; old != nil {
		ix.dropReverse(old)
	}
	ix.services[key] = svc
	for _, ip := range svc.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(ip); err == nil {
			ix.reverse[a] = svc.Name + "." + svc.Namespace
		}
	}
	ix.touch()
}

func (ix *index) deleteService(svc *corev1.Service) {
	key := svc.Namespace + "/" + svc.Name
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if old := ix.services[key]; old != nil {
		ix.dropReverse(old)
	}
	delete(ix.services, key)
	ix.touch()
}

// dropReverse forgets svc's ClusterIPs; ix.mu is held.
func (ix *index) dropReverse(svc *corev1.Service) {
	for _, ip := range svc.Spec.ClusterIPs {
		if a, err := netip.ParseAddr(ip); err == nil && ix.reverse[a] == svc.Name+"."+svc.Namespace {
			delete(ix.reverse, a)
		}
	}
}

func (ix *index) setSlice(s *discoveryv1.EndpointSlice) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.removeSlice(s.Namespace + "/" + s.Name)
	svc := s.Labels[discoveryv1.LabelServiceName]
	if svc == "" {
		return
	}
	owner := s.Namespace + "/" + svc
	m := ix.slices[owner]
	if m == nil {
		m = map[string]*discoveryv1.EndpointSlice{}
		ix.slices[owner] = m
	}
	m[s.Name] = s
	ix.sliceOwner[s.Namespace+"/"+s.Name] = owner
	ix.touch()
}

func (ix *index) deleteSlice(s *discoveryv1.EndpointSlice) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	ix.removeSlice(s.Namespace + "/" + s.Name)
	ix.touch()
}

// removeSlice drops a slice from where it was filed (its service label may have
// changed since); ix.mu is held.
func (ix *index) removeSlice(key string) {
	owner, ok := ix.sliceOwner[key]
	if !ok {
		return
	}
	delete(ix.sliceOwner, key)
	name := key[strings.IndexByte(key, '/')+1:]
	if m := ix.slices[owner]; m != nil {
		delete(m, name)
		if len(m) == 0 {
			delete(ix.slices, owner)
		}
	}
}

func (ix *index) setNamespace(name string, exists bool) {
	ix.mu.Lock()
	defer ix.mu.Unlock()
	if exists {
		ix.namespaces[name] = true
	} else {
		delete(ix.namespaces, name)
	}
	ix.touch()
}

// handlers are the informer event handlers that keep ix.
func (ix *index) serviceHandler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { ix.onService(obj, false) },
		UpdateFunc: func(_, obj any) { ix.onService(obj, false) },
		DeleteFunc: func(obj any) { ix.onService(obj, true) },
	}
}

func (ix *index) onService(obj any, deleted bool) {
	svc, ok := unwrap(obj).(*corev1.Service)
	if !ok {
		return
	}
	if deleted {
		ix.deleteService(svc)
	} else {
		ix.setService(svc)
	}
}

func (ix *index) sliceHandler() cache.ResourceEventHandler {
	on := func(obj any, deleted bool) {
		s, ok := unwrap(obj).(*discoveryv1.EndpointSlice)
		if !ok {
			return
		}
		if deleted {
			ix.deleteSlice(s)
		} else {
			ix.setSlice(s)
		}
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { on(obj, false) },
		UpdateFunc: func(_, obj any) { on(obj, false) },
		DeleteFunc: func(obj any) { on(obj, true) },
	}
}

func (ix *index) namespaceHandler() cache.ResourceEventHandler {
	on := func(obj any, deleted bool) {
		ns, ok := unwrap(obj).(*corev1.Namespace)
		if !ok {
			return
		}
		ix.setNamespace(ns.Name, !deleted)
	}
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { on(obj, false) },
		UpdateFunc: func(_, obj any) { on(obj, false) },
		DeleteFunc: func(obj any) { on(obj, true) },
	}
}

// record is one address a name resolves to, before it is cut into A, AAAA or SRV.
type record struct {
	ip   netip.Addr
	port int32 // -1: the endpoint has no port (a headless Service without ports)
	// host is the endpoint's label under the Service's name, the SRV target; empty: the
	// Service's name itself.
	host string
}

// lookup is the outcome of a name in the cluster domain.
type lookup struct {
	nxdomain bool
	cname    string // an ExternalName Service's target (fully qualified)
	records  []record
}

// service resolves svc.ns[.svc.zone] with an optional endpoint host name and port/protocol
// filter as CoreDNS's kubernetes plugin does: an unknown namespace or Service, a port that
// no port of the Service has, a headless Service without ready endpoints and an endpoint
// name that matches no endpoint are NXDOMAIN.
func (ix *index) service(ns, name, endpoint, port, proto string) lookup {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	if !ix.namespaces[ns] {
		return lookup{nxdomain: true}
	}
	svc := ix.services[ns+"/"+name]
	if svc == nil {
		return lookup{nxdomain: true}
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		if endpoint != "" || port != "" || svc.Spec.ExternalName == "" {
			return lookup{nxdomain: true}
		}
		return lookup{cname: fqdn(svc.Spec.ExternalName)}
	}
	var out []record
	if headless(svc) || endpoint != "" {
		seen := map[record]bool{}
		for _, s := range ix.slices[ns+"/"+name] {
			ports := s.Ports
			if len(ports) == 0 {
				// A headless Service without ports still names its endpoints.
				ports = []discoveryv1.EndpointPort{{}}
			}
			for _, ep := range s.Endpoints {
				if ep.Conditions.Ready != nil && !*ep.Conditions.Ready {
					continue
				}
				for _, a := range ep.Addresses {
					ip, err := netip.ParseAddr(a)
					if err != nil {
						continue
					}
					host := endpointHostname(ep, ip)
					if endpoint != "" && !strings.EqualFold(endpoint, host) {
						continue
					}
					for _, p := range ports {
						pname, pproto, pnum := "", "", int32(-1)
						if p.Name != nil {
							pname = *p.Name
						}
						if p.Protocol != nil {
							pproto = string(*p.Protocol)
						}
						if p.Port != nil {
							pnum = *p.Port
						}
						if !matchPort(port, proto, pname, pproto) {
							continue
						}
						r := record{ip: ip, port: pnum, host: host}
						if !seen[r] {
							seen[r] = true
							out = append(out, r)
						}
					}
				}
			}
		}
	} else {
		for _, p := range svc.Spec.Ports {
			if !matchPort(port, proto, p.Name, string(p.Protocol)) {
				continue
			}
			for _, s := range svc.Spec.ClusterIPs {
				if ip, err := netip.ParseAddr(s); err == nil {
					out = append(out, record{ip: ip, port: p.Port})
				}
			}
		}
	}
	if len(out) == 0 {
		return lookup{nxdomain: true}
	}
	return lookup{records: out}
}

// namespaceExists reports whether ns is a namespace of the cluster.
func (ix *index) namespaceExists(ns string) bool {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	return ix.namespaces[ns]
}

// serviceByIP is the "svc.ns" whose ClusterIP ip is.
func (ix *index) serviceByIP(ip netip.Addr) (string, bool) {
	ix.mu.RLock()
	defer ix.mu.RUnlock()
	n, ok := ix.reverse[ip]
	return n, ok
}

func headless(svc *corev1.Service) bool {
	return svc.Spec.ClusterIP == corev1.ClusterIPNone
}

// endpointHostname is the label an endpoint is known by under its Service: its hostname
// (a StatefulSet pod's), else its address with dashes.
func endpointHostname(ep discoveryv1.Endpoint, ip netip.Addr) string {
	if ep.Hostname != nil && *ep.Hostname != "" {
		return *ep.Hostname
	}
	if ip.Is4() {
		return strings.ReplaceAll(ip.String(), ".", "-")
	}
	return strings.ReplaceAll(ip.String(), ":", "-")
}

// matchPort matches a query's port name and protocol (either may be empty: any) against
// a port's.
func matchPort(qPort, qProto, port, proto string) bool {
	return (qPort == "" || strings.EqualFold(qPort, port)) && (qProto == "" || strings.EqualFold(qProto, proto))
}

func fqdn(s string) string {
	s = strings.ToLower(s)
	if !strings.HasSuffix(s, ".") {
		s += "."
	}
	return s
}
