// Package dns is berth's cluster DNS: an authoritative server for the cluster domain
// (cluster.local by default) answering from Services, EndpointSlices and Namespaces that
// client-go informers keep current, following the Kubernetes DNS specification as
// CoreDNS's kubernetes plugin answers it (with "pods insecure"), and forwarding every other
// name to the node's own resolvers. The node agent runs one in its process (ADR 0011).
//
// Names it answers (zone = the cluster domain):
//
//	<svc>.<ns>.svc.<zone>                 A/AAAA: the ClusterIPs, or a headless Service's ready endpoints
//	<host>.<svc>.<ns>.svc.<zone>          A/AAAA of one endpoint (its hostname, else its address with dashes)
//	_<port>._<proto>.<svc>.<ns>.svc.<zone> SRV of a named port
//	<svc>.<ns>.svc.<zone> (ExternalName)  CNAME to the external name
//	<a-b-c-d>.<ns>.pod.<zone>             A of the address in the name
//	<reversed ClusterIP>.in-addr.arpa     PTR to the Service's name
package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
	"k8s.io/client-go/tools/cache"
)

// DefaultDomain is the cluster domain when none is configured.
const DefaultDomain = "cluster.local"

// Config is what a Server needs.
type Config struct {
	// Domain is the cluster domain (DefaultDomain when empty).
	Domain string
	// Upstreams are host:port resolvers that names outside the cluster domain go to, tried
	// in order; ResolvConf's nameservers when nil.
	Upstreams []string
	// ResolvConf is the host resolver file Upstreams are read from when not given
	// (/etc/resolv.conf when empty).
	ResolvConf string
	// UpstreamTimeout bounds one query to one upstream (2 s when zero).
	UpstreamTimeout time.Duration
	// TTL of the answers from the cluster domain (5 s when zero, as CoreDNS).
	TTL uint32
	// Log receives the server's log (slog.Default when nil).
	Log *slog.Logger
}

// Server answers DNS queries. Make it with New, feed it with Watch, then Listen and Serve.
type Server struct {
	zone      string // the domain, fully qualified, lower case
	upstreams []string
	timeout   time.Duration
	ttl       uint32
	log       *slog.Logger
	ix        *index
	// jobs hands queries to the workers Serve runs (see ServeDNS).
	jobs chan job
}

// job is one query for a worker, and where its answer goes.
type job struct {
	r    *dns.Msg
	resp chan *dns.Msg
}

// New checks cfg and reads the upstream resolvers.
func New(cfg Config) (*Server, error) {
	if cfg.Domain == "" {
		cfg.Domain = DefaultDomain
	}
	if _, ok := dns.IsDomainName(cfg.Domain); !ok {
		return nil, fmt.Errorf("cluster domain %q is not a domain name", cfg.Domain)
	}
	if cfg.UpstreamTimeout <= 0 {
		cfg.UpstreamTimeout = 2 * time.Second
	}
	if cfg.TTL == 0 {
		cfg.TTL = 5
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Upstreams == nil {
		if cfg.ResolvConf == "" {
			cfg.ResolvConf = "/etc/resolv.conf"
		}
		cc, err := dns.ClientConfigFromFile(cfg.ResolvConf)
		if err != nil {
			return nil, fmt.Errorf("upstream resolvers from %s: %w", cfg.ResolvConf, err)
		}
		for _, s := range cc.Servers {
			cfg.Upstreams = append(cfg.Upstreams, net.JoinHostPort(s, cc.Port))
		}
	}
	return &Server{
		zone: fqdn(cfg.Domain), upstreams: cfg.Upstreams, timeout: cfg.UpstreamTimeout,
		ttl: cfg.TTL, log: cfg.Log, ix: newIndex(), jobs: make(chan job),
	}, nil
}

// Watch feeds the server from informers of Services, EndpointSlices (discovery/v1) and
// Namespaces. Answers for the cluster domain are SERVFAIL until all three have synced.
func (s *Server) Watch(services, slices, namespaces cache.SharedIndexInformer) error {
	for _, w := range []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
		rs  string
	}{{services, s.ix.serviceHandler(), "services"}, {slices, s.ix.sliceHandler(), "endpointslices"}, {namespaces, s.ix.namespaceHandler(), "namespaces"}} {
		reg, err := w.inf.AddEventHandler(w.h)
		if err != nil {
			return fmt.Errorf("dns: watch %s: %w", w.rs, err)
		}
		s.ix.synced = append(s.ix.synced, reg.HasSynced)
	}
	return nil
}

