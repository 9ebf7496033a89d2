package openapi

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	openapi_v2 "github.com/google/gnostic-models/openapiv2"
	openapi_v3 "github.com/google/gnostic-models/openapiv3"
	protobuf "google.golang.org/protobuf/proto"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/cli-runtime/pkg/resource"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	clientopenapi "k8s.io/client-go/openapi"
	"k8s.io/client-go/openapi3"
	"k8s.io/client-go/rest"
	"k8s.io/kube-openapi/pkg/handler3"
	"k8s.io/kube-openapi/pkg/spec3"
	openapiproto "k8s.io/kube-openapi/pkg/util/proto"
	"k8s.io/kube-openapi/pkg/validation/spec"

	"berth.dev/berth/core/registry"
)

const (
	acceptV2Proto = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf"
	acceptV3Proto = "application/com.github.proto-openapi.spec.v3@v1.0+protobuf"
)

var deploymentGVK = schema.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}

// service is built once for the tests that only read it.
var service = sync.OnceValues(func() (*Service, error) { return New(registry.All()) })

// newServer serves the documents (and, through extra, anything else a test needs) over HTTP.
func newServer(t *testing.T, extra http.Handler) *httptest.Server {
	t.Helper()
	s, err := service()
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	mux := http.NewServeMux()
	s.Register(mux)
	if extra != nil {
		mux.Handle("/", extra)
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url, accept string, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp, body
}

func fetchV2(t *testing.T, srv *httptest.Server) *spec.Swagger {
	t.Helper()
	resp, body := get(t, srv.URL+"/openapi/v2", "application/json")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /openapi/v2: %d %s", resp.StatusCode, body)
	}
	var doc spec.Swagger
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("decode /openapi/v2: %v", err)
	}
	return &doc
}

func TestV2JSON(t *testing.T) {
	srv := newServer(t, nil)
	resp, body := get(t, srv.URL+"/openapi/v2", "application/json")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	etag := resp.Header.Get("Etag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	var doc spec.Swagger
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	if doc.Swagger != "2.0" || doc.Info == nil || doc.Info.Title != "Kubernetes" {
		t.Errorf("swagger %q info %+v", doc.Swagger, doc.Info)
	}
	def, ok := doc.Definitions["io.k8s.api.apps.v1.Deployment"]
	if !ok {
		t.Fatal("no definition io.k8s.api.apps.v1.Deployment")
	}
	var gvks []map[string]string
	if err := def.Extensions.GetObject("x-kubernetes-group-version-kind", &gvks); err != nil {
		t.Fatal(err)
	}
	if len(gvks) != 1 || gvks[0]["group"] != "apps" || gvks[0]["version"] != "v1" || gvks[0]["kind"] != "Deployment" {
		t.Errorf("x-kubernetes-group-version-kind = %v", gvks)
	}

	// A client that has the document already gets 304 Not Modified.
	resp, _ = get(t, srv.URL+"/openapi/v2", "application/json", "If-None-Match", etag)
	if resp.StatusCode != http.StatusNotModified {
		t.Errorf("with If-None-Match: status %d, want 304", resp.StatusCode)
	}
	resp, _ = get(t, srv.URL+"/openapi/v2", "text/html")
	if resp.StatusCode != http.StatusNotAcceptable {
		t.Errorf("Accept text/html: status %d, want 406", resp.StatusCode)
	}
}

// TestV2Protobuf reads the protobuf document as client-go's discovery client and kubectl do.
func TestV2Protobuf(t *testing.T) {
	srv := newServer(t, nil)
	resp, body := get(t, srv.URL+"/openapi/v2", acceptV2Proto)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/com.github.proto-openapi.spec.v2.v1.0+protobuf" {
		t.Errorf("Content-Type %q", ct)
	}
	var doc openapi_v2.Document
	if err := protobuf.Unmarshal(body, &doc); err != nil {
		t.Fatalf("unmarshal protobuf: %v", err)
	}
	models, err := openapiproto.NewOpenAPIData(&doc)
	if err != nil {
		t.Fatalf("NewOpenAPIData: %v", err)
	}
	specModel, ok := models.LookupModel("io.k8s.api.apps.v1.DeploymentSpec").(*openapiproto.Kind)
	if !ok {
		t.Fatalf("io.k8s.api.apps.v1.DeploymentSpec is %T, want a kind", models.LookupModel("io.k8s.api.apps.v1.DeploymentSpec"))
	}
	if _, ok := specModel.Fields["strategy"]; !ok {
		t.Errorf("DeploymentSpec fields %v lack strategy", specModel.Keys())
	}
	// kubectl apply's patch on a Deployment merges containers by name only if the document says so.
	podSpec, ok := models.LookupModel("io.k8s.api.core.v1.PodSpec").(*openapiproto.Kind)
	if !ok {
		t.Fatal("no io.k8s.api.core.v1.PodSpec")
	}
	ext := podSpec.Fields["containers"].GetExtensions()
	if ext["x-kubernetes-patch-merge-key"] != "name" || ext["x-kubernetes-patch-strategy"] != "merge" {
		t.Errorf("PodSpec.containers extensions %v", ext)
	}
}

