package openapi

import (
	"fmt"
	"net/http"
	"sort"
	"strings"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/version"
	"k8s.io/kube-openapi/pkg/common"

	"berth.dev/berth/core/registry"
)

// Media types documented as produced. kube-apiserver also lists application/yaml and
// application/vnd.kubernetes.protobuf; berth answers in JSON only (core/apiserver/negotiate.go),
// so its documents say so.
var (
	mediaTypes    = []string{"application/json"}
	allMediaTypes = []string{"application/json", "application/json;stream=watch"}
	// Bodies of create, update and delete may be JSON or YAML; kube-apiserver documents "*/*".
	anyMediaType = []string{"*/*"}
	// patchTypes are the patch content types a PATCH consumes, as kube-apiserver lists them.
	patchTypes = []string{
		string(types.JSONPatchType),
		string(types.MergePatchType),
		string(types.StrategicMergePatchType),
		string(types.ApplyYAMLPatchType),
	}
)

// Route metadata keys kube-apiserver sets on every resource operation (endpoints.RouteMetaGVK,
// RouteMetaAction); the builders copy x-kubernetes-* metadata into the operation's extensions.
// kubectl finds the PATCH operation of a kind by its x-kubernetes-group-version-kind.
const (
	metaGVK    = "x-kubernetes-group-version-kind"
	metaAction = "x-kubernetes-action"
)

const namespaceDoc = "object name and auth scope, such as for teams and projects"

// containers describes berth's whole API as kube-apiserver lays it out: one container per
// group-version ("/api/v1", "/apis/apps/v1") with discovery and resource routes, one per group
// ("/apis/apps"), the roots "/api" and "/apis", and "/version". Each container's root, without the
// leading slash, is also its OpenAPI v3 document name.
func containers(resources []*registry.Resource, scheme *runtime.Scheme) ([]*container, error) {
	byGV := map[schema.GroupVersion][]*registry.Resource{}
	var gvs []schema.GroupVersion
	for _, r := range resources {
		gv := schema.GroupVersion{Group: r.Group, Version: r.Version}
		if _, ok := byGV[gv]; !ok {
			gvs = append(gvs, gv)
		}
		byGV[gv] = append(byGV[gv], r)
	}
	sort.Slice(gvs, func(i, j int) bool { return gvs[i].String() < gvs[j].String() })

	var out []*container
	groupsSeen := map[string]bool{}
	hasCore, hasGroups := false, false
	for _, gv := range gvs {
		root := "/apis/" + gv.Group + "/" + gv.Version
		if gv.Group == "" {
			root, hasCore = "/api/"+gv.Version, true
		} else {
			hasGroups = true
			if !groupsSeen[gv.Group] {
				groupsSeen[gv.Group] = true
				out = append(out, discoveryContainer("/apis/"+gv.Group, "getAPIGroup", "get information of a group", metav1.APIGroup{}))
			}
		}
		c := &container{root: root}
		c.routes = append(c.routes, discoveryRoute(root, "getAPIResources", "get available resources", metav1.APIResourceList{}))
		rs := byGV[gv]
		sort.Slice(rs, func(i, j int) bool { return rs[i].Resource < rs[j].Resource })
		for _, r := range rs {
			routes, err := resourceRoutes(root, r, scheme)
			if err != nil {
				return nil, err
			}
			c.routes = append(c.routes, routes...)
		}
		out = append(out, c)
	}
	if hasCore {
		out = append(out, discoveryContainer("/api", "getAPIVersions", "get available API versions", metav1.APIVersions{}))
	}
	if hasGroups {
		out = append(out, discoveryContainer("/apis", "getAPIVersions", "get available API versions", metav1.APIGroupList{}))
	}
	out = append(out, discoveryContainer("/version", "getCodeVersion", "get the version information for this server", version.Info{}))
	return out, nil
}

func discoveryContainer(root, operation, doc string, model interface{}) *container {
	return &container{root: root, routes: []common.Route{discoveryRoute(root, operation, doc, model)}}
}

// discoveryRoute is a GET on root + "/", as kube-apiserver's discovery web services register it.
func discoveryRoute(root, operation, doc string, model interface{}) *route {
	return &route{
		method: http.MethodGet, path: root + "/", operation: operation, doc: doc,
		consumes: mediaTypes, produces: mediaTypes, writes: model,
	}
}

