package pki

import (
	"net/http"
	"slices"
)

// groupAuthenticated is added to every authenticated user, as Kubernetes does, so RBAC
// rules can grant something to "anyone with a valid identity".
const groupAuthenticated = "system:authenticated"

// User is who a request is, taken from its verified client certificate.
type User struct {
	Name   string
	Groups []string
}

// Authenticate returns the user of a request from its verified client certificate:
// CN is the name, each O a group, plus system:authenticated. ok is false when the
// request carries no verified certificate, or one without a CN, so the caller can
// answer 401. It relies on TLSConfig having verified the chain against the CA.
func Authenticate(r *http.Request) (User, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.VerifiedChains[0]) == 0 {
		return User{}, false
	}
	leaf := r.TLS.VerifiedChains[0][0]
	// Kubernetes' x509 authenticator rejects an empty CN too: it would be a user
	// with no name that RBAC cannot refer to.
	if leaf.Subject.CommonName == "" {
		return User{}, false
	}
	groups := slices.Clone(leaf.Subject.Organization)
	if !slices.Contains(groups, groupAuthenticated) {
		groups = append(groups, groupAuthenticated)
	}
	return User{Name: leaf.Subject.CommonName, Groups: groups}, true
}
