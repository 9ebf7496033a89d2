package proxy

import (
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
)

// Names of the fixed chains and maps of the table.
const (
	chainServices       = "services"
	chainEndpointsCheck = "endpoints-check"
	chainReject         = "reject-chain"
	chainMarkMasq       = "mark-for-masquerade"
	chainMasquerading   = "masquerading"

	mapServiceIPs         = "service-ips"
	mapServiceNodePorts   = "service-nodeports"
	mapNoEndpointServices = "no-endpoint-services"
	mapNoEndpointNodePort = "no-endpoint-nodeports"
)

// Priorities of the base chains: nat at dstnat (-100) and srcnat (100); the filter chains
// that reject run right after DNAT.
const (
	prioDstNAT         = -100
	prioSrcNAT         = 100
	prioFilterPostDNAT = -90
)

// RuleConfig is what rule generation needs to know of the node.
type RuleConfig struct {
	// NodeName selects the endpoints that are local (traffic policies Local).
	NodeName string
	// ServiceCIDR is the range ClusterIPs come from; traffic to an address of it that no
	// Service holds is rejected.
	ServiceCIDR netip.Prefix
	// ClusterCIDR is the pod network of the whole cluster: ClusterIP traffic from outside
	// it is masqueraded. Not valid: nothing is masqueraded for ClusterIPs (as kube-proxy
	// without --cluster-cidr).
	ClusterCIDR netip.Prefix
}

// endpoint is one ready endpoint of one service port.
type endpoint struct {
	addr  netip.AddrPort
	local bool
}

// BuildRuleset is the table the proxy wants for these Services and EndpointSlices.
func BuildRuleset(cfg RuleConfig, services []*corev1.Service, slices []*discoveryv1.EndpointSlice) *Ruleset {
	rs := baseRuleset(cfg)
	bySvc := map[string][]*discoveryv1.EndpointSlice{}
	for _, s := range slices {
		if s.AddressType != discoveryv1.AddressTypeIPv4 {
			continue
		}
		name := s.Labels[discoveryv1.LabelServiceName]
		if name == "" {
			continue
		}
		key := s.Namespace + "/" + name
		bySvc[key] = append(bySvc[key], s)
	}
	for _, svc := range services {
		addService(rs, cfg, svc, bySvc[svc.Namespace+"/"+svc.Name])
	}
	return rs
}

// emptyRuleset has the four maps, without elements, and nothing else.
func emptyRuleset() *Ruleset {
	rs := &Ruleset{Chains: map[string]*Chain{}, Maps: map[string]*VMap{}, AffinitySets: map[string]time.Duration{}}
	for _, m := range []*VMap{
		{Name: mapServiceIPs, Kind: AddrProtoPort}, {Name: mapServiceNodePorts, Kind: ProtoPort},
		{Name: mapNoEndpointServices, Kind: AddrProtoPort}, {Name: mapNoEndpointNodePort, Kind: ProtoPort},
	} {
		m.Elems = map[Key]string{}
		rs.Maps[m.Name] = m
	}
	return rs
}

// serviceRuleset is the part of the table one Service owns: its chains, affinity sets
// and map elements (svc nil: none).
func serviceRuleset(cfg RuleConfig, svc *corev1.Service, slices []*discoveryv1.EndpointSlice) *Ruleset {
	rs := emptyRuleset()
	if svc != nil {
		var own []*discoveryv1.EndpointSlice
		for _, s := range slices {
			if s.AddressType == discoveryv1.AddressTypeIPv4 && s.Labels[discoveryv1.LabelServiceName] == svc.Name && s.Namespace == svc.Namespace {
				own = append(own, s)
			}
		}
		addService(rs, cfg, svc, own)
	}
	return rs
}

// elems counts the map elements of rs.
func (rs *Ruleset) elems() int {
	n := 0
	for _, m := range rs.Maps {
		n += len(m.Elems)
	}
	return n
}

