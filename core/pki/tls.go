package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
)

// TLSConfig returns the API server's TLS configuration: the serving certificate,
// TLS 1.2 or later, HTTP/2 and HTTP/1.1, and client certificates verified against the
// CA when offered. A client without a certificate still completes the handshake, so
// the handler can answer 401 (or serve anonymous requests) like kube-apiserver does;
// a client offering a certificate from another CA fails the handshake.
func (b *Bundle) TLSConfig() (*tls.Config, error) {
	if b.CACert == nil {
		return nil, errors.New("build TLS config: bundle has no CA certificate")
	}
	serving, err := tls.LoadX509KeyPair(b.ServingCertFile, b.ServingKeyFile)
	if err != nil {
		return nil, fmt.Errorf("load serving certificate %s and key %s: %w", b.ServingCertFile, b.ServingKeyFile, err)
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(b.CACert)
	return &tls.Config{
		Certificates: []tls.Certificate{serving},
		MinVersion:   tls.VersionTLS12,
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    clientCAs,
		// Listing h2 also makes net/http's Server.Serve enable HTTP/2 on this config,
		// which client-go uses for watches.
		NextProtos: []string{"h2", "http/1.1"},
	}, nil
}
