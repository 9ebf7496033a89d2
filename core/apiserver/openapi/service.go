// Package openapi builds and serves berth's OpenAPI documents: /openapi/v2 and /openapi/v3, laid
// out as kube-apiserver lays them out, from the definitions Kubernetes generates for its own
// types. kubectl reads them to explain fields, to compute strategic merge patches on apply, and to
// decide whether it can leave field validation to the server; server-side apply builds its type
// converter from the same schemas (Definitions).
package openapi

import (
	"fmt"
	"net/http"
	"runtime/debug"
	"strings"

	"github.com/NYTimes/gziphandler"
	"k8s.io/apimachinery/pkg/runtime"
	apiopenapi "k8s.io/apiserver/pkg/endpoints/openapi"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/kube-openapi/pkg/builder"
	"k8s.io/kube-openapi/pkg/builder3"
	"k8s.io/kube-openapi/pkg/common"
	"k8s.io/kube-openapi/pkg/handler"
	"k8s.io/kube-openapi/pkg/handler3"
	"k8s.io/kube-openapi/pkg/spec3"
	"k8s.io/kube-openapi/pkg/validation/spec"
	generatedopenapi "k8s.io/kubernetes/pkg/generated/openapi"

	"berth.dev/berth/core/registry"
)

// Service serves /openapi/v2 (JSON and protobuf, with ETag, as kube-openapi's handler does) and
// /openapi/v3 (a discovery document listing "api/v1", "apis/apps/v1", ... with serverRelativeURL
// carrying ?hash=, and each group-version document in JSON and protobuf) using kube-openapi's
// handler and handler3 packages. The documents are built once, in New; each encoding is made on
// its first request and kept.
type Service struct {
	v2          *handler.OpenAPIService
	v3          *handler3.OpenAPIService
	v3Names     map[string]bool // "api/v1", "apis/apps", ... : the documents /openapi/v3/ serves
	definitions map[string]*spec.Schema
}

// New builds the documents for the given resources from k8s.io/kubernetes/pkg/generated/openapi
// definitions (named as kube-apiserver names them, e.g. io.k8s.api.apps.v1.Deployment, with
// x-kubernetes-group-version-kind), plus paths for every resource: collection (get=list,
// post=create, delete=deletecollection), item (get, put, patch, delete), /status and /scale
// subresources where the resource has them, namespaced and cluster-scoped forms, with the query
// parameters kube-apiserver documents; patch consumes the four patch content types.
func New(resources []*registry.Resource) (*Service, error) {
	// The scheme knows every k8s.io/api type by Go type, which gives the routes their body and
	// response types and the definitions their group-version-kinds, as kube-apiserver's scheme does.
	scheme := clientgoscheme.Scheme
	cs, err := containers(resources, scheme)
	if err != nil {
		return nil, err
	}
	routeContainers := make([]common.RouteContainer, len(cs))
	for i, c := range cs {
		routeContainers[i] = c
	}
	namer := newDefinitionNamer(scheme)
	info := &spec.Info{InfoProps: spec.InfoProps{Title: "Kubernetes", Version: kubernetesVersion()}}

	// Version 2: one document for the whole API. Like kube-apiserver, berth leaves the schemas'
	// defaults out of it (handler.PruneDefaults); only the v3 documents carry them.
	v2Doc, err := builder.BuildOpenAPISpecFromRoutes(routeContainers, &common.Config{
		ProtocolList:                   []string{"https"},
		Info:                           info,
		DefaultResponse:                &spec.Response{ResponseProps: spec.ResponseProps{Description: "Default Response."}},
		CommonResponses:                map[int]spec.Response{http.StatusUnauthorized: {ResponseProps: spec.ResponseProps{Description: "Unauthorized"}}},
		GetDefinitions:                 generatedopenapi.GetOpenAPIDefinitions,
		GetDefinitionName:              namer.GetDefinitionName,
		GetOperationIDAndTagsFromRoute: operationIDAndTags,
	})
	if err != nil {
		return nil, fmt.Errorf("OpenAPI v2 document: %w", err)
	}
	v2Doc.Definitions = handler.PruneDefaults(v2Doc.Definitions)

	// Version 3: one document per container. The definitions are generated once, for all of them,
	// with references in v3 form (#/components/schemas/...).
	v3Config := &common.OpenAPIV3Config{
		Info:                           info,
		DefaultResponse:                &spec3.Response{ResponseProps: spec3.ResponseProps{Description: "Default Response."}},
		CommonResponses:                map[int]*spec3.Response{http.StatusUnauthorized: {ResponseProps: spec3.ResponseProps{Description: "Unauthorized"}}},
		GetDefinitionName:              namer.GetDefinitionName,
		GetOperationIDAndTagsFromRoute: operationIDAndTags,
	}
	v3Config.Definitions = generatedopenapi.GetOpenAPIDefinitions(func(name string) spec.Ref {
		defName, _ := namer.GetDefinitionName(name)
		return spec.MustCreateRef("#/components/schemas/" + common.EscapeJsonPointer(defName))
	})
	s := &Service{
		v2:          handler.NewOpenAPIService(v2Doc),
		v3:          handler3.NewOpenAPIService(),
		v3Names:     map[string]bool{},
		definitions: map[string]*spec.Schema{},
	}
	parts := newSharer()
	for _, c := range cs {
		doc, err := builder3.BuildOpenAPISpecFromRoutes([]common.RouteContainer{c}, v3Config)
		if err != nil {
			return nil, fmt.Errorf("OpenAPI v3 document %s: %w", c.root, err)
		}
		if err := parts.share(doc); err != nil {
			return nil, fmt.Errorf("OpenAPI v3 document %s: %w", c.root, err)
		}
		// Documents built from the same definitions hold equal copies of the schemas they share
		// (ObjectMeta, PodSpec ...); keep one copy of each.
		for name, schema := range doc.Components.Schemas {
			if shared, ok := s.definitions[name]; ok {
				doc.Components.Schemas[name] = shared
			} else {
				s.definitions[name] = schema
			}
		}
		name := strings.TrimPrefix(c.root, "/")
		s.v3Names[name] = true
		s.v3.UpdateGroupVersion(name, doc)
	}
	return s, nil
}

