package apiserver

import (
	"net/http"
	"strings"
)

// requestInfo is what the URL of a resource request says: which resource, where, and what to do.
type requestInfo struct {
	Verb        string // get, list, watch, create, update, patch, delete, deletecollection, connect
	Group       string
	Version     string
	Namespace   string
	Resource    string
	Name        string
	Subresource string
}

// parseRequest reads a resource path such as /api/v1/namespaces/ns/pods/name/status or
// /apis/apps/v1/watch/deployments. ok is false when the path is not a resource path.
func parseRequest(r *http.Request) (info requestInfo, ok bool) {
	parts := splitPath(r.URL.Path)
	switch {
	case len(parts) >= 3 && parts[0] == "api":
		info.Version, parts = parts[1], parts[2:]
	case len(parts) >= 4 && parts[0] == "apis":
		info.Group, info.Version, parts = parts[1], parts[2], parts[3:]
	default:
		return info, false
	}
	watchPath := false
	if parts[0] == "watch" {
		watchPath, parts = true, parts[1:]
	}
	// namespaces/{ns}/{resource}... is a namespaced request, except the namespaces resource itself.
	if len(parts) >= 3 && parts[0] == "namespaces" {
		info.Namespace, parts = parts[1], parts[2:]
	} else if len(parts) >= 1 && parts[0] == "namespaces" && len(parts) == 2 {
		info.Resource, info.Name = "namespaces", parts[1]
		parts = nil
	}
	if parts != nil {
		if len(parts) == 0 || len(parts) > 3 {
			return info, false
		}
		info.Resource = parts[0]
		if len(parts) > 1 {
			info.Name = parts[1]
		}
		if len(parts) > 2 {
			info.Subresource = parts[2]
		}
	}
	// A namespace's own subresources (status, finalize) arrive as namespaces/{name}/{sub}, which the
	// namespaced form above reads as namespace={name}, resource={sub}.
	if info.Namespace != "" && info.Group == "" && (info.Resource == "status" || info.Resource == "finalize") && info.Name == "" {
		info.Name, info.Subresource, info.Resource, info.Namespace = info.Namespace, info.Resource, "namespaces", ""
	}
	q := r.URL.Query()
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		switch {
		case watchPath || isTrue(q.Get("watch")):
			info.Verb = "watch"
		case info.Name == "":
			info.Verb = "list"
		default:
			info.Verb = "get"
		}
	case http.MethodPost:
		info.Verb = "create"
	case http.MethodPut:
		info.Verb = "update"
	case http.MethodPatch:
		info.Verb = "patch"
	case http.MethodDelete:
		if info.Name == "" {
			info.Verb = "deletecollection"
		} else {
			info.Verb = "delete"
		}
	default:
		info.Verb = strings.ToLower(r.Method)
	}
	return info, true
}

func isTrue(s string) bool { return s == "true" || s == "1" }

func splitPath(p string) []string {
	p = strings.Trim(p, "/")
	if p == "" {
		return nil
	}
	return strings.Split(p, "/")
}
