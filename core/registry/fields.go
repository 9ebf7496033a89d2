package registry

import (
	"sort"

	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/storage"
)

// FieldSet returns the fields of obj that field selectors match against, computed by the
// AttrFunc kube-apiserver's store uses for r (pod.GetAttrs, event.GetAttrs ..., or the
// generic metadata.name/metadata.namespace). The keys are the internal field labels:
// translate a request's selector with ParseFieldSelector (or ConvertFieldLabel) first.
// It returns nil when obj cannot be converted.
func (r *Resource) FieldSet(obj runtime.Object) fields.Set {
	in, err := r.toInternal(obj)
	if err != nil {
		return nil
	}
	_, set, err := r.attrs()(in)
	if err != nil {
		return nil
	}
	return set
}

func (r *Resource) attrs() attrFunc {
	if a := r.rules().attrs; a != nil {
		return a
	}
	if r.Namespaced {
		return storage.DefaultNamespaceScopedAttr
	}
	return storage.DefaultClusterScopedAttr
}

// ConvertFieldLabel translates one field selector label of r's external version to the
// key FieldSet uses, with the field label conversion Kubernetes registers for the kind
// (for example spec.host becomes spec.nodeName for pods, regarding.name becomes
// involvedObject.name for events.k8s.io). Unsupported labels give kube's own error,
// e.g. "field label not supported: spec.foo"; kube-apiserver answers it as a 400.
func (r *Resource) ConvertFieldLabel(label, value string) (string, string, error) {
	return Scheme.ConvertFieldLabel(r.GVK(), label, value)
}

// ParseFieldSelector parses a fieldSelector query parameter and translates its labels
// with ConvertFieldLabel, as kube-apiserver's list and watch handlers do. The returned
// selector matches FieldSet(obj). An error is a bad request (400).
func (r *Resource) ParseFieldSelector(selector string) (fields.Selector, error) {
	sel, err := fields.ParseSelector(selector)
	if err != nil {
		return nil, err
	}
	return sel.Transform(r.ConvertFieldLabel)
}

// SupportedFields returns, sorted, the field selector labels kube-apiserver accepts for r
// (those its field label conversion lets through): always metadata.name, plus
// metadata.namespace, and the kind's own fields (pods: spec.nodeName, status.phase ...).
func (r *Resource) SupportedFields() []string {
	candidates := map[string]bool{"metadata.name": true, "metadata.namespace": true}
	if set := r.FieldSet(r.New()); set != nil {
		for k := range set {
			candidates[k] = true
		}
	}
	for _, k := range r.rules().selectorAliases {
		candidates[k] = true
	}
	var out []string
	for k := range candidates {
		if _, _, err := r.ConvertFieldLabel(k, ""); err == nil {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
