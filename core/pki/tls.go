package pki

import (
	"crypto/tls"
	"errors"
	"fmt"
)

// TLSConfig returns the API server's TLS configuration: the serving certificate,
// TLS 1.2 or later, HTTP/2 and HTTP/1.1, and client certificates requested but not
// verified in the handshake: Authenticate verifies them per request, so a client without
// a certificate, or with one of another CA, gets an HTTP 401 as kube-apiserver answers
// (kubectl then says "You must be logged in to the server"), not a TLS alert.
func (b *Bundle) TLSConfig() (*tls.Config, error) {
	if b.CACert == nil {
		return nil, errors.New("build TLS config: bundle has no CA certificate")
	}
	serving, err := tls.LoadX509KeyPair(b.ServingCertFile, b.ServingKeyFile)
	if err != nil {
		return nil, fmt.Errorf("load serving certificate %s and key %s: %w", b.ServingCertFile, b.ServingKeyFile, err)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{serving},
		MinVersion:   tls.VersionTLS12,
		ClientAuth:   tls.RequestClientCert,
		// Listing h2 also makes net/http's Server.Serve enable HTTP/2 on this config,
		// which client-go uses for watches.
		NextProtos: []string{"h2", "http/1.1"},
	}, nil
}
