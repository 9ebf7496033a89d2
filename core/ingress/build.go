package ingress

import (
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"sort"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
)

// world is what a Table is built from: the listers of the controller's informers.
type world struct {
	services corelisters.ServiceLister
	slices   discoverylisters.EndpointSliceLister
	secrets  corelisters.SecretLister
	// certCache keeps parsed certificates by Secret UID and resourceVersion, so that a
	// rebuild does not parse every certificate again; build replaces it.
	certCache map[certKey]*tls.Certificate
	// problems collects what is wrong with the Ingresses (a Secret missing or invalid),
	// for the controller to log once.
	problems []string
}

type certKey struct {
	uid             types.UID
	resourceVersion string
}

// sortIngresses orders Ingresses oldest first (then by namespace and name): the older
// Ingress wins a path or a host that several claim, as ingress-nginx decides.
func sortIngresses(ings []*networkingv1.Ingress) {
	sort.SliceStable(ings, func(i, j int) bool {
		a, b := ings[i], ings[j]
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		if a.Namespace != b.Namespace {
			return a.Namespace < b.Namespace
		}
		return a.Name < b.Name
	})
}

// build makes the Table of ings, the Ingresses of the controller's class.
func (w *world) build(ings []*networkingv1.Ingress) *Table {
	ings = slices.Clone(ings)
	sortIngresses(ings)
	t := newTable()
	backends := map[string]*Backend{} // one per namespace/service:port, shared by rules
	backend := func(ns string, sb *networkingv1.IngressServiceBackend) *Backend {
		b := &Backend{Namespace: ns, Service: sb.Name, Port: sb.Port}
		if old := backends[b.String()]; old != nil {
			return old
		}
		w.resolve(b)
		backends[b.String()] = b
		return b
	}
	cache := map[certKey]*tls.Certificate{}
	w.problems = nil
	for order, ing := range ings {
		if db := ing.Spec.DefaultBackend; db != nil && t.defaultBackend == nil {
			if db.Service != nil {
				t.defaultBackend = backend(ing.Namespace, db.Service)
			} else {
				t.defaultBackend = &Backend{Namespace: ing.Namespace, Why: "resource backends are not supported"}
			}
		}
		for _, rule := range ing.Spec.Rules {
			if rule.HTTP == nil {
				continue
			}
			hr := t.rulesFor(normalizeHost(rule.Host))
			for _, p := range rule.HTTP.Paths {
				var b *Backend
				if p.Backend.Service != nil {
					b = backend(ing.Namespace, p.Backend.Service)
				} else {
					b = &Backend{Namespace: ing.Namespace, Why: "resource backends are not supported"}
				}
				hr.add(newPathRule(p, b, order))
			}
		}
		for _, tl := range ing.Spec.TLS {
			if tl.SecretName == "" {
				continue
			}
			cert, err := w.certificate(ing.Namespace, tl.SecretName, cache)
			if err != nil {
				w.problems = append(w.problems, fmt.Sprintf("ingress %s/%s: tls: %v", ing.Namespace, ing.Name, err))
				continue
			}
			t.certs.add(tl.Hosts, cert, order)
		}
	}
	w.certCache = cache
	t.sort()
	return t
}

// certificate returns the parsed certificate of Secret ns/name, from the cache when the
// Secret has not changed.
func (w *world) certificate(ns, name string, cache map[certKey]*tls.Certificate) (*tls.Certificate, error) {
	s, err := w.secrets.Secrets(ns).Get(name)
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("secret %s/%s not found (or not of type %s)", ns, name, corev1.SecretTypeTLS)
	}
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", ns, name, err)
	}
	key := certKey{s.UID, s.ResourceVersion}
	if c := cache[key]; c != nil {
		return c, nil
	}
	if c := w.certCache[key]; c != nil {
		cache[key] = c
		return c, nil
	}
	c, err := secretCertificate(s)
	if err != nil {
		return nil, err
	}
	cache[key] = c
	return c, nil
}

// resolve fills b's ready endpoints from its Service and EndpointSlices, or says why it
// has none.
func (w *world) resolve(b *Backend) {
	svc, err := w.services.Services(b.Namespace).Get(b.Service)
	if err != nil {
		b.Why = fmt.Sprintf("service %s/%s: %v", b.Namespace, b.Service, err)
		if apierrors.IsNotFound(err) {
			b.Why = fmt.Sprintf("service %s/%s not found", b.Namespace, b.Service)
		}
		return
	}
	var sp *corev1.ServicePort
	for i := range svc.Spec.Ports {
		p := &svc.Spec.Ports[i]
		if (b.Port.Name != "" && p.Name == b.Port.Name) || (b.Port.Name == "" && p.Port == b.Port.Number) {
			sp = p
			break
		}
	}
	if sp == nil {
		b.Why = fmt.Sprintf("service %s/%s has no port %s", b.Namespace, b.Service, portString(b.Port))
		return
	}
	if sp.Protocol != "" && sp.Protocol != corev1.ProtocolTCP {
		b.Why = fmt.Sprintf("service %s/%s port %s is %s, not TCP", b.Namespace, b.Service, portString(b.Port), sp.Protocol)
		return
	}
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: b.Service})
	eps, err := w.slices.EndpointSlices(b.Namespace).List(sel)
	if err != nil {
		b.Why = fmt.Sprintf("endpoint slices of service %s/%s: %v", b.Namespace, b.Service, err)
		return
	}
	seen := map[string]bool{}
	for _, s := range eps {
		if s.AddressType == discoveryv1.AddressTypeFQDN {
			continue
		}
		var port int32
		for _, p := range s.Ports {
			if ptrOr(p.Name, "") == sp.Name && p.Port != nil && (p.Protocol == nil || *p.Protocol == corev1.ProtocolTCP) {
				port = *p.Port
				break
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			// Ready is what Services use: not terminating and passing readiness (a nil
			// condition means ready, as the API says).
			if e.Conditions.Ready != nil && !*e.Conditions.Ready || len(e.Addresses) == 0 {
				continue
			}
			ep := net.JoinHostPort(e.Addresses[0], strconv.Itoa(int(port)))
			if !seen[ep] {
				seen[ep] = true
				b.Endpoints = append(b.Endpoints, ep)
			}
		}
	}
	sort.Strings(b.Endpoints)
	if len(b.Endpoints) == 0 {
		b.Why = fmt.Sprintf("service %s/%s has no ready endpoint", b.Namespace, b.Service)
	}
}

func portString(p networkingv1.ServiceBackendPort) string {
	if p.Name != "" {
		return strconv.Quote(p.Name)
	}
	return strconv.Itoa(int(p.Number))
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
