package apiserver

import (
	"net/http/httptest"
	"testing"
)

func TestParseRequest(t *testing.T) {
	tests := []struct {
		method, path string
		want         requestInfo
		ok           bool
	}{
		{"GET", "/api/v1/namespaces/ns/pods", requestInfo{Verb: "list", Version: "v1", Namespace: "ns", Resource: "pods"}, true},
		{"GET", "/api/v1/namespaces/ns/pods/p", requestInfo{Verb: "get", Version: "v1", Namespace: "ns", Resource: "pods", Name: "p"}, true},
		{"POST", "/api/v1/namespaces/ns/pods/p/binding", requestInfo{Verb: "create", Version: "v1", Namespace: "ns", Resource: "pods", Name: "p", Subresource: "binding"}, true},
		{"GET", "/api/v1/pods", requestInfo{Verb: "list", Version: "v1", Resource: "pods"}, true},
		{"GET", "/api/v1/pods?watch=true", requestInfo{Verb: "watch", Version: "v1", Resource: "pods"}, true},
		{"GET", "/api/v1/watch/namespaces/ns/pods", requestInfo{Verb: "watch", Version: "v1", Namespace: "ns", Resource: "pods"}, true},
		{"GET", "/api/v1/namespaces", requestInfo{Verb: "list", Version: "v1", Resource: "namespaces"}, true},
		{"GET", "/api/v1/namespaces/web", requestInfo{Verb: "get", Version: "v1", Resource: "namespaces", Name: "web"}, true},
		{"PUT", "/api/v1/namespaces/web/finalize", requestInfo{Verb: "update", Version: "v1", Resource: "namespaces", Name: "web", Subresource: "finalize"}, true},
		{"PATCH", "/api/v1/namespaces/web/status", requestInfo{Verb: "patch", Version: "v1", Resource: "namespaces", Name: "web", Subresource: "status"}, true},
		{"DELETE", "/apis/apps/v1/namespaces/ns/deployments", requestInfo{Verb: "deletecollection", Group: "apps", Version: "v1", Namespace: "ns", Resource: "deployments"}, true},
		{"DELETE", "/apis/apps/v1/namespaces/ns/deployments/web", requestInfo{Verb: "delete", Group: "apps", Version: "v1", Namespace: "ns", Resource: "deployments", Name: "web"}, true},
		{"PUT", "/apis/apps/v1/namespaces/ns/deployments/web/scale", requestInfo{Verb: "update", Group: "apps", Version: "v1", Namespace: "ns", Resource: "deployments", Name: "web", Subresource: "scale"}, true},
		{"GET", "/apis/storage.k8s.io/v1/storageclasses/fast", requestInfo{Verb: "get", Group: "storage.k8s.io", Version: "v1", Resource: "storageclasses", Name: "fast"}, true},
		{"GET", "/apis/apps", requestInfo{}, false},
		{"GET", "/api", requestInfo{}, false},
		{"GET", "/api/v1/namespaces/ns/pods/p/log/extra", requestInfo{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			got, ok := parseRequest(httptest.NewRequest(tt.method, tt.path, nil))
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v", ok, tt.ok)
			}
			if ok && got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestNegotiate(t *testing.T) {
	tests := []struct {
		accept string
		want   outputForm
		ok     bool
	}{
		{"", formObject, true},
		{"application/json", formObject, true},
		{"application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json", formTable, true},
		{"application/json;as=Table;v=v1beta1;g=meta.k8s.io", formTable, true},
		{"application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json", formMetadata, true},
		{"application/vnd.kubernetes.protobuf, application/json", formObject, true},
		{"application/json;as=Table;v=v2;g=meta.k8s.io,application/json", formObject, true},
		{"application/vnd.kubernetes.protobuf", formObject, false},
		{"*/*", formObject, true},
	}
	for _, tt := range tests {
		got, ok := negotiate(tt.accept)
		if got != tt.want || ok != tt.ok {
			t.Errorf("negotiate(%q) = %v, %v; want %v, %v", tt.accept, got, ok, tt.want, tt.ok)
		}
	}
}
