// Package apiserver is berth's compact Kubernetes API server: REST verbs, watch, patch,
// discovery, OpenAPI and server-side tables over the object store, for the resources in
// core/registry.
package apiserver

import (
	"context"
	"fmt"
	"io"
	"net/http"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"berth.dev/berth/core/apiserver/admissionplugins"
	"berth.dev/berth/core/apiserver/openapi"
	"berth.dev/berth/core/pki"
	"berth.dev/berth/core/registry"
	"berth.dev/berth/core/storage"
)

// maxBodyBytes bounds a request body, as kube-apiserver does (3 MiB objects plus slack).
const maxBodyBytes = 3 << 20

// Handler serves the Kubernetes API over a store.
type Handler struct {
	store      *storage.Store
	openapi    *openapi.Service
	namespaces *namespaceCache
	policies   *policies
	services   *serviceAllocator
	fields     fieldManagers
	mux        *http.ServeMux
	// watches shares one etcd watch per resource among the API's watches (watchhub.go).
	watches *watchHubs
	// nodes reaches node agents for pods/log, exec, attach and portforward (nodeproxy.go).
	nodes *nodeClient
	// authenticate returns the request's user; nil means every request is allowed (tests).
	authenticate func(*http.Request) (pki.User, bool)
	// admissionPlugins are the site's out-of-process admission plugins (nil: none).
	admissionPlugins *admissionplugins.Host
	// DefaultTolerationSeconds is what pods get as tolerations of the not-ready and
	// unreachable taints when they have none (300 when zero); set it before serving.
	DefaultTolerationSeconds int64
}

// NewHandler returns the API handler. authenticate may be nil to serve without authentication
// (unit tests only).
func NewHandler(ctx context.Context, store *storage.Store, authenticate func(*http.Request) (pki.User, bool)) (*Handler, error) {
	oa, err := openapi.New(registry.All())
	if err != nil {
		return nil, fmt.Errorf("build OpenAPI documents: %w", err)
	}
	h := &Handler{store: store, openapi: oa, authenticate: authenticate, mux: http.NewServeMux(), watches: newWatchHubs(ctx, store)}
	h.namespaces, err = newNamespaceCache(ctx, store)
	if err != nil {
		return nil, err
	}
	h.policies, err = newPolicies(ctx, store)
	if err != nil {
		return nil, err
	}
	if err := h.SetServiceRanges(DefaultServiceRanges()); err != nil {
		return nil, err
	}
	oa.Register(h.mux)
	h.mux.HandleFunc("/version", h.serveVersion)
	h.mux.HandleFunc("/api", h.serveAPIVersions)
	h.mux.HandleFunc("/apis", h.serveAPIGroupList)
	for _, p := range []string{"/healthz", "/livez", "/readyz"} {
		h.mux.HandleFunc(p, h.serveHealth)
	}
	h.mux.HandleFunc("/", h.serveResource)
	return h, nil
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var user pki.User
	if h.authenticate != nil && !isPublicPath(r.URL.Path) {
		u, ok := h.authenticate(r)
		if !ok {
			writeError(w, apierrors.NewUnauthorized("Unauthorized"))
			return
		}
		user = u
	}
	if h.admissionPlugins != nil {
		r = withAdmissionInfo(r, user)
	}
	h.mux.ServeHTTP(w, r)
}

// isPublicPath lists what Kubernetes lets anonymous clients read by default.
func isPublicPath(p string) bool {
	switch p {
	case "/healthz", "/livez", "/readyz":
		return true
	}
	return false
}

func (h *Handler) serveHealth(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if _, err := h.store.Revision(ctx); err != nil {
		http.Error(w, "etcd: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = io.WriteString(w, "ok")
}

func (h *Handler) serveResource(w http.ResponseWriter, r *http.Request) {
	info, ok := parseRequest(r)
	if !ok {
		h.serveDiscoveryPath(w, r)
		return
	}
	if info.Resource == "" {
		h.serveDiscoveryPath(w, r)
		return
	}
	res, found := registry.Lookup(info.Group, info.Version, info.Resource)
	if !found {
		writeError(w, apierrors.NewNotFound(groupResource(info.Group, info.Resource), info.Name))
		return
	}
	if !res.Namespaced && info.Namespace != "" {
		writeError(w, apierrors.NewNotFound(groupResource(info.Group, info.Resource), info.Name))
		return
	}
	req := &request{h: h, w: w, r: r, info: info, res: res}
	req.serve()
}

// request is one resource request in flight.
type request struct {
	h    *Handler
	w    http.ResponseWriter
	r    *http.Request
	info requestInfo
	res  *registry.Resource
	// present, when set, turns the stored result of an update into the response body
	// (a Scale for /scale, a Status for /binding).
	present     func(runtime.Object) (any, error)
	presentCode int // the status code with present; 200 when zero
}

func (q *request) ctx() context.Context { return q.r.Context() }

func (q *request) fail(err error) { writeError(q.w, err) }

func (q *request) readBody() ([]byte, error) {
	body, err := io.ReadAll(io.LimitReader(q.r.Body, maxBodyBytes+1))
	if err != nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("read request body: %v", err))
	}
	if len(body) > maxBodyBytes {
		return nil, apierrors.NewRequestEntityTooLargeError(fmt.Sprintf("limit is %d bytes", maxBodyBytes))
	}
	return body, nil
}