// resourceRoutes lists a resource's operations and those of its status and scale subresources.
func resourceRoutes(root string, r *registry.Resource, scheme *runtime.Scheme) ([]common.Route, error) {
	gvk := r.GVK()
	obj, err := scheme.New(gvk)
	if err != nil {
		return nil, fmt.Errorf("type of %s: %w", gvk, err)
	}
	list, err := scheme.New(gvk.GroupVersion().WithKind(r.Kind + "List"))
	if err != nil {
		return nil, fmt.Errorf("list type of %s: %w", gvk, err)
	}
	var out []common.Route
	out = append(out, endpoint{root: root, res: r, gvk: gvk, object: obj, list: list}.routes()...)
	if r.Status {
		out = append(out, endpoint{root: root, res: r, subresource: "status", gvk: gvk, object: obj}.routes()...)
	}
	if r.Scale {
		scaleGVK := autoscalingv1.SchemeGroupVersion.WithKind("Scale")
		out = append(out, endpoint{root: root, res: r, subresource: "scale", gvk: scaleGVK, object: &autoscalingv1.Scale{}}.routes()...)
	}
	return out, nil
}

// endpoint is a resource or one of its subresources, whose routes mirror kube-apiserver's
// APIInstaller.registerResourceHandlers: the same paths, operation names, descriptions,
// parameters, responses and extensions.
type endpoint struct {
	root        string // "/apis/apps/v1"
	res         *registry.Resource
	subresource string                  // "", "status" or "scale"
	gvk         schema.GroupVersionKind // what the endpoint reads and writes: autoscaling/v1 Scale for scale
	object      runtime.Object
	list        runtime.Object // nil for subresources
}

func (e endpoint) routes() []common.Route {
	nameParam := pathParam("name", "name of the "+e.gvk.Kind)
	var scopeParams []common.Parameter
	collection := e.res.Resource
	if e.res.Namespaced {
		scopeParams = []common.Parameter{pathParam("namespace", namespaceDoc)}
		collection = "namespaces/{namespace}/" + e.res.Resource
	}
	item := collection + "/{name}"
	itemParams := append(append([]common.Parameter{}, scopeParams...), nameParam)

	var out []common.Route
	if e.subresource != "" {
		// Subresources answer get, update and patch on the item's path.
		p := item + "/" + e.subresource
		for _, verb := range []string{"GET", "PUT", "PATCH"} {
			out = append(out, e.route(verb, p, itemParams, false))
		}
		return out
	}
	out = append(out,
		e.route("LIST", collection, scopeParams, false),
		e.route("POST", collection, scopeParams, false),
		e.route("DELETECOLLECTION", collection, scopeParams, false),
		e.route("WATCHLIST", "watch/"+collection, scopeParams, false),
		e.route("GET", item, itemParams, false),
		e.route("PUT", item, itemParams, false),
		e.route("PATCH", item, itemParams, false),
		e.route("DELETE", item, itemParams, false),
		e.route("WATCH", "watch/"+item, itemParams, false),
	)
	if e.res.Namespaced {
		// Lists and watches across all namespaces.
		out = append(out,
			e.route("LIST", e.res.Resource, nil, true),
			e.route("WATCHLIST", "watch/"+e.res.Resource, nil, true),
		)
	}
	return out
}

