package proxy

import (
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

var testCfg = RuleConfig{
	NodeName:    "node-a",
	ServiceCIDR: netip.MustParsePrefix("10.96.0.0/12"),
	ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"),
}

func service(name string, mut func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.96.0.10",
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
		},
	}
	if mut != nil {
		mut(s)
	}
	return s
}

// slice makes an EndpointSlice of svc with port 8080 named http; each address is
// "ip@node" or "ip@node!" for a not ready one.
func slice(svc string, addrs ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: svc + "-x", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To[int32](8080)}},
	}
	for _, a := range addrs {
		ready := !strings.HasSuffix(a, "!")
		ip, node, _ := strings.Cut(strings.TrimSuffix(a, "!"), "@")
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, NodeName: ptr.To(node),
			Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(ready)}})
	}
	return s
}

// section returns the lines of one chain or map of a rendered ruleset.
func section(rendered, header string) string {
	i := strings.Index(rendered, header+" {\n")
	if i < 0 {
		return ""
	}
	rest := rendered[i:]
	return rest[:strings.Index(rest, "\n}\n")+3]
}

func TestBuildRuleset(t *testing.T) {
	tests := []struct {
		name     string
		svc      *corev1.Service
		slices   []*discoveryv1.EndpointSlice
		sections map[string]string // header -> exact text
		absent   []string          // substrings that must not appear
	}{{
		name:   "ClusterIP over two ready endpoints, one not ready left out",
		svc:    service("web", nil),
		slices: []*discoveryv1.EndpointSlice{slice("web", "10.244.1.3@node-b", "10.244.0.2@node-a", "10.244.0.9@node-a!")},
		sections: map[string]string{
			"chain svc-ns/web/tcp/http": `chain svc-ns/web/tcp/http {
	ip saddr != 10.244.0.0/16 jump mark-for-masquerade
	numgen random mod 2 == 0 goto ep-ns/web/tcp/http__10.244.0.2:8080
	goto ep-ns/web/tcp/http__10.244.1.3:8080
}
`,
			"chain ep-ns/web/tcp/http__10.244.0.2:8080": `chain ep-ns/web/tcp/http__10.244.0.2:8080 {
	ip saddr 10.244.0.2 jump mark-for-masquerade
	meta l4proto tcp dnat to 10.244.0.2:8080
}
`,
			"map service-ips": `map service-ips {
	10.96.0.10 . tcp . 80 : goto svc-ns/web/tcp/http
}
`,
		},
		absent: []string{"10.244.0.9", "ext-"},
	}, {
		name:   "no endpoints: rejected",
		svc:    service("empty", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort; s.Spec.Ports[0].NodePort = 30080 }),
		slices: []*discoveryv1.EndpointSlice{slice("empty", "10.244.0.9@node-a!")},
		sections: map[string]string{
			"map no-endpoint-services":  "map no-endpoint-services {\n\t10.96.0.10 . tcp . 80 : goto reject-chain\n}\n",
			"map no-endpoint-nodeports": "map no-endpoint-nodeports {\n\ttcp . 30080 : goto reject-chain\n}\n",
			"map service-ips":           "map service-ips {\n}\n",
		},
		absent: []string{"svc-ns/empty"},
	}, {
		name: "NodePort and LoadBalancer, externalTrafficPolicy Local",
		svc: service("lb", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeLoadBalancer
			s.Spec.Ports[0].NodePort = 31000
			s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
			s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.7"}}
		}),
		slices: []*discoveryv1.EndpointSlice{slice("lb", "10.244.1.3@node-b", "10.244.0.2@node-a")},
		sections: map[string]string{
			"chain ext-ns/lb/tcp/http": `chain ext-ns/lb/tcp/http {
	ip saddr 10.244.0.0/16 goto svc-ns/lb/tcp/http
	fib saddr type local jump mark-for-masquerade
	fib saddr type local goto svc-ns/lb/tcp/http
	goto ep-ns/lb/tcp/http__10.244.0.2:8080
}
`,
			"map service-nodeports": "map service-nodeports {\n\ttcp . 31000 : goto ext-ns/lb/tcp/http\n}\n",
			"map service-ips":       "map service-ips {\n\t10.96.0.10 . tcp . 80 : goto svc-ns/lb/tcp/http\n\t192.0.2.7 . tcp . 80 : goto ext-ns/lb/tcp/http\n}\n",
		},
	}, {
		name: "NodePort, externalTrafficPolicy Cluster: masqueraded",
		svc: service("np", func(s *corev1.Service) {
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 31001
		}),
		slices: []*discoveryv1.EndpointSlice{slice("np", "10.244.0.2@node-a")},
		sections: map[string]string{
			"chain ext-ns/np/tcp/http": "chain ext-ns/np/tcp/http {\n\tjump mark-for-masquerade\n\tgoto svc-ns/np/tcp/http\n}\n",
		},
	}, {
		name: "internalTrafficPolicy Local without a local endpoint: dropped",
		svc: service("itp", func(s *corev1.Service) {
			s.Spec.InternalTrafficPolicy = ptr.To(corev1.ServiceInternalTrafficPolicyLocal)
		}),
		slices: []*discoveryv1.EndpointSlice{slice("itp", "10.244.1.3@node-b")},
		sections: map[string]string{
			"chain svc-ns/itp/tcp/http": "chain svc-ns/itp/tcp/http {\n\tip saddr != 10.244.0.0/16 jump mark-for-masquerade\n\tdrop\n}\n",
		},
	}, {
		name: "sessionAffinity ClientIP",
		svc: service("sticky", func(s *corev1.Service) {
			s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
			s.Spec.SessionAffinityConfig = &corev1.SessionAffinityConfig{ClientIP: &corev1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
		}),
		slices: []*discoveryv1.EndpointSlice{slice("sticky", "10.244.0.2@node-a", "10.244.0.3@node-a")},
		sections: map[string]string{
			"chain svc-ns/sticky/tcp/http": `chain svc-ns/sticky/tcp/http {
	ip saddr != 10.244.0.0/16 jump mark-for-masquerade
	ip saddr @aff-ns/sticky/tcp/http__10.244.0.2:8080 goto ep-ns/sticky/tcp/http__10.244.0.2:8080
	ip saddr @aff-ns/sticky/tcp/http__10.244.0.3:8080 goto ep-ns/sticky/tcp/http__10.244.0.3:8080
	numgen random mod 2 == 0 goto ep-ns/sticky/tcp/http__10.244.0.2:8080
	goto ep-ns/sticky/tcp/http__10.244.0.3:8080
}
`,
			"chain ep-ns/sticky/tcp/http__10.244.0.3:8080": `chain ep-ns/sticky/tcp/http__10.244.0.3:8080 {
	ip saddr 10.244.0.3 jump mark-for-masquerade
	update @aff-ns/sticky/tcp/http__10.244.0.3:8080 { ip saddr }
	meta l4proto tcp dnat to 10.244.0.3:8080
}
`,
		},
	}, {
		name:   "ExternalName: nothing",
		svc:    service("ext", func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeExternalName; s.Spec.ClusterIP = "" }),
		absent: []string{"ns/ext"},
	}, {
		name:   "headless: nothing",
		svc:    service("headless", func(s *corev1.Service) { s.Spec.ClusterIP = corev1.ClusterIPNone }),
		slices: []*discoveryv1.EndpointSlice{slice("headless", "10.244.0.2@node-a")},
		absent: []string{"ns/headless"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := BuildRuleset(testCfg, []*corev1.Service{tt.svc}, tt.slices).String()
			for header, want := range tt.sections {
				if s := section(got, header); s != want {
					t.Errorf("%s:\n%s\nwant:\n%s", header, s, want)
				}
			}
			for _, a := range tt.absent {
				if strings.Contains(got, a) {
					t.Errorf("%q in:\n%s", a, got)
				}
			}
			if t.Failed() {
				t.Logf("whole ruleset:\n%s", got)
			}
		})
	}
}

