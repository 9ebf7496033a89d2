package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/util/cert"
	"k8s.io/client-go/util/keyutil"
)

// randReader is the entropy source for keys and signatures.
var randReader = rand.Reader

// servingCN is the serving certificate's subject; clients check SANs, not this.
const servingCN = "berth-apiserver"

// IssueClientCert signs a client certificate for user (CN=user, O=groups, valid one
// year) and returns it and its new private key, PEM-encoded.
func (b *Bundle) IssueClientCert(user string, groups []string) (certPEM, keyPEM []byte, err error) {
	if user == "" {
		return nil, nil, errors.New("issue client certificate: user name is empty")
	}
	certPEM, keyPEM, _, err = b.issue(clientTemplate(user, groups, time.Now()))
	if err != nil {
		return nil, nil, fmt.Errorf("issue client certificate for %q: %w", user, err)
	}
	return certPEM, keyPEM, nil
}

// issue creates a new key and signs tmpl for it with the CA.
func (b *Bundle) issue(tmpl *x509.Certificate) (certPEM, keyPEM []byte, leaf *x509.Certificate, err error) {
	if b.CACert == nil || b.CAKey == nil {
		return nil, nil, nil, errors.New("bundle has no CA certificate and key")
	}
	// A leaf that outlives its CA is useless past the CA's end; saying so in the
	// certificate lets renewal logic see the real deadline.
	if tmpl.NotAfter.After(b.CACert.NotAfter) {
		tmpl.NotAfter = b.CACert.NotAfter
	}
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, nil, nil, err
	}
	der, err := x509.CreateCertificate(randReader, tmpl, b.CACert, key.Public(), b.CAKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("sign certificate: %w", err)
	}
	leaf, err = x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("parse signed certificate: %w", err)
	}
	return encodeCert(leaf), keyPEM, leaf, nil
}

// newKey generates an ECDSA P-256 key: small, fast, and accepted by every Kubernetes
// client.
func newKey() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), randReader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate ECDSA P-256 key: %w", err)
	}
	keyPEM, err := keyutil.MarshalPrivateKeyToPEM(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode private key: %w", err)
	}
	return key, keyPEM, nil
}

// Templates leave SerialNumber nil: x509.CreateCertificate then picks a random,
// RFC 5280 compliant serial, which keeps re-issued certificates distinguishable.

func caTemplate(now time.Time) *x509.Certificate {
	return &x509.Certificate{
		// The timestamp tells CAs from different installs apart in error messages and
		// in kubeconfigs, as k3s does.
		Subject:               pkix.Name{CommonName: fmt.Sprintf("berth-ca@%d", now.Unix())},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// The CA signs only leaves; no intermediate may chain from it.
		MaxPathLenZero: true,
	}
}

func servingTemplate(sans cert.AltNames, now time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: servingCN},
		NotBefore:   now.Add(-backdate),
		NotAfter:    now.Add(leafValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    slices.Clone(sans.DNSNames),
		IPAddresses: slices.Clone(sans.IPs),
	}
}

func clientTemplate(user string, groups []string, now time.Time) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: user, Organization: slices.Clone(groups)},
		NotBefore:   now.Add(-backdate),
		NotAfter:    now.Add(leafValidity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// requestedSANs returns the default SANs plus extra, de-duplicated. An extra entry
// that is neither an IP nor a valid DNS name is an error, so a typo such as a URL
// fails the start instead of producing a certificate no client can use.
func requestedSANs(extra []string) (cert.AltNames, error) {
	var sans cert.AltNames
	addSAN(&sans, "localhost")
	addSAN(&sans, "127.0.0.1")
	addSAN(&sans, "::1")
	// The host name is a convenience, not a requirement: the loopback names still
	// work, so an unusual or unreadable host name must not stop the server.
	if host, err := os.Hostname(); err == nil && validDNSName(strings.ToLower(host)) {
		addSAN(&sans, host)
	}
	for _, s := range extra {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if net.ParseIP(s) == nil && !validDNSName(strings.ToLower(s)) {
			return sans, fmt.Errorf("extra SAN %q is neither an IP address nor a DNS name", s)
		}
		addSAN(&sans, s)
	}
	return sans, nil
}

func validDNSName(s string) bool {
	return len(validation.IsDNS1123Subdomain(s)) == 0 || len(validation.IsWildcardDNS1123Subdomain(s)) == 0
}

func addSAN(sans *cert.AltNames, s string) {
	if ip := net.ParseIP(s); ip != nil {
		if !slices.ContainsFunc(sans.IPs, ip.Equal) {
			sans.IPs = append(sans.IPs, ip)
		}
		return
	}
	// DNS names compare case-insensitively; storing them lower-case keeps the
	// "already present" check simple.
	s = strings.ToLower(s)
	if !slices.Contains(sans.DNSNames, s) {
		sans.DNSNames = append(sans.DNSNames, s)
	}
}

// sansCoveredBy reports whether c carries every name in sans.
func sansCoveredBy(sans cert.AltNames, c *x509.Certificate) bool {
	for _, name := range sans.DNSNames {
		if !slices.ContainsFunc(c.DNSNames, func(have string) bool { return strings.EqualFold(have, name) }) {
			return false
		}
	}
	for _, ip := range sans.IPs {
		if !slices.ContainsFunc(c.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

func encodeCert(c *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: cert.CertificateBlockType, Bytes: c.Raw})
}