// route builds one operation; verb is one of kube-apiserver's action verbs.
func (e endpoint) route(verb, path string, pathParams []common.Parameter, allNamespaces bool) *route {
	kind := e.res.Kind // operations on a subresource are named after the parent's kind
	namespaced, suffix := "", ""
	if e.res.Namespaced {
		namespaced = "Namespaced"
	}
	if allNamespaces {
		namespaced, suffix = "", "ForAllNamespaces"
	}
	sub := e.subresource
	name := namespaced + kind + capitalize(sub)
	article := articleFor(kind)
	status := &metav1.Status{}
	ok := func(model interface{}) common.StatusCodeResponse {
		return &response{code: http.StatusOK, message: "OK", model: model}
	}
	created := &response{code: http.StatusCreated, message: "Created", model: e.object}
	accepted := &response{code: http.StatusAccepted, message: "Accepted", model: e.object}

	r := &route{path: e.root + "/" + path, consumes: anyMediaType, produces: mediaTypes}
	params := []common.Parameter{prettyParam}
	switch verb {
	case "GET":
		r.method, r.operation = http.MethodGet, "read"+name+suffix
		r.doc = subDoc("read", sub, "the specified "+kind)
		r.responses = []common.StatusCodeResponse{ok(e.object)}
	case "LIST":
		r.method, r.operation = http.MethodGet, "list"+name+suffix
		r.doc = "list or watch objects of kind " + kind
		r.produces = allMediaTypes
		r.responses = []common.StatusCodeResponse{ok(e.list)}
		params = append(params, optionParams(&metav1.ListOptions{})...)
	case "PUT":
		r.method, r.operation = http.MethodPut, "replace"+name+suffix
		r.doc = subDoc("replace", sub, "the specified "+kind)
		r.reads = e.object
		r.responses = []common.StatusCodeResponse{ok(e.object), created}
		params = append(params, optionParams(&metav1.UpdateOptions{})...)
		params = append(params, bodyParam(true))
	case "PATCH":
		r.method, r.operation = http.MethodPatch, "patch"+name+suffix
		r.doc = subDoc("partially update", sub, "the specified "+kind)
		r.consumes = patchTypes
		r.reads = &metav1.Patch{}
		r.responses = []common.StatusCodeResponse{ok(e.object), created}
		params = append(params, optionParams(&metav1.PatchOptions{})...)
		params = append(params, bodyParam(true))
	case "POST":
		r.method, r.operation = http.MethodPost, "create"+name+suffix
		r.doc = "create" + article + kind
		r.reads = e.object
		r.responses = []common.StatusCodeResponse{ok(e.object), created, accepted}
		params = append(params, optionParams(&metav1.CreateOptions{})...)
		params = append(params, bodyParam(true))
	case "DELETE":
		r.method, r.operation = http.MethodDelete, "delete"+name+suffix
		r.doc = "delete" + article + kind
		r.reads = &metav1.DeleteOptions{}
		// berth answers a delete with the object as deleted or as marked for deletion, which
		// kube-apiserver does for some kinds (pods, services ...) and not others (a Status).
		r.responses = []common.StatusCodeResponse{ok(e.object), accepted}
		params = append(params, optionParams(&metav1.DeleteOptions{})...)
		params = append(params, bodyParam(false))
	case "DELETECOLLECTION":
		r.method, r.operation = http.MethodDelete, "deletecollection"+name+suffix
		r.doc = "delete collection of " + kind
		r.reads = &metav1.DeleteOptions{}
		r.responses = []common.StatusCodeResponse{ok(status)}
		params = append(params, optionParams(&metav1.DeleteOptions{})...)
		params = append(params, optionParams(&metav1.ListOptions{}, "watch", "allowWatchBookmarks")...)
		params = append(params, bodyParam(false))
	case "WATCH":
		r.method, r.operation = http.MethodGet, "watch"+name+suffix
		r.doc = "watch changes to an object of kind " + kind +
			". deprecated: use the 'watch' parameter with a list operation instead, filtered to a single item with the 'fieldSelector' parameter."
		r.produces = allMediaTypes
		r.responses = []common.StatusCodeResponse{ok(&metav1.WatchEvent{})}
		params = append(params, optionParams(&metav1.ListOptions{})...)
	case "WATCHLIST":
		r.method, r.operation = http.MethodGet, "watch"+name+"List"+suffix
		r.doc = "watch individual changes to a list of " + kind + ". deprecated: use the 'watch' parameter with a list operation instead."
		r.produces = allMediaTypes
		r.responses = []common.StatusCodeResponse{ok(&metav1.WatchEvent{})}
		params = append(params, optionParams(&metav1.ListOptions{})...)
	}
	r.params = append(params, pathParams...)
	r.metadata = map[string]interface{}{
		metaGVK:    metav1.GroupVersionKind{Group: e.gvk.Group, Version: e.gvk.Version, Kind: e.gvk.Kind},
		metaAction: strings.ToLower(verb),
	}
	return r
}

// subDoc words a description as kube-apiserver does: "read the specified Deployment", or
// "read status of the specified Deployment" for a subresource.
func subDoc(action, sub, target string) string {
	if sub == "" {
		return action + " " + target
	}
	return action + " " + sub + " of " + target
}

// articleFor is " a ", " an " or, for a plural, " " (kube-apiserver's GetArticleForNoun).
func articleFor(noun string) string {
	if !strings.HasSuffix(noun, "ss") && strings.HasSuffix(noun, "s") {
		return " "
	}
	if strings.ContainsRune("aeiouAEIOU", rune(noun[0])) {
		return " an "
	}
	return " a "
}

func capitalize(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
