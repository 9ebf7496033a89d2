package pki

import (
	"crypto/x509"
	"net/http"
	"slices"
	"sync"
	"time"
)

// groupAuthenticated is added to every authenticated user, as Kubernetes does, so RBAC
// rules can grant something to "anyone with a valid identity".
const groupAuthenticated = "system:authenticated"

// maxVerified bounds the cache of verified client certificates; a cluster has few.
const maxVerified = 1024

// User is who a request is, taken from its verified client certificate.
type User struct {
	Name   string
	Groups []string
}

// Authenticator authenticates requests by client certificate against one CA.
type Authenticator struct {
	roots *x509.CertPool

	mu sync.Mutex
	// verified caches, by the leaf's DER bytes, certificates that verified, with the user
	// they name, so a signature check is paid once per certificate, not once per request.
	verified map[string]verifiedCert
}

type verifiedCert struct {
	user     User
	notAfter time.Time
}

// NewAuthenticator returns an Authenticator that trusts client certificates signed by ca.
func NewAuthenticator(ca *x509.Certificate) *Authenticator {
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	return &Authenticator{roots: roots, verified: map[string]verifiedCert{}}
}

// Authenticate returns the user of a request from its client certificate, verified
// against the CA for client authentication: CN is the name, each O a group, plus
// system:authenticated. ok is false when the request carries no certificate, one this CA
// did not sign (or expired, or not for client auth), or one without a CN, so the caller
// answers 401 as kube-apiserver does. The TLS handshake only requests the certificate
// (TLSConfig), so a foreign one reaches this point instead of failing the handshake.
func (a *Authenticator) Authenticate(r *http.Request) (User, bool) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return User{}, false
	}
	leaf := r.TLS.PeerCertificates[0]
	now := time.Now()
	a.mu.Lock()
	v, ok := a.verified[string(leaf.Raw)]
	a.mu.Unlock()
	if ok && now.Before(v.notAfter) {
		return v.user, true
	}
	opts := x509.VerifyOptions{
		Roots:         a.roots,
		Intermediates: x509.NewCertPool(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		CurrentTime:   now,
	}
	for _, c := range r.TLS.PeerCertificates[1:] {
		opts.Intermediates.AddCert(c)
	}
	if _, err := leaf.Verify(opts); err != nil {
		return User{}, false
	}
	// Kubernetes' x509 authenticator rejects an empty CN too: it would be a user
	// with no name that RBAC cannot refer to.
	if leaf.Subject.CommonName == "" {
		return User{}, false
	}
	groups := slices.Clone(leaf.Subject.Organization)
	if !slices.Contains(groups, groupAuthenticated) {
		groups = append(groups, groupAuthenticated)
	}
	user := User{Name: leaf.Subject.CommonName, Groups: groups}
	a.mu.Lock()
	if len(a.verified) >= maxVerified {
		clear(a.verified)
	}
	a.verified[string(leaf.Raw)] = verifiedCert{user: user, notAfter: leaf.NotAfter}
	a.mu.Unlock()
	return user, true
}