func TestBaseChains(t *testing.T) {
	got := BuildRuleset(testCfg, nil, nil).String()
	for header, want := range map[string]string{
		"chain filter-output":  "chain filter-output {\n\ttype filter hook output priority -90\n\tct state new jump endpoints-check\n\tct state new ip daddr 10.96.0.0/12 meta l4proto tcp reject with tcp reset\n\tct state new ip daddr 10.96.0.0/12 reject\n}\n",
		"chain nat-prerouting": "chain nat-prerouting {\n\ttype nat hook prerouting priority -100\n\tjump services\n}\n",
		"chain services":       "chain services {\n\tip daddr . meta l4proto . th dport vmap @service-ips\n\tfib daddr type local meta l4proto . th dport vmap @service-nodeports\n}\n",
		"chain masquerading":   "chain masquerading {\n\tmeta mark & 0x4000 == 0 return\n\tmeta mark set mark ^ 0x4000\n\tmasquerade fully-random\n}\n",
	} {
		if s := section(got, header); s != want {
			t.Errorf("%s:\n%s\nwant:\n%s", header, s, want)
		}
	}
}

// TestKernelApply programs a ruleset into a table of the test's own and changes it
// incrementally, reading it back with nft when that is installed. Root only.
func TestKernelApply(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for netlink")
	}
	table := "berth-proxy-unit" + strings.ReplaceAll(t.Name(), "/", "")[len("TestKernelApply"):]
	k, err := newKernel(table)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.deleteTable(); err != nil {
			t.Error(err)
		}
		_ = k.close()
	})
	sticky := service("sticky", func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.ClusterIP = "10.96.0.11"
		s.Spec.Ports[0].NodePort = 31002
		s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
		s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "192.0.2.7"}}
	})
	svcs := []*corev1.Service{service("web", nil), sticky, service("empty", func(s *corev1.Service) { s.Spec.ClusterIP = "10.96.0.12" })}
	first := BuildRuleset(testCfg, svcs, []*discoveryv1.EndpointSlice{slice("web", "10.244.0.2@node-a"), slice("sticky", "10.244.0.5@node-a", "10.244.1.5@node-b")})
	if _, err := k.apply(first); err != nil {
		t.Fatalf("first apply: %v", err)
	}
	second := BuildRuleset(testCfg, svcs, []*discoveryv1.EndpointSlice{slice("web", "10.244.0.2@node-a", "10.244.0.3@node-a"), slice("sticky", "10.244.1.5@node-b")})
	n, err := k.apply(second)
	if err != nil {
		t.Fatalf("second apply: %v", err)
	}
	if n == 0 || n > 20 {
		t.Errorf("second apply changed %d objects", n)
	}
	if n, err := k.apply(second); err != nil || n != 0 {
		t.Errorf("same ruleset again: %d changes, %v", n, err)
	}
	if _, err := exec.LookPath("nft"); err == nil {
		out, err := exec.Command("nft", "list", "table", "ip", table).CombinedOutput()
		if err != nil {
			t.Fatalf("nft list: %v\n%s", err, out)
		}
		s := string(out)
		for _, want := range []string{
			`10.96.0.10 . tcp . 80 : goto svc-ns/web/tcp/http`,
			`numgen random mod 2 0 goto ep-ns/web/tcp/http__10.244.0.2:8080`,
			`dnat to 10.244.0.3:8080`,
			`update @aff-ns/sticky/tcp/http__10.244.1.5:8080 { ip saddr }`,
			`10.96.0.12 . tcp . 80 : goto reject-chain`,
			`fib daddr type local meta l4proto . th dport vmap @service-nodeports`,
		} {
			if !strings.Contains(s, want) {
				t.Errorf("nft list lacks %q", want)
			}
		}
		if strings.Contains(s, "10.244.0.5") {
			t.Errorf("the removed endpoint is still there")
		}
		if t.Failed() {
			t.Logf("nft list table:\n%s", s)
		}
	}
}