// merge adds what src holds to rs.
func (rs *Ruleset) merge(src *Ruleset) {
	for name, c := range src.Chains {
		rs.Chains[name] = c
	}
	for name, d := range src.AffinitySets {
		rs.AffinitySets[name] = d
	}
	for name, m := range src.Maps {
		dst := rs.Maps[name]
		if dst == nil {
			dst = &VMap{Name: name, Kind: m.Kind, Elems: map[Key]string{}}
			rs.Maps[name] = dst
		}
		for k, v := range m.Elems {
			dst.Elems[k] = v
		}
	}
}

// baseRuleset holds the chains and maps every node has, whatever its Services.
func baseRuleset(cfg RuleConfig) *Ruleset {
	rs := emptyRuleset()
	base := func(name string, typ nftables.ChainType, hook *nftables.ChainHook, hookName string, prio int32, rules ...Rule) {
		rs.Chains[name] = &Chain{Name: name, Base: &BaseChain{Type: typ, Hook: hook, HookName: hookName, Priority: prio}, Rules: rules}
	}
	regular := func(name string, rules ...Rule) { rs.Chains[name] = &Chain{Name: name, Rules: rules} }

	base("nat-prerouting", nftables.ChainTypeNAT, nftables.ChainHookPrerouting, "prerouting", prioDstNAT, Rule{jump(chainServices)})
	base("nat-output", nftables.ChainTypeNAT, nftables.ChainHookOutput, "output", prioDstNAT, Rule{jump(chainServices)})
	base("nat-postrouting", nftables.ChainTypeNAT, nftables.ChainHookPostrouting, "postrouting", prioSrcNAT, Rule{jump(chainMasquerading)})
	// New connections, after DNAT: to a Service without endpoints, or to an address of
	// the service range that DNAT did not rewrite (no Service holds it), refused at once.
	// For forwarded packets this happens in prerouting, before routing could answer with
	// the rate-limited host-unreachable of the service range's route.
	checks := []Rule{{ctNew{}, jump(chainEndpointsCheck)}}
	if cfg.ServiceCIDR.IsValid() {
		checks = append(checks,
			Rule{ctNew{}, addrMatch{prefix: cfg.ServiceCIDR}, protoMatch(unix.IPPROTO_TCP), reject{tcpReset: true}},
			Rule{ctNew{}, addrMatch{prefix: cfg.ServiceCIDR}, reject{}})
	}
	base("filter-prerouting", nftables.ChainTypeFilter, nftables.ChainHookPrerouting, "prerouting", prioFilterPostDNAT, checks...)
	base("filter-output", nftables.ChainTypeFilter, nftables.ChainHookOutput, "output", prioFilterPostDNAT, checks...)

	regular(chainServices,
		Rule{vmapLookup{AddrProtoPort, mapServiceIPs}},
		Rule{fibLocal{}, vmapLookup{ProtoPort, mapServiceNodePorts}})
	regular(chainEndpointsCheck,
		Rule{vmapLookup{AddrProtoPort, mapNoEndpointServices}},
		Rule{fibLocal{}, vmapLookup{ProtoPort, mapNoEndpointNodePort}})
	regular(chainReject, Rule{protoMatch(unix.IPPROTO_TCP), reject{tcpReset: true}}, Rule{reject{}})
	regular(chainMarkMasq, Rule{markMasq{}})
	regular(chainMasquerading,
		Rule{markUnset{}, retrn},
		Rule{markClear{}},
		Rule{masquerade{}})

	return rs
}

func protocolNumber(p corev1.Protocol) (uint8, bool) {
	switch p {
	case corev1.ProtocolTCP, "":
		return unix.IPPROTO_TCP, true
	case corev1.ProtocolUDP:
		return unix.IPPROTO_UDP, true
	case corev1.ProtocolSCTP:
		return unix.IPPROTO_SCTP, true
	}
	return 0, false
}