// Listening is a server bound to its addresses; Serve answers on them.
type Listening struct {
	s       *Server
	servers []*dns.Server
}

// Listen binds UDP and TCP on each host:port of addrs. Port 0 picks a free port, the same
// for UDP and TCP. Addresses the host does not have yet (the pod bridge's gateway, before
// the first pod brings the bridge up) can be bound, with IP_FREEBIND.
func (s *Server) Listen(addrs []string) (*Listening, error) {
	l := &Listening{s: s}
	for _, addr := range addrs {
		pc, ln, err := listenBoth(addr)
		if err != nil {
			l.close()
			return nil, fmt.Errorf("dns: listen on %s: %w", addr, err)
		}
		l.servers = append(l.servers,
			&dns.Server{PacketConn: pc, Handler: s, UDPSize: dns.DefaultMsgSize},
			&dns.Server{Listener: ln, Handler: s, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, MaxTCPQueries: -1})
	}
	return l, nil
}

// Addrs are the bound addresses, host:port, one per address given to Listen.
func (l *Listening) Addrs() []string {
	var out []string
	for i := 0; i < len(l.servers); i += 2 {
		out = append(out, l.servers[i].PacketConn.LocalAddr().String())
	}
	return out
}

// Serve answers queries until ctx ends, then closes the listeners.
func (l *Listening) Serve(ctx context.Context) error {
	var wg sync.WaitGroup
	// Workers whose stacks have grown to what answering takes: the DNS library starts a
	// goroutine per UDP query, and growing its stack cost a fifth of the CPU.
	for range 2 * runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-ctx.Done():
					return
				case j := <-l.s.jobs:
					j.resp <- l.s.answer(j.r)
				}
			}
		}()
	}
	errs := make(chan error, len(l.servers))
	for _, srv := range l.servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := srv.ActivateAndServe(); err != nil && ctx.Err() == nil {
				errs <- err
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errs:
	}
	l.close()
	wg.Wait()
	return err
}

func (l *Listening) close() {
	for _, srv := range l.servers {
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if srv.ShutdownContext(shutdownCtx) != nil {
			// Not started yet (or already down): close the sockets directly.
			if srv.PacketConn != nil {
				srv.PacketConn.Close()
			}
			if srv.Listener != nil {
				srv.Listener.Close()
			}
		}
		cancel()
	}
}

var freebind = net.ListenConfig{Control: func(network, _ string, c syscall.RawConn) error {
	if !strings.HasSuffix(network, "4") {
		return nil
	}
	var serr error
	err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_FREEBIND, 1) })
	return errors.Join(err, serr)
}}

// listenBoth binds UDP and TCP on the same port of addr's host.
func listenBoth(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	udp, tcp := "udp", "tcp"
	if ip, err := netip.ParseAddr(host); err == nil {
		udp, tcp = "udp6", "tcp6"
		if ip.Is4() {
			udp, tcp = "udp4", "tcp4"
		}
	}
	ctx := context.Background()
	for attempt := 0; ; attempt++ {
		pc, err := freebind.ListenPacket(ctx, udp, net.JoinHostPort(host, port))
		if err != nil {
			return nil, nil, err
		}
		bound := strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port)
		ln, err := freebind.Listen(ctx, tcp, net.JoinHostPort(host, bound))
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		// With port 0 the UDP port picked may be taken for TCP: try another.
		if port != "0" || attempt == 10 {
			return nil, nil, err
		}
	}
}