func TestV3Documents(t *testing.T) {
	srv := newServer(t, nil)
	resp, body := get(t, srv.URL+"/openapi/v3", "application/json")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /openapi/v3: %d", resp.StatusCode)
	}
	var disc handler3.OpenAPIV3Discovery
	if err := json.Unmarshal(body, &disc); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"api", "api/v1", "apis", "apis/apps", "apis/apps/v1", "apis/batch/v1", "apis/autoscaling/v2", "version"} {
		if _, ok := disc.Paths[want]; !ok {
			t.Errorf("discovery lacks %q", want)
		}
	}
	url := disc.Paths["apis/apps/v1"].ServerRelativeURL
	if !strings.HasPrefix(url, "/openapi/v3/apis/apps/v1?hash=") {
		t.Fatalf("apis/apps/v1 serverRelativeURL %q", url)
	}

	resp, body = get(t, srv.URL+url, "application/json")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "public, immutable" {
		t.Errorf("Cache-Control %q", cc)
	}
	var doc spec3.OpenAPI
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatal(err)
	}
	item := doc.Paths.Paths["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]
	if item == nil || item.Patch == nil {
		t.Fatal("no PATCH /apis/apps/v1/namespaces/{namespace}/deployments/{name}")
	}
	if !slices.ContainsFunc(item.Patch.Parameters, func(p *spec3.Parameter) bool {
		return p.Name == "fieldValidation" && p.In == "query"
	}) {
		t.Errorf("PATCH deployment parameters lack fieldValidation: %v", paramNames(item.Patch.Parameters))
	}
	if item.Patch.RequestBody == nil {
		t.Fatal("PATCH has no request body")
	}
	for _, ct := range patchTypes {
		if _, ok := item.Patch.RequestBody.Content[ct]; !ok {
			t.Errorf("PATCH does not consume %s", ct)
		}
	}

	// The same document in protobuf, and a stale hash redirects to the current one.
	resp, body = get(t, srv.URL+url, acceptV3Proto)
	var pb openapi_v3.Document
	if err := protobuf.Unmarshal(body, &pb); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("protobuf v3 document: status %d, %v", resp.StatusCode, err)
	}
	if pb.GetPaths() == nil || len(pb.GetPaths().GetPath()) != len(doc.Paths.Paths) {
		t.Errorf("protobuf document has a different set of paths")
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r, err := noRedirect.Get(srv.URL + "/openapi/v3/apis/apps/v1?hash=stale")
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusMovedPermanently || r.Header.Get("Location") != url {
		t.Errorf("stale hash: %d to %q, want 301 to %q", r.StatusCode, r.Header.Get("Location"), url)
	}

	resp, _ = get(t, srv.URL+"/openapi/v3/apis/example.com/v1", "application/json")
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("unknown group-version: status %d, want 404", resp.StatusCode)
	}
}

func paramNames(ps []*spec3.Parameter) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.In+":"+p.Name)
	}
	return out
}

