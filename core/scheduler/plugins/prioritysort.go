package plugins

import (
	corev1helpers "k8s.io/component-helpers/scheduling/corev1"

	"berth.dev/berth/core/scheduler/framework"
)

// PrioritySortName is the name of the PrioritySort plugin.
const PrioritySortName = "PrioritySort"

// PrioritySort orders the queue by pod priority, highest first, then by the time the pod
// entered the queue, oldest first.
type PrioritySort struct{}

// Name returns PrioritySortName.
func (PrioritySort) Name() string { return PrioritySortName }

// Less reports whether a goes before b.
func (PrioritySort) Less(a, b *framework.QueuedPodInfo) bool {
	pa, pb := corev1helpers.PodPriority(a.Pod), corev1helpers.PodPriority(b.Pod)
	return pa > pb || (pa == pb && a.Timestamp.Before(b.Timestamp))
}