// ServeDNS answers one query.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	var resp *dns.Msg
	j := job{r: r, resp: make(chan *dns.Msg, 1)}
	select {
	case s.jobs <- j:
		resp = <-j.resp
	default:
		// Every worker is busy (waiting on upstreams, say): answer here.
		resp = s.answer(r)
	}
	// UDP answers that do not fit the client's buffer are truncated (TC set); the client
	// asks again over TCP.
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		size := dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
			size = int(opt.UDPSize())
		}
		resp.Truncate(size)
	} else if len(resp.Answer)+len(resp.Extra) > 8 {
		// Names are compressed only in long answers: it is not worth its cost in short ones.
		resp.Compress = true
	}
	if err := w.WriteMsg(resp); err != nil {
		s.log.Debug("dns: write answer", "to", w.RemoteAddr().String(), "err", err)
	}
}

// answer is the reply to r, from the cluster domain or from upstream.
func (s *Server) answer(r *dns.Msg) *dns.Msg {
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		m := new(dns.Msg)
		m.SetRcode(r, dns.RcodeNotImplemented)
		if len(r.Question) != 1 {
			m.Rcode = dns.RcodeFormatError
		}
		return m
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	switch {
	case dns.IsSubDomain(s.zone, name):
		return s.local(r, name, q.Qtype)
	case q.Qtype == dns.TypePTR:
		if m := s.ptr(r, name); m != nil {
			return m
		}
	}
	return s.forward(r)
}

// reply starts an authoritative answer to r.
func (s *Server) reply(r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	m.Authoritative = true
	m.RecursionAvailable = true
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(max(opt.UDPSize(), dns.MinMsgSize), false)
	}
	return m
}

func (s *Server) soa() dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: s.zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.ttl},
		Ns:      "ns.dns." + s.zone,
		Mbox:    "hostmaster." + s.zone,
		Serial:  s.ix.serial.Load(),
		Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: s.ttl,
	}
}

// negative turns m into NXDOMAIN (nx) or NODATA: no answer, the zone's SOA in authority.
func (s *Server) negative(m *dns.Msg, nx bool) *dns.Msg {
	m.Answer = nil
	m.Extra = slicesWithoutNonOPT(m.Extra)
	m.Ns = []dns.RR{s.soa()}
	if nx {
		m.Rcode = dns.RcodeNameError
	}
	return m
}

func slicesWithoutNonOPT(rrs []dns.RR) []dns.RR {
	var out []dns.RR
	for _, rr := range rrs {
		if rr.Header().Rrtype == dns.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}

func (s *Server) hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: s.ttl}
}

// local answers a name of the cluster domain.
func (s *Server) local(r *dns.Msg, name string, qtype uint16) *dns.Msg {
	m := s.reply(r)
	if !s.ix.hasSynced() {
		m.Rcode = dns.RcodeServerFailure
		return m
	}
	labels := dns.SplitDomainName(strings.TrimSuffix(name, s.zone))
	n := len(labels)
	if n == 0 {
		switch qtype {
		case dns.TypeSOA:
			m.Answer = []dns.RR{s.soa()}
			return m
		case dns.TypeNS:
			m.Answer = []dns.RR{&dns.NS{Hdr: s.hdr(s.zone, dns.TypeNS), Ns: "ns.dns." + s.zone}}
			return m
		}
		return s.negative(m, false)
	}
	switch labels[n-1] {
	case "dns-version":
		if n != 1 {
			return s.negative(m, true)
		}
		if qtype != dns.TypeTXT {
			return s.negative(m, false)
		}
		// The version of the Kubernetes DNS specification answered.
		m.Answer = []dns.RR{&dns.TXT{Hdr: s.hdr(name, dns.TypeTXT), Txt: []string{"1.1.0"}}}
		return m
	case "svc":
		return s.services(m, name, labels[:n-1], qtype)
	case "pod":
		return s.pod(m, name, labels[:n-1], qtype)
	}
	return s.negative(m, true)
}

