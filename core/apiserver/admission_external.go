package apiserver

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/uuid"

	"berth.dev/berth/core/apiserver/admissionplugins"
	"berth.dev/berth/core/pki"
	"berth.dev/berth/core/registry"
	"berth.dev/berth/plugins/admission"
)

// The out-of-process admission plugins (site policy) of --admission-config: their
// mutating hooks run after berth's own mutating admission, their validating hooks after
// berth's own validation and before ResourceQuota, on creates and on updates of the main
// resource (not of status or other subresources).

// SetAdmissionPlugins gives the handler the running plugins of an admission
// configuration (nil: none); set it before serving. The caller keeps closing them.
func (h *Handler) SetAdmissionPlugins(host *admissionplugins.Host) { h.admissionPlugins = host }

// admissionInfoKey keys what admission needs to know of the HTTP request in its context.
type admissionInfoKey struct{}

type admissionInfo struct {
	user   pki.User
	dryRun bool
	uid    string
}

// withAdmissionInfo records, for the plugins, who makes the request and whether it is a
// dry run (an invalid dryRun value fails the request before admission).
func withAdmissionInfo(r *http.Request, user pki.User) *http.Request {
	info := admissionInfo{user: user, dryRun: len(r.URL.Query()["dryRun"]) > 0, uid: string(uuid.NewUUID())}
	return r.WithContext(context.WithValue(r.Context(), admissionInfoKey{}, info))
}

// admissionAttributes builds what the plugins are sent, or nil when no plugin's rules
// match (and nothing need be encoded).
func (h *Handler) admissionAttributes(ctx context.Context, res *registry.Resource, op admission.Operation, obj, old runtime.Object) (*admissionplugins.Attributes, error) {
	if !h.admissionPlugins.Interested(op, res.GVR()) {
		return nil, nil
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	setTypeMeta(obj, res)
	a := &admissionplugins.Attributes{Request: admission.Request{
		Operation: op,
		Resource:  res.GVR(),
		Kind:      res.GVK(),
		Namespace: m.GetNamespace(),
		Name:      m.GetName(),
	}}
	if a.Object, err = json.Marshal(obj); err != nil {
		return nil, apierrors.NewInternalError(fmt.Errorf("encode %s %s for admission plugins: %w", res.Kind, m.GetName(), err))
	}
	if old != nil {
		setTypeMeta(old, res)
		if a.OldObject, err = json.Marshal(old); err != nil {
			return nil, apierrors.NewInternalError(fmt.Errorf("encode the stored %s %s for admission plugins: %w", res.Kind, m.GetName(), err))
		}
	}
	if info, ok := ctx.Value(admissionInfoKey{}).(admissionInfo); ok {
		a.UID, a.DryRun = info.uid, info.dryRun
		a.UserInfo = admission.UserInfo{Username: info.user.Name, Groups: info.user.Groups}
	}
	if a.Namespace != "" {
		a.NamespaceLabels = h.namespaceLabels(a.Namespace)
	}
	return a, nil
}

// namespaceLabels reads a namespace's labels, for plugins' namespaceSelectors.
func (h *Handler) namespaceLabels(name string) func(context.Context) (map[string]string, error) {
	return func(ctx context.Context) (map[string]string, error) {
		o, err := h.store.Get(ctx, h.namespaces.prefix+name)
		if err != nil {
			return nil, err
		}
		var ns corev1.Namespace
		if err := json.Unmarshal(o.Value, &ns); err != nil {
			return nil, fmt.Errorf("decode namespace %s: %w", name, err)
		}
		return ns.Labels, nil
	}
}

// mutateExternal runs the plugins' mutating hooks on obj (old is the stored object of an
// update, nil on a create) and puts their result in obj, defaulted again; the caller
// validates it afterwards, as for any object.
func (h *Handler) mutateExternal(ctx context.Context, res *registry.Resource, op admission.Operation, obj, old runtime.Object) error {
	a, err := h.admissionAttributes(ctx, res, op, obj, old)
	if a == nil || err != nil {
		return err
	}
	mutated, err := h.admissionPlugins.Mutate(ctx, a)
	if err != nil || mutated == nil {
		return err
	}
	fresh := res.New()
	if reflect.TypeOf(fresh) != reflect.TypeOf(obj) {
		return apierrors.NewInternalError(fmt.Errorf("admission plugins mutated a %T, but %s are %T", obj, res.Resource, fresh))
	}
	if err := json.Unmarshal(mutated, fresh); err != nil {
		return apierrors.NewInternalError(fmt.Errorf("decode the %s mutated by admission plugins: %w", res.Kind, err))
	}
	reflect.ValueOf(obj).Elem().Set(reflect.ValueOf(fresh).Elem())
	res.Default(obj)
	return nil
}

// validateExternal runs the plugins' validating hooks on a valid obj.
func (h *Handler) validateExternal(ctx context.Context, res *registry.Resource, op admission.Operation, obj, old runtime.Object) error {
	a, err := h.admissionAttributes(ctx, res, op, obj, old)
	if a == nil || err != nil {
		return err
	}
	return h.admissionPlugins.Validate(ctx, a)
}
