package registry

import (
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestEveryResourceIsWired(t *testing.T) {
	if err := checkRules(); err != nil {
		t.Fatal(err)
	}
	for _, r := range All() {
		k := rulesByResource[r.GVR().GroupResource()]
		if got := k.status != nil; got != r.Status {
			t.Errorf("%s: catalogue Status=%v but kube status strategy present=%v", r.GVR(), r.Status, got)
		}
		if got := k.strategy.NamespaceScoped(); got != r.Namespaced {
			t.Errorf("%s: catalogue Namespaced=%v, kube strategy NamespaceScoped=%v", r.GVR(), r.Namespaced, got)
		}
	}
}

func TestNewAndNewList(t *testing.T) {
	for _, r := range All() {
		t.Run(r.GVR().String(), func(t *testing.T) {
			obj := r.New()
			if got := obj.GetObjectKind().GroupVersionKind(); got != r.GVK() {
				t.Errorf("New() kind = %v, want %v", got, r.GVK())
			}
			kinds, _, err := Scheme.ObjectKinds(obj)
			if err != nil {
				t.Fatal(err)
			}
			if !containsGVK(kinds, r.GVK()) {
				t.Errorf("New() is %T, registered as %v, not as %v", obj, kinds, r.GVK())
			}
			list := r.NewList()
			want := r.GVK().GroupVersion().WithKind(r.Kind + "List")
			if got := list.GetObjectKind().GroupVersionKind(); got != want {
				t.Errorf("NewList() kind = %v, want %v", got, want)
			}
			if !meta.IsListType(list) {
				t.Errorf("NewList() %T is not a list", list)
			}
			kinds, _, err = Scheme.ObjectKinds(list)
			if err != nil || !containsGVK(kinds, want) {
				t.Errorf("NewList() is %T, registered as %v (%v), not as %v", list, kinds, err, want)
			}
			// New must hand out a fresh object each time.
			if a, b := r.New(), r.New(); reflect.ValueOf(a).Pointer() == reflect.ValueOf(b).Pointer() {
				t.Error("New() returned the same object twice")
			}
		})
	}
}

func containsGVK(kinds []schema.GroupVersionKind, want schema.GroupVersionKind) bool {
	for _, k := range kinds {
		if k == want {
			return true
		}
	}
	return false
}

// TestGenerationFlagMatchesKube checks the catalogue's Generation flag against what the
// kube strategy actually does on create.
func TestGenerationFlagMatchesKube(t *testing.T) {
	for _, r := range All() {
		obj := r.New()
		m, _ := meta.Accessor(obj)
		m.SetName("x")
		if r.Namespaced {
			m.SetNamespace("default")
		}
		r.Default(obj)
		r.PrepareForCreate(obj)
		if got := m.GetGeneration() == 1; got != r.Generation {
			t.Errorf("%s: catalogue Generation=%v but kube sets generation %d on create", r.GVR(), r.Generation, m.GetGeneration())
		}
	}
}

func TestValidObjectsPassCreate(t *testing.T) {
	for name, tc := range validObjects() {
		t.Run(name, func(t *testing.T) {
			r := mustLookup(t, tc.group, tc.resource)
			if errs := create(r, tc.obj); len(errs) > 0 {
				t.Fatalf("valid %s rejected: %v", name, errs)
			}
			if got := tc.obj.GetObjectKind().GroupVersionKind(); got != r.GVK() {
				t.Errorf("after PrepareForCreate kind = %v, want %v", got, r.GVK())
			}
		})
	}
}

func TestDefaults(t *testing.T) {
	deploy := mustLookup(t, "apps", "deployments")
	d := newDeployment("web", "nginx:1.27")
	d.Spec.Template.Spec.Containers = append(d.Spec.Template.Spec.Containers,
		corev1.Container{Name: "latest", Image: "nginx:latest"},
		corev1.Container{Name: "untagged", Image: "nginx"})
	deploy.Default(d)

	pct25 := intstr.FromString("25%")
	wantStrategy := appsv1.DeploymentStrategy{
		Type:          appsv1.RollingUpdateDeploymentStrategyType,
		RollingUpdate: &appsv1.RollingUpdateDeployment{MaxUnavailable: &pct25, MaxSurge: &pct25},
	}
	if !equality.Semantic.DeepEqual(d.Spec.Strategy, wantStrategy) {
		t.Errorf("strategy = %+v, want RollingUpdate 25%%/25%%", d.Spec.Strategy)
	}
	checkInt32 := func(name string, got *int32, want int32) {
		t.Helper()
		if got == nil || *got != want {
			t.Errorf("%s = %v, want %d", name, got, want)
		}
	}
	checkInt32("replicas", d.Spec.Replicas, 1)
	checkInt32("revisionHistoryLimit", d.Spec.RevisionHistoryLimit, 10)
	checkInt32("progressDeadlineSeconds", d.Spec.ProgressDeadlineSeconds, 600)

	ps := d.Spec.Template.Spec
	if ps.RestartPolicy != corev1.RestartPolicyAlways || ps.DNSPolicy != corev1.DNSClusterFirst ||
		ps.SchedulerName != corev1.DefaultSchedulerName || ps.TerminationGracePeriodSeconds == nil ||
		*ps.TerminationGracePeriodSeconds != 30 {
		t.Errorf("pod spec defaults = restartPolicy %q dnsPolicy %q scheduler %q grace %v",
			ps.RestartPolicy, ps.DNSPolicy, ps.SchedulerName, ps.TerminationGracePeriodSeconds)
	}
	wantPull := map[string]corev1.PullPolicy{"main": corev1.PullIfNotPresent, "latest": corev1.PullAlways, "untagged": corev1.PullAlways}
	for _, c := range ps.Containers {
		if c.TerminationMessagePath != "/dev/termination-log" || c.TerminationMessagePolicy != corev1.TerminationMessageReadFile {
			t.Errorf("container %s termination message = %q %q", c.Name, c.TerminationMessagePath, c.TerminationMessagePolicy)
		}
		if c.ImagePullPolicy != wantPull[c.Name] {
			t.Errorf("container %s (%s) imagePullPolicy = %q, want %q", c.Name, c.Image, c.ImagePullPolicy, wantPull[c.Name])
		}
	}

	svcs := mustLookup(t, "", "services")
	s := newService("web")
	svcs.Default(s)
	if s.Spec.Type != corev1.ServiceTypeClusterIP || s.Spec.SessionAffinity != corev1.ServiceAffinityNone {
		t.Errorf("service type %q sessionAffinity %q, want ClusterIP None", s.Spec.Type, s.Spec.SessionAffinity)
	}
	if p := s.Spec.Ports[0]; p.Protocol != corev1.ProtocolTCP || p.TargetPort != intstr.FromInt32(80) {
		t.Errorf("service port = %+v, want TCP targetPort 80", p)
	}
}

func TestPrepareForCreate(t *testing.T) {
	pods := mustLookup(t, "", "pods")
	p := newPod("web", "nginx:1.27")
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.9"}
	pods.Default(p)
	pods.PrepareForCreate(p)
	if p.Status.Phase != corev1.PodPending || p.Status.QOSClass != corev1.PodQOSBestEffort || p.Status.PodIP != "" {
		t.Errorf("pod status = %+v, want Pending BestEffort only", p.Status)
	}

	g := newPod("guaranteed", "nginx:1.27")
	rl := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")}
	g.Spec.Containers[0].Resources = corev1.ResourceRequirements{Limits: rl}
	pods.Default(g)
	pods.PrepareForCreate(g)
	if g.Status.QOSClass != corev1.PodQOSGuaranteed {
		t.Errorf("pod with limits only: qosClass %q, want Guaranteed", g.Status.QOSClass)
	}

	nss := mustLookup(t, "", "namespaces")
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team"}, Status: corev1.NamespaceStatus{Phase: corev1.NamespaceTerminating}}
	nss.PrepareForCreate(ns)
	if ns.Status.Phase != corev1.NamespaceActive || !reflect.DeepEqual(ns.Spec.Finalizers, []corev1.FinalizerName{"kubernetes"}) {
		t.Errorf("namespace = phase %q finalizers %v, want Active [kubernetes]", ns.Status.Phase, ns.Spec.Finalizers)
	}

	deploy := mustLookup(t, "apps", "deployments")
	d := newDeployment("web", "nginx:1.27")
	d.Status.Replicas = 7
	d.Generation = 42
	deploy.PrepareForCreate(d)
	if d.Status.Replicas != 0 || d.Generation != 1 {
		t.Errorf("deployment status.replicas %d generation %d, want 0 and 1", d.Status.Replicas, d.Generation)
	}

	pvcs := mustLookup(t, "", "persistentvolumeclaims")
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: objectMeta("data"), Status: corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound}}
	pvcs.PrepareForCreate(pvc)
	if pvc.Status.Phase != corev1.ClaimPending {
		t.Errorf("pvc phase %q, want Pending", pvc.Status.Phase)
	}
	pvs := mustLookup(t, "", "persistentvolumes")
	pv := &corev1.PersistentVolume{ObjectMeta: metav1.ObjectMeta{Name: "pv1"}, Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeBound}}
	pvs.PrepareForCreate(pv)
	if pv.Status.Phase != corev1.VolumePending {
		t.Errorf("pv phase %q, want Pending", pv.Status.Phase)
	}

	// What the store does before the strategy: uid and creationTimestamp are the
	// server's, a generateName becomes a name.
	cms := mustLookup(t, "", "configmaps")
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{GenerateName: "settings-", Namespace: "default", UID: "client-uid"}}
	cms.PrepareForCreate(cm)
	if !strings.HasPrefix(cm.Name, "settings-") || len(cm.Name) != len("settings-")+5 {
		t.Errorf("generated name %q, want settings-xxxxx", cm.Name)
	}
	if cm.UID == "" || cm.UID == "client-uid" || cm.CreationTimestamp.IsZero() {
		t.Errorf("uid %q creationTimestamp %v, want set by the server", cm.UID, cm.CreationTimestamp)
	}
	if errs := cms.ValidateCreate(cm); len(errs) > 0 {
		t.Errorf("generated configmap rejected: %v", errs)
	}

	nodes := mustLookup(t, "", "nodes")
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}, Status: corev1.NodeStatus{Phase: corev1.NodeRunning,
		Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "10.0.0.1"}}}}
	nodes.PrepareForCreate(n)
	if len(n.Status.Addresses) != 1 || n.Status.Addresses[0].Address != "10.0.0.1" {
		t.Errorf("node status not kept on create: %+v", n.Status)
	}
}

