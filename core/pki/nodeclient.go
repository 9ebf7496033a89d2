package pki

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"time"

	"k8s.io/client-go/util/cert"
)

// The identity the API server presents to node agents when it proxies logs, exec,
// attach and port-forward, as kube-apiserver's --kubelet-client-certificate does
// (kubeadm names it apiserver-kubelet-client, in group system:masters).
const (
	NodeClientUser  = "kube-apiserver-kubelet-client"
	NodeClientGroup = groupMasters
)

// NodeClientTLS returns the TLS configuration of the API server's connections to node
// agents: a client certificate for NodeClientUser signed by the CA, issued afresh at each
// start (it is never written to disk, so there is nothing to renew or protect), and no
// verification of the agent's serving certificate, which agents sign themselves, as
// kube-apiserver does without --kubelet-certificate-authority.
func (b *Bundle) NodeClientTLS() (*tls.Config, error) {
	certPEM, keyPEM, err := b.IssueClientCert(NodeClientUser, []string{NodeClientGroup})
	if err != nil {
		return nil, fmt.Errorf("node client certificate: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("node client certificate: %w", err)
	}
	return &tls.Config{
		Certificates:       []tls.Certificate{pair},
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, //nolint:gosec // agents' serving certificates are self-signed (docs/agent.md)
		// Upgraded connections (SPDY, WebSocket) need HTTP/1.1.
		NextProtos: []string{"http/1.1"},
	}, nil
}

// NewAuthenticatorFromPEM returns an Authenticator that trusts client certificates signed
// by any CA certificate in caPEM (a kubeconfig's certificate-authority-data, say).
func NewAuthenticatorFromPEM(caPEM []byte) (*Authenticator, error) {
	cas, err := cert.ParseCertsPEM(caPEM)
	if err != nil {
		return nil, fmt.Errorf("parse client CA: %w", err)
	}
	roots := x509.NewCertPool()
	for _, c := range cas {
		roots.AddCert(c)
	}
	return &Authenticator{roots: roots, verified: map[string]verifiedCert{}}, nil
}

// SelfSignedServing returns a serving certificate signed by its own new key for hosts
// (names or IPs), valid one year: what a node agent serves when no CA issues it one,
// like the kubelet's self-signed certificate when it has no --tls-cert-file.
func SelfSignedServing(cn string, hosts []string) (tls.Certificate, error) {
	if cn == "" {
		return tls.Certificate{}, errors.New("self-signed serving certificate: empty common name")
	}
	key, keyPEM, err := newKey()
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(leafValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(randReader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("self-sign serving certificate for %s: %w", cn, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("parse self-signed certificate: %w", err)
	}
	return tls.X509KeyPair(encodeCert(leaf), keyPEM)
}
