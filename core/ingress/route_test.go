package ingress

import (
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// path is one path of a test Ingress; its backend is the Service named svc.
type path struct {
	typ  networkingv1.PathType
	path string
	svc  string
}

func testIngress(name string, age int, rules map[string][]path) *networkingv1.Ingress {
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{
		Name: name, Namespace: "default", CreationTimestamp: metav1.Unix(int64(1000+age), 0),
	}}
	for host, paths := range rules {
		r := networkingv1.IngressRule{Host: host, IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{}}}
		for _, p := range paths {
			r.HTTP.Paths = append(r.HTTP.Paths, networkingv1.HTTPIngressPath{
				Path: p.path, PathType: ptr.To(p.typ),
				Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
					Name: p.svc, Port: networkingv1.ServiceBackendPort{Number: 80}}},
			})
		}
		ing.Spec.Rules = append(ing.Spec.Rules, r)
	}
	return ing
}

// routeOf returns the Service a request goes to in t, "" for none.
func routeOf(t *Table, host, p string) string {
	if b := t.Route(host, p); b != nil {
		return b.Service
	}
	return ""
}

const (
	prefix = networkingv1.PathTypePrefix
	exact  = networkingv1.PathTypeExact
	impl   = networkingv1.PathTypeImplementationSpecific
)

// TestPathMatching is the table of examples in Kubernetes' Ingress documentation
// ("Examples" under "Path types"), plus ImplementationSpecific, which is Prefix here.
func TestPathMatching(t *testing.T) {
	for _, tc := range []struct {
		name  string
		paths []path
		req   string
		want  string // the Service that gets the request; "" for none (the default backend)
	}{
		{"Prefix / matches all", []path{{prefix, "/", "a"}}, "/anything/at/all", "a"},
		{"Exact /foo matches /foo", []path{{exact, "/foo", "a"}}, "/foo", "a"},
		{"Exact /foo does not match /bar", []path{{exact, "/foo", "a"}}, "/bar", ""},
		{"Exact /foo does not match /foo/", []path{{exact, "/foo", "a"}}, "/foo/", ""},
		{"Exact /foo/ does not match /foo", []path{{exact, "/foo/", "a"}}, "/foo", ""},
		{"Prefix /foo matches /foo", []path{{prefix, "/foo", "a"}}, "/foo", "a"},
		{"Prefix /foo matches /foo/", []path{{prefix, "/foo", "a"}}, "/foo/", "a"},
		{"Prefix /foo/ matches /foo", []path{{prefix, "/foo/", "a"}}, "/foo", "a"},
		{"Prefix /foo/ matches /foo/", []path{{prefix, "/foo/", "a"}}, "/foo/", "a"},
		{"Prefix /aaa/bb does not match /aaa/bbb", []path{{prefix, "/aaa/bb", "a"}}, "/aaa/bbb", ""},
		{"Prefix /aaa/bbb matches /aaa/bbb", []path{{prefix, "/aaa/bbb", "a"}}, "/aaa/bbb", "a"},
		{"Prefix /aaa/bbb/ ignores the trailing slash", []path{{prefix, "/aaa/bbb/", "a"}}, "/aaa/bbb", "a"},
		{"Prefix /aaa/bbb matches the trailing slash", []path{{prefix, "/aaa/bbb", "a"}}, "/aaa/bbb/", "a"},
		{"Prefix /aaa/bbb matches a subpath", []path{{prefix, "/aaa/bbb", "a"}}, "/aaa/bbb/ccc", "a"},
		{"Prefix /aaa/bbb is no string prefix", []path{{prefix, "/aaa/bbb", "a"}}, "/aaa/bbbxyz", ""},
		{"Prefix / and /aaa: /aaa/ccc", []path{{prefix, "/", "root"}, {prefix, "/aaa", "aaa"}}, "/aaa/ccc", "aaa"},
		{"Prefix /, /aaa, /aaa/bbb: /aaa/bbb", []path{{prefix, "/", "root"}, {prefix, "/aaa", "aaa"}, {prefix, "/aaa/bbb", "bbb"}}, "/aaa/bbb", "bbb"},
		{"Prefix /, /aaa, /aaa/bbb: /ccc", []path{{prefix, "/", "root"}, {prefix, "/aaa", "aaa"}, {prefix, "/aaa/bbb", "bbb"}}, "/ccc", "root"},
		{"Prefix /aaa does not match /ccc", []path{{prefix, "/aaa", "a"}}, "/ccc", ""},
		{"Exact wins over Prefix of the same path", []path{{prefix, "/foo", "p"}, {exact, "/foo", "e"}}, "/foo", "e"},
		{"Prefix /foo/ ties with Exact /foo: Exact", []path{{prefix, "/foo/", "p"}, {exact, "/foo", "e"}}, "/foo", "e"},
		{"Exact /foo leaves /foo/bar to Prefix /foo", []path{{prefix, "/foo", "p"}, {exact, "/foo", "e"}}, "/foo/bar", "p"},
		{"the longest path wins whatever the order", []path{{prefix, "/aaa/bbb", "long"}, {prefix, "/aaa", "short"}}, "/aaa/bbb/c", "long"},
		{"ImplementationSpecific is Prefix", []path{{impl, "/app", "a"}}, "/app/x", "a"},
		{"ImplementationSpecific is element-wise", []path{{impl, "/app", "a"}}, "/apple", ""},
		{"empty path is /", []path{{prefix, "", "a"}}, "/x", "a"},
		{"case matters", []path{{exact, "/Foo", "a"}}, "/foo", ""},
		{"empty request path is /", []path{{exact, "/", "a"}}, "", "a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := emptyWorld()
			table := w.build([]*networkingv1.Ingress{testIngress("ing", 0, map[string][]path{"": tc.paths})})
			if got := routeOf(table, "example.com", tc.req); got != tc.want {
				t.Errorf("%v, request %q: routed to %q, want %q", tc.paths, tc.req, got, tc.want)
			}
		})
	}
}