// TestOpenAPI3Root looks the Deployment schema up through client-go's openapi3 package, the way
// kubectl explain and kubectl apply do.
func TestOpenAPI3Root(t *testing.T) {
	srv := newServer(t, nil)
	dc, err := discovery.NewDiscoveryClientForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	root := openapi3.NewRoot(clientopenapi.NewClient(dc.RESTClient()))
	gvs, err := root.GroupVersions()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(gvs, deploymentGVK.GroupVersion()) || !slices.Contains(gvs, schema.GroupVersion{Version: "v1"}) {
		t.Errorf("group versions %v lack apps/v1 or v1", gvs)
	}
	doc, err := root.GVSpec(deploymentGVK.GroupVersion())
	if err != nil {
		t.Fatal(err)
	}
	name, deployment := findByGVK(doc.Components.Schemas, deploymentGVK)
	if deployment == nil {
		t.Fatal("no schema carries x-kubernetes-group-version-kind apps/v1 Deployment")
	}
	if name != "io.k8s.api.apps.v1.Deployment" {
		t.Errorf("Deployment schema is named %q", name)
	}
	// deployment.spec.strategy, as kubectl explain walks it.
	strategy := resolveV3(t, doc.Components.Schemas, resolveV3(t, doc.Components.Schemas, deployment, "spec"), "strategy")
	if !strings.Contains(strategy.Description, "how to replace existing pods") {
		t.Errorf("deployment.spec.strategy is described as %q", strategy.Description)
	}
	if _, ok := strategy.Properties["rollingUpdate"]; !ok {
		t.Errorf("deployment.spec.strategy has no rollingUpdate field")
	}
}

// findByGVK finds a schema by its x-kubernetes-group-version-kind, as kubectl does.
func findByGVK(schemas map[string]*spec.Schema, gvk schema.GroupVersionKind) (string, *spec.Schema) {
	for name, s := range schemas {
		var gvks []map[string]string
		if err := s.Extensions.GetObject("x-kubernetes-group-version-kind", &gvks); err != nil {
			continue
		}
		for _, g := range gvks {
			if g["group"] == gvk.Group && g["version"] == gvk.Version && g["kind"] == gvk.Kind {
				return name, s
			}
		}
	}
	return "", nil
}

// resolveV3 returns the schema of a property, following a $ref (alone or wrapped in allOf).
func resolveV3(t *testing.T, schemas map[string]*spec.Schema, s *spec.Schema, field string) *spec.Schema {
	t.Helper()
	p, ok := s.Properties[field]
	if !ok {
		t.Fatalf("no field %q", field)
	}
	ref := p.Ref.String()
	if ref == "" && len(p.AllOf) == 1 {
		ref = p.AllOf[0].Ref.String()
	}
	if ref == "" {
		return &p
	}
	target, ok := schemas[strings.TrimPrefix(ref, "#/components/schemas/")]
	if !ok {
		t.Fatalf("field %q refers to missing %s", field, ref)
	}
	return target
}

// TestQueryParamVerifier runs kubectl's own check (cli-runtime) of whether it can leave field
// validation to the server: it must find fieldValidation on the PATCH of every served kind, in
// both the v3 documents and the v2 one.
func TestQueryParamVerifier(t *testing.T) {
	srv := newServer(t, nil)
	cfg := &rest.Config{Host: srv.URL}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	verifiers := map[string]resource.Verifier{
		"v3": resource.NewQueryParamVerifierV3(dyn, dc.OpenAPIV3(), resource.QueryParamFieldValidation),
		// Like kubectl, keep the parsed v2 document instead of fetching it for each kind.
		"v2": resource.NewQueryParamVerifier(dyn, memory.NewMemCacheClient(dc), resource.QueryParamFieldValidation),
	}
	gvks := []schema.GroupVersionKind{deploymentGVK, {Version: "v1", Kind: "ConfigMap"}}
	for _, r := range registry.All() {
		gvks = append(gvks, r.GVK())
	}
	for name, v := range verifiers {
		for _, gvk := range gvks {
			if err := v.HasSupport(gvk); err != nil {
				t.Errorf("%s verifier, %s: %v", name, gvk, err)
			}
		}
	}
	// What kubectl builds: v3 first, v2 when v3 fails for another reason than a missing parameter.
	fallback := resource.NewFallbackQueryParamVerifier(verifiers["v3"], verifiers["v2"])
	if err := fallback.HasSupport(deploymentGVK); err != nil {
		t.Errorf("fallback verifier: %v", err)
	}
}

