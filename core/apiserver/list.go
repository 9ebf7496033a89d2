package apiserver

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	"berth.dev/berth/core/registry"
	"berth.dev/berth/core/storage"
)

// selector is a request's label and field selector.
type selector struct {
	labels labels.Selector
	fields fields.Selector
}

func (s selector) empty() bool { return s.labels.Empty() && s.fields.Empty() }

// parseSelector reads labelSelector and fieldSelector, refusing fields the resource cannot select on.
func parseSelector(res *registry.Resource, labelSel, fieldSel string) (selector, error) {
	ls, err := labels.Parse(labelSel)
	if err != nil {
		return selector{}, apierrors.NewBadRequest(fmt.Sprintf("unable to parse requirement: %v", err))
	}
	fs, err := res.ParseFieldSelector(fieldSel)
	if err != nil {
		return selector{}, apierrors.NewBadRequest(err.Error())
	}
	return selector{labels: ls, fields: fs}, nil
}

func (s selector) matches(res *registry.Resource, obj runtime.Object) bool {
	if s.empty() {
		return true
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return false
	}
	if !s.labels.Matches(labels.Set(m.GetLabels())) {
		return false
	}
	return s.fields.Empty() || s.fields.Matches(res.FieldSet(obj))
}

// listOptions are the parts of a list request the store cares about.
type listOptions struct {
	sel      selector
	limit    int64
	cont     string
	revision int64
}

func (q *request) listOptions() (listOptions, error) {
	v := q.r.URL.Query()
	sel, err := parseSelector(q.res, v.Get("labelSelector"), v.Get("fieldSelector"))
	if err != nil {
		return listOptions{}, err
	}
	opts := listOptions{sel: sel, cont: v.Get("continue")}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return opts, apierrors.NewBadRequest(fmt.Sprintf("limit must be a non-negative integer, not %q", s))
		}
		opts.limit = n
	}
	if rv := v.Get("resourceVersion"); rv != "" && rv != "0" && v.Get("resourceVersionMatch") == "Exact" {
		n, err := strconv.ParseInt(rv, 10, 64)
		if err != nil {
			return opts, apierrors.NewBadRequest(fmt.Sprintf("resourceVersion must be an integer, not %q", rv))
		}
		opts.revision = n
	}
	if opts.cont != "" && v.Get("resourceVersion") != "" && v.Get("resourceVersion") != "0" {
		return opts, apierrors.NewBadRequest("specifying resource version is not allowed when using continue")
	}
	return opts, nil
}

// listResult is one page of matching objects.
type listResult struct {
	items     []runtime.Object
	revision  int64
	cont      string
	remaining *int64
}

// listObjects reads matching objects page by page from the store until the limit is met, as
// Kubernetes does: a limit counts matching objects, not scanned ones.
func (h *Handler) listObjects(q *request, prefix string, opts listOptions) (listResult, error) {
	var out listResult
	cont, revision := opts.cont, opts.revision
	for {
		page := opts.limit
		if page > 0 && !opts.sel.empty() {
			// Read ahead when filtering, so a selective limit does not take one round trip per item.
			page = max(page-int64(len(out.items)), 100)
		}
		if page > 0 && opts.sel.empty() {
			page = opts.limit - int64(len(out.items))
		}
		res, err := h.store.List(q.ctx(), prefix, storage.ListOptions{Limit: page, Continue: cont, Revision: revision})
		if err != nil {
			if errors.Is(err, storage.ErrBadContinue) {
				return out, apierrors.NewBadRequest(fmt.Sprintf("invalid continue token: %v", err))
			}
			return out, q.storageError(err, "")
		}
		out.revision, revision = res.Revision, res.Revision
		for i, item := range res.Items {
			obj, err := decodeStored(q.res, item.Value, item.Revision)
			if err != nil {
				return out, apierrors.NewInternalError(err)
			}
			if !opts.sel.matches(q.res, obj) {
				continue
			}
			out.items = append(out.items, obj)
			if opts.limit > 0 && int64(len(out.items)) == opts.limit && (i < len(res.Items)-1 || res.Continue != "") {
				// Full: the continue token must resume after this item.
				if i < len(res.Items)-1 {
					out.cont = h.store.ContinueAfter(prefix, item.Key, res.Revision)
				} else {
					out.cont = res.Continue
				}
				if opts.sel.empty() {
					rem := res.Remaining + int64(len(res.Items)-1-i)
					out.remaining = &rem
				}
				return out, nil
			}
		}
		if res.Continue == "" {
			return out, nil
		}
		cont = res.Continue
	}
}

func (q *request) list() {
	opts, err := q.listOptions()
	if err != nil {
		q.fail(err)
		return
	}
	res, err := q.h.listObjects(q, collectionPrefix(q.res, q.info.Namespace), opts)
	if err != nil {
		q.fail(err)
		return
	}
	q.respondList(res)
}

func (q *request) respondList(res listResult) {
	list := q.res.NewList()
	if err := meta.SetList(list, res.items); err != nil {
		q.fail(apierrors.NewInternalError(err))
		return
	}
	lm, err := meta.ListAccessor(list)
	if err != nil {
		q.fail(apierrors.NewInternalError(err))
		return
	}
	lm.SetResourceVersion(formatRV(res.revision))
	lm.SetContinue(res.cont)
	lm.SetRemainingItemCount(res.remaining)
	q.respond(http.StatusOK, list)
}

func andFields(a, b fields.Selector) fields.Selector {
	if a.Empty() {
		return b
	}
	return fields.AndSelectors(a, b)
}

func everythingFields() fields.Selector { return fields.Everything() }
