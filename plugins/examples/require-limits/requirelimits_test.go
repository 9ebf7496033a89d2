package requirelimits

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"berth.dev/berth/plugins/admission"
)

func limits(kv ...string) corev1.ResourceRequirements {
	l := corev1.ResourceList{}
	for i := 0; i+1 < len(kv); i += 2 {
		l[corev1.ResourceName(kv[i])] = resource.MustParse(kv[i+1])
	}
	return corev1.ResourceRequirements{Limits: l}
}

func pod(ns string, init []corev1.Container, cs ...corev1.Container) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns},
		Spec:       corev1.PodSpec{InitContainers: init, Containers: cs},
	}
}

func request(t *testing.T, op admission.Operation, p, old *corev1.Pod) *admission.Request {
	t.Helper()
	enc := func(p *corev1.Pod) []byte {
		if p == nil {
			return nil
		}
		b, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	return &admission.Request{
		Operation: op, Resource: schema.GroupVersionResource{Version: "v1", Resource: "pods"}, Kind: schema.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Namespace: p.Namespace, Name: p.Name, Object: enc(p), OldObject: enc(old),
	}
}

func configured(t *testing.T, args string) *Plugin {
	t.Helper()
	p := New()
	if err := p.Configure("v1", []byte(args)); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestValidate(t *testing.T) {
	full := limits("cpu", "1", "memory", "1Gi")
	for _, tc := range []struct {
		name string
		args string
		req  func(t *testing.T) *admission.Request
		deny string
	}{
		{name: "all limited", req: func(t *testing.T) *admission.Request {
			return request(t, admission.Create, pod("d", []corev1.Container{{Name: "i", Resources: full}}, corev1.Container{Name: "c", Resources: full}), nil)
		}},
		{name: "no memory", deny: `container "c" has no memory limit`, req: func(t *testing.T) *admission.Request {
			return request(t, admission.Create, pod("d", nil, corev1.Container{Name: "c", Resources: limits("cpu", "1")}), nil)
		}},
		{name: "nothing, init too", deny: `init container "i" has no cpu or memory limits; container "c" has no cpu or memory limits`, req: func(t *testing.T) *admission.Request {
			return request(t, admission.Create, pod("d", []corev1.Container{{Name: "i"}}, corev1.Container{Name: "c"}), nil)
		}},
		{name: "kube-system exempt", req: func(t *testing.T) *admission.Request {
			return request(t, admission.Create, pod("kube-system", nil, corev1.Container{Name: "c"}), nil)
		}},
		{name: "no exemption", args: `{"exemptNamespaces":[]}`, deny: "has no cpu or memory limits", req: func(t *testing.T) *admission.Request {
			return request(t, admission.Create, pod("kube-system", nil, corev1.Container{Name: "c"}), nil)
		}},
		{name: "memory only", args: `{"resources":["memory"]}`, req: func(t *testing.T) *admission.Request {
			return request(t, admission.Create, pod("d", nil, corev1.Container{Name: "c", Resources: limits("memory", "1Gi")}), nil)
		}},
		{name: "update of an old pod", req: func(t *testing.T) *admission.Request {
			old := pod("d", nil, corev1.Container{Name: "c"})
			now := old.DeepCopy()
			now.Labels = map[string]string{"a": "b"}
			return request(t, admission.Update, now, old)
		}},
		{name: "update dropping a limit", deny: `container "c" has no memory limit`, req: func(t *testing.T) *admission.Request {
			old := pod("d", nil, corev1.Container{Name: "c", Resources: full})
			return request(t, admission.Update, pod("d", nil, corev1.Container{Name: "c", Resources: limits("cpu", "1")}), old)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := New()
			if tc.args != "" {
				p = configured(t, tc.args)
			}
			v, err := p.Validate(context.Background(), tc.req(t))
			if err != nil {
				t.Fatal(err)
			}
			if tc.deny == "" && !v.Allowed {
				t.Errorf("denied: %s", v.Message)
			}
			if tc.deny != "" && (v.Allowed || !strings.Contains(v.Message, tc.deny)) {
				t.Errorf("verdict %+v, want a denial containing %q", v, tc.deny)
			}
		})
	}
}

// workload wraps a pod template in an object of kind, encoded as the API server sends it.
func workload(t *testing.T, kind string, op admission.Operation, spec, oldSpec *corev1.PodSpec) *admission.Request {
	t.Helper()
	tmpl := func(s *corev1.PodSpec) corev1.PodTemplateSpec { return corev1.PodTemplateSpec{Spec: *s} }
	enc := func(s *corev1.PodSpec) []byte {
		if s == nil {
			return nil
		}
		meta := metav1.ObjectMeta{Name: "w", Namespace: "d"}
		var obj any
		switch kind {
		case "Deployment":
			obj = &appsv1.Deployment{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: kind}, ObjectMeta: meta, Spec: appsv1.DeploymentSpec{Template: tmpl(s)}}
		case "ReplicaSet":
			obj = &appsv1.ReplicaSet{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: kind}, ObjectMeta: meta, Spec: appsv1.ReplicaSetSpec{Template: tmpl(s)}}
		case "StatefulSet":
			obj = &appsv1.StatefulSet{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: kind}, ObjectMeta: meta, Spec: appsv1.StatefulSetSpec{Template: tmpl(s)}}
		case "DaemonSet":
			obj = &appsv1.DaemonSet{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: kind}, ObjectMeta: meta, Spec: appsv1.DaemonSetSpec{Template: tmpl(s)}}
		case "Job":
			obj = &batchv1.Job{TypeMeta: metav1.TypeMeta{APIVersion: "batch/v1", Kind: kind}, ObjectMeta: meta, Spec: batchv1.JobSpec{Template: tmpl(s)}}
		case "CronJob":
			obj = &batchv1.CronJob{TypeMeta: metav1.TypeMeta{APIVersion: "batch/v1", Kind: kind}, ObjectMeta: meta,
				Spec: batchv1.CronJobSpec{JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: tmpl(s)}}}}
		default:
			t.Fatalf("no workload kind %s", kind)
		}
		b, err := json.Marshal(obj)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	group := "apps"
	if kind == "Job" || kind == "CronJob" {
		group = "batch"
	}
	return &admission.Request{
		Operation: op, Resource: schema.GroupVersionResource{Group: group, Version: "v1", Resource: strings.ToLower(kind) + "s"},
		Kind: schema.GroupVersionKind{Group: group, Version: "v1", Kind: kind}, Namespace: "d", Name: "w", Object: enc(spec), OldObject: enc(oldSpec),
	}
}