func TestPrepareForUpdate(t *testing.T) {
	deploy := mustLookup(t, "apps", "deployments")
	stored := func() *appsv1.Deployment {
		d := newDeployment("web", "nginx:1.27")
		deploy.Default(d)
		deploy.PrepareForCreate(d)
		d.UID, d.ResourceVersion = "uid-1", "5"
		d.CreationTimestamp = metav1.Unix(1700000000, 0)
		d.Status.Replicas = 1
		return d
	}
	tests := []struct {
		name           string
		change         func(d *appsv1.Deployment)
		wantGeneration int64
	}{
		{"spec change bumps generation", func(d *appsv1.Deployment) { d.Spec.Replicas = int32p(3) }, 2},
		{"template change bumps generation", func(d *appsv1.Deployment) { d.Spec.Template.Spec.Containers[0].Image = "nginx:1.28" }, 2},
		{"label change keeps generation", func(d *appsv1.Deployment) { d.Labels["tier"] = "front" }, 1},
		// Deployments copy annotations to their replica sets, so kube bumps for them too.
		{"annotation change bumps generation", func(d *appsv1.Deployment) { d.Annotations = map[string]string{"a": "b"} }, 2},
		{"no change keeps generation", func(d *appsv1.Deployment) {}, 1},
		{"status change through main endpoint is ignored", func(d *appsv1.Deployment) { d.Status.Replicas = 9 }, 1},
		{"generation from the request is ignored", func(d *appsv1.Deployment) { d.Generation = 77 }, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			old := stored()
			obj := old.DeepCopy()
			obj.UID, obj.CreationTimestamp = "", metav1.Time{}
			tc.change(obj)
			deploy.PrepareForUpdate(obj, old)
			if obj.Generation != tc.wantGeneration {
				t.Errorf("generation = %d, want %d", obj.Generation, tc.wantGeneration)
			}
			if obj.Status.Replicas != old.Status.Replicas {
				t.Errorf("status.replicas = %d, want old's %d", obj.Status.Replicas, old.Status.Replicas)
			}
			if obj.UID != "uid-1" || !obj.CreationTimestamp.Equal(&old.CreationTimestamp) {
				t.Errorf("uid %q creationTimestamp %v not taken from old", obj.UID, obj.CreationTimestamp)
			}
			if errs := deploy.ValidateUpdate(obj, old); len(errs) > 0 {
				t.Errorf("update rejected: %v", errs)
			}
		})
	}

	// Kinds whose strategies keep the old status on a main-endpoint update.
	svcs := mustLookup(t, "", "services")
	oldSvc := newService("web")
	oldSvc.ResourceVersion = "3"
	oldSvc.Spec.Type = corev1.ServiceTypeLoadBalancer
	oldSvc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "1.2.3.4"}}
	newSvc := oldSvc.DeepCopy()
	newSvc.Status = corev1.ServiceStatus{}
	svcs.PrepareForUpdate(newSvc, oldSvc)
	if len(newSvc.Status.LoadBalancer.Ingress) != 1 {
		t.Errorf("service status not kept: %+v", newSvc.Status)
	}
}

