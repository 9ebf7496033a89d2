package apiserver

import (
	"fmt"
	"net/http"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/managedfields"
	"sigs.k8s.io/yaml"

	"berth.dev/berth/core/registry"
)

// fieldManagers builds, on the first server-side apply, structured-merge-diff's type
// converter from the OpenAPI definitions and one field manager per resource. It is lazy
// because the converter costs memory that a cluster never using apply should not pay.
type fieldManagers struct {
	once     sync.Once
	err      error
	tc       managedfields.TypeConverter
	mu       sync.Mutex
	managers map[*registry.Resource]*managedfields.FieldManager
}

func (h *Handler) fieldManager(res *registry.Resource) (*managedfields.FieldManager, error) {
	f := &h.fields
	f.once.Do(func() {
		f.tc, f.err = managedfields.NewTypeConverter(h.openapi.Definitions(), false)
		f.managers = map[*registry.Resource]*managedfields.FieldManager{}
	})
	if f.err != nil {
		return nil, fmt.Errorf("build the server-side apply type converter: %w", f.err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if fm, ok := f.managers[res]; ok {
		return fm, nil
	}
	gv := res.GVK().GroupVersion()
	fm, err := managedfields.NewDefaultFieldManager(f.tc, registry.Scheme, registry.Scheme, registry.Scheme, res.GVK(), gv, "", nil)
	if err != nil {
		return nil, fmt.Errorf("field manager for %s: %w", res.GVK(), err)
	}
	f.managers[res] = fm
	return fm, nil
}

// apply serves server-side apply (PATCH with application/apply-patch+yaml): the applied
// configuration is merged into the live object by field ownership, and conflicts with other
// managers are a 409 unless force is set. A missing object is created.
func (q *request) apply(kind updateKind, body []byte) {
	v := q.r.URL.Query()
	manager := v.Get("fieldManager")
	if manager == "" {
		q.fail(apierrors.NewBadRequest("PATCH requests with the apply content type must specify fieldManager"))
		return
	}
	force := isTrue(v.Get("force"))
	fm, err := q.h.fieldManager(q.res)
	if err != nil {
		q.fail(apierrors.NewInternalError(err))
		return
	}
	patch := &unstructured.Unstructured{Object: map[string]any{}}
	if err := yaml.Unmarshal(body, &patch.Object); err != nil {
		q.fail(apierrors.NewBadRequest(fmt.Sprintf("error decoding YAML: %v", err)))
		return
	}
	if patch.GetAPIVersion() != q.res.GroupVersion() || patch.GetKind() != q.res.Kind {
		q.fail(apierrors.NewBadRequest(fmt.Sprintf("the applied configuration is a %s %s, not a %s %s", patch.GetAPIVersion(), patch.GetKind(), q.res.GroupVersion(), q.res.Kind)))
		return
	}
	merge := func(live runtime.Object) (runtime.Object, error) {
		out, err := fm.Apply(live, patch, manager, force)
		if err != nil {
			if _, ok := err.(apierrors.APIStatus); ok {
				return nil, err
			}
			return nil, apierrors.NewBadRequest(err.Error())
		}
		return out, checkIdentity(q, out)
	}
	if _, _, err := q.load(q.info.Name); apierrors.IsNotFound(err) && kind == updateMain {
		dry, derr := q.dryRun()
		if derr != nil {
			q.fail(derr)
			return
		}
		live := q.res.New()
		obj, err := merge(live)
		if err != nil {
			q.fail(err)
			return
		}
		created, err := q.h.createObject(q.ctx(), q.res, q.info.Namespace, obj, dry)
		if err != nil {
			q.fail(err)
			return
		}
		q.respond(http.StatusCreated, created)
		return
	}
	q.applyUpdate(kind, "", merge, nil)
}
