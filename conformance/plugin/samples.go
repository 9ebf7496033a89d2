package plugin

import (
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	admissionv1 "berth.dev/berth/specs/admission/v1"
)

// sampleNodes are the synthetic nodes scheduler plugins see: different sizes, zones,
// labels a plugin might read (a cost, a disk type; one label that is not a number), a
// tainted node and a node that is not ready, so that a plugin's answers vary.
func sampleNodes() []*corev1.Node {
	type spec struct {
		name, zone, cost, cpu, memory string
		taint, notReady               bool
	}
	var out []*corev1.Node
	for _, s := range []spec{
		{name: "node-a", zone: "zone-1", cost: "1", cpu: "4", memory: "8Gi"},
		{name: "node-b", zone: "zone-1", cost: "5", cpu: "8", memory: "32Gi"},
		{name: "node-c", zone: "zone-2", cost: "10", cpu: "2", memory: "4Gi", taint: true},
		{name: "node-d", zone: "zone-2", cpu: "16", memory: "64Gi"},
		{name: "node-e", zone: "zone-3", cost: "cheap", cpu: "1", memory: "1Gi", notReady: true},
	} {
		res := corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse(s.cpu),
			corev1.ResourceMemory: resource.MustParse(s.memory),
			corev1.ResourcePods:   resource.MustParse("110"),
		}
		n := &corev1.Node{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
			ObjectMeta: metav1.ObjectMeta{Name: s.name, UID: types.UID("uid-conformance-" + s.name), Labels: map[string]string{
				"kubernetes.io/hostname":      s.name,
				"kubernetes.io/os":            "linux",
				"topology.kubernetes.io/zone": s.zone,
				"example.berth.dev/disk":      "ssd",
			}},
			Status: corev1.NodeStatus{
				Capacity:    res,
				Allocatable: res,
				Conditions:  []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			},
		}
		if s.cost != "" {
			n.Labels["example.berth.dev/cost"] = s.cost
		}
		if s.taint {
			n.Spec.Taints = []corev1.Taint{{Key: "example.berth.dev/dedicated", Value: "batch", Effect: corev1.TaintEffectNoSchedule}}
		}
		if s.notReady {
			n.Status.Conditions[0].Status = corev1.ConditionFalse
		}
		out = append(out, n)
	}
	return out
}

// nodeNames returns the nodes' names, in order.
func nodeNames(nodes []*corev1.Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Name
	}
	return out
}

// samplePod is an ordinary pod: one container with requests and limits, labels, a
// node selector a zone-aware plugin might read, and a toleration.
func samplePod(run string) *corev1.Pod {
	res := func(cpu, mem string) corev1.ResourceList {
		return corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}
	}
	return &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Name: "conformance-" + run, Namespace: "default", UID: types.UID("uid-conformance-" + run),
			Labels: map[string]string{"app": "conformance", "topology.kubernetes.io/zone": "zone-1"}},
		Spec: corev1.PodSpec{
			Containers: []corev1.Container{{
				Name: "app", Image: "busybox:1.36", Command: []string{"sleep", "3600"},
				Resources: corev1.ResourceRequirements{Requests: res("100m", "64Mi"), Limits: res("500m", "128Mi")},
			}},
			Tolerations: []corev1.Toleration{{Key: "example.berth.dev/dedicated", Operator: corev1.TolerationOpExists}},
		},
	}
}

// admissionSample is one request admission plugins are asked about.
type admissionSample struct {
	name string
	req  *admissionv1.AdmissionRequest
}

// admissionSamples are ordinary creates and updates: a pod with limits, one without, an
// update of a pod, a Deployment and a ConfigMap (a kind most policies ignore).
func admissionSamples(run string) ([]admissionSample, error) {
	full := samplePod(run)
	bare := full.DeepCopy()
	bare.Name += "-bare"
	bare.Spec.Containers[0].Resources = corev1.ResourceRequirements{}
	deploy := map[string]any{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": map[string]any{"name": "conformance-" + run, "namespace": "default"},
		"spec": map[string]any{
			"replicas": 2,
			"selector": map[string]any{"matchLabels": map[string]any{"app": "conformance"}},
			"template": map[string]any{
				"metadata": map[string]any{"labels": map[string]any{"app": "conformance"}},
				"spec":     map[string]any{"containers": []any{map[string]any{"name": "app", "image": "busybox:1.36"}}},
			},
		},
	}
	cm := map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": "conformance-" + run, "namespace": "default"},
		"data":     map[string]any{"key": "value"},
	}
	enc := func(v any) ([]byte, error) {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("encode a sample object: %w", err)
		}
		return b, nil
	}
	objs := []any{full, bare, full, deploy, cm}
	bs := make([][]byte, len(objs))
	for i, o := range objs {
		b, err := enc(o)
		if err != nil {
			return nil, err
		}
		bs[i] = b
	}
	user := &admissionv1.UserInfo{Username: "conformance", Groups: []string{"system:authenticated"}}
	pods := &admissionv1.GroupVersionResource{Version: "v1", Resource: "pods"}
	podKind := &admissionv1.GroupVersionKind{Version: "v1", Kind: "Pod"}
	req := func(i int, uid string, op admissionv1.Operation, gvr *admissionv1.GroupVersionResource, gvk *admissionv1.GroupVersionKind, name string, old []byte) *admissionv1.AdmissionRequest {
		return &admissionv1.AdmissionRequest{Uid: run + "-" + uid, Operation: op, Resource: gvr, Kind: gvk, Namespace: "default", Name: name,
			Object: bs[i], OldObject: old, UserInfo: user}
	}
	return []admissionSample{
		{"pod with limits (create)", req(0, "1", admissionv1.Operation_OPERATION_CREATE, pods, podKind, full.Name, nil)},
		{"pod without limits (create)", req(1, "2", admissionv1.Operation_OPERATION_CREATE, pods, podKind, bare.Name, nil)},
		{"pod (update)", req(2, "3", admissionv1.Operation_OPERATION_UPDATE, pods, podKind, full.Name, bs[0])},
		{"deployment (create)", req(3, "4", admissionv1.Operation_OPERATION_CREATE,
			&admissionv1.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"},
			&admissionv1.GroupVersionKind{Group: "apps", Version: "v1", Kind: "Deployment"}, "conformance-"+run, nil)},
		{"configmap (create)", req(4, "5", admissionv1.Operation_OPERATION_CREATE,
			&admissionv1.GroupVersionResource{Version: "v1", Resource: "configmaps"},
			&admissionv1.GroupVersionKind{Version: "v1", Kind: "ConfigMap"}, "conformance-"+run, nil)},
	}, nil
}
