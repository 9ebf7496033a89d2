package apiserver

import (
	"encoding/json"
	"fmt"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/util/validation/field"
	sigsjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"

	"berth.dev/berth/core/registry"
)

// Field validation modes (the fieldValidation query parameter).
const (
	validationStrict = "Strict"
	validationWarn   = "Warn"
	validationIgnore = "Ignore"
)

func fieldValidationMode(v string) (string, error) {
	switch v {
	case "", validationWarn:
		return validationWarn, nil
	case validationStrict, validationIgnore:
		return v, nil
	}
	return "", apierrors.NewBadRequest(fmt.Sprintf("fieldValidation must be one of Ignore, Warn, Strict, not %q", v))
}

// decodeBody decodes a request body (JSON or YAML) into a new object of the resource's external
// type, checking apiVersion and kind. Unknown and duplicate fields are refused under Strict and
// returned as warnings under Warn, with the same words Kubernetes uses.
func decodeBody(res *registry.Resource, body []byte, contentType, mode string) (runtime.Object, []string, error) {
	if strings.HasPrefix(contentType, runtime.ContentTypeProtobuf) {
		obj, err := decodeProtobuf(res, body)
		return obj, nil, err
	}
	if strings.Contains(contentType, "yaml") {
		j, err := yaml.YAMLToJSON(body)
		if err != nil {
			return nil, nil, apierrors.NewBadRequest(fmt.Sprintf("invalid YAML: %v", err))
		}
		body = j
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(body, &tm); err != nil {
		return nil, nil, apierrors.NewBadRequest(fmt.Sprintf("%s in version %q cannot be handled as a %s: %v", res.Kind, res.Version, res.Kind, err))
	}
	if tm.Kind == "" {
		return nil, nil, apierrors.NewBadRequest(fmt.Sprintf("Object 'Kind' is missing in '%s'", truncate(body, 200)))
	}
	if tm.APIVersion != res.GroupVersion() {
		return nil, nil, apierrors.NewBadRequest(fmt.Sprintf("the API version in the data (%s) does not match the expected API version (%s)", tm.APIVersion, res.GroupVersion()))
	}
	if tm.Kind != res.Kind {
		return nil, nil, apierrors.NewBadRequest(fmt.Sprintf("the kind in the data (%s) does not match the expected kind (%s)", tm.Kind, res.Kind))
	}
	obj := res.New()
	warnings, err := decodeInto(obj, body, res.Kind, res.Version, mode)
	return obj, warnings, err
}

// decodeRequest decodes a request body that is not the resource itself (a Scale, Binding,
// Eviction, DeleteOptions, a namespace to finalize) into obj: protobuf, which client-go's
// clientsets send since 1.33, or else JSON under a field validation mode.
func decodeRequest(obj runtime.Object, body []byte, contentType, kind, version, mode string) error {
	if !strings.HasPrefix(contentType, runtime.ContentTypeProtobuf) {
		_, err := decodeInto(obj, body, kind, version, mode)
		return err
	}
	out, _, err := protobufSerializer.Decode(body, nil, obj)
	if err != nil {
		return apierrors.NewBadRequest(fmt.Sprintf("%s in version %q cannot be handled as a %s: %v", kind, version, kind, err))
	}
	if out != obj {
		return apierrors.NewBadRequest(fmt.Sprintf("the body is a %T, not the expected %s", out, kind))
	}
	return nil
}

// decodeInto decodes JSON into obj under a field validation mode.
func decodeInto(obj runtime.Object, body []byte, kind, version, mode string) ([]string, error) {
	opts := []sigsjson.StrictOption{sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields}
	if mode == validationIgnore {
		opts = nil
	}
	strictErrs, err := sigsjson.UnmarshalStrict(body, obj, opts...)
	if err != nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("%s in version %q cannot be handled as a %s: %v", kind, version, kind, err))
	}
	if len(strictErrs) == 0 || mode == validationIgnore {
		return nil, nil
	}
	msgs := make([]string, len(strictErrs))
	for i, e := range strictErrs {
		msgs[i] = e.Error()
	}
	if mode == validationStrict {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("%s in version %q cannot be handled as a %s: strict decoding error: %s", kind, version, kind, strings.Join(msgs, ", ")))
	}
	return msgs, nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// encodeForStore encodes an object for etcd: resourceVersion is not stored, it is the etcd revision.
func encodeForStore(res *registry.Resource, obj runtime.Object) ([]byte, error) {
	if st := res.Storage(); st != res {
		converted, err := res.ConvertTo(obj, st)
		if err != nil {
			return nil, err
		}
		obj = converted
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, err
	}
	rv := m.GetResourceVersion()
	m.SetResourceVersion("")
	defer m.SetResourceVersion(rv)
	return json.Marshal(obj)
}

// decodeStored decodes a stored value and sets its resourceVersion to the revision it was read at.
func decodeStored(res *registry.Resource, data []byte, rev int64) (runtime.Object, error) {
	st := res.Storage()
	obj := st.New()
	if err := json.Unmarshal(data, obj); err != nil {
		return nil, fmt.Errorf("decode stored %s: %w", st.Kind, err)
	}
	if st != res {
		converted, err := st.ConvertTo(obj, res)
		if err != nil {
			return nil, err
		}
		obj = converted
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, err
	}
	m.SetResourceVersion(formatRV(rev))
	setTypeMeta(obj, res)
	return obj, nil
}

func setTypeMeta(obj runtime.Object, res *registry.Resource) {
	obj.GetObjectKind().SetGroupVersionKind(res.GVK())
}

func formatRV(rev int64) string { return fmt.Sprintf("%d", rev) }

// invalid builds Kubernetes' 422 Invalid error for a kind and name.
func invalid(res *registry.Resource, name string, errs field.ErrorList) error {
	return apierrors.NewInvalid(res.GVK().GroupKind(), name, errs)
}

// protobufSerializer reads Kubernetes' protobuf envelope, which kubectl's typed clients send.
var protobufSerializer = protobuf.NewSerializer(registry.Scheme, registry.Scheme)

// decodeProtobuf decodes a protobuf request body into the resource's external type.
func decodeProtobuf(res *registry.Resource, body []byte) (runtime.Object, error) {
	obj := res.New()
	out, gvk, err := protobufSerializer.Decode(body, nil, obj)
	if err != nil {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("%s in version %q cannot be handled as a %s: %v", res.Kind, res.Version, res.Kind, err))
	}
	if gvk != nil && (gvk.GroupVersion().String() != res.GroupVersion() || gvk.Kind != res.Kind) {
		return nil, apierrors.NewBadRequest(fmt.Sprintf("the object in the data (%s) does not match the expected %s %s", gvk, res.GroupVersion(), res.Kind))
	}
	return out, nil
}
