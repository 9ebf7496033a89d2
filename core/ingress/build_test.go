package ingress

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

// worldOf is a world whose listers hold objs (Services, EndpointSlices, Secrets).
func worldOf(t *testing.T, objs ...runtime.Object) *world {
	t.Helper()
	idx := func() cache.Indexer {
		return cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	}
	svcs, slices, secrets := idx(), idx(), idx()
	for _, o := range objs {
		var err error
		switch o.(type) {
		case *corev1.Service:
			err = svcs.Add(o)
		case *discoveryv1.EndpointSlice:
			err = slices.Add(o)
		case *corev1.Secret:
			err = secrets.Add(o)
		default:
			t.Fatalf("worldOf: unexpected %T", o)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return &world{services: corelisters.NewServiceLister(svcs), slices: discoverylisters.NewEndpointSliceLister(slices),
		secrets: corelisters.NewSecretLister(secrets)}
}

func emptyWorld() *world {
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	return &world{services: corelisters.NewServiceLister(idx), slices: discoverylisters.NewEndpointSliceLister(idx),
		secrets: corelisters.NewSecretLister(idx)}
}

func service(name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: corev1.ServiceSpec{Ports: ports}}
}

// slice is an EndpointSlice of Service svc with one port (name, number) and endpoints
// "ip" (ready) or "ip!" (not ready).
func slice(name, svc, portName string, port int32, eps ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To(portName), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	for _, e := range eps {
		ip, notReady := strings.CutSuffix(e, "!")
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{ip}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(!notReady)}})
	}
	return s
}

func backendIngress(name string, port networkingv1.ServiceBackendPort, svc string) *networkingv1.Ingress {
	return &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}, Spec: networkingv1.IngressSpec{
		DefaultBackend: &networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: svc, Port: port}},
	}}
}

// TestBackendResolution: a backend's port by number or name, the matching EndpointSlice
// port, ready endpoints only, and why there are none.
func TestBackendResolution(t *testing.T) {
	w := worldOf(t,
		service("web", corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
			corev1.ServicePort{Name: "admin", Port: 81, TargetPort: intstr.FromInt32(9090)}),
		slice("web-1", "web", "http", 8080, "10.0.0.1", "10.0.0.2!", "10.0.0.3"),
		slice("web-2", "web", "http", 8080, "10.0.0.4"),
		slice("web-admin", "web", "admin", 9090, "10.0.0.1"),
		service("idle", corev1.ServicePort{Port: 80}),
		slice("idle-1", "idle", "", 80, "10.0.0.9!"),
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "dns", Namespace: "default"}, Spec: corev1.ServiceSpec{
			Ports: []corev1.ServicePort{{Port: 53, Protocol: corev1.ProtocolUDP}}}},
	)
	for _, tc := range []struct {
		name string
		svc  string
		port networkingv1.ServiceBackendPort
		want string // endpoints joined by " ", or the start of Why
	}{
		{"by number", "web", networkingv1.ServiceBackendPort{Number: 80}, "10.0.0.1:8080 10.0.0.3:8080 10.0.0.4:8080"},
		{"by name", "web", networkingv1.ServiceBackendPort{Name: "admin"}, "10.0.0.1:9090"},
		{"a port the Service lacks", "web", networkingv1.ServiceBackendPort{Number: 8080}, "service default/web has no port 8080"},
		{"a name the Service lacks", "web", networkingv1.ServiceBackendPort{Name: "metrics"}, `service default/web has no port "metrics"`},
		{"no ready endpoint", "idle", networkingv1.ServiceBackendPort{Number: 80}, "service default/idle has no ready endpoint"},
		{"no such Service", "gone", networkingv1.ServiceBackendPort{Number: 80}, "service default/gone not found"},
		{"not TCP", "dns", networkingv1.ServiceBackendPort{Number: 53}, "service default/dns port 53 is UDP, not TCP"},
	} {
		table := w.build([]*networkingv1.Ingress{backendIngress("i", tc.port, tc.svc)})
		b := table.Route("x", "/")
		got := strings.Join(b.Endpoints, " ")
		if got == "" {
			got = b.Why
		}
		if got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

// testCert makes a self-signed certificate for hosts and the Secret holding it.
func testCert(t *testing.T, name string, hosts ...string) (*corev1.Secret, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames: hosts, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID(name), ResourceVersion: "1"},
		Type:       corev1.SecretTypeTLS,
		Data: map[string][]byte{
			corev1.TLSCertKey:       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			corev1.TLSPrivateKeyKey: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		},
	}, cert
}

