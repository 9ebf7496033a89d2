package deployment

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/dump"
	"k8s.io/apimachinery/pkg/util/rand"
)

// hashLabel is the label that tells a deployment's ReplicaSets (and their pods) apart.
const hashLabel = appsv1.DefaultDeploymentUniqueLabelKey // "pod-template-hash"

// templateHash is the pod-template-hash of a template, computed as Kubernetes'
// controller.ComputeHash does so that ReplicaSet names match a Kubernetes cluster's: fnv32a
// over the template's ForHash dump, then the collision count (if any) as 8 little-endian
// bytes, and the decimal sum encoded with SafeEncodeString (no vowels, no look-alikes).
func templateHash(template *corev1.PodTemplateSpec, collisionCount *int32) string {
	h := fnv.New32a()
	fmt.Fprintf(h, "%v", dump.ForHash(*template))
	if collisionCount != nil {
		buf := make([]byte, 8)
		binary.LittleEndian.PutUint32(buf, uint32(*collisionCount))
		h.Write(buf)
	}
	return rand.SafeEncodeString(fmt.Sprint(h.Sum32()))
}

// equalIgnoreHash reports whether two templates are the same but for pod-template-hash,
// which the deployment's own template never has and its ReplicaSets' always have.
func equalIgnoreHash(a, b *corev1.PodTemplateSpec) bool {
	a, b = a.DeepCopy(), b.DeepCopy()
	delete(a.Labels, hashLabel)
	delete(b.Labels, hashLabel)
	return equality.Semantic.DeepEqual(a, b)
}

// withLabel returns a copy of m with key=value added.
func withLabel(m map[string]string, key, value string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	out[key] = value
	return out
}

// selectorWithLabel returns a copy of sel that also requires key=value.
func selectorWithLabel(sel *metav1.LabelSelector, key, value string) *metav1.LabelSelector {
	out := sel.DeepCopy()
	if out == nil {
		out = &metav1.LabelSelector{}
	}
	out.MatchLabels = withLabel(out.MatchLabels, key, value)
	return out
}
