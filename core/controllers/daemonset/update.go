package daemonset

import (
	"slices"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	intstrutil "k8s.io/apimachinery/pkg/util/intstr"
)

// updated reports whether a pod runs the DaemonSet's current template: its hash label, or
// its pod-template-generation label, matches.
func updated(pod *corev1.Pod, hash string, generation *int64) bool {
	if generation != nil && pod.Labels[generationLabel] == strconv.FormatInt(*generation, 10) {
		return true
	}
	return hash != "" && pod.Labels[hashLabel] == hash
}

// splitPods finds the one updated and the one old pod of a node; ok is false when a node
// has more than one of either (the core loop removes the surplus first).
func splitPods(pods []*corev1.Pod, hash string, generation *int64) (newPod, oldPod *corev1.Pod, ok bool) {
	for _, pod := range pods {
		if pod.DeletionTimestamp != nil {
			continue
		}
		if updated(pod, hash, generation) {
			if newPod != nil {
				return nil, nil, false
			}
			newPod = pod
		} else {
			if oldPod != nil {
				return nil, nil, false
			}
			oldPod = pod
		}
	}
	return newPod, oldPod, true
}

// budgets are maxSurge and maxUnavailable resolved against the number of nodes that should
// run the daemon (percentages round up); with both 0, maxUnavailable is 1 so that the
// update still progresses, as in Kubernetes.
func budgets(ds *appsv1.DaemonSet, desired int) (maxSurge, maxUnavailable int) {
	r := ds.Spec.UpdateStrategy.RollingUpdate
	if ds.Spec.UpdateStrategy.Type == appsv1.RollingUpdateDaemonSetStrategyType && r != nil {
		if r.MaxUnavailable != nil {
			maxUnavailable, _ = intstrutil.GetScaledValueFromIntOrPercent(r.MaxUnavailable, desired, true)
		}
		if r.MaxSurge != nil {
			maxSurge, _ = intstrutil.GetScaledValueFromIntOrPercent(r.MaxSurge, desired, true)
		}
	}
	if desired > 0 && maxUnavailable == 0 && maxSurge == 0 {
		maxUnavailable = 1
	}
	return maxSurge, maxUnavailable
}

// rollingUpdate picks the next step of a RollingUpdate: without surge, old pods to delete
// (unavailable ones at once, available ones while fewer than maxUnavailable nodes lack an
// available pod), the core loop then creating their replacements; with surge, nodes to get
// a new pod beside the old one (within maxSurge) and old pods whose replacement is available.
func rollingUpdate(ds *appsv1.DaemonSet, nodes []*corev1.Node, byNode map[string][]*corev1.Pod, hash string, now time.Time) (createOn, remove []string) {
	generation := templateGeneration(ds)
	minReady := ds.Spec.MinReadySeconds
	nodeByName := map[string]*corev1.Node{}
	candidates := map[string][]*corev1.Pod{}
	for node, pods := range byNode {
		candidates[node] = pods
	}
	desired := 0
	for _, node := range nodes {
		nodeByName[node.Name] = node
		if run, _ := shouldRun(node, ds); run {
			desired++
			if _, ok := candidates[node.Name]; !ok {
				candidates[node.Name] = nil // a node missing its pod counts as unavailable
			}
		}
	}
	maxSurge, maxUnavailable := budgets(ds, desired)

	if maxSurge == 0 {
		unavailable := 0
		var allowed, candidatesToDelete []string
		for _, pods := range sortedNodes(candidates) {
			newPod, oldPod, ok := splitPods(pods, hash, generation)
			switch {
			case !ok, newPod == nil && oldPod == nil, newPod != nil && oldPod != nil:
				unavailable++
			case newPod != nil:
				if !podAvailable(newPod, minReady, now) {
					unavailable++
				}
			case !podAvailable(oldPod, minReady, now):
				allowed = append(allowed, oldPod.Name)
				unavailable++
			case unavailable < maxUnavailable:
				candidatesToDelete = append(candidatesToDelete, oldPod.Name)
			}
		}
		room := min(max(maxUnavailable-unavailable, 0), len(candidatesToDelete))
		return nil, append(allowed, candidatesToDelete[:room]...)
	}

	var shouldNotRun, allowedNodes, candidateNodes []string
	surge, availableCount := 0, 0
	for _, entry := range sortedNodeEntries(candidates) {
		nodeName, pods := entry.node, entry.pods
		newPod, oldPod, ok := splitPods(pods, hash, generation)
		if !ok {
			surge++
			continue
		}
		if (oldPod != nil && podAvailable(oldPod, minReady, now)) || (oldPod == nil && newPod != nil && podAvailable(newPod, minReady, now)) {
			availableCount++
		}
		switch {
		case oldPod == nil:
		case newPod == nil:
			node := nodeByName[nodeName]
			run := false
			if node != nil {
				run, _ = shouldRun(node, ds)
			}
			switch {
			case !podAvailable(oldPod, minReady, now):
				if !run {
					remove = append(remove, oldPod.Name)
					continue
				}
				allowedNodes = append(allowedNodes, nodeName)
			case !run:
				shouldNotRun = append(shouldNotRun, oldPod.Name)
			case surge < maxSurge:
				candidateNodes = append(candidateNodes, nodeName)
			}
		default:
			if !podAvailable(newPod, minReady, now) {
				surge++
				continue
			}
			remove = append(remove, oldPod.Name)
		}
	}
	if deletable := availableCount - desired; deletable > 0 {
		remove = append(remove, shouldNotRun[:min(deletable, len(shouldNotRun))]...)
	}
	room := min(max(maxSurge-surge, 0), len(candidateNodes))
	return append(allowedNodes, candidateNodes[:room]...), remove
}

type nodeEntry struct {
	node string
	pods []*corev1.Pod
}

// sortedNodeEntries walks nodes by name, so that which nodes update first is stable.
func sortedNodeEntries(m map[string][]*corev1.Pod) []nodeEntry {
	out := make([]nodeEntry, 0, len(m))
	for n, pods := range m {
		out = append(out, nodeEntry{n, pods})
	}
	slices.SortFunc(out, func(a, b nodeEntry) int { return compareStrings(a.node, b.node) })
	return out
}

func sortedNodes(m map[string][]*corev1.Pod) [][]*corev1.Pod {
	var out [][]*corev1.Pod
	for _, e := range sortedNodeEntries(m) {
		out = append(out, e.pods)
	}
	return out
}

// podAvailable: Ready for at least minReadySeconds (Kubernetes' IsPodAvailable).
func podAvailable(pod *corev1.Pod, minReadySeconds int32, now time.Time) bool {
	c := readyCondition(pod)
	if c == nil || c.Status != corev1.ConditionTrue {
		return false
	}
	if minReadySeconds == 0 {
		return true
	}
	return !c.LastTransitionTime.IsZero() && !c.LastTransitionTime.Add(time.Duration(minReadySeconds)*time.Second).After(now)
}

func readyCondition(pod *corev1.Pod) *corev1.PodCondition {
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == corev1.PodReady {
			return &pod.Status.Conditions[i]
		}
	}
	return nil
}