// addService adds the chains and map elements of one Service.
func addService(rs *Ruleset, cfg RuleConfig, svc *corev1.Service, slices []*discoveryv1.EndpointSlice) {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return
	}
	clusterIP, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil || !clusterIP.Is4() {
		return // headless (None) or not IPv4
	}
	// Addresses that reach the Service from outside, as NodePorts do.
	var external []netip.Addr
	for _, s := range svc.Spec.ExternalIPs {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			external = append(external, a)
		}
	}
	if svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if a, err := netip.ParseAddr(in.IP); err == nil && a.Is4() {
				external = append(external, a)
			}
		}
	}
	var affinity time.Duration
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		affinity = 10800 * time.Second
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	internalLocal := svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
	externalLocal := svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal

	for _, sp := range svc.Spec.Ports {
		proto, ok := protocolNumber(sp.Protocol)
		if !ok {
			continue
		}
		id := fmt.Sprintf("%s/%s/%s/%s", svc.Namespace, svc.Name, protoName(proto), portName(sp))
		all := readyEndpoints(slices, sp, cfg.NodeName)
		nodePort := uint16(0)
		if svc.Spec.Type == corev1.ServiceTypeNodePort || svc.Spec.Type == corev1.ServiceTypeLoadBalancer {
			nodePort = uint16(sp.NodePort)
		}
		clusterKey := Key{Addr: clusterIP, Proto: proto, Port: uint16(sp.Port)}
		if len(all) == 0 {
			// No endpoint at all: refused, not dropped, so that clients fail at once.
			rs.Maps[mapNoEndpointServices].Elems[clusterKey] = chainReject
			for _, a := range external {
				rs.Maps[mapNoEndpointServices].Elems[Key{Addr: a, Proto: proto, Port: uint16(sp.Port)}] = chainReject
			}
			if nodePort != 0 {
				rs.Maps[mapNoEndpointNodePort].Elems[Key{Proto: proto, Port: nodePort}] = chainReject
			}
			continue
		}
		var local []endpoint
		for _, ep := range all {
			if ep.local {
				local = append(local, ep)
			}
		}

		// The ClusterIP: from outside the pod network masqueraded (so that replies come
		// back through this node), then one of the endpoints (the local ones under
		// internalTrafficPolicy Local).
		svcChain := "svc-" + id
		var rules []Rule
		if cfg.ClusterCIDR.IsValid() {
			rules = append(rules, Rule{addrMatch{src: true, neg: true, prefix: cfg.ClusterCIDR}, jump(chainMarkMasq)})
		}
		clusterEPs := all
		if internalLocal {
			clusterEPs = local
		}
		rules = append(rules, selectEndpoint(rs, id, proto, clusterEPs, affinity)...)
		rs.Chains[svcChain] = &Chain{Name: svcChain, Rules: rules}
		rs.Maps[mapServiceIPs].Elems[clusterKey] = svcChain

		if nodePort == 0 && len(external) == 0 {
			continue
		}
		// The chain over all endpoints, for external traffic: the ClusterIP's chain unless
		// that one keeps to the local endpoints.
		allChain := svcChain
		if internalLocal {
			allChain = "all-" + id
			rs.Chains[allChain] = &Chain{Name: allChain, Rules: selectEndpoint(rs, id, proto, all, affinity)}
		}
		extChain := "ext-" + id
		var ext []Rule
		if !externalLocal {
			ext = []Rule{{jump(chainMarkMasq)}, {gotoTo(allChain)}}
		} else {
			// Only local endpoints, and the client's address kept (no masquerade); pods and
			// the node itself may still use any endpoint, as kube-proxy lets them.
			if cfg.ClusterCIDR.IsValid() {
				ext = append(ext, Rule{addrMatch{src: true, prefix: cfg.ClusterCIDR}, gotoTo(allChain)})
			}
			ext = append(ext,
				Rule{fibLocal{src: true}, jump(chainMarkMasq)},
				Rule{fibLocal{src: true}, gotoTo(allChain)})
			ext = append(ext, selectEndpoint(rs, id, proto, local, affinity)...)
		}
		rs.Chains[extChain] = &Chain{Name: extChain, Rules: ext}
		for _, a := range external {
			rs.Maps[mapServiceIPs].Elems[Key{Addr: a, Proto: proto, Port: uint16(sp.Port)}] = extChain
		}
		if nodePort != 0 {
			rs.Maps[mapServiceNodePorts].Elems[Key{Proto: proto, Port: nodePort}] = extChain
		}
	}
}

