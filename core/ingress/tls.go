package ingress

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// certEntry is one certificate of an Ingress's tls section, with the Ingress's place among
// all Ingresses (oldest first): the oldest Ingress wins a host two of them claim.
type certEntry struct {
	cert  *tls.Certificate
	order int
}

// certs are the certificates of a Table, by the hosts of the tls sections that name them.
type certs struct {
	exact    map[string]*certEntry // host -> certificate
	wildcard map[string]*certEntry // ".example.com" (of *.example.com) -> certificate
	// fallback is the certificate of the oldest tls section without hosts (which
	// Kubernetes says applies to every host), if any.
	fallback *certEntry
}

// add records cert for hosts (none: every host), unless an older Ingress has it already.
func (c *certs) add(hosts []string, cert *tls.Certificate, order int) {
	e := &certEntry{cert: cert, order: order}
	if len(hosts) == 0 {
		if c.fallback == nil || c.fallback.order > order {
			c.fallback = e
		}
		return
	}
	for _, h := range hosts {
		h = normalizeHost(h)
		m, key := c.exact, h
		if strings.HasPrefix(h, "*.") {
			m, key = c.wildcard, h[1:]
		}
		if old := m[key]; old == nil || old.order > order {
			m[key] = e
		}
	}
}

// lookup returns the certificate for a TLS client's server name (SNI): the one of that
// exact host, else of the wildcard host covering it (one label), else the one for every
// host; nil when there is none (the caller serves its own default certificate).
func (c *certs) lookup(serverName string) *tls.Certificate {
	name := normalizeHost(serverName)
	if e := c.exact[name]; e != nil {
		return e.cert
	}
	if i := strings.IndexByte(name, '.'); i > 0 {
		if e := c.wildcard[name[i:]]; e != nil {
			return e.cert
		}
	}
	if c.fallback != nil {
		return c.fallback.cert
	}
	return nil
}

// secretCertificate parses a kubernetes.io/tls Secret's tls.crt and tls.key.
func secretCertificate(s *corev1.Secret) (*tls.Certificate, error) {
	crt, key := s.Data[corev1.TLSCertKey], s.Data[corev1.TLSPrivateKeyKey]
	if len(crt) == 0 || len(key) == 0 {
		return nil, fmt.Errorf("secret %s/%s has no %s or no %s", s.Namespace, s.Name, corev1.TLSCertKey, corev1.TLSPrivateKeyKey)
	}
	cert, err := tls.X509KeyPair(crt, key)
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return &cert, nil
}

// selfSignedCertificate makes the certificate served to TLS clients whose server name no
// Ingress has a certificate for, as ingress-nginx serves its "fake certificate": the
// handshake succeeds and the request is routed (or answered 404), and a client that checks
// certificates sees that it is not the host's.
func selfSignedCertificate() (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("default certificate key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return nil, fmt.Errorf("default certificate serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "berth ingress default certificate"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("default certificate: %w", err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
