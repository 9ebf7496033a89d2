package apiserver

import (
	"encoding/json"
	"fmt"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"mime"
	"net/http"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
)

// patchType reads the Content-Type of a PATCH request.
func patchType(contentType string) (types.PatchType, error) {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		mt = contentType
	}
	switch pt := types.PatchType(mt); pt {
	case types.JSONPatchType, types.MergePatchType, types.StrategicMergePatchType:
		return pt, nil
	case types.ApplyYAMLPatchType:
		return pt, nil
	}
	return "", unsupportedMediaType(fmt.Sprintf("unsupported patch type %q: use application/json-patch+json, application/merge-patch+json or application/strategic-merge-patch+json", contentType))
}

// applyPatch applies a patch document to the JSON of an object; schema is an empty object of
// the same type, whose struct tags carry the strategic merge keys.
func applyPatch(pt types.PatchType, original, patch []byte, schema any) ([]byte, error) {
	switch pt {
	case types.JSONPatchType:
		p, err := jsonpatch.DecodePatch(patch)
		if err != nil {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("invalid JSON patch: %v", err))
		}
		out, err := p.Apply(original)
		if err != nil {
			return nil, newStatusError(http.StatusUnprocessableEntity, metav1.StatusReasonInvalid, fmt.Sprintf("the JSON patch could not be applied: %v", err))
		}
		return out, nil
	case types.MergePatchType:
		out, err := jsonpatch.MergePatch(original, patch)
		if err != nil {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("invalid merge patch: %v", err))
		}
		return out, nil
	case types.StrategicMergePatchType:
		out, err := strategicpatch.StrategicMergePatch(original, patch, schema)
		if err != nil {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("invalid strategic merge patch: %v", err))
		}
		return out, nil
	}
	return nil, unsupportedMediaType(string(pt))
}

// patch changes an object (or its status) by a patch document, retrying on concurrent writes
// unless the patch names a resourceVersion.
func (q *request) patch(kind updateKind) {
	body, err := q.readBody()
	if err != nil {
		q.fail(err)
		return
	}
	pt, err := patchType(q.r.Header.Get("Content-Type"))
	if err != nil {
		q.fail(err)
		return
	}
	mode, err := fieldValidationMode(q.r.URL.Query().Get("fieldValidation"))
	if err != nil {
		q.fail(err)
		return
	}
	if pt == types.ApplyYAMLPatchType {
		q.apply(kind, body)
		return
	}
	var warnings []string
	q.applyUpdate(kind, "", func(current runtime.Object) (runtime.Object, error) {
		original, err := json.Marshal(current)
		if err != nil {
			return nil, apierrors.NewInternalError(err)
		}
		patched, err := applyPatch(pt, original, body, q.res.New())
		if err != nil {
			return nil, err
		}
		obj := q.res.New()
		warnings, err = decodeInto(obj, patched, q.res.Kind, q.res.Version, mode)
		if err != nil {
			return nil, err
		}
		return obj, checkIdentity(q, obj)
	}, func() { addWarnings(q.w, warnings) })
}

// checkIdentity refuses a patch that renames or moves the object.
func checkIdentity(q *request, obj runtime.Object) error {
	m, err := metaOf(obj)
	if err != nil {
		return err
	}
	if m.GetName() != q.info.Name {
		return apierrors.NewBadRequest(fmt.Sprintf("the name of the object (%s) does not match the name on the URL (%s)", m.GetName(), q.info.Name))
	}
	if q.res.Namespaced && m.GetNamespace() != q.info.Namespace {
		return apierrors.NewBadRequest("the namespace of the provided object does not match the namespace sent on the request")
	}
	return nil
}
