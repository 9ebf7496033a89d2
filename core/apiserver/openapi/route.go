package openapi

import (
	"github.com/emicklei/go-restful/v3"
	apiopenapi "k8s.io/apiserver/pkg/endpoints/openapi"
	"k8s.io/kube-openapi/pkg/common"
)

// kube-openapi's builders read an API as route containers and routes (common.RouteContainer,
// common.Route), the shape kube-apiserver gets by adapting its go-restful web services. berth
// has no go-restful routes, so these plain types describe its endpoints directly.

// container is one served API root ("/apis/apps/v1", "/apis/apps", "/api", "/version").
type container struct {
	root   string
	routes []common.Route
}

func (c *container) RootPath() string                   { return c.root }
func (c *container) PathParameters() []common.Parameter { return nil }
func (c *container) Routes() []common.Route             { return c.routes }

// route is one operation: a method on a full path.
type route struct {
	method    string
	path      string
	operation string // kube-apiserver's name before group and version are added: "readNamespacedDeployment"
	doc       string
	params    []common.Parameter
	consumes  []string
	produces  []string
	metadata  map[string]interface{}
	reads     interface{} // a value of the body's Go type, nil without a body
	writes    interface{} // a value of the 200 response's Go type, used when responses is empty
	responses []common.StatusCodeResponse
}

func (r *route) Method() string                                   { return r.method }
func (r *route) Path() string                                     { return r.path }
func (r *route) OperationName() string                            { return r.operation }
func (r *route) Parameters() []common.Parameter                   { return r.params }
func (r *route) Description() string                              { return r.doc }
func (r *route) Consumes() []string                               { return r.consumes }
func (r *route) Produces() []string                               { return r.produces }
func (r *route) Metadata() map[string]interface{}                 { return r.metadata }
func (r *route) RequestPayloadSample() interface{}                { return r.reads }
func (r *route) ResponsePayloadSample() interface{}               { return r.writes }
func (r *route) StatusCodeResponses() []common.StatusCodeResponse { return r.responses }

// param is a path, query or body parameter.
type param struct {
	name     string
	desc     string
	kind     common.ParameterKind
	dataType string // "string", "boolean", "integer"; the Go type name for a body
	required bool
}

func (p *param) Name() string                 { return p.name }
func (p *param) Description() string          { return p.desc }
func (p *param) Required() bool               { return p.required }
func (p *param) Kind() common.ParameterKind   { return p.kind }
func (p *param) DataType() string             { return p.dataType }
func (p *param) AllowMultiple() bool          { return false }
func (p *param) MarshalJSON() ([]byte, error) { return []byte(`"` + p.name + `"`), nil }

// response is one documented status code and the Go type of its body.
type response struct {
	code    int
	message string
	model   interface{}
}

func (r *response) Code() int          { return r.code }
func (r *response) Message() string    { return r.message }
func (r *response) Model() interface{} { return r.model }

// operationIDAndTags names operations as kube-apiserver does ("readAppsV1NamespacedDeployment",
// tag "apps_v1"); clients generated from Kubernetes' documents rely on these names.
func operationIDAndTags(r common.Route) (string, []string, error) {
	return apiopenapi.GetOperationIDAndTags(&restful.Route{Operation: r.OperationName(), Path: r.Path()})
}
