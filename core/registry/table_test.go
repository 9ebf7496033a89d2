package registry

import (
	"reflect"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

func columnNames(t *metav1.Table) []string {
	var out []string
	for _, c := range t.ColumnDefinitions {
		out = append(out, c.Name)
	}
	return out
}

func TestTableColumns(t *testing.T) {
	pod := newPod("web", "nginx:1.27")
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.0.5"}
	pod.Spec.NodeName = "node-1"
	deploy := newDeployment("web", "nginx:1.27")
	deploy.Spec.Replicas = int32p(3)
	deploy.Status = appsv1.DeploymentStatus{ReadyReplicas: 2, UpdatedReplicas: 3, AvailableReplicas: 2}
	lr := &corev1.LimitRange{ObjectMeta: metav1.ObjectMeta{Name: "limits", Namespace: "default",
		CreationTimestamp: metav1.Unix(1700000000, 0)}}

	tests := []struct {
		name            string
		group, resource string
		obj             runtime.Object
		columns         []string
		cells           []interface{} // leading cells of the one row (the rest, e.g. Age, vary)
	}{
		{
			name: "pod", resource: "pods", obj: pod,
			columns: []string{"Name", "Ready", "Status", "Restarts", "Age", "IP", "Node", "Nominated Node", "Readiness Gates"},
			cells:   []interface{}{"web", "0/1", "Running", "0"},
		},
		{
			name: "deployment", group: "apps", resource: "deployments", obj: deploy,
			columns: []string{"Name", "Ready", "Up-to-date", "Available", "Age", "Containers", "Images", "Selector"},
			cells:   []interface{}{"web", "2/3", int64(3), int64(2)},
		},
		{
			name: "limitrange uses the default table", resource: "limitranges", obj: lr,
			columns: []string{"Name", "Created At"},
			cells:   []interface{}{"limits", "2023-11-14T22:13:20Z"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustLookup(t, tc.group, tc.resource)
			table, err := r.Table(tc.obj)
			if err != nil {
				t.Fatal(err)
			}
			if got := columnNames(table); !reflect.DeepEqual(got, tc.columns) {
				t.Errorf("columns = %q, want %q", got, tc.columns)
			}
			if len(table.Rows) != 1 {
				t.Fatalf("%d rows, want 1", len(table.Rows))
			}
			row := table.Rows[0]
			if len(row.Cells) != len(tc.columns) {
				t.Errorf("%d cells for %d columns", len(row.Cells), len(tc.columns))
			}
			if got := row.Cells[:len(tc.cells)]; !reflect.DeepEqual(got, tc.cells) {
				t.Errorf("cells = %#v, want %#v", got, tc.cells)
			}
			if reflect.TypeOf(row.Object.Object) != reflect.TypeOf(tc.obj) {
				t.Errorf("row object is %T, want the external %T", row.Object.Object, tc.obj)
			}
			if gvk := row.Object.Object.GetObjectKind().GroupVersionKind(); gvk != r.GVK() {
				t.Errorf("row object kind = %v, want %v", gvk, r.GVK())
			}
		})
	}

	// The column metadata kubectl relies on.
	table, err := mustLookup(t, "", "pods").Table(pod)
	if err != nil {
		t.Fatal(err)
	}
	if c := table.ColumnDefinitions[0]; c.Format != "name" || c.Type != "string" || c.Priority != 0 {
		t.Errorf("pod Name column = %+v", c)
	}
	if c := table.ColumnDefinitions[5]; c.Name != "IP" || c.Priority != 1 {
		t.Errorf("pod IP column = %+v, want a wide (priority 1) column", c)
	}
	lrTable, err := mustLookup(t, "", "limitranges").Table(lr)
	if err != nil {
		t.Fatal(err)
	}
	if c := lrTable.ColumnDefinitions; c[0].Format != "name" || c[1].Type != "date" || c[1].Description == "" {
		t.Errorf("default table columns = %+v", c)
	}
}

func TestTableOfList(t *testing.T) {
	pods := mustLookup(t, "", "pods")
	list := &corev1.PodList{
		ListMeta: metav1.ListMeta{ResourceVersion: "42"},
		Items:    []corev1.Pod{*newPod("a", "nginx"), *newPod("b", "nginx")},
	}
	for i := range list.Items {
		list.Items[i].TypeMeta = metav1.TypeMeta{} // as in a decoded list
	}
	list.Items[1].Status.Phase = corev1.PodSucceeded
	table, err := pods.Table(list)
	if err != nil {
		t.Fatal(err)
	}
	if table.ResourceVersion != "42" || len(table.Rows) != 2 {
		t.Fatalf("table rv %q rows %d, want 42 and 2", table.ResourceVersion, len(table.Rows))
	}
	for i, want := range []struct{ name, status string }{{"a", ""}, {"b", "Succeeded"}} {
		row := table.Rows[i]
		p, ok := row.Object.Object.(*corev1.Pod)
		if !ok {
			t.Fatalf("row %d object is %T, want *v1.Pod", i, row.Object.Object)
		}
		if p.Name != want.name || row.Cells[0] != want.name || row.Cells[2] != want.status {
			t.Errorf("row %d = %v (object %s), want %s %q", i, row.Cells[:3], p.Name, want.name, want.status)
		}
		if p.APIVersion != "v1" || p.Kind != "Pod" {
			t.Errorf("row %d object has apiVersion %q kind %q", i, p.APIVersion, p.Kind)
		}
	}
	if list.Items[0].Kind != "" {
		t.Error("Table changed the caller's list items")
	}

	noHeaders, err := pods.ConvertToTable(list, &metav1.TableOptions{NoHeaders: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(noHeaders.ColumnDefinitions) != 0 || len(noHeaders.Rows) != 2 {
		t.Errorf("noHeaders: %d columns %d rows, want 0 and 2", len(noHeaders.ColumnDefinitions), len(noHeaders.Rows))
	}
}

// TestEveryResourceHasATable prints an object and an empty list of each resource, with
// the printer kube uses: only limitranges fall back to the default Name/Created At.
func TestEveryResourceHasATable(t *testing.T) {
	for _, r := range All() {
		t.Run(r.GVR().String(), func(t *testing.T) {
			obj := r.New()
			m, _ := meta.Accessor(obj)
			m.SetName("x")
			if r.Namespaced {
				m.SetNamespace("default")
			}
			r.Default(obj)
			table, err := r.Table(obj)
			if err != nil {
				t.Fatal(err)
			}
			nameColumn := -1
			for i, c := range table.ColumnDefinitions {
				if c.Format == "name" && nameColumn < 0 {
					nameColumn = i
				}
			}
			if nameColumn < 0 || len(table.Rows) != 1 || table.Rows[0].Cells[nameColumn] != "x" {
				t.Errorf("name column %d, rows %+v, want one row named x", nameColumn, table.Rows)
			}
			isDefault := reflect.DeepEqual(columnNames(table), []string{"Name", "Created At"})
			if isDefault != (r.Resource == "limitranges") {
				t.Errorf("columns %q: default table %v, want %v", columnNames(table), isDefault, r.Resource == "limitranges")
			}
			listTable, err := r.Table(r.NewList())
			if err != nil {
				t.Fatal(err)
			}
			if len(listTable.Rows) != 0 || !reflect.DeepEqual(columnNames(listTable), columnNames(table)) {
				t.Errorf("empty list: %d rows, columns %q", len(listTable.Rows), columnNames(listTable))
			}
		})
	}
}