// services answers <...>.svc.<zone>; parts are the labels before "svc".
func (s *Server) services(m *dns.Msg, name string, parts []string, qtype uint16) *dns.Msg {
	var ns, svc, endpoint, port, proto string
	switch len(parts) {
	case 0:
		return s.negative(m, false)
	case 1:
		return s.negative(m, !s.ix.namespaceExists(parts[0]))
	case 2:
		svc, ns = parts[0], parts[1]
	case 3:
		endpoint, svc, ns = parts[0], parts[1], parts[2]
	case 4:
		port, proto, svc, ns = strings.TrimPrefix(parts[0], "_"), strings.TrimPrefix(parts[1], "_"), parts[2], parts[3]
	default:
		return s.negative(m, true)
	}
	res := s.ix.service(ns, svc, endpoint, port, proto)
	switch {
	case res.nxdomain:
		return s.negative(m, true)
	case res.cname != "":
		m.Answer = []dns.RR{&dns.CNAME{Hdr: s.hdr(name, dns.TypeCNAME), Target: res.cname}}
		if qtype == dns.TypeA || qtype == dns.TypeAAAA {
			m.Answer = append(m.Answer, s.chase(res.cname, qtype)...)
		}
		return m
	}
	switch qtype {
	case dns.TypeA, dns.TypeAAAA, dns.TypeANY:
		for i, rec := range res.records {
			if seenBefore(res.records[:i], rec.ip) {
				continue // the same address for another port
			}
			if rr := s.address(name, rec.ip, qtype); rr != nil {
				m.Answer = append(m.Answer, rr)
			}
		}
	case dns.TypeSRV:
		var srvs []record
		for _, rec := range res.records {
			if rec.port >= 0 {
				srvs = append(srvs, rec)
			}
		}
		svcName := strings.ToLower(svc + "." + ns + ".svc." + s.zone)
		seenTarget := map[string]bool{}
		for _, rec := range srvs {
			target := svcName
			if rec.host != "" {
				target = strings.ToLower(rec.host) + "." + svcName
			}
			m.Answer = append(m.Answer, &dns.SRV{
				Hdr: s.hdr(name, dns.TypeSRV), Priority: 0, Weight: uint16(max(100/len(srvs), 1)),
				Port: uint16(rec.port), Target: target,
			})
			key := target + "|" + rec.ip.String()
			if !seenTarget[key] {
				seenTarget[key] = true
				m.Extra = append(m.Extra, s.address(target, rec.ip, dns.TypeANY))
			}
		}
	}
	if len(m.Answer) == 0 {
		return s.negative(m, false)
	}
	return m
}

func seenBefore(recs []record, ip netip.Addr) bool {
	for _, r := range recs {
		if r.ip == ip {
			return true
		}
	}
	return false
}

// address is the A or AAAA record of ip under name, or nil when ip is not of the family
// qtype asks for (ANY takes both).
func (s *Server) address(name string, ip netip.Addr, qtype uint16) dns.RR {
	switch {
	case ip.Is4() && (qtype == dns.TypeA || qtype == dns.TypeANY):
		return &dns.A{Hdr: s.hdr(name, dns.TypeA), A: ip.AsSlice()}
	case ip.Is6() && (qtype == dns.TypeAAAA || qtype == dns.TypeANY):
		return &dns.AAAA{Hdr: s.hdr(name, dns.TypeAAAA), AAAA: ip.AsSlice()}
	}
	return nil
}

