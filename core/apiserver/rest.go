package apiserver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"berth.dev/berth/core/registry"
	"berth.dev/berth/core/storage"
	"berth.dev/berth/plugins/admission"
)

// requestTimeout bounds one storage round trip of a request that is not a watch.
const requestTimeout = 60 * time.Second

// maxConflictRetries bounds the read-modify-write loop of updates that did not name a resourceVersion.
const maxConflictRetries = 16

// storageError turns a store error into the API error a client expects for this object.
func (q *request) storageError(err error, name string) error {
	gr := groupResource(q.res.Group, q.res.Resource)
	switch {
	case errors.Is(err, storage.ErrNotFound):
		return apierrors.NewNotFound(gr, name)
	case errors.Is(err, storage.ErrExists):
		return apierrors.NewAlreadyExists(gr, name)
	case errors.Is(err, storage.ErrConflict):
		return apierrors.NewConflict(gr, name, errors.New("the object has been modified; please apply your changes to the latest version and try again"))
	case errors.Is(err, storage.ErrGone):
		return apierrors.NewResourceExpired(err.Error())
	}
	return apierrors.NewInternalError(err)
}

// load reads one object from the store.
func (q *request) load(name string) (runtime.Object, int64, error) {
	o, err := q.h.store.Get(q.ctx(), q.key(name))
	if err != nil {
		return nil, 0, q.storageError(err, name)
	}
	obj, err := decodeStored(q.res, o.Value, o.Revision)
	if err != nil {
		return nil, 0, apierrors.NewInternalError(err)
	}
	return obj, o.Revision, nil
}

func (q *request) get() {
	obj, _, err := q.load(q.info.Name)
	if err != nil {
		q.fail(err)
		return
	}
	q.respond(http.StatusOK, obj)
}

// create stores a new object after defaulting, admission and validation; a rejected object
// writes nothing.
func (q *request) create() {
	body, err := q.readBody()
	if err != nil {
		q.fail(err)
		return
	}
	mode, err := fieldValidationMode(q.r.URL.Query().Get("fieldValidation"))
	if err != nil {
		q.fail(err)
		return
	}
	dry, err := q.dryRun()
	if err != nil {
		q.fail(err)
		return
	}
	obj, warnings, err := decodeBody(q.res, body, q.r.Header.Get("Content-Type"), mode)
	if err != nil {
		q.fail(err)
		return
	}
	addWarnings(q.w, warnings)
	created, err := q.h.createObject(q.ctx(), q.res, q.info.Namespace, obj, dry)
	if err != nil {
		q.fail(err)
		return
	}
	q.respond(http.StatusCreated, created)
}

// createObject runs the create path shared by POST and create-on-update.
func (h *Handler) createObject(ctx context.Context, res *registry.Resource, namespace string, obj runtime.Object, dry bool) (_ runtime.Object, retErr error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	if res.Namespaced {
		if m.GetNamespace() == "" {
			m.SetNamespace(namespace)
		}
		if namespace != "" && m.GetNamespace() != namespace {
			return nil, apierrors.NewBadRequest("the namespace of the provided object does not match the namespace sent on the request")
		}
		if namespace == "" {
			return nil, apierrors.NewBadRequest("a namespaced object must be created under /namespaces/{namespace}/")
		}
	} else {
		m.SetNamespace("")
	}
	// System fields are the server's to set (uid, creationTimestamp and a name from
	// generateName come with PrepareForCreate).
	m.SetResourceVersion("")
	m.SetDeletionTimestamp(nil)
	m.SetDeletionGracePeriodSeconds(nil)
	m.SetSelfLink("")
	res.Default(obj)
	res.PrepareForCreate(obj)
	if err := h.mutateCreate(ctx, res, obj); err != nil {
		return nil, err
	}
	// A Service's addresses are claimed before it is validated and stored, and given back if
	// that fails (or on a dry run, which shows them without keeping them).
	claimed, err := h.allocateService(ctx, obj, nil)
	if err != nil {
		return nil, err
	}
	defer func() {
		if retErr != nil || dry {
			claimed.release(context.WithoutCancel(ctx))
		}
	}()
	if errs := res.ValidateCreate(obj); len(errs) > 0 {
		return nil, invalid(res, m.GetName(), errs)
	}
	if res.Namespaced {
		if err := h.namespaces.admit(ctx, m.GetNamespace()); err != nil {
			return nil, err
		}
	}
	if err := h.validateCreate(ctx, res, obj, dry); err != nil {
		return nil, err
	}
	setTypeMeta(obj, res)
	if dry {
		return obj, nil
	}
	data, err := encodeForStore(res, obj)
	if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	rev, err := h.store.Create(ctx, objectKey(res, m.GetNamespace(), m.GetName()), data)
	if err != nil {
		if errors.Is(err, storage.ErrExists) {
			return nil, apierrors.NewAlreadyExists(groupResource(res.Group, res.Resource), m.GetName())
		}
		return nil, apierrors.NewInternalError(err)
	}
	m.SetResourceVersion(formatRV(rev))
	return obj, nil
}

