package statefulset

import (
	"fmt"
	"maps"
	"regexp"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/core/controllers/ownership"
)

// The labels that give a pod its identity within the set (Kubernetes' names).
const (
	podNameLabel  = appsv1.StatefulSetPodNameLabel        // statefulset.kubernetes.io/pod-name
	podIndexLabel = appsv1.PodIndexLabel                  // apps.kubernetes.io/pod-index
	revisionLabel = appsv1.ControllerRevisionHashLabelKey // controller-revision-hash
	kindName      = "StatefulSet"
)

var kind = appsv1.SchemeGroupVersion.WithKind(kindName)

// podNamePattern splits <set>-<ordinal>; a set's name may itself contain dashes and digits.
var podNamePattern = regexp.MustCompile(`^(.*)-([0-9]+)$`)

// parentAndOrdinal returns the set name and ordinal a pod's name encodes (-1 if none).
func parentAndOrdinal(name string) (string, int) {
	m := podNamePattern.FindStringSubmatch(name)
	if m == nil {
		return "", -1
	}
	ord, err := strconv.Atoi(m[2])
	if err != nil {
		return "", -1
	}
	return m[1], ord
}

// podName is the stable name of the pod with the given ordinal.
func podName(set *appsv1.StatefulSet, ordinal int) string {
	return fmt.Sprintf("%s-%d", set.Name, ordinal)
}

// claimName is the name of the PVC a volumeClaimTemplate gives the pod with the ordinal.
func claimName(set *appsv1.StatefulSet, template string, ordinal int) string {
	return fmt.Sprintf("%s-%s-%d", template, set.Name, ordinal)
}

// startOrdinal is spec.ordinals.start (0 when unset).
func startOrdinal(set *appsv1.StatefulSet) int {
	if set.Spec.Ordinals != nil {
		return int(set.Spec.Ordinals.Start)
	}
	return 0
}

func replicas(set *appsv1.StatefulSet) int {
	if set.Spec.Replicas == nil {
		return 1
	}
	return int(*set.Spec.Replicas)
}

// newPod builds the pod with the ordinal from the set's template (set is the set as of the
// revision the pod should run) and labels it with that revision.
func newPod(set *appsv1.StatefulSet, ordinal int, revision string) *corev1.Pod {
	t := set.Spec.Template.DeepCopy()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:            podName(set, ordinal),
			Namespace:       set.Namespace,
			Labels:          maps.Clone(t.Labels),
			Annotations:     maps.Clone(t.Annotations),
			Finalizers:      t.Finalizers,
			OwnerReferences: []metav1.OwnerReference{ownership.ControllerRef(set, kind)},
		},
		Spec: t.Spec,
	}
	setIdentity(set, pod, ordinal)
	setStorage(set, pod, ordinal)
	pod.Labels[revisionLabel] = revision
	return pod
}

// setIdentity gives the pod its labels, hostname and subdomain, so that a headless Service
// named spec.serviceName resolves <pod>.<service>.
func setIdentity(set *appsv1.StatefulSet, pod *corev1.Pod, ordinal int) {
	if pod.Labels == nil {
		pod.Labels = map[string]string{}
	}
	pod.Labels[podNameLabel] = pod.Name
	pod.Labels[podIndexLabel] = strconv.Itoa(ordinal)
	pod.Spec.Hostname = pod.Name
	pod.Spec.Subdomain = set.Spec.ServiceName
}

// identityMatches reports whether a pod still carries its identity (a user may have edited
// its labels); the controller puts it back rather than replace the pod.
func identityMatches(set *appsv1.StatefulSet, pod *corev1.Pod) bool {
	parent, ord := parentAndOrdinal(pod.Name)
	return parent == set.Name && ord >= 0 && pod.Namespace == set.Namespace &&
		pod.Labels[podNameLabel] == pod.Name && pod.Labels[podIndexLabel] == strconv.Itoa(ord)
}

// claims are the PVCs the pod with the ordinal needs, by template name.
func claims(set *appsv1.StatefulSet, ordinal int) map[string]*corev1.PersistentVolumeClaim {
	out := make(map[string]*corev1.PersistentVolumeClaim, len(set.Spec.VolumeClaimTemplates))
	for i := range set.Spec.VolumeClaimTemplates {
		t := &set.Spec.VolumeClaimTemplates[i]
		claim := &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{
				Name:        claimName(set, t.Name, ordinal),
				Namespace:   set.Namespace,
				Labels:      map[string]string{},
				Annotations: maps.Clone(t.Annotations),
			},
			Spec: *t.Spec.DeepCopy(),
		}
		// The set's selector labels come first and the template's win, as in Kubernetes.
		if set.Spec.Selector != nil {
			maps.Copy(claim.Labels, set.Spec.Selector.MatchLabels)
		}
		maps.Copy(claim.Labels, t.Labels)
		if set.Spec.PersistentVolumeClaimRetentionPolicy != nil &&
			set.Spec.PersistentVolumeClaimRetentionPolicy.WhenDeleted == appsv1.DeletePersistentVolumeClaimRetentionPolicyType {
			// The garbage collector deletes the claim with the set.
			claim.OwnerReferences = []metav1.OwnerReference{setOwnerRef(set)}
		}
		out[t.Name] = claim
	}
	return out
}

// setOwnerRef is the non-controller reference a claim gets when it should die with the set.
func setOwnerRef(set *appsv1.StatefulSet) metav1.OwnerReference {
	f := false
	return metav1.OwnerReference{APIVersion: kind.GroupVersion().String(), Kind: kind.Kind, Name: set.Name, UID: set.UID, Controller: &f, BlockOwnerDeletion: &f}
}

// setStorage points the pod's volumes named after the claim templates at its claims,
// keeping its other volumes.
func setStorage(set *appsv1.StatefulSet, pod *corev1.Pod, ordinal int) {
	if len(set.Spec.VolumeClaimTemplates) == 0 {
		return
	}
	cs := claims(set, ordinal)
	volumes := make([]corev1.Volume, 0, len(pod.Spec.Volumes)+len(cs))
	for i := range set.Spec.VolumeClaimTemplates {
		name := set.Spec.VolumeClaimTemplates[i].Name
		volumes = append(volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: cs[name].Name},
		}})
	}
	for _, v := range pod.Spec.Volumes {
		if _, templated := cs[v.Name]; !templated {
			volumes = append(volumes, v)
		}
	}
	pod.Spec.Volumes = volumes
}

func podReady(pod *corev1.Pod) *corev1.PodCondition {
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == corev1.PodReady {
			return &pod.Status.Conditions[i]
		}
	}
	return nil
}

func terminating(pod *corev1.Pod) bool { return pod.DeletionTimestamp != nil }

// runningAndReady: phase Running and the Ready condition True (terminating or not).
func runningAndReady(pod *corev1.Pod) bool {
	c := podReady(pod)
	return pod.Status.Phase == corev1.PodRunning && c != nil && c.Status == corev1.ConditionTrue
}

// available: running and ready for at least minReadySeconds at now.
func available(pod *corev1.Pod, minReadySeconds int32, now time.Time) bool {
	if !runningAndReady(pod) {
		return false
	}
	if minReadySeconds == 0 {
		return true
	}
	c := podReady(pod)
	return !c.LastTransitionTime.IsZero() && !c.LastTransitionTime.Add(time.Duration(minReadySeconds)*time.Second).After(now)
}

// finished: the pod's containers have stopped for good; Kubernetes replaces such pods.
func finished(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded
}