func TestPrepareForStatusUpdate(t *testing.T) {
	deploy := mustLookup(t, "apps", "deployments")
	old := newDeployment("web", "nginx:1.27")
	deploy.Default(old)
	deploy.PrepareForCreate(old)
	old.ResourceVersion = "3"
	obj := old.DeepCopy()
	obj.Spec.Replicas = int32p(5)
	obj.Labels = map[string]string{"changed": "yes"}
	obj.Annotations = map[string]string{"note": "kept"}
	obj.Status.Replicas, obj.Status.ObservedGeneration = 1, 1
	deploy.PrepareForStatusUpdate(obj, old)
	if *obj.Spec.Replicas != 1 {
		t.Errorf("status update changed spec.replicas to %d", *obj.Spec.Replicas)
	}
	if !reflect.DeepEqual(obj.Labels, old.Labels) {
		t.Errorf("status update changed labels to %v", obj.Labels)
	}
	if obj.Status.Replicas != 1 || obj.Generation != 1 {
		t.Errorf("status.replicas %d generation %d, want 1 and 1", obj.Status.Replicas, obj.Generation)
	}
	if errs := deploy.ValidateStatusUpdate(obj, old); len(errs) > 0 {
		t.Errorf("status update rejected: %v", errs)
	}

	bad := obj.DeepCopy()
	bad.Status.Replicas = -1
	deploy.PrepareForStatusUpdate(bad, old)
	errs := deploy.ValidateStatusUpdate(bad, old)
	if !strings.Contains(errs.ToAggregate().Error(), "status.replicas: Invalid value: -1") {
		t.Errorf("negative status.replicas: got %v", errs)
	}

	pods := mustLookup(t, "", "pods")
	oldPod := newPod("web", "nginx:1.27")
	pods.Default(oldPod)
	pods.PrepareForCreate(oldPod)
	newPod := oldPod.DeepCopy()
	newPod.Spec.Containers[0].Image = "evil:1"
	newPod.Status.Phase = corev1.PodRunning
	pods.PrepareForStatusUpdate(newPod, oldPod)
	if newPod.Spec.Containers[0].Image != "nginx:1.27" || newPod.Status.Phase != corev1.PodRunning {
		t.Errorf("pod status update: image %q phase %q, want nginx:1.27 Running", newPod.Spec.Containers[0].Image, newPod.Status.Phase)
	}
}

