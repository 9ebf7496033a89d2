package scheduler

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"

	"berth.dev/berth/core/scheduler/framework"
	"berth.dev/berth/core/scheduler/plugins"
)

// addEventHandlers feeds the queue and the cache from the pod and node informers.
func (s *Scheduler) addEventHandlers(factory informers.SharedInformerFactory) error {
	pods := factory.Core().V1().Pods()
	nodes := factory.Core().V1().Nodes()
	s.podLister = pods.Lister()
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.onPod(nil, obj) },
		UpdateFunc: func(old, obj any) { s.onPod(old, obj) },
		DeleteFunc: s.onPodDelete,
	}); err != nil {
		return fmt.Errorf("pod informer: %w", err)
	}
	if _, err := nodes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if n, ok := obj.(*corev1.Node); ok {
				s.cache.AddNode(n)
				s.queue.MoveAllToActiveOrBackoff(nil)
			}
		},
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*corev1.Node)
			n, ok2 := obj.(*corev1.Node)
			if !ok1 || !ok2 {
				return
			}
			s.cache.UpdateNode(n)
			if nodeChangeMayHelp(o, n) {
				s.queue.MoveAllToActiveOrBackoff(nil)
			}
		},
		DeleteFunc: func(obj any) {
			if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = t.Obj
			}
			if n, ok := obj.(*corev1.Node); ok {
				s.cache.RemoveNode(n.Name)
			}
		},
	}); err != nil {
		return fmt.Errorf("node informer: %w", err)
	}
	s.synced = append(s.synced, pods.Informer().HasSynced, nodes.Informer().HasSynced)
	// Claims, volumes and CSI objects retry the pods VolumeBinding rejected (volumes.go).
	return s.addVolumeEventHandlers(factory)
}

// pluginListers gives the in-tree plugins the cycle's snapshot and the listers they read:
// namespaces (InterPodAffinity's namespaceSelector), and the Services, ReplicaSets,
// StatefulSets and ReplicationControllers PodTopologySpread builds default selectors from.
// The informers are registered here, before the factory starts.
func (s *Scheduler) pluginListers(factory informers.SharedInformerFactory) plugins.DefaultOptions {
	core, apps := factory.Core().V1(), factory.Apps().V1()
	o := plugins.DefaultOptions{
		Snapshot:   s.snapshot,
		Namespaces: core.Namespaces().Lister(),
		Spread: plugins.SpreadListers{
			Services:               core.Services().Lister(),
			ReplicationControllers: core.ReplicationControllers().Lister(),
			ReplicaSets:            apps.ReplicaSets().Lister(),
			StatefulSets:           apps.StatefulSets().Lister(),
		},
		// VolumeBinding's claims, volumes, classes and CSI objects (volumes.go).
		Volumes: s.volumeListers(factory),
	}
	s.synced = append(s.synced,
		core.Namespaces().Informer().HasSynced, core.Services().Informer().HasSynced,
		core.ReplicationControllers().Informer().HasSynced, apps.ReplicaSets().Informer().HasSynced,
		apps.StatefulSets().Informer().HasSynced)
	return o
}

// terminal reports whether a pod has finished: its resources are free again.
func terminal(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// responsible reports whether this scheduler should place the pod.
func (s *Scheduler) responsible(p *corev1.Pod) bool {
	_, ok := s.profiles[p.Spec.SchedulerName]
	return ok && p.Spec.NodeName == "" && p.DeletionTimestamp == nil && !terminal(p)
}

func (s *Scheduler) onPod(oldObj, obj any) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	var old *corev1.Pod
	if oldObj != nil {
		old, _ = oldObj.(*corev1.Pod)
	}
	switch {
	case pod.Spec.NodeName != "":
		// Bound: the cache accounts for it until it ends.
		if old != nil && old.Spec.NodeName == "" {
			s.queue.Delete(pod.UID)
		}
		if terminal(pod) {
			s.cache.RemovePod(pod)
			if old != nil && !terminal(old) {
				s.queue.MoveAllToActiveOrBackoff(nil)
			}
			return
		}
		s.cache.AddPod(pod)
		if old == nil || old.Spec.NodeName == "" || !equality.Semantic.DeepEqual(old.Labels, pod.Labels) {
			// A pod placed (or relabelled) may be what a pending pod's affinity or
			// spread waits for.
			s.queue.MoveAllToActiveOrBackoff(rejectedBy(plugins.InterPodAffinityName, plugins.PodTopologySpreadName))
		}
	case s.responsible(pod):
		if old == nil {
			s.queue.Add(pod)
		} else {
			s.queue.Update(pod, podChanged(old, pod))
		}
	default:
		// Terminating, finished, or another scheduler's.
		s.queue.Delete(pod.UID)
	}
}

func (s *Scheduler) onPodDelete(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	if pod.Spec.NodeName == "" {
		s.queue.Delete(pod.UID)
		return
	}
	s.cache.RemovePod(pod)
	// The pod's room is free: pods waiting for room may fit now.
	s.queue.MoveAllToActiveOrBackoff(nil)
}

// rejectedBy selects the pending pods that one of the named plugins rejected.
func rejectedBy(names ...string) func(*framework.QueuedPodInfo) bool {
	return func(pi *framework.QueuedPodInfo) bool {
		return pi.UnschedulablePlugins.HasAny(names...)
	}
}

// podChanged reports whether a pod changed beyond its status and bookkeeping metadata
// (as Kubernetes' queue decides whether an update may make a pod schedulable).
func podChanged(old, cur *corev1.Pod) bool {
	strip := func(p *corev1.Pod) *corev1.Pod {
		c := &corev1.Pod{Spec: p.Spec}
		c.ObjectMeta = *p.ObjectMeta.DeepCopy()
		c.ResourceVersion, c.Generation, c.ManagedFields = "", 0, nil
		return c
	}
	return !equality.Semantic.DeepEqual(strip(old), strip(cur))
}

// nodeChangeMayHelp reports whether a node update can make a pending pod fit: its
// allocatable, labels, taints, cordon or conditions changed (not a heartbeat).
func nodeChangeMayHelp(old, cur *corev1.Node) bool {
	if old.Spec.Unschedulable != cur.Spec.Unschedulable ||
		!equality.Semantic.DeepEqual(old.Status.Allocatable, cur.Status.Allocatable) ||
		!equality.Semantic.DeepEqual(old.Labels, cur.Labels) ||
		!equality.Semantic.DeepEqual(old.Spec.Taints, cur.Spec.Taints) {
		return true
	}
	strip := func(cs []corev1.NodeCondition) []corev1.NodeCondition {
		out := make([]corev1.NodeCondition, len(cs))
		for i, c := range cs {
			out[i] = corev1.NodeCondition{Type: c.Type, Status: c.Status}
		}
		return out
	}
	return !equality.Semantic.DeepEqual(strip(old.Status.Conditions), strip(cur.Status.Conditions))
}

// dropManagedFields keeps managedFields out of the informers' caches: the scheduler never
// reads them and they are much of a pod's size.
func dropManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}