// updateKind says which part of an object an update may change.
type updateKind int

const (
	updateMain     updateKind = iota // everything but status (when the resource has a status subresource)
	updateStatus                     // only status
	updateFinalize                   // only a namespace's spec.finalizers
	updateRaw                        // a server-side change (binding) that skips the user-facing rules
)

// update replaces an object (PUT).
func (q *request) update(kind updateKind) {
	body, err := q.readBody()
	if err != nil {
		q.fail(err)
		return
	}
	mode, err := fieldValidationMode(q.r.URL.Query().Get("fieldValidation"))
	if err != nil {
		q.fail(err)
		return
	}
	obj, warnings, err := decodeBody(q.res, body, q.r.Header.Get("Content-Type"), mode)
	if err != nil {
		q.fail(err)
		return
	}
	addWarnings(q.w, warnings)
	m, _ := meta.Accessor(obj)
	if m.GetName() != q.info.Name {
		q.fail(apierrors.NewBadRequest(fmt.Sprintf("the name of the object (%s) does not match the name on the URL (%s)", m.GetName(), q.info.Name)))
		return
	}
	if q.res.Namespaced && m.GetNamespace() != "" && m.GetNamespace() != q.info.Namespace {
		q.fail(apierrors.NewBadRequest("the namespace of the provided object does not match the namespace sent on the request"))
		return
	}
	q.applyUpdate(kind, m.GetResourceVersion(), func(runtime.Object) (runtime.Object, error) { return obj.DeepCopyObject(), nil }, nil)
}

// applyUpdate is the read-modify-write loop shared by PUT, PATCH and the subresources.
// mutate receives the current object and returns the desired one. When the client named a
// resourceVersion (preconditionRV) a mismatch is a 409 Conflict; otherwise a concurrent write is
// retried, as Kubernetes' GuaranteedUpdate does.
func (q *request) applyUpdate(kind updateKind, preconditionRV string, mutate func(current runtime.Object) (runtime.Object, error), onSuccess func()) {
	dry, err := q.dryRun()
	if err != nil {
		q.fail(err)
		return
	}
	for attempt := 0; ; attempt++ {
		current, rev, err := q.load(q.info.Name)
		if err != nil {
			q.fail(err)
			return
		}
		if preconditionRV != "" && preconditionRV != formatRV(rev) {
			q.fail(q.storageError(storage.ErrConflict, q.info.Name))
			return
		}
		obj, err := mutate(current.DeepCopyObject())
		if err != nil {
			q.fail(err)
			return
		}
		if preconditionRV == "" {
			if m, _ := meta.Accessor(obj); m.GetResourceVersion() != "" && m.GetResourceVersion() != formatRV(rev) {
				// The mutated object names a version (a patch carrying resourceVersion).
				q.fail(q.storageError(storage.ErrConflict, q.info.Name))
				return
			}
		}
		result, code, err := q.h.updateObject(q.ctx(), q.res, kind, current, rev, obj, dry)
		if errors.Is(err, storage.ErrConflict) && preconditionRV == "" && attempt < maxConflictRetries {
			continue
		}
		if err != nil {
			if errors.Is(err, storage.ErrConflict) || errors.Is(err, storage.ErrNotFound) {
				err = q.storageError(err, q.info.Name)
			}
			q.fail(err)
			return
		}
		if onSuccess != nil {
			onSuccess()
		}
		if q.present != nil {
			out, err := q.present(result)
			if err != nil {
				q.fail(err)
				return
			}
			if q.presentCode != 0 {
				code = q.presentCode
			}
			writeJSON(q.w, code, out)
			return
		}
		q.respond(code, result)
		return
	}
}