func TestValidateWorkloads(t *testing.T) {
	full := limits("cpu", "1", "memory", "1Gi")
	bare := &corev1.PodSpec{InitContainers: []corev1.Container{{Name: "init", Resources: full}}, Containers: []corev1.Container{{Name: "app", Resources: limits("cpu", "1")}, {Name: "side", Resources: full}}}
	good := &corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Resources: full}}}
	for _, kind := range []string{"Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob"} {
		t.Run(kind, func(t *testing.T) {
			v, err := New().Validate(context.Background(), workload(t, kind, admission.Create, bare, nil))
			if err != nil {
				t.Fatal(err)
			}
			if want := `pod template: container "app" has no memory limit`; v.Allowed || v.Message != want {
				t.Errorf("verdict %+v, want a denial %q", v, want)
			}
			if v, err := New().Validate(context.Background(), workload(t, kind, admission.Create, good, nil)); err != nil || !v.Allowed {
				t.Errorf("a template with limits: %+v, %v", v, err)
			}
			// An update that leaves the template as it was (a scale, a label) passes.
			if v, err := New().Validate(context.Background(), workload(t, kind, admission.Update, bare, bare)); err != nil || !v.Allowed {
				t.Errorf("an update keeping the old template: %+v, %v", v, err)
			}
		})
	}
	// Other kinds are not judged, even when they carry a pod template.
	req := workload(t, "Deployment", admission.Create, bare, nil)
	req.Kind.Kind = "PodTemplate"
	if v, err := New().Validate(context.Background(), req); err != nil || !v.Allowed {
		t.Errorf("a PodTemplate: %+v, %v", v, err)
	}
}

func TestMutateDefaultsWorkloadTemplates(t *testing.T) {
	p := configured(t, `{"defaultLimits":{"cpu":"500m","memory":"256Mi"}}`)
	m, err := p.Mutate(context.Background(), workload(t, "CronJob", admission.Create, &corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}}, nil))
	if err != nil || !m.Allowed || m.PatchType != admission.WholeObject {
		t.Fatalf("Mutate = %+v, %v", m, err)
	}
	var out batchv1.CronJob
	if err := json.Unmarshal(m.Patch, &out); err != nil {
		t.Fatal(err)
	}
	if l := out.Spec.JobTemplate.Spec.Template.Spec.Containers[0].Resources.Limits; l.Cpu().String() != "500m" || l.Memory().String() != "256Mi" {
		t.Errorf("limits after Mutate: %v", l)
	}
	if out.Kind != "CronJob" || out.Name != "w" {
		t.Errorf("Mutate changed the object's identity: %s %s", out.Kind, out.Name)
	}
}

func TestMutateSetsDefaults(t *testing.T) {
	p := configured(t, `{"defaultLimits":{"cpu":"500m","memory":"256Mi"}}`)
	in := pod("d", []corev1.Container{{Name: "i"}}, corev1.Container{Name: "c", Resources: limits("cpu", "2")})
	m, err := p.Mutate(context.Background(), request(t, admission.Create, in, nil))
	if err != nil || !m.Allowed || m.PatchType != admission.WholeObject {
		t.Fatalf("Mutate = %+v, %v", m, err)
	}
	var out corev1.Pod
	if err := json.Unmarshal(m.Patch, &out); err != nil {
		t.Fatal(err)
	}
	c, i := out.Spec.Containers[0].Resources.Limits, out.Spec.InitContainers[0].Resources.Limits
	if c.Cpu().String() != "2" || c.Memory().String() != "256Mi" || i.Cpu().String() != "500m" || i.Memory().String() != "256Mi" {
		t.Errorf("limits after Mutate: container %v, init %v", c, i)
	}
	v, err := p.Validate(context.Background(), request(t, admission.Create, &out, nil))
	if err != nil || !v.Allowed {
		t.Errorf("the defaulted pod is denied: %+v, %v", v, err)
	}
	// Without defaults, and on updates, Mutate leaves pods alone.
	if m, err := New().Mutate(context.Background(), request(t, admission.Create, in, nil)); err != nil || m.PatchType != admission.NoPatch {
		t.Errorf("Mutate without defaultLimits = %+v, %v", m, err)
	}
	if m, err := p.Mutate(context.Background(), request(t, admission.Update, in, in)); err != nil || m.PatchType != admission.NoPatch {
		t.Errorf("Mutate of an update = %+v, %v", m, err)
	}
}

func TestConfigureRefusesBadArgs(t *testing.T) {
	for _, args := range []string{`{"resource":["cpu"]}`, `{"defaultLimits":{"cpu":"lots"}}`, `[1]`} {
		if err := New().Configure("v1", []byte(args)); err == nil {
			t.Errorf("Configure(%s) passed", args)
		}
	}
}
