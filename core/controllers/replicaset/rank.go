package replicaset

import (
	"math"
	"sort"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// phaseOrder ranks phases for deletion: a pod that has not started goes first. Any other
// phase (none yet) ranks with Pending.
var phaseOrder = map[corev1.PodPhase]int{corev1.PodPending: 0, corev1.PodUnknown: 1, corev1.PodRunning: 2}

// podsToDelete picks the n pods to delete, those that serve least first.
func podsToDelete(pods []*corev1.Pod, n int) []*corev1.Pod {
	if n >= len(pods) {
		return pods
	}
	ranked := append([]*corev1.Pod(nil), pods...)
	now := time.Now()
	sort.SliceStable(ranked, func(i, j int) bool { return deleteFirst(ranked[i], ranked[j], now) })
	return ranked[:n]
}

// deleteFirst reports whether pod a should be deleted before pod b, ranking as Kubernetes
// 1.33's ActivePodsWithRanks: unassigned before assigned; Pending before Unknown before
// Running; not ready before ready; lower controller.kubernetes.io/pod-deletion-cost first;
// ready for less time first; more container restarts first; newer first. Times are compared
// on a log2 scale of their age (LogarithmicScaleDown, GA), equal ranks broken by UID, so that
// pods of about the same age are picked at random rather than strictly newest.
//
// Kubernetes also prefers pods sharing a node with more of the owner's (and its siblings')
// active pods, between the deletion cost and the ready time; that co-location rule is left
// out here.
func deleteFirst(a, b *corev1.Pod, now time.Time) bool {
	if a.Spec.NodeName != b.Spec.NodeName && (a.Spec.NodeName == "" || b.Spec.NodeName == "") {
		return a.Spec.NodeName == ""
	}
	if pa, pb := phaseOrder[a.Status.Phase], phaseOrder[b.Status.Phase]; pa != pb {
		return pa < pb
	}
	readyA, readyB := readyCondition(a), readyCondition(b)
	if (readyA == nil) != (readyB == nil) {
		return readyA == nil
	}
	if ca, cb := deletionCost(a), deletionCost(b); ca != cb {
		return ca < cb
	}
	if readyA != nil && readyB != nil && !readyA.LastTransitionTime.Equal(&readyB.LastTransitionTime) {
		return newerFirst(a, b, readyA.LastTransitionTime, readyB.LastTransitionTime, now)
	}
	if ra, rb := maxRestarts(a), maxRestarts(b); ra != rb {
		if ra.regular != rb.regular {
			return ra.regular > rb.regular
		}
		return ra.sidecar > rb.sidecar
	}
	if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
		return newerFirst(a, b, a.CreationTimestamp, b.CreationTimestamp, now)
	}
	return false
}

// newerFirst reports whether ta is the more recent time, comparing their ages' log2; a
// zero time counts as the most recent.
func newerFirst(a, b *corev1.Pod, ta, tb metav1.Time, now time.Time) bool {
	if ta.IsZero() || tb.IsZero() {
		return ta.IsZero() && !tb.IsZero()
	}
	ra, rb := ageRank(now.Sub(ta.Time)), ageRank(now.Sub(tb.Time))
	if ra == rb {
		return a.UID < b.UID
	}
	return ra < rb
}

// ageRank is the log2 of an age in nanoseconds, -1 for no age.
func ageRank(age time.Duration) int64 {
	if age <= 0 {
		return -1
	}
	return int64(math.Log2(float64(age)))
}

// deletionCost reads the pod-deletion-cost annotation; a missing or invalid value is 0.
func deletionCost(p *corev1.Pod) int32 {
	v, ok := p.Annotations[corev1.PodDeletionCost]
	// The API server rejects "+1" and "007"; so does this reading.
	if !ok || v == "" || v[0] == '+' || (len(v) > 1 && v[0] == '0') {
		return 0
	}
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil {
		return 0
	}
	return int32(n)
}

type restarts struct{ regular, sidecar int32 }

// maxRestarts is the highest restart count among the pod's containers, and among its
// sidecars (init containers that restart always), which only break ties.
func maxRestarts(p *corev1.Pod) restarts {
	var r restarts
	for _, s := range p.Status.ContainerStatuses {
		r.regular = max(r.regular, s.RestartCount)
	}
	sidecars := map[string]bool{}
	for _, c := range p.Spec.InitContainers {
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			sidecars[c.Name] = true
		}
	}
	for _, s := range p.Status.InitContainerStatuses {
		if sidecars[s.Name] {
			r.sidecar = max(r.sidecar, s.RestartCount)
		}
	}
	return r
}
