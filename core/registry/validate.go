package registry

import (
	"k8s.io/apimachinery/pkg/api/meta"
	genericvalidation "k8s.io/apimachinery/pkg/api/validation"
	"k8s.io/apimachinery/pkg/api/validation/path"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/apiserver/pkg/registry/rest"
)

// ValidateCreate validates an external object of r for a create, with the validation
// kube-apiserver runs (rest.BeforeCreate): the strategy's Validate (for example
// ValidateDeployment with the pod template options the strategy computes), then, only when
// that passed, the generic object meta checks. Call it after Default and PrepareForCreate.
// The errors are kube's own, e.g.
// `metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of ...`.
func (r *Resource) ValidateCreate(obj runtime.Object) field.ErrorList {
	s := r.rules().strategy
	in, err := r.toInternal(obj)
	if err != nil {
		return field.ErrorList{field.InternalError(nil, err)}
	}
	if s == nil {
		return field.ErrorList{field.InternalError(nil, errNoRules(r))}
	}
	if errs := s.Validate(r.requestContext("create", "", obj), in); len(errs) > 0 {
		return errs
	}
	m, err := meta.Accessor(in)
	if err != nil {
		return field.ErrorList{field.InternalError(nil, err)}
	}
	return genericvalidation.ValidateObjectMetaAccessor(m, s.NamespaceScoped(), path.ValidatePathSegmentName, field.NewPath("metadata"))
}

// ValidateUpdate validates an update of old to obj through the main endpoint, as
// rest.BeforeUpdate does: generic object meta checks (including immutable name, namespace
// and uid) and the strategy's ValidateUpdate. Call it after PrepareForUpdate.
func (r *Resource) ValidateUpdate(obj, old runtime.Object) field.ErrorList {
	return r.validateUpdate(r.rules().strategy, "", obj, old)
}

// ValidateStatusUpdate validates an update through the /status subresource with the
// status strategy's ValidateUpdate (for example ValidateDeploymentStatusUpdate). Call it
// after PrepareForStatusUpdate.
func (r *Resource) ValidateStatusUpdate(obj, old runtime.Object) field.ErrorList {
	return r.ValidateSubresourceUpdate("status", obj, old)
}

// ValidateSubresourceUpdate is ValidateUpdate for one of UpdateSubresources (or "status"),
// with that store's strategy; an unknown subresource gives one internal error.
func (r *Resource) ValidateSubresourceUpdate(subresource string, obj, old runtime.Object) field.ErrorList {
	return r.validateUpdate(r.subresourceStrategy(subresource), subresource, obj, old)
}

func (r *Resource) validateUpdate(s rest.RESTUpdateStrategy, subresource string, obj, old runtime.Object) field.ErrorList {
	if s == nil {
		return field.ErrorList{field.InternalError(nil, errNoRules(r))}
	}
	in, err := r.toInternal(obj)
	if err != nil {
		return field.ErrorList{field.InternalError(nil, err)}
	}
	oldIn, err := r.toInternal(old)
	if err != nil {
		return field.ErrorList{field.InternalError(nil, err)}
	}
	m, err := meta.Accessor(in)
	if err != nil {
		return field.ErrorList{field.InternalError(nil, err)}
	}
	oldM, err := meta.Accessor(oldIn)
	if err != nil {
		return field.ErrorList{field.InternalError(nil, err)}
	}
	// rest.validateCommonFields, then the strategy.
	metaPath := field.NewPath("metadata")
	errs := genericvalidation.ValidateObjectMetaAccessor(m, s.NamespaceScoped(), path.ValidatePathSegmentName, metaPath)
	errs = append(errs, genericvalidation.ValidateObjectMetaAccessorUpdate(m, oldM, metaPath)...)
	return append(errs, s.ValidateUpdate(r.requestContext("update", subresource, obj), in, oldIn)...)
}