// TestEveryResourceHasItsOperations checks the v2 paths of every served resource against what
// kube-apiserver documents for it.
func TestEveryResourceHasItsOperations(t *testing.T) {
	doc := fetchV2(t, newServer(t, nil))
	// params lists an operation's parameters: its own and those common to its path.
	params := func(item spec.PathItem, op *spec.Operation) map[string]bool {
		out := map[string]bool{}
		for _, p := range append(slices.Clone(item.Parameters), op.Parameters...) {
			if ref := p.Ref.String(); ref != "" {
				p = doc.Parameters[strings.TrimPrefix(ref, "#/parameters/")]
			}
			out[p.In+":"+p.Name] = true
		}
		return out
	}
	type want struct {
		path, method, action string
		gvk                  schema.GroupVersionKind
		params               []string // op-level parameters that must be there
	}
	write := []string{"query:dryRun", "query:fieldManager", "query:fieldValidation"}
	list := []string{"query:labelSelector", "query:fieldSelector", "query:limit", "query:continue", "query:resourceVersion", "query:watch"}
	for _, r := range registry.All() {
		root := "/apis/" + r.GroupVersion()
		if r.Group == "" {
			root = "/api/v1"
		}
		collection := root + "/" + r.Resource
		if r.Namespaced {
			collection = root + "/namespaces/{namespace}/" + r.Resource
		}
		item := collection + "/{name}"
		gvk := r.GVK()
		wants := []want{
			{collection, "GET", "list", gvk, list},
			{collection, "POST", "post", gvk, write},
			{collection, "DELETE", "deletecollection", gvk, []string{"query:labelSelector", "query:dryRun", "query:propagationPolicy"}},
			{item, "GET", "get", gvk, nil},
			{item, "PUT", "put", gvk, write},
			{item, "PATCH", "patch", gvk, append(write, "query:force")},
			{item, "DELETE", "delete", gvk, []string{"query:dryRun", "query:gracePeriodSeconds", "query:propagationPolicy"}},
		}
		if r.Namespaced {
			wants = append(wants, want{root + "/" + r.Resource, "GET", "list", gvk, list})
		}
		if r.Status {
			wants = append(wants, want{item + "/status", "PATCH", "patch", gvk, write}, want{item + "/status", "PUT", "put", gvk, write})
		} else if _, ok := doc.Paths.Paths[item+"/status"]; ok {
			t.Errorf("%s has no status subresource, yet %s is documented", r.Resource, item+"/status")
		}
		scale := schema.GroupVersionKind{Group: "autoscaling", Version: "v1", Kind: "Scale"}
		if r.Scale {
			wants = append(wants, want{item + "/scale", "GET", "get", scale, nil}, want{item + "/scale", "PATCH", "patch", scale, write})
		} else if _, ok := doc.Paths.Paths[item+"/scale"]; ok {
			t.Errorf("%s has no scale subresource, yet %s is documented", r.Resource, item+"/scale")
		}
		for _, w := range wants {
			p, ok := doc.Paths.Paths[w.path]
			if !ok {
				t.Errorf("no path %s", w.path)
				continue
			}
			op := map[string]*spec.Operation{"GET": p.Get, "POST": p.Post, "PUT": p.Put, "PATCH": p.Patch, "DELETE": p.Delete}[w.method]
			if op == nil {
				t.Errorf("no %s %s", w.method, w.path)
				continue
			}
			if a, _ := op.Extensions.GetString("x-kubernetes-action"); a != w.action {
				t.Errorf("%s %s: x-kubernetes-action %q, want %q", w.method, w.path, a, w.action)
			}
			var g map[string]string
			if err := op.Extensions.GetObject("x-kubernetes-group-version-kind", &g); err != nil || g["group"] != w.gvk.Group || g["version"] != w.gvk.Version || g["kind"] != w.gvk.Kind {
				t.Errorf("%s %s: x-kubernetes-group-version-kind %v (%v), want %s", w.method, w.path, g, err, w.gvk)
			}
			have := params(p, op)
			for _, name := range w.params {
				if !have[name] {
					t.Errorf("%s %s lacks parameter %s", w.method, w.path, name)
				}
			}
			if w.method == "PATCH" && !slices.Equal(op.Consumes, patchTypes) {
				t.Errorf("%s %s consumes %v", w.method, w.path, op.Consumes)
			}
		}
	}
	if _, ok := doc.Paths.Paths["/api/v1/namespaces/{namespace}/nodes"]; ok {
		t.Error("cluster-scoped nodes documented under a namespace")
	}
}

