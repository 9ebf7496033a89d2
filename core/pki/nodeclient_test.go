package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
)

// TestNodeClientTLS: the API server's certificate for node agents names its identity and
// passes an agent's Authenticator built from the CA's PEM, as a kubeconfig carries it;
// another CA's agent refuses it.
func TestNodeClientTLS(t *testing.T) {
	b := mustEnsure(t, t.TempDir(), nil)
	cfg, err := b.NodeClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Certificates) != 1 || !cfg.InsecureSkipVerify {
		t.Fatalf("config: %d certificates, InsecureSkipVerify %v", len(cfg.Certificates), cfg.InsecureSkipVerify)
	}
	leaf := cfg.Certificates[0].Leaf
	if leaf.Subject.CommonName != NodeClientUser || !slices.Equal(leaf.Subject.Organization, []string{NodeClientGroup}) {
		t.Errorf("subject %v", leaf.Subject)
	}
	request := func() *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}
		return r
	}
	auth, err := NewAuthenticatorFromPEM(b.CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	if user, ok := auth.Authenticate(request()); !ok || user.Name != NodeClientUser || !slices.Contains(user.Groups, NodeClientGroup) {
		t.Errorf("Authenticate = %+v, %v", user, ok)
	}
	other, err := NewAuthenticatorFromPEM(mustEnsure(t, t.TempDir(), nil).CAPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := other.Authenticate(request()); ok {
		t.Error("another CA's authenticator accepted the certificate")
	}
	if _, err := NewAuthenticatorFromPEM([]byte("not PEM")); err == nil {
		t.Error("NewAuthenticatorFromPEM accepted garbage")
	}
}

func TestSelfSignedServing(t *testing.T) {
	pair, err := SelfSignedServing("node-1", []string{"10.0.0.7", "node-1", "localhost", ""})
	if err != nil {
		t.Fatal(err)
	}
	leaf := pair.Leaf
	if leaf.Subject.CommonName != "node-1" || len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal([]byte{10, 0, 0, 7}) ||
		!slices.Equal(leaf.DNSNames, []string{"node-1", "localhost"}) {
		t.Errorf("certificate: CN %q, IPs %v, names %v", leaf.Subject.CommonName, leaf.IPAddresses, leaf.DNSNames)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "node-1"}); err != nil {
		t.Errorf("verify against itself: %v", err)
	}
	if _, err := SelfSignedServing("", nil); err == nil {
		t.Error("empty common name accepted")
	}
}
