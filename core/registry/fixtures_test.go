package registry

import (
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// mustLookup returns the catalogue entry of group/resource at its served version.
func mustLookup(t *testing.T, group, res string) *Resource {
	t.Helper()
	for _, r := range All() {
		if r.Group == group && r.Resource == res {
			return r
		}
	}
	t.Fatalf("no resource %s in group %q", res, group)
	return nil
}

func objectMeta(name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": name}}
}

func podSpec(image string) corev1.PodSpec {
	return corev1.PodSpec{Containers: []corev1.Container{{Name: "main", Image: image}}}
}

func podTemplate(name, image string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
		Spec:       podSpec(image),
	}
}

func int32p(i int32) *int32 { return &i }

func newDeployment(name, image string) *appsv1.Deployment {
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: objectMeta(name),
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": name}},
			Template: podTemplate(name, image),
		},
	}
}

func newPod(name, image string) *corev1.Pod {
	return &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: objectMeta(name),
		Spec:       podSpec(image),
	}
}

func newService(name string) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: objectMeta(name),
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Port: 80}},
		},
	}
}

func newJobSpec(name string) batchv1.JobSpec {
	tpl := podTemplate(name, "busybox:1.36")
	tpl.Spec.RestartPolicy = corev1.RestartPolicyNever
	return batchv1.JobSpec{Template: tpl}
}

// validObjects are minimal objects a user would apply, one per kind the brief names.
func validObjects() map[string]struct {
	group, resource string
	obj             runtime.Object
} {
	type entry = struct {
		group, resource string
		obj             runtime.Object
	}
	return map[string]entry{
		"deployment": {"apps", "deployments", newDeployment("web", "nginx:1.27")},
		"pod":        {"", "pods", newPod("web", "nginx:1.27")},
		"service":    {"", "services", newService("web")},
		"configmap": {"", "configmaps", &corev1.ConfigMap{
			ObjectMeta: objectMeta("settings"), Data: map[string]string{"key": "value"},
		}},
		"namespace": {"", "namespaces", &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "team-a"}}},
		"pvc": {"", "persistentvolumeclaims", &corev1.PersistentVolumeClaim{
			ObjectMeta: objectMeta("data"),
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources: corev1.VolumeResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
				},
			},
		}},
		"job": {"batch", "jobs", &batchv1.Job{ObjectMeta: objectMeta("once"), Spec: newJobSpec("once")}},
		"cronjob": {"batch", "cronjobs", &batchv1.CronJob{
			ObjectMeta: objectMeta("nightly"),
			Spec: batchv1.CronJobSpec{
				Schedule:    "0 3 * * *",
				JobTemplate: batchv1.JobTemplateSpec{Spec: newJobSpec("nightly")},
			},
		}},
		"statefulset": {"apps", "statefulsets", &appsv1.StatefulSet{
			ObjectMeta: objectMeta("db"),
			Spec: appsv1.StatefulSetSpec{
				ServiceName: "db",
				Selector:    &metav1.LabelSelector{MatchLabels: map[string]string{"app": "db"}},
				Template:    podTemplate("db", "postgres:16"),
			},
		}},
		"ingress": {"networking.k8s.io", "ingresses", &networkingv1.Ingress{
			ObjectMeta: objectMeta("web"),
			Spec: networkingv1.IngressSpec{
				DefaultBackend: &networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
					Name: "web", Port: networkingv1.ServiceBackendPort{Number: 80},
				}},
			},
		}},
		"lease": {"coordination.k8s.io", "leases", &coordinationv1.Lease{ObjectMeta: objectMeta("lock")}},
		"replicationcontroller": {"", "replicationcontrollers", &corev1.ReplicationController{
			ObjectMeta: objectMeta("legacy"),
			Spec: corev1.ReplicationControllerSpec{
				Selector: map[string]string{"app": "legacy"},
				Template: func() *corev1.PodTemplateSpec { t := podTemplate("legacy", "nginx:1.27"); return &t }(),
			},
		}},
		"daemonset": {"apps", "daemonsets", &appsv1.DaemonSet{
			ObjectMeta: objectMeta("agent"),
			Spec: appsv1.DaemonSetSpec{
				Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "agent"}},
				Template: podTemplate("agent", "agent:1"),
			},
		}},
		"secret": {"", "secrets", &corev1.Secret{ObjectMeta: objectMeta("token"), StringData: map[string]string{"k": "v"}}},
		"event": {"", "events", &corev1.Event{
			ObjectMeta:     objectMeta("web.17a"),
			InvolvedObject: corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "web"},
			Reason:         "Started", Message: "Started container", Type: corev1.EventTypeNormal,
			Source: corev1.EventSource{Component: "kubelet"}, FirstTimestamp: metav1.Unix(1700000000, 0),
		}},
		"events.k8s.io event": {"events.k8s.io", "events", &eventsv1.Event{
			ObjectMeta: objectMeta("web.17b"),
			EventTime:  metav1.NewMicroTime(time.Unix(1700000000, 0)),
			Regarding:  corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "web"},
			Reason:     "Started", Action: "Start", Note: "Started container", Type: corev1.EventTypeNormal,
			ReportingController: "berth.dev/agent", ReportingInstance: "agent-node-1",
		}},
		"poddisruptionbudget": {"policy", "poddisruptionbudgets", &policyv1.PodDisruptionBudget{
			ObjectMeta: objectMeta("web"),
			Spec: policyv1.PodDisruptionBudgetSpec{
				MinAvailable: func() *intstr.IntOrString { v := intstr.FromInt32(1); return &v }(),
				Selector:     &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			},
		}},
		"horizontalpodautoscaler": {"autoscaling", "horizontalpodautoscalers", &autoscalingv2.HorizontalPodAutoscaler{
			ObjectMeta: objectMeta("web"),
			Spec: autoscalingv2.HorizontalPodAutoscalerSpec{
				ScaleTargetRef: autoscalingv2.CrossVersionObjectReference{APIVersion: "apps/v1", Kind: "Deployment", Name: "web"},
				MaxReplicas:    5,
			},
		}},
		"storageclass": {"storage.k8s.io", "storageclasses", &storagev1.StorageClass{
			ObjectMeta: metav1.ObjectMeta{Name: "fast"}, Provisioner: "csi.berth.dev",
		}},
	}
}

// create runs obj through what the API server does on create and returns the errors.
func create(r *Resource, obj runtime.Object) []string {
	r.Default(obj)
	r.PrepareForCreate(obj)
	var out []string
	for _, e := range r.ValidateCreate(obj) {
		out = append(out, e.Error())
	}
	return out
}
