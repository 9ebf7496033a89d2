package registry

import (
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
)

func TestValidateCreateErrors(t *testing.T) {
	const subdomainMsg = `metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')`
	tests := []struct {
		name            string
		group, resource string
		obj             func() runtime.Object
		want            string // one error's String() must equal this, or contain it
		exact           bool
	}{
		{
			name: "deployment without image", group: "apps", resource: "deployments",
			obj:  func() runtime.Object { return newDeployment("web", "") },
			want: "spec.template.spec.containers[0].image: Required value",
		},
		{
			name: "deployment with bad name", group: "apps", resource: "deployments",
			obj: func() runtime.Object {
				d := newDeployment("web", "nginx:1.27")
				d.Name = "Bad_Name"
				return d
			},
			want: subdomainMsg, exact: true,
		},
		{
			name: "configmap with bad name", group: "", resource: "configmaps",
			obj: func() runtime.Object {
				return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "Bad_Name", Namespace: "default"}}
			},
			want: subdomainMsg, exact: true,
		},
		{
			name: "namespace names are DNS labels", group: "", resource: "namespaces",
			obj:  func() runtime.Object { return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "Bad_Name"}} },
			want: `metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 label must consist of`,
		},
		{
			name: "pod without containers", group: "", resource: "pods",
			obj: func() runtime.Object {
				p := newPod("web", "nginx:1.27")
				p.Spec.Containers = nil
				return p
			},
			want: "spec.containers: Required value",
		},
		{
			name: "deployment selector must match template", group: "apps", resource: "deployments",
			obj: func() runtime.Object {
				d := newDeployment("web", "nginx:1.27")
				d.Spec.Template.Labels = map[string]string{"app": "other"}
				return d
			},
			want: "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`",
		},
		{
			name: "service port out of range", group: "", resource: "services",
			obj: func() runtime.Object {
				s := newService("web")
				s.Spec.Ports[0].Port = 70000
				return s
			},
			want: "spec.ports[0].port: Invalid value: 70000: must be between 1 and 65535, inclusive",
		},
		{
			name: "namespaced object without namespace", group: "", resource: "configmaps",
			obj:  func() runtime.Object { return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "x"}} },
			want: "metadata.namespace: Required value",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := mustLookup(t, tc.group, tc.resource)
			errs := create(r, tc.obj())
			for _, e := range errs {
				if e == tc.want || (!tc.exact && strings.Contains(e, tc.want)) {
					return
				}
			}
			t.Errorf("errors %q\ndo not include %q", errs, tc.want)
		})
	}
}

func TestBadNameNamesMetadataName(t *testing.T) {
	// Kubernetes itself accepts such names for these kinds: core/v1 events get only the
	// legacy checks and PodDisruptionBudget validation never looks at the name; the
	// generic check after them only refuses ".", ".." and names with "/" or "%".
	acceptedByKube := map[string]bool{"event": true, "poddisruptionbudget": true}
	for name, tc := range validObjects() {
		t.Run(name, func(t *testing.T) {
			r := mustLookup(t, tc.group, tc.resource)
			obj := tc.obj.DeepCopyObject()
			m, ok := obj.(metav1.Object)
			if !ok {
				t.Fatalf("%T has no metadata", obj)
			}
			m.SetName("Bad_Name")
			r.Default(obj)
			r.PrepareForCreate(obj)
			errs := r.ValidateCreate(obj)
			if acceptedByKube[name] {
				if len(errs) > 0 {
					t.Errorf("kube accepts Bad_Name for %s, got %v", name, errs)
				}
				m.SetName("a/b")
				errs = r.ValidateCreate(obj)
				if len(errs) != 1 || errs[0].Error() != `metadata.name: Invalid value: "a/b": may not contain '/'` {
					t.Errorf("a/b for %s: got %v", name, errs)
				}
				return
			}
			for _, e := range errs {
				if e.Field == "metadata.name" && e.Type == field.ErrorTypeInvalid && e.BadValue == "Bad_Name" {
					return
				}
			}
			t.Errorf("Bad_Name accepted or reported elsewhere: %v", errs)
		})
	}
}

func TestValidateUpdate(t *testing.T) {
	deploy := mustLookup(t, "apps", "deployments")
	stored := func() *appsv1.Deployment {
		d := newDeployment("web", "nginx:1.27")
		deploy.Default(d)
		deploy.PrepareForCreate(d)
		d.ResourceVersion = "7"
		return d
	}
	tests := []struct {
		name   string
		change func(d *appsv1.Deployment)
		want   string // "" means valid
	}{
		{"scale up", func(d *appsv1.Deployment) { d.Spec.Replicas = int32p(4) }, ""},
		{"selector is immutable in apps/v1", func(d *appsv1.Deployment) {
			d.Spec.Selector.MatchLabels = map[string]string{"app": "web", "v": "2"}
			d.Spec.Template.Labels = map[string]string{"app": "web", "v": "2"}
		}, "spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"web\", \"v\":\"2\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable"},
		{"name is immutable", func(d *appsv1.Deployment) { d.Name = "other" }, `metadata.name: Invalid value: "other": field is immutable`},
		{"resourceVersion is required", func(d *appsv1.Deployment) { d.ResourceVersion = "" }, `metadata.resourceVersion: Invalid value: "": must be specified for an update`},
		{"image is required", func(d *appsv1.Deployment) { d.Spec.Template.Spec.Containers[0].Image = "" }, "spec.template.spec.containers[0].image: Required value"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			old := stored()
			obj := old.DeepCopy()
			tc.change(obj)
			deploy.PrepareForUpdate(obj, old)
			errs := deploy.ValidateUpdate(obj, old)
			if tc.want == "" {
				if len(errs) > 0 {
					t.Errorf("rejected: %v", errs)
				}
				return
			}
			for _, e := range errs {
				if e.Error() == tc.want {
					return
				}
			}
			t.Errorf("errors %q\ndo not include %q", errs, tc.want)
		})
	}
}

func TestValidateStatusUpdateWithoutStatus(t *testing.T) {
	cms := mustLookup(t, "", "configmaps")
	cm := &corev1.ConfigMap{ObjectMeta: objectMeta("x")}
	if errs := cms.ValidateStatusUpdate(cm, cm); len(errs) != 1 || errs[0].Type != field.ErrorTypeInternal {
		t.Errorf("status update of a configmap: %v, want one internal error", errs)
	}
}

func TestUnconditionalUpdate(t *testing.T) {
	tests := []struct {
		group, resource string
		want            bool
	}{
		{"", "pods", true},
		{"", "services", true},
		{"apps", "deployments", true},
		{"", "namespaces", true},
		{"coordination.k8s.io", "leases", false},
		{"policy", "poddisruptionbudgets", false},
	}
	for _, tc := range tests {
		if got := mustLookup(t, tc.group, tc.resource).AllowUnconditionalUpdate(); got != tc.want {
			t.Errorf("%s AllowUnconditionalUpdate = %v, want %v", tc.resource, got, tc.want)
		}
	}
}