// TestServiceRulesetsMakeTheWhole checks that the parts of the table the Services own, as
// incremental syncs compute them, add up to the whole table.
func TestServiceRulesetsMakeTheWhole(t *testing.T) {
	svcs := []*corev1.Service{
		service("web", nil),
		service("np", func(s *corev1.Service) {
			s.Spec.ClusterIP = "10.96.0.11"
			s.Spec.Type = corev1.ServiceTypeNodePort
			s.Spec.Ports[0].NodePort = 31001
		}),
		service("empty", func(s *corev1.Service) { s.Spec.ClusterIP = "10.96.0.12" }),
	}
	slices := []*discoveryv1.EndpointSlice{slice("web", "10.244.0.2@node-a"), slice("np", "10.244.0.3@node-b", "10.244.0.4@node-a")}
	whole := BuildRuleset(testCfg, svcs, slices)
	sum := baseRuleset(testCfg)
	for _, s := range svcs {
		sum.merge(serviceRuleset(testCfg, s, slices))
	}
	if a, b := whole.String(), sum.String(); a != b {
		t.Errorf("whole:\n%s\nsum of the parts:\n%s", a, b)
	}
	if gone := serviceRuleset(testCfg, nil, slices); len(gone.Chains) != 0 || gone.elems() != 0 {
		t.Errorf("a deleted Service owns %s", gone)
	}
}
