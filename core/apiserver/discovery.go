package apiserver

import (
	"net"
	"net/http"
	goruntime "runtime"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/version"

	"berth.dev/berth/core/registry"
)

// KubernetesVersion is the Kubernetes release whose API berth serves (its validation, defaults and
// types come from that release's libraries).
const KubernetesVersion = "v1.33.13"

// BerthVersion is berth's own version, set at build time.
var BerthVersion = "0.1.0-dev"

func (h *Handler) serveVersion(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, version.Info{
		Major: "1", Minor: "33", GitVersion: KubernetesVersion + "+berth-" + BerthVersion,
		GitCommit: "", GitTreeState: "clean", BuildDate: "", GoVersion: goVersion(), Compiler: "gc", Platform: platform(),
	})
}

func (h *Handler) serveAPIVersions(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, &metav1.APIVersions{
		TypeMeta:                   metav1.TypeMeta{Kind: "APIVersions"},
		Versions:                   []string{"v1"},
		ServerAddressByClientCIDRs: serverAddress(r),
	})
}

func serverAddress(r *http.Request) []metav1.ServerAddressByClientCIDR {
	host := r.Host
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(host, "443")
	}
	return []metav1.ServerAddressByClientCIDR{{ClientCIDR: "0.0.0.0/0", ServerAddress: host}}
}

// groups lists the API groups in the order Kubernetes lists them (by the catalogue's order).
func groups() []metav1.APIGroup {
	var out []metav1.APIGroup
	seen := map[string]int{}
	for _, res := range registry.All() {
		if res.Group == "" {
			continue
		}
		gv := metav1.GroupVersionForDiscovery{GroupVersion: res.GroupVersion(), Version: res.Version}
		i, ok := seen[res.Group]
		if !ok {
			seen[res.Group] = len(out)
			out = append(out, metav1.APIGroup{Name: res.Group, Versions: []metav1.GroupVersionForDiscovery{gv}, PreferredVersion: gv})
			continue
		}
		found := false
		for _, v := range out[i].Versions {
			found = found || v.Version == res.Version
		}
		if !found {
			out[i].Versions = append(out[i].Versions, gv)
		}
	}
	return out
}

func (h *Handler) serveAPIGroupList(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, &metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"}, Groups: groups()})
}

// serveDiscoveryPath serves /api/v1, /apis/{group} and /apis/{group}/{version}.
func (h *Handler) serveDiscoveryPath(w http.ResponseWriter, r *http.Request) {
	parts := splitPath(r.URL.Path)
	switch {
	case len(parts) == 2 && parts[0] == "api" && parts[1] == "v1":
		writeJSON(w, http.StatusOK, resourceList("", "v1"))
		return
	case len(parts) == 2 && parts[0] == "apis":
		for _, g := range groups() {
			if g.Name == parts[1] {
				g.TypeMeta = metav1.TypeMeta{Kind: "APIGroup", APIVersion: "v1"}
				writeJSON(w, http.StatusOK, &g)
				return
			}
		}
	case len(parts) == 3 && parts[0] == "apis":
		if l := resourceList(parts[1], parts[2]); len(l.APIResources) > 0 {
			writeJSON(w, http.StatusOK, l)
			return
		}
	}
	writeError(w, apierrors.NewNotFound(groupResource("", ""), strings.TrimPrefix(r.URL.Path, "/")))
}

var (
	verbsFull   = metav1.Verbs{"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
	verbsStatus = metav1.Verbs{"get", "patch", "update"}
)

// verbs lists what a resource serves; namespaces have no deletecollection, as in Kubernetes.
func verbs(res *registry.Resource) metav1.Verbs {
	if res.Resource == "namespaces" {
		return metav1.Verbs{"create", "delete", "get", "list", "patch", "update", "watch"}
	}
	return verbsFull
}

// resourceList is the discovery document of one group/version, with subresources.
func resourceList(group, version string) *metav1.APIResourceList {
	gv := version
	if group != "" {
		gv = group + "/" + version
	}
	l := &metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"}, GroupVersion: gv}
	for _, res := range registry.All() {
		if res.Group != group || res.Version != version {
			continue
		}
		l.APIResources = append(l.APIResources, metav1.APIResource{
			Name: res.Resource, SingularName: res.Singular, Namespaced: res.Namespaced, Kind: res.Kind,
			Verbs: verbs(res), ShortNames: res.ShortNames, Categories: res.Categories,
		})
		sub := func(name, kind string, verbs metav1.Verbs) {
			l.APIResources = append(l.APIResources, metav1.APIResource{Name: res.Resource + "/" + name, Namespaced: res.Namespaced, Kind: kind, Verbs: verbs})
		}
		if res.Status {
			sub("status", res.Kind, verbsStatus)
		}
		if res.Scale {
			l.APIResources = append(l.APIResources, metav1.APIResource{Name: res.Resource + "/scale", Namespaced: true, Group: "autoscaling", Version: "v1", Kind: "Scale", Verbs: verbsStatus})
		}
		switch res.Resource {
		case "namespaces":
			sub("finalize", "Namespace", metav1.Verbs{"update"})
		case "pods":
			sub("attach", "PodAttachOptions", metav1.Verbs{"create", "get"})
			sub("binding", "Binding", metav1.Verbs{"create"})
			l.APIResources = append(l.APIResources, metav1.APIResource{Name: "pods/eviction", Namespaced: true, Group: "policy", Version: "v1", Kind: "Eviction", Verbs: metav1.Verbs{"create"}})
			sub("exec", "PodExecOptions", metav1.Verbs{"create", "get"})
			sub("log", "Pod", metav1.Verbs{"get"})
			sub("portforward", "PodPortForwardOptions", metav1.Verbs{"create", "get"})
		}
	}
	return l
}

func goVersion() string { return goruntime.Version() }

func platform() string { return goruntime.GOOS + "/" + goruntime.GOARCH }