// TestStrategicMergePatch computes kubectl apply's patch from each document: containers must
// merge by name (the patch names only the changed container and keeps the order with
// $setElementOrder), which only the x-kubernetes-patch-* extensions tell.
func TestStrategicMergePatch(t *testing.T) {
	srv := newServer(t, nil)
	deployment := func(image string) []byte {
		return []byte(fmt.Sprintf(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
			"spec":{"template":{"spec":{"containers":[{"name":"app","image":%q},{"name":"side","image":"busybox"}]}}}}`, image))
	}
	original, modified := deployment("nginx:1"), deployment("nginx:2")
	check := func(name string, meta strategicpatch.LookupPatchMeta) {
		patch, err := strategicpatch.CreateThreeWayMergePatch(original, modified, original, meta, false)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !strings.Contains(string(patch), `"$setElementOrder/containers":[{"name":"app"},{"name":"side"}]`) ||
			strings.Contains(string(patch), "busybox") {
			t.Errorf("%s: patch %s does not merge containers by name", name, patch)
		}
	}

	dc, err := discovery.NewDiscoveryClientForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	v2, err := dc.OpenAPISchema()
	if err != nil {
		t.Fatal(err)
	}
	models, err := openapiproto.NewOpenAPIData(v2)
	if err != nil {
		t.Fatal(err)
	}
	model := models.LookupModel("io.k8s.api.apps.v1.Deployment")
	if model == nil {
		t.Fatal("v2: no io.k8s.api.apps.v1.Deployment")
	}
	check("v2", strategicpatch.NewPatchMetaFromOpenAPI(model))

	doc, err := openapi3.NewRoot(dc.OpenAPIV3()).GVSpec(deploymentGVK.GroupVersion())
	if err != nil {
		t.Fatal(err)
	}
	_, s := findByGVK(doc.Components.Schemas, deploymentGVK)
	if s == nil {
		t.Fatal("v3: no schema for apps/v1 Deployment")
	}
	check("v3", strategicpatch.PatchMetaFromOpenAPIV3{Schema: s, SchemaList: doc.Components.Schemas})
}

// TestDefinitionsTypeConverter builds server-side apply's type converter from Definitions and
// converts an object of every served kind, and of Scale.
func TestDefinitionsTypeConverter(t *testing.T) {
	s, err := service()
	if err != nil {
		t.Fatal(err)
	}
	tc, err := managedfields.NewTypeConverter(s.Definitions(), false)
	if err != nil {
		t.Fatalf("NewTypeConverter: %v", err)
	}
	gvks := []schema.GroupVersionKind{{Group: "autoscaling", Version: "v1", Kind: "Scale"}}
	for _, r := range registry.All() {
		gvks = append(gvks, r.GVK())
	}
	for _, gvk := range gvks {
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(gvk)
		u.SetName("x")
		if _, err := tc.ObjectToTyped(u); err != nil {
			t.Errorf("%s: %v", gvk, err)
		}
	}

	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON([]byte(`{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"web"},
		"spec":{"template":{"spec":{"containers":[{"name":"app","image":"nginx"}]}}}}`)); err != nil {
		t.Fatal(err)
	}
	typed, err := tc.ObjectToTyped(u)
	if err != nil {
		t.Fatal(err)
	}
	set, err := typed.ToFieldSet()
	if err != nil {
		t.Fatal(err)
	}
	if want := `.spec.template.spec.containers[name="app"].image`; !strings.Contains(set.String(), want) {
		t.Errorf("field set lacks %s (containers keyed by name):\n%s", want, set)
	}
}

// TestMatchesKubeAPIServer compares the v2 document with the one kube-apiserver publishes for the
// same release (api/openapi-spec/swagger.json in the k8s.io/kubernetes module): every path berth
// documents must be there, with the same operations, names, descriptions, parameters and
// extensions. Deliberate differences: berth lists only the media types it serves, documents the
// object as a delete's answer (it always returns it), and serves deletecollection on namespaces.
func TestMatchesKubeAPIServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/kubernetes").Output()
	if err != nil {
		t.Skipf("locate k8s.io/kubernetes: %v", err)
	}
	data, err := os.ReadFile(filepath.Join(strings.TrimSpace(string(out)), "api", "openapi-spec", "swagger.json"))
	if err != nil {
		t.Skipf("kube-apiserver's document: %v", err)
	}
	var kube spec.Swagger
	if err := json.Unmarshal(data, &kube); err != nil {
		t.Fatal(err)
	}
	ours := fetchV2(t, newServer(t, nil))

	type paramKey struct{ in, name string }
	paramsOf := func(doc *spec.Swagger, item spec.PathItem, op *spec.Operation) map[paramKey]spec.Parameter {
		m := map[paramKey]spec.Parameter{}
		for _, p := range append(slices.Clone(item.Parameters), op.Parameters...) {
			if ref := p.Ref.String(); ref != "" {
				p = doc.Parameters[strings.TrimPrefix(ref, "#/parameters/")]
			}
			m[paramKey{p.In, p.Name}] = p
		}
		return m
	}
	ops := func(item spec.PathItem) map[string]*spec.Operation {
		return map[string]*spec.Operation{"GET": item.Get, "POST": item.Post, "PUT": item.Put, "PATCH": item.Patch, "DELETE": item.Delete}
	}
	for path, item := range ours.Paths.Paths {
		kubeItem, ok := kube.Paths.Paths[path]
		if !ok {
			t.Errorf("%s is not in kube-apiserver's document", path)
			continue
		}
		kubeOps := ops(kubeItem)
		for method, op := range ops(item) {
			k := kubeOps[method]
			if (op == nil) != (k == nil) {
				if !(path == "/api/v1/namespaces" && method == "DELETE") {
					t.Errorf("%s %s: berth has it %v, kube-apiserver %v", method, path, op != nil, k != nil)
				}
				continue
			}
			if op == nil {
				continue
			}
			where := method + " " + path
			if op.ID != k.ID || op.Description != k.Description || !slices.Equal(op.Tags, k.Tags) {
				t.Errorf("%s: id %q, description %q, tags %v; kube-apiserver: %q, %q, %v", where, op.ID, op.Description, op.Tags, k.ID, k.Description, k.Tags)
			}
			for _, ext := range []string{"x-kubernetes-action", "x-kubernetes-group-version-kind"} {
				a, _ := json.Marshal(op.Extensions[ext])
				b, _ := json.Marshal(k.Extensions[ext])
				if string(a) != string(b) {
					t.Errorf("%s: %s %s, kube-apiserver %s", where, ext, a, b)
				}
			}
			if method == "PATCH" {
				kubeConsumes := slices.DeleteFunc(slices.Clone(k.Consumes), func(s string) bool { return strings.Contains(s, "cbor") })
				if !slices.Equal(op.Consumes, kubeConsumes) {
					t.Errorf("%s consumes %v, kube-apiserver %v", where, op.Consumes, kubeConsumes)
				}
			}
			mine, theirs := paramsOf(ours, item, op), paramsOf(&kube, kubeItem, k)
			for key, p := range theirs {
				q, ok := mine[key]
				if !ok {
					t.Errorf("%s lacks parameter %s %s", where, key.in, key.name)
					continue
				}
				a, _ := json.Marshal(q)
				b, _ := json.Marshal(p)
				if string(a) != string(b) {
					t.Errorf("%s parameter %s:\n berth %s\n kube  %s", where, key.name, a, b)
				}
			}
			for key := range mine {
				if _, ok := theirs[key]; !ok {
					t.Errorf("%s has parameter %s %s that kube-apiserver does not", where, key.in, key.name)
				}
			}
			if method != "DELETE" {
				a, _ := json.Marshal(op.Responses.StatusCodeResponses[http.StatusOK].Schema)
				b, _ := json.Marshal(k.Responses.StatusCodeResponses[http.StatusOK].Schema)
				if string(a) != string(b) {
					t.Errorf("%s answers %s, kube-apiserver %s", where, a, b)
				}
			}
		}
	}
}