// updateObject validates and stores obj as the successor of current (read at rev). An object
// being deleted whose last finalizer goes away is deleted.
func (h *Handler) updateObject(ctx context.Context, res *registry.Resource, kind updateKind, current runtime.Object, rev int64, obj runtime.Object, dry bool) (_ runtime.Object, _ int, retErr error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, 0, apierrors.NewBadRequest(err.Error())
	}
	old, _ := meta.Accessor(current)
	// System fields are carried over from the stored object.
	m.SetUID(old.GetUID())
	m.SetCreationTimestamp(old.GetCreationTimestamp())
	m.SetDeletionTimestamp(old.GetDeletionTimestamp())
	m.SetDeletionGracePeriodSeconds(old.GetDeletionGracePeriodSeconds())
	m.SetGeneration(old.GetGeneration())
	m.SetNamespace(old.GetNamespace())
	m.SetSelfLink("")
	if old.GetDeletionTimestamp() != nil && len(m.GetFinalizers()) > len(old.GetFinalizers()) {
		for _, f := range m.GetFinalizers() {
			if !contains(old.GetFinalizers(), f) {
				return nil, 0, invalid(res, m.GetName(), field.ErrorList{field.Forbidden(field.NewPath("metadata", "finalizers"), fmt.Sprintf("no new finalizers can be added if the object is being deleted, found new finalizers %q", f))})
			}
		}
	}
	if m.GetResourceVersion() == "" && res.AllowUnconditionalUpdate() {
		// An update without resourceVersion is unconditional: it applies to what was read.
		m.SetResourceVersion(formatRV(rev))
	}
	res.Default(obj)
	var errs field.ErrorList
	switch kind {
	case updateMain:
		res.PrepareForUpdate(obj, current)
		if err := h.mutateExternal(ctx, res, admission.Update, obj, current); err != nil {
			return nil, 0, err
		}
		claimed, err := h.allocateService(ctx, obj, current)
		if err != nil {
			return nil, 0, err
		}
		defer func() {
			if retErr != nil || dry {
				claimed.release(context.WithoutCancel(ctx))
			}
		}()
		errs = res.ValidateUpdate(obj, current)
		if len(errs) == 0 {
			// Validating admission of updates (PersistentVolumeClaimResize) runs on valid objects.
			if err := h.validateStorageUpdate(ctx, res, obj, current); err != nil {
				return nil, 0, err
			}
			if err := h.validateExternal(ctx, res, admission.Update, obj, current); err != nil {
				return nil, 0, err
			}
		}
	case updateStatus:
		res.PrepareForStatusUpdate(obj, current)
		errs = res.ValidateStatusUpdate(obj, current)
	case updateFinalize:
		res.PrepareForSubresourceUpdate("finalize", obj, current)
		errs = res.ValidateSubresourceUpdate("finalize", obj, current)
	case updateRaw:
	}
	if len(errs) > 0 {
		return nil, 0, invalid(res, m.GetName(), errs)
	}
	setTypeMeta(obj, res)
	m.SetResourceVersion("")
	data, err := encodeForStore(res, obj)
	if err != nil {
		return nil, 0, apierrors.NewInternalError(err)
	}
	oldData, err := encodeForStore(res, current)
	if err != nil {
		return nil, 0, apierrors.NewInternalError(err)
	}
	if string(data) == string(oldData) {
		// Nothing changed: Kubernetes neither writes nor bumps the resourceVersion.
		return current, http.StatusOK, nil
	}
	if dry {
		m.SetResourceVersion(formatRV(rev))
		return obj, http.StatusOK, nil
	}
	if m.GetDeletionTimestamp() != nil && len(m.GetFinalizers()) == 0 && zeroGrace(m) && !namespacePending(obj) {
		if _, err := h.store.Delete(ctx, objectKey(res, m.GetNamespace(), m.GetName()), rev); err != nil {
			return nil, 0, err
		}
		h.released(ctx, current, nil)
		return obj, http.StatusOK, nil
	}
	newRev, err := h.store.Update(ctx, objectKey(res, m.GetNamespace(), m.GetName()), data, rev)
	if err != nil {
		return nil, 0, err
	}
	h.released(ctx, current, obj)
	m.SetResourceVersion(formatRV(newRev))
	return obj, http.StatusOK, nil
}

// metaOf returns an object's metadata, or a 400 for an object without any.
func metaOf(obj runtime.Object) (metav1.Object, error) {
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil, apierrors.NewBadRequest(err.Error())
	}
	return m, nil
}

// zeroGrace reports whether an object being deleted has no grace period left to wait out.
func zeroGrace(m metav1.Object) bool {
	g := m.GetDeletionGracePeriodSeconds()
	return g == nil || *g == 0
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// addWarnings passes decoding warnings to the client as Kubernetes does (Warning headers).
func addWarnings(w http.ResponseWriter, warnings []string) {
	for _, msg := range warnings {
		w.Header().Add("Warning", fmt.Sprintf("299 - %q", msg))
	}
}
