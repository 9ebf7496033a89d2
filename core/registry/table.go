package registry

import (
	"fmt"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/kubernetes/pkg/printers"
	printersinternal "k8s.io/kubernetes/pkg/printers/internalversion"
	printerstorage "k8s.io/kubernetes/pkg/printers/storage"
)

// tableGenerator holds kube-apiserver's printers, the same handlers every store of
// pkg/registry gets (printerstorage.TableConvertor with printersinternal.AddHandlers).
var tableGenerator = printers.NewTableGenerator().With(printersinternal.AddHandlers)

// Table returns the server-side table kube-apiserver 1.33 answers for obj, one external
// object or list of r: the printer's columns, wide ones included (priority 1), rows whose
// Object is the external object. Resources kube serves with the default table convertor
// (limitranges) get its two columns, Name and Created At.
func (r *Resource) Table(obj runtime.Object) (*metav1.Table, error) {
	return r.ConvertToTable(obj, nil)
}

// ConvertToTable is Table with the request's table options (includeObject is left to
// the caller; noHeaders drops the column definitions, as in kube).
func (r *Resource) ConvertToTable(obj runtime.Object, opts *metav1.TableOptions) (*metav1.Table, error) {
	var tableOptions runtime.Object // a typed nil would read as options present
	if opts != nil {
		tableOptions = opts
	}
	ctx := r.requestContext("list", "", obj)
	if r.rules().defaultTable {
		table, err := rest.NewDefaultTableConvertor(r.GVR().GroupResource()).ConvertToTable(ctx, obj, tableOptions)
		if err != nil {
			return nil, fmt.Errorf("table for %s: %w", r.GVR(), err)
		}
		if err := r.externalRowObjects(table, obj, obj); err != nil {
			return nil, err
		}
		return table, nil
	}
	in, err := r.toInternal(obj)
	if err != nil {
		return nil, err
	}
	table, err := printerstorage.TableConvertor{TableGenerator: tableGenerator}.ConvertToTable(ctx, in, tableOptions)
	if err != nil {
		return nil, fmt.Errorf("table for %s: %w", r.GVR(), err)
	}
	if err := r.externalRowObjects(table, obj, in); err != nil {
		return nil, err
	}
	return table, nil
}

// externalRowObjects replaces the objects the convertor put in the rows (internal ones
// from the printers) by copies of the caller's external ones with apiVersion and kind set,
// matching list items by identity with in, the list the convertor printed.
func (r *Resource) externalRowObjects(table *metav1.Table, obj, in runtime.Object) error {
	if !meta.IsListType(obj) {
		out := obj.DeepCopyObject()
		out.GetObjectKind().SetGroupVersionKind(r.GVK())
		for i := range table.Rows {
			table.Rows[i].Object = runtime.RawExtension{Object: out}
		}
		return nil
	}
	items, err := meta.ExtractList(obj)
	if err != nil {
		return fmt.Errorf("table for %s: %w", r.GVR(), err)
	}
	inItems, err := meta.ExtractList(in)
	if err != nil {
		return fmt.Errorf("table for %s: %w", r.GVR(), err)
	}
	if len(items) != len(inItems) {
		return fmt.Errorf("table for %s: %d items became %d after conversion", r.GVR(), len(items), len(inItems))
	}
	external := make(map[runtime.Object]runtime.Object, len(items))
	for i := range inItems {
		external[inItems[i]] = items[i]
	}
	for i := range table.Rows {
		item, ok := external[table.Rows[i].Object.Object]
		if !ok && i < len(items) {
			item = items[i] // a printer that copied its item: rows follow the list order
		}
		if item == nil {
			continue
		}
		out := item.DeepCopyObject()
		out.GetObjectKind().SetGroupVersionKind(r.GVK())
		table.Rows[i].Object = runtime.RawExtension{Object: out}
	}
	return nil
}