func TestWarnings(t *testing.T) {
	pods := mustLookup(t, "", "pods")
	p := newPod("web.v1", "nginx:1.27")
	pods.Default(p)
	pods.PrepareForCreate(p)
	ws := pods.WarningsOnCreate(p)
	if len(ws) == 0 || !strings.HasPrefix(ws[0], "metadata.name: this is used in the Pod's hostname") {
		t.Errorf("warnings = %q, want the pod hostname warning", ws)
	}
	q := newPod("web", "nginx:1.27")
	pods.Default(q)
	if ws := pods.WarningsOnCreate(q); len(ws) != 0 {
		t.Errorf("warnings for a plain pod = %q", ws)
	}
}

func TestNamespaceFinalize(t *testing.T) {
	nss := mustLookup(t, "", "namespaces")
	if got := nss.UpdateSubresources(); !reflect.DeepEqual(got, []string{"finalize"}) {
		t.Errorf("namespace UpdateSubresources = %q", got)
	}
	if got := mustLookup(t, "", "pods").UpdateSubresources(); !reflect.DeepEqual(got, []string{"ephemeralcontainers", "resize"}) {
		t.Errorf("pod UpdateSubresources = %q", got)
	}
	old := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team"}}
	nss.PrepareForCreate(old)
	old.ResourceVersion = "4"
	old.Status.Phase = corev1.NamespaceTerminating

	// The main endpoint cannot drop the kubernetes finalizer ...
	obj := old.DeepCopy()
	obj.Spec.Finalizers = nil
	nss.PrepareForUpdate(obj, old)
	if len(obj.Spec.Finalizers) != 1 {
		t.Errorf("update through the main endpoint changed finalizers to %v", obj.Spec.Finalizers)
	}
	// ... /finalize can, and cannot touch status.
	obj = old.DeepCopy()
	obj.Spec.Finalizers = nil
	obj.Status.Phase = corev1.NamespaceActive
	nss.PrepareForSubresourceUpdate("finalize", obj, old)
	if len(obj.Spec.Finalizers) != 0 || obj.Status.Phase != corev1.NamespaceTerminating {
		t.Errorf("finalize: finalizers %v phase %q, want none and Terminating", obj.Spec.Finalizers, obj.Status.Phase)
	}
	if errs := nss.ValidateSubresourceUpdate("finalize", obj, old); len(errs) > 0 {
		t.Errorf("finalize rejected: %v", errs)
	}
	if errs := nss.ValidateSubresourceUpdate("scale", obj, old); len(errs) != 1 {
		t.Errorf("unknown subresource: %v, want one internal error", errs)
	}
}
