package ingress

import (
	"net"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"

	networkingv1 "k8s.io/api/networking/v1"
)

// Backend is where matching requests go: one port of one Service, resolved to the ready
// endpoints it had when the table was built.
type Backend struct {
	// Namespace, Service and Port name the backend as the Ingress does.
	Namespace, Service string
	Port               networkingv1.ServiceBackendPort
	// Endpoints are the ready endpoints, "ip:port", in a stable order.
	Endpoints []string
	// Why tells, when Endpoints is empty, why there are none (for the 503's body and logs).
	Why string

	next atomic.Uint64 // round robin over Endpoints
}

// pick returns the next endpoint in round-robin order, or "" when there is none.
func (b *Backend) pick() string {
	if len(b.Endpoints) == 0 {
		return ""
	}
	return b.Endpoints[(b.next.Add(1)-1)%uint64(len(b.Endpoints))]
}

// String names the backend as "namespace/service:port".
func (b *Backend) String() string {
	port := b.Port.Name
	if port == "" {
		port = strconv.Itoa(int(b.Port.Number))
	}
	return b.Namespace + "/" + b.Service + ":" + port
}

// pathRule is one path of one Ingress rule.
type pathRule struct {
	path  string
	exact bool
	// elems are a Prefix path's non-empty elements ("/aaa/bbb/" -> aaa, bbb).
	elems []string
	// score orders rules: the longer path wins (a Prefix path without its trailing slash).
	score   int
	backend *Backend
	// order is the rule's Ingress's place among all Ingresses (oldest first), for ties.
	order int
}

// matches reports whether path (a request's URL path) matches the rule, as Kubernetes
// defines it: Exact compares the whole path, case-sensitively; Prefix compares element by
// element, split on "/", so that /aaa/bbb matches /aaa/bbb, /aaa/bbb/ and /aaa/bbb/ccc but
// not /aaa/bbbxyz, and a trailing slash on either side does not matter.
func (r *pathRule) matches(path string, reqElems []string) bool {
	if r.exact {
		return path == r.path
	}
	if len(reqElems) < len(r.elems) {
		return false
	}
	for i, e := range r.elems {
		if reqElems[i] != e {
			return false
		}
	}
	return true
}

// pathElems splits a path into its non-empty elements.
func pathElems(path string) []string {
	var out []string
	for e := range strings.SplitSeq(path, "/") {
		if e != "" {
			out = append(out, e)
		}
	}
	return out
}

// newPathRule makes the rule of one HTTPIngressPath; ImplementationSpecific (or no type)
// is Prefix here. An empty path is "/", as Kubernetes' defaulting makes it.
func newPathRule(p networkingv1.HTTPIngressPath, b *Backend, order int) *pathRule {
	path := p.Path
	if path == "" {
		path = "/"
	}
	r := &pathRule{path: path, backend: b, order: order}
	if p.PathType != nil && *p.PathType == networkingv1.PathTypeExact {
		r.exact = true
		r.score = len(path)
		return r
	}
	r.elems = pathElems(path)
	trimmed := strings.TrimRight(path, "/")
	r.score = len(trimmed)
	return r
}

// hostRules are the paths of every rule for one host, best first.
type hostRules struct{ paths []*pathRule }

func (h *hostRules) add(r *pathRule) { h.paths = append(h.paths, r) }

// sort puts the longest paths first, Exact before Prefix on equal length, and the older
// Ingress first after that: the first rule that matches is the one Kubernetes prefers.
func (h *hostRules) sort() {
	sort.SliceStable(h.paths, func(i, j int) bool {
		a, b := h.paths[i], h.paths[j]
		if a.score != b.score {
			return a.score > b.score
		}
		if a.exact != b.exact {
			return a.exact
		}
		return a.order < b.order
	})
}

func (h *hostRules) match(path string, elems []string) *Backend {
	if h == nil {
		return nil
	}
	for _, r := range h.paths {
		if r.matches(path, elems) {
			return r.backend
		}
	}
	return nil
}

// Table is one immutable snapshot of every Ingress of the controller's class: the routes
// and the TLS certificates. The controller swaps in a new one at every change.
type Table struct {
	exact    map[string]*hostRules // host -> rules
	wildcard map[string]*hostRules // ".example.com" (of *.example.com) -> rules
	anyHost  *hostRules            // rules without a host
	// defaultBackend serves what no rule matches (the oldest Ingress's spec.defaultBackend).
	defaultBackend *Backend
	certs          certs
}

// newTable returns an empty table: every request is answered 404.
func newTable() *Table {
	return &Table{exact: map[string]*hostRules{}, wildcard: map[string]*hostRules{}, anyHost: &hostRules{},
		certs: certs{exact: map[string]*certEntry{}, wildcard: map[string]*certEntry{}}}
}

// rulesFor returns the rules of host ("" for rules without a host), creating them.
func (t *Table) rulesFor(host string) *hostRules {
	var m map[string]*hostRules
	key := host
	switch {
	case host == "":
		return t.anyHost
	case strings.HasPrefix(host, "*."):
		m, key = t.wildcard, host[1:]
	default:
		m = t.exact
	}
	h := m[key]
	if h == nil {
		h = &hostRules{}
		m[key] = h
	}
	return h
}

// sort orders every host's rules; called once the table is built.
func (t *Table) sort() {
	for _, h := range t.exact {
		h.sort()
	}
	for _, h := range t.wildcard {
		h.sort()
	}
	t.anyHost.sort()
}

// Route returns the backend for a request to host (a Host header: a port and a trailing
// dot are ignored, case does not matter) and path, or nil when nothing matches and there
// is no default backend. Rules of the exact host are tried first, then those of a wildcard
// host (*.example.com matches one label: foo.example.com, not example.com nor
// a.b.example.com), then the rules without a host; within each, the longest matching path
// wins and Exact wins a tie. A host whose rules have no matching path falls through to
// the next kind, then to the default backend.
func (t *Table) Route(host, path string) *Backend {
	host = normalizeHost(host)
	if path == "" {
		path = "/"
	}
	elems := pathElems(path)
	if b := t.exact[host].match(path, elems); b != nil {
		return b
	}
	if i := strings.IndexByte(host, '.'); i > 0 {
		if b := t.wildcard[host[i:]].match(path, elems); b != nil {
			return b
		}
	}
	if b := t.anyHost.match(path, elems); b != nil {
		return b
	}
	return t.defaultBackend
}

// normalizeHost strips the port and a trailing dot of a Host header and lowers its case.
func normalizeHost(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	return strings.ToLower(strings.TrimSuffix(host, "."))
}
