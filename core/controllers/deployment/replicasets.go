package deployment

import (
	"math"
	"sort"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// The annotations Kubernetes' deployment controller writes, which kubectl rollout reads.
const (
	// revisionAnnotation numbers a ReplicaSet's template among the deployment's rollouts
	// (and, on the deployment, the current one).
	revisionAnnotation = "deployment.kubernetes.io/revision"
	// revisionHistoryAnnotation lists the revisions a re-used ReplicaSet had before.
	revisionHistoryAnnotation = "deployment.kubernetes.io/revision-history"
	// desiredReplicasAnnotation is the deployment's spec.replicas when the ReplicaSet was
	// last sized; a difference marks a scaling event.
	desiredReplicasAnnotation = "deployment.kubernetes.io/desired-replicas"
	// maxReplicasAnnotation is replicas+maxSurge at that time, the base of proportions.
	maxReplicasAnnotation = "deployment.kubernetes.io/max-replicas"
	// rollbackToAnnotation is extensions/v1beta1's rollback request, never copied.
	rollbackToAnnotation = "deprecated.deployment.rollback.to"
	// maxRevisionHistoryChars bounds revision-history as Kubernetes does.
	maxRevisionHistoryChars = 2000
)

// notCopied are the deployment annotations that stay off its ReplicaSets: the controller's
// own bookkeeping, and kubectl apply's record of the deployment.
var notCopied = map[string]bool{
	corev1.LastAppliedConfigAnnotation: true,
	revisionAnnotation:                 true,
	revisionHistoryAnnotation:          true,
	desiredReplicasAnnotation:          true,
	maxReplicasAnnotation:              true,
	rollbackToAnnotation:               true,
}

// findNewReplicaSet returns the ReplicaSet running the deployment's current template, the
// oldest if several do. It sorts rsList.
func findNewReplicaSet(d *appsv1.Deployment, rsList []*appsv1.ReplicaSet) *appsv1.ReplicaSet {
	sort.Sort(byCreation(rsList))
	for _, rs := range rsList {
		if equalIgnoreHash(&rs.Spec.Template, &d.Spec.Template) {
			return rs
		}
	}
	return nil
}

// findOldReplicaSets returns every ReplicaSet but the new one.
func findOldReplicaSets(d *appsv1.Deployment, rsList []*appsv1.ReplicaSet) []*appsv1.ReplicaSet {
	newRS := findNewReplicaSet(d, rsList)
	var old []*appsv1.ReplicaSet
	for _, rs := range rsList {
		if newRS == nil || rs.UID != newRS.UID {
			old = append(old, rs)
		}
	}
	return old
}

// revision is a ReplicaSet's revision annotation; 0 when missing, an error when not a number.
func revision(rs *appsv1.ReplicaSet) (int64, error) {
	v, ok := rs.Annotations[revisionAnnotation]
	if !ok {
		return 0, nil
	}
	return strconv.ParseInt(v, 10, 64)
}

// maxRevision is the highest parseable revision among rsList.
func maxRevision(rsList []*appsv1.ReplicaSet) int64 {
	var highest int64
	for _, rs := range rsList {
		if v, err := revision(rs); err == nil && v > highest {
			highest = v
		}
	}
	return highest
}

// setNewReplicaSetAnnotations copies the deployment's annotations (change-cause among them)
// onto its new ReplicaSet and raises its revision to newRevision, remembering the revision
// it had in revision-history (a rollback re-uses an old ReplicaSet). A ReplicaSet being
// created also gets the replicas annotations. It reports whether anything changed.
func setNewReplicaSetAnnotations(d *appsv1.Deployment, rs *appsv1.ReplicaSet, newRevision int64, exists bool) bool {
	changed := false
	if rs.Annotations == nil {
		rs.Annotations = map[string]string{}
	}
	for k, v := range d.Annotations {
		if notCopied[k] {
			continue
		}
		if cur, ok := rs.Annotations[k]; !ok || cur != v {
			rs.Annotations[k] = v
			changed = true
		}
	}
	oldRevision, had := rs.Annotations[revisionAnnotation]
	old, err := strconv.ParseInt(oldRevision, 10, 64)
	if err != nil {
		if oldRevision != "" {
			return false // someone wrote a non-number: leave it rather than guess
		}
		old = 0
	}
	if old < newRevision {
		rs.Annotations[revisionAnnotation] = strconv.FormatInt(newRevision, 10)
		changed = true
		if had {
			appendRevisionHistory(rs, oldRevision)
		}
	}
	if !exists && setReplicasAnnotations(rs, *d.Spec.Replicas, *d.Spec.Replicas+maxSurge(d)) {
		changed = true
	}
	return changed
}

// appendRevisionHistory adds rev to the comma-separated history, dropping the oldest entries
// to stay within maxRevisionHistoryChars.
func appendRevisionHistory(rs *appsv1.ReplicaSet, rev string) {
	history := rs.Annotations[revisionHistoryAnnotation]
	if history == "" {
		rs.Annotations[revisionHistoryAnnotation] = rev
		return
	}
	entries := strings.Split(history, ",")
	total := len(history) + len(rev) + 1
	start := 0
	for total > maxRevisionHistoryChars && start < len(entries) {
		total -= len(entries[start]) + 1
		start++
	}
	if total <= maxRevisionHistoryChars {
		rs.Annotations[revisionHistoryAnnotation] = strings.Join(append(entries[start:], rev), ",")
	}
}

// setReplicasAnnotations records the deployment's size and maximum size on rs; it reports
// whether they changed.
func setReplicasAnnotations(rs *appsv1.ReplicaSet, desired, maxReplicas int32) bool {
	if rs.Annotations == nil {
		rs.Annotations = map[string]string{}
	}
	changed := false
	for k, v := range map[string]string{
		desiredReplicasAnnotation: strconv.Itoa(int(desired)),
		maxReplicasAnnotation:     strconv.Itoa(int(maxReplicas)),
	} {
		if rs.Annotations[k] != v {
			rs.Annotations[k] = v
			changed = true
		}
	}
	return changed
}

// replicasAnnotationsNeedUpdate reports whether setReplicasAnnotations would change rs.
func replicasAnnotationsNeedUpdate(rs *appsv1.ReplicaSet, desired, maxReplicas int32) bool {
	return rs.Annotations[desiredReplicasAnnotation] != strconv.Itoa(int(desired)) ||
		rs.Annotations[maxReplicasAnnotation] != strconv.Itoa(int(maxReplicas))
}

// int32Annotation reads a non-negative int32 annotation.
func int32Annotation(rs *appsv1.ReplicaSet, key string) (int32, bool) {
	v, ok := rs.Annotations[key]
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n > math.MaxInt32 {
		return 0, false
	}
	return int32(n), true
}

// setDeploymentRevision writes the revision annotation on the deployment; it reports
// whether it changed.
func setDeploymentRevision(d *appsv1.Deployment, rev string) bool {
	if d.Annotations == nil {
		d.Annotations = map[string]string{}
	}
	if d.Annotations[revisionAnnotation] == rev {
		return false
	}
	d.Annotations[revisionAnnotation] = rev
	return true
}

// active keeps the ReplicaSets that should have pods (nil ones dropped).
func active(rsList []*appsv1.ReplicaSet) []*appsv1.ReplicaSet {
	var out []*appsv1.ReplicaSet
	for _, rs := range rsList {
		if rs != nil && *rs.Spec.Replicas > 0 {
			out = append(out, rs)
		}
	}
	return out
}

// specReplicas sums spec.replicas; the sum* helpers below sum status fields. All skip nil
// (the new ReplicaSet may not exist yet).
func specReplicas(rsList []*appsv1.ReplicaSet) int32 {
	return sum(rsList, func(rs *appsv1.ReplicaSet) int32 { return *rs.Spec.Replicas })
}

func statusReplicas(rsList []*appsv1.ReplicaSet) int32 {
	return sum(rsList, func(rs *appsv1.ReplicaSet) int32 { return rs.Status.Replicas })
}

func readyReplicas(rsList []*appsv1.ReplicaSet) int32 {
	return sum(rsList, func(rs *appsv1.ReplicaSet) int32 { return rs.Status.ReadyReplicas })
}

func availableReplicas(rsList []*appsv1.ReplicaSet) int32 {
	return sum(rsList, func(rs *appsv1.ReplicaSet) int32 { return rs.Status.AvailableReplicas })
}

func sum(rsList []*appsv1.ReplicaSet, f func(*appsv1.ReplicaSet) int32) int32 {
	var n int32
	for _, rs := range rsList {
		if rs != nil {
			n += f(rs)
		}
	}
	return n
}

// byCreation orders ReplicaSets oldest first, by name on ties.
type byCreation []*appsv1.ReplicaSet

func (o byCreation) Len() int      { return len(o) }
func (o byCreation) Swap(i, j int) { o[i], o[j] = o[j], o[i] }
func (o byCreation) Less(i, j int) bool {
	if o[i].CreationTimestamp.Equal(&o[j].CreationTimestamp) {
		return o[i].Name < o[j].Name
	}
	return o[i].CreationTimestamp.Before(&o[j].CreationTimestamp)
}

// bySizeOlderFirst orders ReplicaSets largest first, older first on ties: scaling down
// takes from old ReplicaSets before new ones of the same size.
type bySizeOlderFirst []*appsv1.ReplicaSet

func (o bySizeOlderFirst) Len() int      { return len(o) }
func (o bySizeOlderFirst) Swap(i, j int) { o[i], o[j] = o[j], o[i] }
func (o bySizeOlderFirst) Less(i, j int) bool {
	if *o[i].Spec.Replicas == *o[j].Spec.Replicas {
		return byCreation(o).Less(i, j)
	}
	return *o[i].Spec.Replicas > *o[j].Spec.Replicas
}

// bySizeNewerFirst orders ReplicaSets largest first, newer first on ties: scaling up gives
// to new ReplicaSets before old ones of the same size.
type bySizeNewerFirst []*appsv1.ReplicaSet

func (o bySizeNewerFirst) Len() int      { return len(o) }
func (o bySizeNewerFirst) Swap(i, j int) { o[i], o[j] = o[j], o[i] }
func (o bySizeNewerFirst) Less(i, j int) bool {
	if *o[i].Spec.Replicas == *o[j].Spec.Replicas {
		return byCreation(o).Less(j, i)
	}
	return *o[i].Spec.Replicas > *o[j].Spec.Replicas
}

// byRevision orders ReplicaSets by revision, oldest first, by creation on ties or when a
// revision does not parse.
type byRevision []*appsv1.ReplicaSet

func (o byRevision) Len() int      { return len(o) }
func (o byRevision) Swap(i, j int) { o[i], o[j] = o[j], o[i] }
func (o byRevision) Less(i, j int) bool {
	r1, err1 := revision(o[i])
	r2, err2 := revision(o[j])
	if err1 != nil || err2 != nil || r1 == r2 {
		return byCreation(o).Less(i, j)
	}
	return r1 < r2
}