// TestHostMatching: exact hosts, wildcards of one label, host-less rules, the order among
// them, the default backend and the older Ingress winning a path two Ingresses claim.
func TestHostMatching(t *testing.T) {
	w := emptyWorld()
	old := testIngress("old", 0, map[string][]path{
		"foo.bar.com":   {{prefix, "/", "foo"}},
		"*.bar.com":     {{prefix, "/", "wild"}, {exact, "/only-wild", "wild-exact"}},
		"":              {{prefix, "/api", "any-api"}, {exact, "/only-wild", "any-exact"}},
		"case.Example.": {{prefix, "/", "case"}},
	})
	old.Spec.DefaultBackend = &networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "default", Port: networkingv1.ServiceBackendPort{Number: 80}}}
	young := testIngress("young", 5, map[string][]path{
		"foo.bar.com": {{prefix, "/", "young-foo"}, {prefix, "/young", "young"}},
	})
	young.Spec.DefaultBackend = &networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "young-default", Port: networkingv1.ServiceBackendPort{Number: 80}}}
	table := w.build([]*networkingv1.Ingress{young, old})
	for _, tc := range []struct{ host, path, want string }{
		{"foo.bar.com", "/", "foo"}, // the older Ingress wins the same host and path
		{"foo.bar.com", "/young/x", "young"},
		{"FOO.bar.com:8443", "/", "foo"}, // case and port do not matter
		{"foo.bar.com.", "/", "foo"},     // nor a trailing dot
		{"baz.bar.com", "/", "wild"},
		{"baz.bar.com", "/only-wild", "wild-exact"},
		{"a.baz.bar.com", "/", "default"}, // a wildcard covers one label
		{"a.baz.bar.com", "/api/v1", "any-api"},
		{"bar.com", "/", "default"},
		{"bar.com", "/only-wild", "any-exact"},
		{"other.org", "/api", "any-api"},
		{"10.0.0.1:80", "/api", "any-api"},
		{"baz.bar.com", "/api", "wild"}, // the wildcard host's / beats the host-less /api
		{"case.example", "/", "case"},
		{"other.org", "/nothing", "default"}, // the oldest Ingress's default backend
	} {
		if got := routeOf(table, tc.host, tc.path); got != tc.want {
			t.Errorf("Host %q path %q: routed to %q, want %q", tc.host, tc.path, got, tc.want)
		}
	}
	if got := routeOf(w.build([]*networkingv1.Ingress{testIngress("x", 0, map[string][]path{"a.com": {{prefix, "/", "a"}}})}), "b.com", "/"); got != "" {
		t.Errorf("no rule and no default backend: routed to %q, want nothing (404)", got)
	}
}

// TestClassSelection: which Ingresses the controller serves.
func TestClassSelection(t *testing.T) {
	class := func(name, controller string, isDefault bool) *networkingv1.IngressClass {
		ic := &networkingv1.IngressClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: networkingv1.IngressClassSpec{Controller: controller}}
		if isDefault {
			ic.Annotations = map[string]string{DefaultClassAnnotation: "true"}
		}
		return ic
	}
	ing := func(className *string, annotation string) *networkingv1.Ingress {
		i := &networkingv1.Ingress{Spec: networkingv1.IngressSpec{IngressClassName: className}}
		if annotation != "" {
			i.Annotations = map[string]string{legacyClassAnnotation: annotation}
		}
		return i
	}
	withDefault := ourClasses([]*networkingv1.IngressClass{class("berth", ControllerName, true), class("nginx", "k8s.io/ingress-nginx", false), class("second", ControllerName, false)})
	noDefault := ourClasses([]*networkingv1.IngressClass{class("berth", ControllerName, false), class("nginx", "k8s.io/ingress-nginx", true)})
	for _, tc := range []struct {
		name    string
		classes classes
		ing     *networkingv1.Ingress
		want    bool
	}{
		{"our class by name", withDefault, ing(ptr.To("berth"), ""), true},
		{"a second class of ours", withDefault, ing(ptr.To("second"), ""), true},
		{"another controller's class", withDefault, ing(ptr.To("nginx"), ""), false},
		{"a class that does not exist", withDefault, ing(ptr.To("gone"), ""), false},
		{"no class, ours is the default", withDefault, ing(nil, ""), true},
		{"no class, another controller's is the default", noDefault, ing(nil, ""), false},
		{"the legacy annotation names ours", noDefault, ing(nil, "berth"), true},
		{"the legacy annotation names another", withDefault, ing(nil, "nginx"), false},
		{"spec.ingressClassName wins over the annotation", withDefault, ing(ptr.To("nginx"), "berth"), false},
	} {
		if got := tc.classes.serves(tc.ing); got != tc.want {
			t.Errorf("%s: serves = %v, want %v", tc.name, got, tc.want)
		}
	}
}
