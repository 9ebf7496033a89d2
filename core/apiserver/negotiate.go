package apiserver

import (
	"encoding/json"
	"mime"
	"net/http"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// outputForm is the shape a client asked for in its Accept header.
type outputForm int

const (
	formObject   outputForm = iota // the object or list itself
	formTable                      // meta.k8s.io Table, as kubectl get asks
	formMetadata                   // PartialObjectMetadata(List)
)

// negotiate reads the Accept header: the first media type berth can serve wins, as in Kubernetes.
func negotiate(accept string) (outputForm, bool) {
	if accept == "" {
		return formObject, true
	}
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		if mt != "application/json" && mt != "*/*" && mt != "application/*" {
			continue
		}
		switch params["as"] {
		case "":
			return formObject, true
		case "Table":
			if params["g"] == "meta.k8s.io" && (params["v"] == "v1" || params["v"] == "v1beta1") {
				return formTable, true
			}
		case "PartialObjectMetadata", "PartialObjectMetadataList":
			if params["g"] == "meta.k8s.io" && (params["v"] == "v1" || params["v"] == "v1beta1") {
				return formMetadata, true
			}
		}
	}
	return formObject, false
}

// respond writes an object or list in the form the client asked for.
func (q *request) respond(code int, obj runtime.Object) {
	form, ok := negotiate(q.r.Header.Get("Accept"))
	if !ok {
		q.fail(notAcceptable("only application/json (optionally as Table or PartialObjectMetadata) is served"))
		return
	}
	out, err := q.transform(form, obj, true)
	if err != nil {
		q.fail(err)
		return
	}
	writeJSON(q.w, code, out)
}

// transform turns an object or list into the requested form.
func (q *request) transform(form outputForm, obj runtime.Object, headers bool) (any, error) {
	switch form {
	case formTable:
		return q.table(obj, headers)
	case formMetadata:
		return partialMetadata(obj)
	}
	return obj, nil
}

func (q *request) table(obj runtime.Object, headers bool) (*metav1.Table, error) {
	t, err := q.res.Table(obj)
	if err != nil {
		return nil, apierrors.NewInternalError(err)
	}
	t.Kind, t.APIVersion = "Table", "meta.k8s.io/v1"
	if !headers {
		t.ColumnDefinitions = nil
	}
	if meta.IsListType(obj) {
		if lm, err := meta.ListAccessor(obj); err == nil {
			t.ResourceVersion, t.Continue, t.RemainingItemCount = lm.GetResourceVersion(), lm.GetContinue(), lm.GetRemainingItemCount()
		}
	} else if m, err := meta.Accessor(obj); err == nil {
		t.ResourceVersion = m.GetResourceVersion()
	}
	include := q.r.URL.Query().Get("includeObject")
	for i := range t.Rows {
		row := &t.Rows[i]
		src := row.Object.Object
		row.Object = runtime.RawExtension{}
		if src == nil {
			continue
		}
		var v any
		switch include {
		case "None":
			continue
		case "Object":
			v = src
		case "", "Metadata":
			pom, err := partialMetadata(src)
			if err != nil {
				return nil, err
			}
			v = pom
		default:
			return nil, apierrors.NewBadRequest("includeObject must be None, Metadata or Object")
		}
		raw, err := json.Marshal(v)
		if err != nil {
			return nil, apierrors.NewInternalError(err)
		}
		row.Object.Raw = raw
	}
	return t, nil
}

// partialMetadata returns an object's PartialObjectMetadata, or a list's PartialObjectMetadataList.
func partialMetadata(obj runtime.Object) (runtime.Object, error) {
	if meta.IsListType(obj) {
		items, err := meta.ExtractList(obj)
		if err != nil {
			return nil, apierrors.NewInternalError(err)
		}
		lm, _ := meta.ListAccessor(obj)
		out := &metav1.PartialObjectMetadataList{TypeMeta: metav1.TypeMeta{Kind: "PartialObjectMetadataList", APIVersion: "meta.k8s.io/v1"}}
		out.ResourceVersion, out.Continue = lm.GetResourceVersion(), lm.GetContinue()
		for _, item := range items {
			p, err := partialMetadata(item)
			if err != nil {
				return nil, err
			}
			out.Items = append(out.Items, *p.(*metav1.PartialObjectMetadata))
		}
		return out, nil
	}
	acc, ok := obj.(metav1.ObjectMetaAccessor)
	if !ok {
		return nil, apierrors.NewInternalError(errNoObjectMeta)
	}
	om, ok := acc.GetObjectMeta().(*metav1.ObjectMeta)
	if !ok {
		return nil, apierrors.NewInternalError(errNoObjectMeta)
	}
	return &metav1.PartialObjectMetadata{TypeMeta: metav1.TypeMeta{Kind: "PartialObjectMetadata", APIVersion: "meta.k8s.io/v1"}, ObjectMeta: *om.DeepCopy()}, nil
}

var errNoObjectMeta = errString("object has no ObjectMeta")

type errString string

func (e errString) Error() string { return string(e) }

var _ = http.StatusOK