// pod answers <a-b-c-d>.<ns>.pod.<zone> from the address in the name, without checking
// that such a pod exists (CoreDNS's "pods insecure").
func (s *Server) pod(m *dns.Msg, name string, parts []string, qtype uint16) *dns.Msg {
	switch len(parts) {
	case 0:
		return s.negative(m, false)
	case 1:
		return s.negative(m, !s.ix.namespaceExists(parts[0]))
	case 2:
	default:
		return s.negative(m, true)
	}
	if !s.ix.namespaceExists(parts[1]) {
		return s.negative(m, true)
	}
	host := parts[0]
	if strings.Count(host, "-") == 3 && !strings.Contains(host, "--") {
		host = strings.ReplaceAll(host, "-", ".")
	} else {
		host = strings.ReplaceAll(host, "-", ":")
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return s.negative(m, true)
	}
	if rr := s.address(name, ip, qtype); rr != nil {
		m.Answer = []dns.RR{rr}
		return m
	}
	return s.negative(m, false)
}

// ptr answers the reverse name of a ClusterIP; nil for any other address (forwarded).
func (s *Server) ptr(r *dns.Msg, name string) *dns.Msg {
	ip, ok := reverseIP(name)
	if !ok {
		return nil
	}
	svc, ok := s.ix.serviceByIP(ip)
	if !ok {
		return nil
	}
	m := s.reply(r)
	m.Answer = []dns.RR{&dns.PTR{Hdr: s.hdr(name, dns.TypePTR), Ptr: svc + ".svc." + s.zone}}
	return m
}

// reverseIP parses an in-addr.arpa or ip6.arpa name.
func reverseIP(name string) (netip.Addr, bool) {
	labels := dns.SplitDomainName(name)
	n := len(labels)
	switch {
	case n == 6 && labels[4] == "in-addr" && labels[5] == "arpa":
		ip, err := netip.ParseAddr(labels[3] + "." + labels[2] + "." + labels[1] + "." + labels[0])
		return ip, err == nil
	case n == 34 && labels[32] == "ip6" && labels[33] == "arpa":
		var b strings.Builder
		for i := 31; i >= 0; i-- {
			if len(labels[i]) != 1 {
				return netip.Addr{}, false
			}
			b.WriteString(labels[i])
			if i%4 == 0 && i > 0 {
				b.WriteByte(':')
			}
		}
		ip, err := netip.ParseAddr(b.String())
		return ip, err == nil
	}
	return netip.Addr{}, false
}

// chase resolves an ExternalName's target for an A or AAAA query: from the cluster
// domain when it is there, else upstream. What it cannot resolve is left out, leaving
// the client the CNAME to follow.
func (s *Server) chase(target string, qtype uint16) []dns.RR {
	q := new(dns.Msg)
	q.SetQuestion(target, qtype)
	var m *dns.Msg
	if dns.IsSubDomain(s.zone, target) {
		m = s.local(q, target, qtype)
	} else {
		m = s.forward(q)
	}
	if m.Rcode != dns.RcodeSuccess {
		return nil
	}
	return m.Answer
}

// forward asks the upstream resolvers in turn (UDP, then TCP when the answer was
// truncated) and relays the first answer; SERVFAIL when none answers.
func (s *Server) forward(r *dns.Msg) *dns.Msg {
	var errs []error
	for _, up := range s.upstreams {
		resp, err := s.exchange(r, up)
		if err == nil {
			resp.Id = r.Id
			return resp
		}
		errs = append(errs, fmt.Errorf("%s: %w", up, err))
	}
	s.log.Debug("dns: no upstream answered", "name", r.Question[0].Name, "err", errors.Join(errs...))
	m := new(dns.Msg)
	m.SetRcode(r, dns.RcodeServerFailure)
	m.RecursionAvailable = true
	return m
}

func (s *Server) exchange(r *dns.Msg, upstream string) (*dns.Msg, error) {
	c := &dns.Client{Net: "udp", Timeout: s.timeout}
	resp, _, err := c.Exchange(r, upstream)
	if err == nil && !resp.Truncated {
		return resp, nil
	}
	c.Net = "tcp"
	resp, _, err = c.Exchange(r, upstream)
	return resp, err
}
