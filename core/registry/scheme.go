package registry

import (
	"fmt"
	"reflect"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/kubernetes/pkg/api/legacyscheme"

	// The install packages register, for every served group, the internal and external
	// types, the conversions between them and the defaulting funcs, as kube-apiserver does.
	_ "k8s.io/kubernetes/pkg/apis/apps/install"
	_ "k8s.io/kubernetes/pkg/apis/autoscaling/install"
	_ "k8s.io/kubernetes/pkg/apis/batch/install"
	_ "k8s.io/kubernetes/pkg/apis/coordination/install"
	_ "k8s.io/kubernetes/pkg/apis/core/install"
	_ "k8s.io/kubernetes/pkg/apis/discovery/install"
	_ "k8s.io/kubernetes/pkg/apis/events/install"
	_ "k8s.io/kubernetes/pkg/apis/networking/install"
	_ "k8s.io/kubernetes/pkg/apis/policy/install"
	_ "k8s.io/kubernetes/pkg/apis/storage/install"
)

// Scheme is Kubernetes' own legacy scheme with every served group installed: external and
// internal types, conversions, defaulting funcs and field label conversions.
var Scheme = legacyscheme.Scheme

// Codecs encodes and decodes the objects of Scheme (JSON, YAML, protobuf).
var Codecs = legacyscheme.Codecs

func init() {
	// Table, TableOptions and PartialObjectMetadata(List) under meta.k8s.io/v1, so the
	// API server can encode server-side tables and metadata-only answers with Codecs.
	// Each group's install already ran metav1.AddToGroupVersion (ListOptions, WatchEvent,
	// Status ...).
	utilruntime.Must(metav1.AddMetaToScheme(Scheme))
}

// internalGV is the internal version of r's group, the one k8s.io/kubernetes' strategies,
// validators and printers work on.
func (r *Resource) internalGV() schema.GroupVersion {
	return schema.GroupVersion{Group: r.Group, Version: runtime.APIVersionInternal}
}

// toInternal converts a copy of an external object (or list) of r to its internal type.
// The input is never shared with the result.
func (r *Resource) toInternal(obj runtime.Object) (runtime.Object, error) {
	if obj == nil {
		return nil, fmt.Errorf("convert %s: nil object", r.Kind)
	}
	out, err := Scheme.ConvertToVersion(obj, r.internalGV())
	if err != nil {
		return nil, fmt.Errorf("convert %T to internal %s: %w", obj, r.internalGV(), err)
	}
	return out, nil
}

// fromInternal converts an internal object back to r's external version, with its
// apiVersion and kind set.
func (r *Resource) fromInternal(in runtime.Object) (runtime.Object, error) {
	out, err := Scheme.ConvertToVersion(in, schema.GroupVersion{Group: r.Group, Version: r.Version})
	if err != nil {
		return nil, fmt.Errorf("convert %T to %s: %w", in, r.GroupVersion(), err)
	}
	return out, nil
}

// overwrite replaces *dst with *src in place: the methods of Resource take the caller's
// external object and must change it rather than return a new one.
func overwrite(dst, src runtime.Object) error {
	dv, sv := reflect.ValueOf(dst), reflect.ValueOf(src)
	if dv.Kind() != reflect.Pointer || dv.IsNil() || dv.Type() != sv.Type() {
		return fmt.Errorf("cannot overwrite %T with %T", dst, src)
	}
	dv.Elem().Set(sv.Elem())
	return nil
}

// New returns a new empty external object of r (for example *appsv1.Deployment) with
// apiVersion and kind set.
func (r *Resource) New() runtime.Object {
	return r.newTyped(r.GVK())
}

// NewList returns a new empty external list of r (for example *appsv1.DeploymentList)
// with apiVersion and kind set.
func (r *Resource) NewList() runtime.Object {
	return r.newTyped(r.GVK().GroupVersion().WithKind(r.Kind + "List"))
}

func (r *Resource) newTyped(gvk schema.GroupVersionKind) runtime.Object {
	obj, err := Scheme.New(gvk)
	if err != nil {
		// Unreachable for catalogue entries: init (checkRules) refuses to start when one
		// of their kinds is not registered.
		panic(fmt.Sprintf("registry: %s is not registered in the scheme: %v", gvk, err))
	}
	obj.GetObjectKind().SetGroupVersionKind(gvk)
	return obj
}

// Default applies Kubernetes' defaulting funcs to an external object of r, as
// kube-apiserver does when it decodes a request body.
func (r *Resource) Default(obj runtime.Object) {
	Scheme.Default(obj)
}

// Storage returns the resource whose objects hold r's data in etcd: r itself, except for
// events.k8s.io/v1 events, which are core/v1 events seen through another version, as in
// Kubernetes (kubectl describe shows events written through either API).
func (r *Resource) Storage() *Resource {
	if r.Group == "events.k8s.io" {
		core, _ := Lookup("", "v1", "events")
		return core
	}
	return r
}

// ConvertTo converts an object of r to the external type of resource to (through the
// internal type), for resources that share storage.
func (r *Resource) ConvertTo(obj runtime.Object, to *Resource) (runtime.Object, error) {
	if to == r {
		return obj, nil
	}
	in, err := r.toInternal(obj)
	if err != nil {
		return nil, err
	}
	out, err := Scheme.ConvertToVersion(in, to.GVK().GroupVersion())
	if err != nil {
		return nil, fmt.Errorf("convert %s to %s: %w", r.GVK(), to.GVK(), err)
	}
	out.GetObjectKind().SetGroupVersionKind(to.GVK())
	return out, nil
}

// Internal returns a copy of obj converted to its internal type, the one k8s.io/kubernetes'
// admission code (LimitRanger, for example) works on.
func (r *Resource) Internal(obj runtime.Object) (runtime.Object, error) { return r.toInternal(obj) }

// SetFromInternal converts in, an internal object of r, back into the caller's external obj.
func (r *Resource) SetFromInternal(obj, in runtime.Object) error {
	out, err := r.fromInternal(in)
	if err != nil {
		return err
	}
	return overwrite(obj, out)
}
