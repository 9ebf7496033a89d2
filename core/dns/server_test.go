package dns

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

func ns(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func service(namespace, name string, ips []string, ports ...corev1.ServicePort) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: namespace},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Ports: ports, ClusterIPs: ips},
	}
	if len(ips) > 0 {
		svc.Spec.ClusterIP = ips[0]
	}
	return svc
}

func endpoint(ip, hostname string, ready bool) discoveryv1.Endpoint {
	ep := discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}}
	if hostname != "" {
		ep.Hostname = ptr.To(hostname)
	}
	return ep
}

func slice(namespace, svc, name string, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4, Endpoints: eps, Ports: ports,
	}
}

func slicePort(name string, port int32, proto corev1.Protocol) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: ptr.To(name), Port: ptr.To(port), Protocol: ptr.To(proto)}
}

// fakeUpstream is a resolver on loopback that knows example.org (A 203.0.113.7) and
// big.example.org (60 A records, more than fit 512 bytes).
func fakeUpstream(t *testing.T) string {
	t.Helper()
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		switch {
		case q.Name == "example.org." && q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("203.0.113.7")})
		case q.Name == "big.example.org." && q.Qtype == dns.TypeA:
			for i := range 60 {
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(203, 0, 113, byte(i+1))})
			}
		default:
			m.Rcode = dns.RcodeNameError
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			m.Truncate(dns.MinMsgSize)
		}
		w.WriteMsg(m)
	})
	srv, err := New(Config{Upstreams: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := srv.Listen([]string{"127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range l.servers {
		s.Handler = h
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return l.Addrs()[0]
}

// testCluster is a server on loopback fed by a fake clientset.
type testCluster struct {
	addr string
	kube *fake.Clientset
}

func startServer(t *testing.T, upstreams []string, objects ...runtime.Object) testCluster {
	t.Helper()
	kube := fake.NewClientset(objects...)
	factory := informers.NewSharedInformerFactory(kube, 0)
	srv, err := New(Config{Upstreams: upstreams, UpstreamTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Watch(factory.Core().V1().Services().Informer(), factory.Discovery().V1().EndpointSlices().Informer(),
		factory.Core().V1().Namespaces().Informer()); err != nil {
		t.Fatal(err)
	}
	l, err := srv.Listen([]string{"127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	factory.Start(ctx.Done())
	done := make(chan error, 1)
	go func() { done <- l.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		factory.Shutdown()
	})
	if !cache.WaitForCacheSync(ctx.Done(), srv.ix.hasSynced) {
		t.Fatal("informers did not sync")
	}
	return testCluster{addr: l.Addrs()[0], kube: kube}
}

func query(t *testing.T, addr, name string, qtype uint16, network string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: network, Timeout: 3 * time.Second}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return r
}

// summary renders an answer section as sorted "TYPE value" strings.
func summary(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		switch v := rr.(type) {
		case *dns.A:
			out = append(out, "A "+v.A.String())
		case *dns.AAAA:
			out = append(out, "AAAA "+v.AAAA.String())
		case *dns.CNAME:
			out = append(out, "CNAME "+v.Target)
		case *dns.SRV:
			out = append(out, fmt.Sprintf("SRV %d %s", v.Port, v.Target))
		case *dns.PTR:
			out = append(out, "PTR "+v.Ptr)
		case *dns.SOA:
			out = append(out, "SOA "+v.Ns)
		case *dns.TXT:
			out = append(out, "TXT "+strings.Join(v.Txt, " "))
		case *dns.OPT:
		default:
			out = append(out, rr.String())
		}
	}
	sort.Strings(out)
	return out
}

func clusterObjects() []runtime.Object {
	tcp := corev1.ProtocolTCP
	return []runtime.Object{
		ns("default"), ns("shop"),
		service("default", "webapp", []string{"10.96.0.50"}, corev1.ServicePort{Name: "http", Port: 80, Protocol: tcp}, corev1.ServicePort{Name: "metrics", Port: 9090, Protocol: tcp}),
		service("shop", "dual", []string{"10.96.0.60", "fd00::60"}, corev1.ServicePort{Port: 80, Protocol: tcp}),
		service("default", "db", []string{corev1.ClusterIPNone}, corev1.ServicePort{Name: "pg", Port: 5432, Protocol: tcp}),
		slice("default", "db", "db-abc", []discoveryv1.EndpointPort{slicePort("pg", 5432, tcp)},
			endpoint("10.244.0.5", "db-0", true), endpoint("10.244.0.6", "", true), endpoint("10.244.0.7", "db-2", false)),
		service("default", "empty", []string{corev1.ClusterIPNone}),
		slice("default", "webapp", "webapp-1", []discoveryv1.EndpointPort{slicePort("http", 8080, tcp)}, endpoint("10.244.0.8", "", true)),
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ext", Namespace: "default"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.org"}},
	}
}

func TestAnswers(t *testing.T) {
	up := fakeUpstream(t)
	c := startServer(t, []string{up}, clusterObjects()...)
	const (
		noerror = dns.RcodeSuccess
		nx      = dns.RcodeNameError
	)
	for _, tc := range []struct {
		name   string
		qtype  uint16
		rcode  int
		answer []string // nil with NOERROR: NODATA, checked to carry the SOA
		extra  []string
	}{
		{"webapp.default.svc.cluster.local", dns.TypeA, noerror, []string{"A 10.96.0.50"}, nil},
		{"WebApp.Default.SVC.cluster.local", dns.TypeA, noerror, []string{"A 10.96.0.50"}, nil},
		{"webapp.default.svc.cluster.local", dns.TypeAAAA, noerror, nil, nil},
		{"webapp.default.svc.cluster.local", dns.TypeMX, noerror, nil, nil},
		{"dual.shop.svc.cluster.local", dns.TypeA, noerror, []string{"A 10.96.0.60"}, nil},
		{"dual.shop.svc.cluster.local", dns.TypeAAAA, noerror, []string{"AAAA fd00::60"}, nil},
		{"missing.default.svc.cluster.local", dns.TypeA, nx, nil, nil},
		{"webapp.nons.svc.cluster.local", dns.TypeA, nx, nil, nil},
		{"default.svc.cluster.local", dns.TypeA, noerror, nil, nil},
		{"nons.svc.cluster.local", dns.TypeA, nx, nil, nil},
		{"svc.cluster.local", dns.TypeA, noerror, nil, nil},
		{"cluster.local", dns.TypeA, noerror, nil, nil},
		{"cluster.local", dns.TypeSOA, noerror, []string{"SOA ns.dns.cluster.local."}, nil},
		{"a.b.c.d.e.default.svc.cluster.local", dns.TypeA, nx, nil, nil},
		{"webapp.default.other.cluster.local", dns.TypeA, nx, nil, nil},
		{"dns-version.cluster.local", dns.TypeTXT, noerror, []string{"TXT 1.1.0"}, nil},
		// Headless: the ready endpoints, each by its hostname or dashed address.
		{"db.default.svc.cluster.local", dns.TypeA, noerror, []string{"A 10.244.0.5", "A 10.244.0.6"}, nil},
		{"db-0.db.default.svc.cluster.local", dns.TypeA, noerror, []string{"A 10.244.0.5"}, nil},
		{"10-244-0-6.db.default.svc.cluster.local", dns.TypeA, noerror, []string{"A 10.244.0.6"}, nil},
		{"db-2.db.default.svc.cluster.local", dns.TypeA, nx, nil, nil}, // not ready
		{"nope.db.default.svc.cluster.local", dns.TypeA, nx, nil, nil},
		{"empty.default.svc.cluster.local", dns.TypeA, nx, nil, nil},
		// An endpoint name under a ClusterIP Service, as CoreDNS answers it.
		{"10-244-0-8.webapp.default.svc.cluster.local", dns.TypeA, noerror, []string{"A 10.244.0.8"}, nil},
		// SRV of named ports.
		{"_http._tcp.webapp.default.svc.cluster.local", dns.TypeSRV, noerror,
			[]string{"SRV 80 webapp.default.svc.cluster.local."}, []string{"A 10.96.0.50"}},
		{"_metrics._tcp.webapp.default.svc.cluster.local", dns.TypeSRV, noerror, []string{"SRV 9090 webapp.default.svc.cluster.local."}, nil},
		{"webapp.default.svc.cluster.local", dns.TypeSRV, noerror,
			[]string{"SRV 80 webapp.default.svc.cluster.local.", "SRV 9090 webapp.default.svc.cluster.local."}, nil},
		{"_pg._tcp.db.default.svc.cluster.local", dns.TypeSRV, noerror,
			[]string{"SRV 5432 10-244-0-6.db.default.svc.cluster.local.", "SRV 5432 db-0.db.default.svc.cluster.local."},
			[]string{"A 10.244.0.5", "A 10.244.0.6"}},
		{"_http._udp.webapp.default.svc.cluster.local", dns.TypeSRV, nx, nil, nil},
		{"_nope._tcp.webapp.default.svc.cluster.local", dns.TypeSRV, nx, nil, nil},
		// ExternalName: a CNAME, chased upstream for A.
		{"ext.default.svc.cluster.local", dns.TypeA, noerror, []string{"A 203.0.113.7", "CNAME example.org."}, nil},
		{"ext.default.svc.cluster.local", dns.TypeCNAME, noerror, []string{"CNAME example.org."}, nil},
		{"x.ext.default.svc.cluster.local", dns.TypeA, nx, nil, nil},
		// Pods, insecure: the address in the name.
		{"10-244-0-9.default.pod.cluster.local", dns.TypeA, noerror, []string{"A 10.244.0.9"}, nil},
		{"fd00--9.default.pod.cluster.local", dns.TypeAAAA, noerror, []string{"AAAA fd00::9"}, nil},
		{"10-244-0-9.default.pod.cluster.local", dns.TypeAAAA, noerror, nil, nil},
		{"not-an-ip.default.pod.cluster.local", dns.TypeA, nx, nil, nil},
		{"10-244-0-9.nons.pod.cluster.local", dns.TypeA, nx, nil, nil},
		// PTR of a ClusterIP.
		{"50.0.96.10.in-addr.arpa", dns.TypePTR, noerror, []string{"PTR webapp.default.svc.cluster.local."}, nil},
		// Other names go upstream.
		{"example.org", dns.TypeA, noerror, []string{"A 203.0.113.7"}, nil},
		{"nowhere.example.org", dns.TypeA, nx, nil, nil},
	} {
		t.Run(tc.name+"/"+dns.TypeToString[tc.qtype], func(t *testing.T) {
			r := query(t, c.addr, tc.name, tc.qtype, "udp")
			if r.Rcode != tc.rcode {
				t.Fatalf("rcode %s, want %s\n%v", dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.rcode], r)
			}
			if got := summary(r.Answer); !slices.Equal(got, tc.answer) {
				t.Errorf("answer %q, want %q", got, tc.answer)
			}
			if tc.extra != nil {
				if got := summary(r.Extra); !slices.Equal(got, tc.extra) {
					t.Errorf("additional %q, want %q", got, tc.extra)
				}
			}
			local := dns.IsSubDomain("cluster.local.", dns.Fqdn(strings.ToLower(tc.name)))
			if local && tc.answer == nil {
				// NXDOMAIN and NODATA carry the zone's SOA, so that resolvers cache them.
				if len(r.Ns) != 1 || r.Ns[0].Header().Rrtype != dns.TypeSOA || !r.Authoritative {
					t.Errorf("negative answer without SOA or not authoritative: %v", r)
				}
			}
		})
	}
}

// TestWatchUpdates checks that answers follow the watch: no polling, no restart.
func TestWatchUpdates(t *testing.T) {
	c := startServer(t, []string{}, clusterObjects()...)
	ctx := context.Background()
	if r := query(t, c.addr, "late.default.svc.cluster.local", dns.TypeA, "udp"); r.Rcode != dns.RcodeNameError {
		t.Fatalf("before create: %v", r)
	}
	if _, err := c.kube.CoreV1().Services("default").Create(ctx, service("default", "late", []string{"10.96.0.77"}, corev1.ServicePort{Port: 80}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, c.addr, "late.default.svc.cluster.local", []string{"A 10.96.0.77"})
	if err := c.kube.CoreV1().Services("default").Delete(ctx, "late", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, c.addr, "late.default.svc.cluster.local", nil)
	// A new ready endpoint of a headless Service.
	s := slice("default", "db", "db-new", nil, endpoint("10.244.0.20", "db-9", true))
	if _, err := c.kube.DiscoveryV1().EndpointSlices("default").Create(ctx, s, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitAnswer(t, c.addr, "db-9.db.default.svc.cluster.local", []string{"A 10.244.0.20"})
}

func waitAnswer(t *testing.T, addr, name string, want []string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		r := query(t, addr, name, dns.TypeA, "udp")
		got := summary(r.Answer)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: answer %q, want %q", name, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestTruncation: an answer too big for UDP comes truncated, whole over TCP; the same for
// forwarded answers.
func TestTruncation(t *testing.T) {
	up := fakeUpstream(t)
	objs := clusterObjects()
	var eps []discoveryv1.Endpoint
	for i := range 100 {
		eps = append(eps, endpoint(fmt.Sprintf("10.244.1.%d", i+1), "", true))
	}
	objs = append(objs, service("default", "wide", []string{corev1.ClusterIPNone}),
		slice("default", "wide", "wide-1", nil, eps...))
	c := startServer(t, []string{up}, objs...)
	for _, name := range []string{"wide.default.svc.cluster.local", "big.example.org"} {
		r := query(t, c.addr, name, dns.TypeA, "udp")
		if !r.Truncated {
			t.Errorf("%s over UDP: not truncated, %d answers", name, len(r.Answer))
		}
		r = query(t, c.addr, name, dns.TypeA, "tcp")
		want := 100
		if name == "big.example.org" {
			want = 60
		}
		if r.Truncated || len(r.Answer) != want {
			t.Errorf("%s over TCP: truncated %v, %d answers, want %d", name, r.Truncated, len(r.Answer), want)
		}
	}
	// A client with a large EDNS0 buffer gets it all over UDP.
	m := new(dns.Msg)
	m.SetQuestion("wide.default.svc.cluster.local.", dns.TypeA)
	m.SetEdns0(4096, false)
	r, _, err := (&dns.Client{Net: "udp", UDPSize: 4096}).Exchange(m, c.addr)
	if err != nil || r.Truncated || len(r.Answer) != 100 {
		t.Errorf("EDNS0 4096: err %v, truncated %v, %d answers", err, r != nil && r.Truncated, len(r.Answer))
	}
}

// TestUpstreamFailure: names outside the cluster domain get SERVFAIL when no upstream
// answers; cluster names never go upstream.
func TestUpstreamFailure(t *testing.T) {
	// A UDP port that is bound and never answers.
	silent, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	c := startServer(t, []string{silent.LocalAddr().String()}, clusterObjects()...)
	start := time.Now()
	r := query(t, c.addr, "example.org", dns.TypeA, "udp")
	if r.Rcode != dns.RcodeServerFailure {
		t.Errorf("rcode %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Errorf("SERVFAIL after %v: the upstream timeout is not applied", d)
	}
	if r := query(t, c.addr, "missing.default.svc.cluster.local", dns.TypeA, "udp"); r.Rcode != dns.RcodeNameError {
		t.Errorf("cluster name: %s", dns.RcodeToString[r.Rcode])
	}
}

// resolve is a stub resolver's search: with fewer than ndots dots the name is tried with
// each search domain first, then as is; the first answer that is not NXDOMAIN wins.
func resolve(t *testing.T, addr, name string, search []string, ndots int) (string, []string) {
	t.Helper()
	var tries []string
	if strings.Count(name, ".") < ndots {
		for _, s := range search {
			tries = append(tries, name+"."+s)
		}
	}
	tries = append(tries, name)
	for _, n := range tries {
		r := query(t, addr, n, dns.TypeA, "udp")
		if r.Rcode == dns.RcodeSuccess && len(r.Answer) > 0 {
			return dns.Fqdn(n), summary(r.Answer)
		}
	}
	return "", nil
}

// TestSearchPath resolves short names the way a pod's resolver does with the
// resolv.conf the agent writes (search <ns>.svc.cluster.local svc.cluster.local
// cluster.local, ndots:5).
func TestSearchPath(t *testing.T) {
	c := startServer(t, []string{}, clusterObjects()...)
	search := func(ns string) []string {
		return []string{ns + ".svc.cluster.local", "svc.cluster.local", "cluster.local"}
	}
	for _, tc := range []struct{ ns, name, fqdn, answer string }{
		{"default", "webapp", "webapp.default.svc.cluster.local.", "A 10.96.0.50"},
		{"shop", "webapp.default", "webapp.default.svc.cluster.local.", "A 10.96.0.50"},
		{"default", "webapp.default.svc", "webapp.default.svc.cluster.local.", "A 10.96.0.50"},
		{"default", "db-0.db", "db-0.db.default.svc.cluster.local.", "A 10.244.0.5"},
		{"shop", "dual", "dual.shop.svc.cluster.local.", "A 10.96.0.60"},
		{"default", "10-244-0-9.default.pod", "10-244-0-9.default.pod.cluster.local.", "A 10.244.0.9"},
	} {
		fq, got := resolve(t, c.addr, tc.name, search(tc.ns), 5)
		if fq != tc.fqdn || !slices.Equal(got, []string{tc.answer}) {
			t.Errorf("%s from %s: %s %q, want %s %s", tc.name, tc.ns, fq, got, tc.fqdn, tc.answer)
		}
	}
	if fq, _ := resolve(t, c.addr, "dual", search("default"), 5); fq != "" {
		t.Errorf("dual from default resolved as %s: it is in shop", fq)
	}
}

func TestDefaultListen(t *testing.T) {
	got := DefaultListen("192.0.2.2", "10.244.3.0/24")
	if want := []string{"192.0.2.2:53", "10.244.3.1:53"}; !slices.Equal(got, want) {
		t.Errorf("DefaultListen %q, want %q", got, want)
	}
}
