package plugins

import (
	corev1 "k8s.io/api/core/v1"
)

// The in-tree plugins' pod signatures for opportunistic batching (framework.Signer). The
// framework's base signature already holds every field of the pod these plugins read, so
// a plugin that can batch adds nothing; the plugins whose answers for a node move with the
// placement of alike pods on other nodes (inter-pod terms, topology spread) or that bind
// claims refuse the pods that use them.

// SignPod: resource requests are in the base signature; scores are taken again for the
// node the previous pod went to.
func (*NodeResourcesFit) SignPod(*corev1.Pod) (string, bool) { return "", true }

// SignPod: spec.nodeName is in the base signature.
func (NodeName) SignPod(*corev1.Pod) (string, bool) { return "", true }

// SignPod: tolerations are in the base signature.
func (NodeUnschedulable) SignPod(*corev1.Pod) (string, bool) { return "", true }

// SignPod: the node selector and affinity are in the base signature.
func (NodeAffinity) SignPod(*corev1.Pod) (string, bool) { return "", true }

// SignPod: tolerations are in the base signature.
func (TaintToleration) SignPod(*corev1.Pod) (string, bool) { return "", true }

// SignPod: host ports are in the base signature; the node a pod went to is filtered again.
func (NodePorts) SignPod(*corev1.Pod) (string, bool) { return "", true }

// SignPod refuses pods with inter-pod affinity or anti-affinity terms of their own: each
// one placed changes where the next may go, on other nodes than its own. Existing pods'
// terms against the pod's labels (in the base signature) do not move with alike pods.
func (*InterPodAffinity) SignPod(pod *corev1.Pod) (string, bool) {
	a := pod.Spec.Affinity
	return "", a == nil || (a.PodAffinity == nil && a.PodAntiAffinity == nil)
}

// SignPod refuses pods that spread: under their own constraints, or the default ones when
// the pod has owners to build a selector from; each placement changes the skew of a whole
// topology domain.
func (pl *PodTopologySpread) SignPod(pod *corev1.Pod) (string, bool) {
	if len(pod.Spec.TopologySpreadConstraints) > 0 {
		return "", false
	}
	if len(pl.defaults) == 0 {
		return "", true
	}
	return "", defaultSelector(pod, pl.listers).Empty()
}

// SignPod refuses pods with claims (PersistentVolumeClaims or generic ephemeral volumes):
// binding them changes what the next pod's claims can bind to.
func (*VolumeBinding) SignPod(pod *corev1.Pod) (string, bool) {
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim != nil || v.Ephemeral != nil {
			return "", false
		}
	}
	return "", true
}
