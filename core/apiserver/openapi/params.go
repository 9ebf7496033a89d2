package openapi

import (
	"reflect"
	"slices"
	"strings"

	"k8s.io/kube-openapi/pkg/common"
)

const prettyDoc = "If 'true', then the output is pretty printed. Defaults to 'false' unless the user-agent indicates a browser or command-line HTTP tool (curl and wget)."

func queryParam(name, desc, dataType string) common.Parameter {
	return &param{name: name, desc: desc, kind: common.QueryParameterKind, dataType: dataType}
}

func pathParam(name, desc string) common.Parameter {
	return &param{name: name, desc: desc, kind: common.PathParameterKind, dataType: "string", required: true}
}

func bodyParam(required bool) common.Parameter {
	// The builders take the body's schema from the route's RequestPayloadSample; the data type is
	// only a label.
	return &param{name: "body", kind: common.BodyParameterKind, dataType: "object", required: required}
}

var prettyParam = queryParam("pretty", prettyDoc, "string")

// swaggerDocumented is what metav1's option types implement: field descriptions by JSON name.
type swaggerDocumented interface {
	SwaggerDoc() map[string]string
}

// optionParams lists an options struct's fields (metav1.ListOptions, PatchOptions ...) as query
// parameters, the way kube-apiserver's endpoints.AddObjectParams does, so that the parameter
// names, types and descriptions are the ones kubectl and generated clients know. This is where
// fieldValidation, dryRun and fieldManager on create, update and patch come from.
func optionParams(opts interface{}, exclude ...string) []common.Parameter {
	t := reflect.TypeOf(opts)
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	var docs map[string]string
	if d, ok := opts.(swaggerDocumented); ok {
		docs = d.SwaggerDoc()
	}
	var out []common.Parameter
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		switch f.Type.Kind() {
		case reflect.Interface, reflect.Struct:
			continue // TypeMeta and nested objects are not query parameters
		case reflect.Pointer:
			if k := f.Type.Elem().Kind(); k == reflect.Interface || k == reflect.Struct {
				continue // *Preconditions
			}
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "" || name == "-" || slices.Contains(exclude, name) {
			continue
		}
		out = append(out, queryParam(name, docs[name], jsonType(f.Type)))
	}
	return out
}

// jsonType maps a Go field type to the JSON type of its query parameter; lists are repeated
// parameters of their element type, as in kube-apiserver's documents.
func jsonType(t reflect.Type) string {
	for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	default:
		return "string"
	}
}
