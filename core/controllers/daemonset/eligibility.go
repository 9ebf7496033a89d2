package daemonset

import (
	"fmt"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	schedcorev1 "k8s.io/component-helpers/scheduling/corev1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
)

// daemonTolerations are the tolerations every DaemonSet pod gets, as in Kubernetes: a
// daemon stays on a node that is not ready, unreachable, under resource pressure or
// cordoned, since it is often what the node needs to recover.
func daemonTolerations(hostNetwork bool) []corev1.Toleration {
	t := []corev1.Toleration{
		{Key: corev1.TaintNodeNotReady, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
		{Key: corev1.TaintNodeUnreachable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
		{Key: corev1.TaintNodeDiskPressure, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
		{Key: corev1.TaintNodeMemoryPressure, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
		{Key: corev1.TaintNodePIDPressure, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
		{Key: corev1.TaintNodeUnschedulable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
	}
	if hostNetwork {
		// A host-network pod needs no pod network, so it may run before the network is up.
		t = append(t, corev1.Toleration{Key: corev1.TaintNodeNetworkUnavailable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule})
	}
	return t
}

// addDaemonTolerations adds the daemon tolerations to spec, replacing a user's toleration of
// the same key, operator and effect.
func addDaemonTolerations(spec *corev1.PodSpec) {
	for _, want := range daemonTolerations(spec.HostNetwork) {
		i := slices.IndexFunc(spec.Tolerations, func(t corev1.Toleration) bool {
			return t.Key == want.Key && t.Effect == want.Effect && t.Operator == want.Operator
		})
		if i >= 0 {
			spec.Tolerations[i] = want
		} else {
			spec.Tolerations = append(spec.Tolerations, want)
		}
	}
}

// shouldRun says whether the DaemonSet should have a pod on the node (run) and whether a
// pod already there may stay (stay): a node whose NoSchedule taints the pod does not
// tolerate keeps a running pod as long as it tolerates the NoExecute ones. The pod is
// judged with the node's name, the daemon tolerations, its nodeSelector and required node
// affinity, and the node's taints, as Kubernetes' NodeShouldRunDaemonPod does.
func shouldRun(node *corev1.Node, ds *appsv1.DaemonSet) (run, stay bool) {
	if ds.Spec.Template.Spec.NodeName != "" && ds.Spec.Template.Spec.NodeName != node.Name {
		return false, false
	}
	pod := &corev1.Pod{Spec: *ds.Spec.Template.Spec.DeepCopy()}
	pod.Spec.NodeName = node.Name
	addDaemonTolerations(&pod.Spec)
	if fits, err := nodeaffinity.GetRequiredNodeAffinity(pod).Match(node); err != nil || !fits {
		return false, false
	}
	scheduleOrExecute := func(t *corev1.Taint) bool {
		return t.Effect == corev1.TaintEffectNoSchedule || t.Effect == corev1.TaintEffectNoExecute
	}
	if _, untolerated := schedcorev1.FindMatchingUntoleratedTaint(node.Spec.Taints, pod.Spec.Tolerations, scheduleOrExecute); !untolerated {
		return true, true
	}
	noExecute := func(t *corev1.Taint) bool { return t.Effect == corev1.TaintEffectNoExecute }
	_, evicted := schedcorev1.FindMatchingUntoleratedTaint(node.Spec.Taints, pod.Spec.Tolerations, noExecute)
	return false, !evicted
}

// pinToNode replaces the required node affinity with one matching only the node's name
// (metadata.name in matchFields), as Kubernetes 1.33 does: the scheduler binds the pod,
// and the node already satisfied the original terms. Preferred terms are kept.
func pinToNode(affinity *corev1.Affinity, node string) *corev1.Affinity {
	selector := &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
		MatchFields: []corev1.NodeSelectorRequirement{{Key: metav1.ObjectNameField, Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
	}}}
	if affinity == nil {
		affinity = &corev1.Affinity{}
	}
	if affinity.NodeAffinity == nil {
		affinity.NodeAffinity = &corev1.NodeAffinity{}
	}
	affinity.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution = selector
	return affinity
}

// targetNode is the node a daemon pod is for: its spec.nodeName once bound, else the node
// its pinning affinity names.
func targetNode(pod *corev1.Pod) (string, error) {
	if pod.Spec.NodeName != "" {
		return pod.Spec.NodeName, nil
	}
	if a := pod.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		terms := a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
		if len(terms) == 1 {
			for _, f := range terms[0].MatchFields {
				if f.Key == metav1.ObjectNameField && f.Operator == corev1.NodeSelectorOpIn && len(f.Values) == 1 {
					return f.Values[0], nil
				}
			}
		}
	}
	return "", fmt.Errorf("pod %s/%s names no node", pod.Namespace, pod.Name)
}