func (q *request) serve() {
	switch q.info.Subresource {
	case "":
		q.serveMain()
	case "status":
		if !q.res.Status {
			q.notFound()
			return
		}
		q.serveStatus()
	case "scale":
		if !q.res.Scale {
			q.notFound()
			return
		}
		q.serveScale()
	case "finalize":
		if q.res.Resource != "namespaces" || q.info.Verb != "update" {
			q.notFound()
			return
		}
		q.serveFinalize()
	case "binding":
		if q.res.Resource != "pods" || q.info.Verb != "create" {
			q.notFound()
			return
		}
		q.serveBinding()
	case "eviction":
		if q.res.Resource != "pods" || q.info.Verb != "create" {
			q.notFound()
			return
		}
		q.serveEviction()
	case "log", "exec", "attach", "portforward":
		if q.res.Resource != "pods" {
			q.notFound()
			return
		}
		q.serveStreaming()
	default:
		q.notFound()
	}
}

func (q *request) notFound() {
	writeError(q.w, apierrors.NewNotFound(groupResource(q.res.Group, q.res.Resource+suffix(q.info.Subresource)), q.info.Name))
}

func suffix(sub string) string {
	if sub == "" {
		return ""
	}
	return "/" + sub
}

func (q *request) serveMain() {
	switch q.info.Verb {
	case "get":
		q.get()
	case "list":
		q.list()
	case "watch":
		q.watch()
	case "create":
		q.create()
	case "update":
		q.update(updateMain)
	case "patch":
		q.patch(updateMain)
	case "delete":
		q.delete()
	case "deletecollection":
		if !contains(verbs(q.res), "deletecollection") {
			q.methodNotSupported()
			return
		}
		q.deleteCollection()
	default:
		q.methodNotSupported()
	}
}

func (q *request) methodNotSupported() {
	writeError(q.w, apierrors.NewMethodNotSupported(groupResource(q.res.Group, q.res.Resource), q.info.Verb))
}

// key is the storage key of one object; prefix of a collection.
func (q *request) key(name string) string {
	return objectKey(q.res, q.info.Namespace, name)
}

func objectKey(res *registry.Resource, namespace, name string) string {
	return collectionPrefix(res, namespace) + name
}

// collectionPrefix is where a resource's objects live: /<group>/<resource>/[<namespace>/].
// The core group is stored as "core" so that no two groups share a prefix.
func collectionPrefix(res *registry.Resource, namespace string) string {
	res = res.Storage()
	g := res.Group
	if g == "" {
		g = "core"
	}
	p := "/" + g + "/" + res.Resource + "/"
	if res.Namespaced && namespace != "" {
		p += namespace + "/"
	}
	return p
}

// dryRun reports whether the request asks for dryRun=All (nothing is stored).
func (q *request) dryRun() (bool, error) {
	vals := q.r.URL.Query()["dryRun"]
	for _, v := range vals {
		if v != "All" {
			return false, apierrors.NewBadRequest(fmt.Sprintf("dryRun must be All, not %q", v))
		}
	}
	return len(vals) > 0, nil
}

// systemNamespaces exist in every cluster, as in Kubernetes.
var systemNamespaces = []string{metav1.NamespaceDefault, metav1.NamespaceSystem, metav1.NamespacePublic, corev1.NamespaceNodeLease}

// SetServiceRanges sets the ranges Services get addresses from; call it before serving.
func (h *Handler) SetServiceRanges(r ServiceRanges) error {
	a, err := newServiceAllocator(r, h.store)
	if err != nil {
		return err
	}
	h.services = a
	return nil
}

// ensureSystemNamespaces creates the system namespaces that are missing.
func (h *Handler) ensureSystemNamespaces(ctx context.Context) error {
	res, _ := registry.Lookup("", "v1", "namespaces")
	for _, name := range systemNamespaces {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
		if _, err := h.createObject(ctx, res, "", ns, false); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create namespace %s: %w", name, err)
		}
	}
	return nil
}