// TestCertificateSelection: by SNI, exact host first, then a wildcard of one label, then a
// tls section without hosts; the older Ingress wins a host; a missing or broken Secret is
// reported and skipped.
func TestCertificateSelection(t *testing.T) {
	fooSecret, _ := testCert(t, "foo", "foo.example.com")
	wildSecret, _ := testCert(t, "wild", "*.example.com")
	anySecret, _ := testCert(t, "any", "any")
	youngSecret, _ := testCert(t, "young", "foo.example.com")
	broken := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "broken", Namespace: "default"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: []byte("not PEM"), corev1.TLSPrivateKeyKey: []byte("nor this")}}
	w := worldOf(t, fooSecret, wildSecret, anySecret, youngSecret, broken)
	old := testIngress("old", 0, nil)
	old.Spec.TLS = []networkingv1.IngressTLS{
		{Hosts: []string{"foo.example.com"}, SecretName: "foo"},
		{Hosts: []string{"*.example.com"}, SecretName: "wild"},
		{SecretName: "any"},
		{Hosts: []string{"missing.example.com"}, SecretName: "missing"},
		{Hosts: []string{"broken.example.com"}, SecretName: "broken"},
	}
	young := testIngress("young", 1, nil)
	young.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{"foo.example.com", "young.org"}, SecretName: "young"}}
	table := w.build([]*networkingv1.Ingress{young, old})
	subject := func(serverName string) string {
		c := table.certs.lookup(serverName)
		if c == nil {
			return ""
		}
		x, err := x509.ParseCertificate(c.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return x.Subject.CommonName
	}
	for _, tc := range []struct{ sni, want string }{
		{"foo.example.com", "foo"}, // exact, and the older Ingress's
		{"FOO.example.com", "foo"},
		{"bar.example.com", "wild"},
		{"a.bar.example.com", "any"}, // a wildcard covers one label
		{"young.org", "young"},
		{"", "any"},
		{"missing.example.com", "wild"},
		{"broken.example.com", "wild"},
	} {
		if got := subject(tc.sni); got != tc.want {
			t.Errorf("SNI %q: certificate %q, want %q", tc.sni, got, tc.want)
		}
	}
	problems := strings.Join(w.problems, "\n")
	for _, want := range []string{"secret default/missing not found", "secret default/broken"} {
		if !strings.Contains(problems, want) {
			t.Errorf("problems %q do not mention %q", problems, want)
		}
	}
	// A rebuild with the same Secrets parses nothing again.
	before := table.certs.exact["foo.example.com"].cert
	if again := w.build([]*networkingv1.Ingress{young, old}); again.certs.exact["foo.example.com"].cert != before {
		t.Error("an unchanged Secret's certificate was parsed again")
	}
	if got := emptyWorld().build(nil).certs.lookup("foo.example.com"); got != nil {
		t.Error("a table without tls sections has a certificate")
	}
}

// TestServing drives the controller's handler over real HTTP and HTTPS listeners on
// loopback, with backends that are real servers on loopback: routing, round robin, 404,
// 503, the Host header and X-Forwarded-For kept, a dead endpoint skipped, and the
// certificate chosen by SNI (the default one when no Ingress has one).
func TestServing(t *testing.T) {
	var backends []string
	for i := range 2 {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "b%d %s %s %s", i, r.Host, r.URL.Path, r.Header.Get("X-Forwarded-For"))
		}))
		t.Cleanup(srv.Close)
		backends = append(backends, strings.TrimPrefix(srv.URL, "http://"))
	}
	// A port nobody listens on: a pod that went away.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()

	c, err := New(Config{Kube: fake.NewClientset(), NodeName: "n"})
	if err != nil {
		t.Fatal(err)
	}
	webSecret, webCert := testCert(t, "web-tls", "web.example.com")
	w := worldOf(t, webSecret)
	ing := testIngress("ing", 0, map[string][]path{"web.example.com": {{prefix, "/app", "web"}, {exact, "/down", "down"}}})
	ing.Spec.TLS = []networkingv1.IngressTLS{{Hosts: []string{"web.example.com"}, SecretName: "web-tls"}}
	table := w.build([]*networkingv1.Ingress{ing})
	// Endpoints set by hand: the httptest servers listen on ports of their own.
	for _, r := range table.exact["web.example.com"].paths {
		if r.backend.Service == "web" {
			r.backend.Endpoints = []string{backends[0], dead, backends[1]}
		}
	}
	c.table.Store(table)

	plain := httptest.NewServer(c)
	t.Cleanup(plain.Close)
	secure := httptest.NewUnstartedServer(c)
	secure.TLS = &tls.Config{GetCertificate: c.getCertificate}
	secure.StartTLS()
	t.Cleanup(secure.Close)

	get := func(client *http.Client, url, host string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s (Host %s): %v", url, host, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	seen := map[string]int{}
	for range 6 {
		code, body := get(plain.Client(), plain.URL+"/app/x", "web.example.com")
		if code != 200 || !strings.HasSuffix(body, " web.example.com /app/x 127.0.0.1") {
			t.Fatalf("GET /app/x: %d %q; want 200 from a backend that saw the Host, path and X-Forwarded-For", code, body)
		}
		seen[strings.Fields(body)[0]]++
	}
	if seen["b0"] != 3 || seen["b1"] != 3 {
		t.Errorf("6 requests over 2 live endpoints (and a dead one skipped) went %v; want 3 each", seen)
	}
	if code, body := get(plain.Client(), plain.URL+"/other", "web.example.com"); code != 404 {
		t.Errorf("no rule: %d %q, want 404", code, body)
	}
	if code, body := get(plain.Client(), plain.URL+"/down", "web.example.com"); code != 503 || !strings.Contains(body, "service default/down not found") {
		t.Errorf("backend without endpoints: %d %q, want 503 saying why", code, body)
	}

	// HTTPS: the Ingress's certificate for its host, trusted as such.
	roots := x509.NewCertPool()
	roots.AddCert(webCert)
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "web.example.com"},
	}}
	if code, body := get(client, secure.URL+"/app", "web.example.com"); code != 200 || !strings.Contains(body, "web.example.com /app") {
		t.Errorf("HTTPS GET /app: %d %q", code, body)
	}
	// Another name gets the default certificate, which the Ingress's CA does not sign.
	conn, err := tls.Dial("tcp", strings.TrimPrefix(secure.URL, "https://"), &tls.Config{ServerName: "other.example.com", InsecureSkipVerify: true})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if cn := conn.ConnectionState().PeerCertificates[0].Subject.CommonName; cn != "berth ingress default certificate" {
		t.Errorf("certificate for an unknown name: %q, want the default one", cn)
	}
	if !bytes.Equal(conn.ConnectionState().PeerCertificates[0].Raw, c.defCert.Certificate[0]) {
		t.Error("the default certificate is not the controller's")
	}
}