func portName(sp corev1.ServicePort) string {
	if sp.Name != "" {
		return sp.Name
	}
	return fmt.Sprint(sp.Port)
}

// selectEndpoint returns the rules that send a connection to one of eps: first to the
// endpoint a client has affinity with, then uniformly at random, as a cascade of
// `numgen random mod k == 0` rules with k = n, n-1 ... 2 (each endpoint 1/n). It adds the
// endpoints' chains (and affinity sets) to rs. No endpoint: dropped.
func selectEndpoint(rs *Ruleset, id string, proto uint8, eps []endpoint, affinity time.Duration) []Rule {
	if len(eps) == 0 {
		return []Rule{{drop}}
	}
	var rules []Rule
	chains := make([]string, len(eps))
	for i, ep := range eps {
		chains[i] = "ep-" + id + "__" + ep.addr.String()
		addEndpointChain(rs, chains[i], proto, ep.addr, affinity)
	}
	if affinity > 0 {
		for _, c := range chains {
			rules = append(rules, Rule{saddrInSet(affinitySet(c)), gotoTo(c)})
		}
	}
	for i, c := range chains {
		if left := len(chains) - i; left > 1 {
			rules = append(rules, Rule{numgenZero(left), gotoTo(c)})
		} else {
			rules = append(rules, Rule{gotoTo(c)})
		}
	}
	return rules
}

func affinitySet(epChain string) string { return "aff-" + epChain[len("ep-"):] }

// addEndpointChain adds the chain that DNATs to one endpoint: hairpin traffic (the
// endpoint reaching itself through the Service) is masqueraded, since the endpoint
// would otherwise answer itself directly.
func addEndpointChain(rs *Ruleset, name string, proto uint8, addr netip.AddrPort, affinity time.Duration) {
	rules := []Rule{{addrMatch{src: true, prefix: netip.PrefixFrom(addr.Addr(), 32)}, jump(chainMarkMasq)}}
	if affinity > 0 {
		set := affinitySet(name)
		rs.AffinitySets[set] = affinity
		rules = append(rules, Rule{updateAffinity(set)})
	}
	rules = append(rules, Rule{protoMatch(proto), dnat(addr)})
	rs.Chains[name] = &Chain{Name: name, Rules: rules}
}

// readyEndpoints are the ready endpoints of the slices for one service port, sorted and
// without duplicates (an address may be in two slices while they are being rebalanced).
func readyEndpoints(slices []*discoveryv1.EndpointSlice, sp corev1.ServicePort, node string) []endpoint {
	seen := map[netip.AddrPort]bool{}
	var eps []endpoint
	for _, s := range slices {
		port := int32(-1)
		for _, p := range s.Ports {
			proto := corev1.ProtocolTCP
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			if name == sp.Name && proto == protoOrTCP(sp.Protocol) && p.Port != nil {
				port = *p.Port
			}
		}
		if port <= 0 || port > 65535 {
			continue
		}
		for _, e := range s.Endpoints {
			// A nil ready condition means ready (discovery/v1).
			if e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil || !ip.Is4() {
					continue
				}
				ap := netip.AddrPortFrom(ip, uint16(port))
				if seen[ap] {
					continue
				}
				seen[ap] = true
				eps = append(eps, endpoint{addr: ap, local: e.NodeName != nil && *e.NodeName == node})
			}
		}
	}
	sort.Slice(eps, func(i, j int) bool { return eps[i].addr.Compare(eps[j].addr) < 0 })
	return eps
}

func protoOrTCP(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}