// Register adds the handlers to mux (an *http.ServeMux or anything with Handle(pattern string,
// h http.Handler)). The v3 documents are registered under "/openapi/v3/", which mux must treat as
// http.ServeMux does: a pattern matching every path below it.
func (s *Service) Register(mux interface{ Handle(string, http.Handler) }) {
	s.v2.RegisterOpenAPIVersionedService("/openapi/v2", mux)
	mux.Handle("/openapi/v3", gziphandler.GzipHandler(http.HandlerFunc(s.v3.HandleDiscovery)))
	mux.Handle("/openapi/v3/", gziphandler.GzipHandler(http.HandlerFunc(s.serveV3Document)))
}

// serveV3Document answers 404 for a document berth does not have; handler3 would answer an empty
// 200.
func (s *Service) serveV3Document(w http.ResponseWriter, r *http.Request) {
	if !s.v3Names[strings.TrimPrefix(r.URL.Path, "/openapi/v3/")] {
		http.NotFound(w, r)
		return
	}
	s.v3.HandleGroupVersion(w, r)
}

// Definitions returns the schemas keyed by definition name (the union of the v3 documents'
// components), for structured-merge-diff's type converter
// (k8s.io/apimachinery/pkg/util/managedfields.NewTypeConverter) used by server-side apply.
// The schemas are shared with the served documents: callers must not change them.
func (s *Service) Definitions() map[string]*spec.Schema {
	return s.definitions
}

// definitionNamer names definitions as kube-apiserver does (apiopenapi.DefinitionNamer:
// "io.k8s.api.apps.v1.Deployment" with its x-kubernetes-group-version-kind), remembering each
// answer: the builders ask once per reference, thousands of times, and each answer is a new list.
type definitionNamer struct {
	namer *apiopenapi.DefinitionNamer
	names map[string]namedDefinition
}

type namedDefinition struct {
	name       string
	extensions spec.Extensions
}

func newDefinitionNamer(scheme *runtime.Scheme) *definitionNamer {
	return &definitionNamer{namer: apiopenapi.NewDefinitionNamer(scheme), names: map[string]namedDefinition{}}
}

// GetDefinitionName returns the friendly name of a Go type name and the extensions its
// definition carries. The extensions are shared by every document: they must not be changed.
func (d *definitionNamer) GetDefinitionName(goName string) (string, spec.Extensions) {
	if n, ok := d.names[goName]; ok {
		return n.name, n.extensions
	}
	name, ext := d.namer.GetDefinitionName(goName)
	d.names[goName] = namedDefinition{name: name, extensions: ext}
	return name, ext
}

// kubernetesVersion is the k8s.io/kubernetes release berth's types and definitions come from,
// which kube-apiserver would put in info.version.
func kubernetesVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == "k8s.io/kubernetes" {
				if m.Replace != nil {
					return m.Replace.Version
				}
				return m.Version
			}
		}
	}
	return "unversioned"
}
