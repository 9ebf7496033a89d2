package daemonset

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/core/controllers/ownership"
)

// generationAnnotation is where the API server keeps a DaemonSet's template generation;
// pods get it as the pod-template-generation label, which older clients still read.
const (
	generationAnnotation = "deprecated.daemonset.template.generation"
	generationLabel      = "pod-template-generation"
)

// plan is what one pass will do: create a pod on each node of create, delete the pods
// named in remove; retryAfter is when a failed pod's backoff ends.
type plan struct {
	create     []string
	remove     []string
	retryAfter time.Duration
}

// manage decides, node by node, which daemon pods are missing and which must go: surplus
// pods on a node (the oldest of each revision stays), pods on nodes they no longer fit,
// failed pods (replaced once their node's backoff allows), and pods for nodes that are gone.
func (c *Controller) manage(ds *appsv1.DaemonSet, nodes []*corev1.Node, byNode map[string][]*corev1.Pod, hash string, now time.Time) plan {
	var p plan
	known := map[string]bool{}
	for _, node := range nodes {
		known[node.Name] = true
		run, stay := shouldRun(node, ds)
		pods := byNode[node.Name]
		switch {
		case run && len(pods) == 0:
			p.create = append(p.create, node.Name)
		case stay:
			var running []*corev1.Pod
			for _, pod := range pods {
				if pod.DeletionTimestamp != nil {
					continue
				}
				switch pod.Status.Phase {
				case corev1.PodFailed:
					key := backoffKey(ds, node.Name)
					if c.backoff.IsInBackOffSinceUpdate(key, now) {
						wait := c.backoff.Get(key)
						if p.retryAfter == 0 || wait < p.retryAfter {
							p.retryAfter = wait
						}
						continue
					}
					c.backoff.Next(key, now)
					c.recorder.Eventf(ds, corev1.EventTypeWarning, "FailedDaemonPod", "Found failed daemon pod %s/%s on node %s, will try to kill it", pod.Namespace, pod.Name, node.Name)
					p.remove = append(p.remove, pod.Name)
				case corev1.PodSucceeded:
					c.recorder.Eventf(ds, corev1.EventTypeNormal, "SucceededDaemonPod", "Found succeeded daemon pod %s/%s on node %s, will try to delete it", pod.Namespace, pod.Name, node.Name)
					p.remove = append(p.remove, pod.Name)
				default:
					running = append(running, pod)
				}
			}
			if run && len(running) == 0 {
				p.create = append(p.create, node.Name)
			}
			p.remove = append(p.remove, surplus(running, hash)...)
		case !stay:
			for _, pod := range pods {
				if pod.DeletionTimestamp == nil {
					p.remove = append(p.remove, pod.Name)
				}
			}
		}
	}
	// Pods pinned to nodes that no longer exist and never bound: nothing else removes them
	// (bound ones are the pod garbage collector's).
	for node, pods := range byNode {
		if known[node] {
			continue
		}
		for _, pod := range pods {
			if pod.Spec.NodeName == "" && pod.DeletionTimestamp == nil {
				p.remove = append(p.remove, pod.Name)
			}
		}
	}
	return p
}

// surplus are the pods of one node beyond the oldest at the update hash and the oldest at
// any other (a surge keeps one of each while the new one becomes available).
func surplus(running []*corev1.Pod, hash string) []string {
	if len(running) <= 1 {
		return nil
	}
	sorted := slices.Clone(running)
	slices.SortStableFunc(sorted, func(a, b *corev1.Pod) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return compareStrings(a.Name, b.Name)
	})
	var out []string
	keptNew, keptOld := false, false
	for _, pod := range sorted {
		isNew := pod.Labels[hashLabel] == hash
		switch {
		case isNew && !keptNew:
			keptNew = true
		case !isNew && !keptOld:
			keptOld = true
		default:
			out = append(out, pod.Name)
		}
	}
	return out
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func backoffKey(ds *appsv1.DaemonSet, node string) string {
	return string(ds.UID) + "/" + strconv.FormatInt(ds.Generation, 10) + "/" + node
}

// templateGeneration is the DaemonSet's template generation, if the API server set it.
func templateGeneration(ds *appsv1.DaemonSet) *int64 {
	v, ok := ds.Annotations[generationAnnotation]
	if !ok {
		return nil
	}
	g, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return nil
	}
	return &g
}

// newPod is the DaemonSet's pod for a node: its template with the daemon tolerations, the
// hash label and the affinity that pins it to the node.
func newPod(ds *appsv1.DaemonSet, node, hash string) *corev1.Pod {
	t := ds.Spec.Template.DeepCopy()
	addDaemonTolerations(&t.Spec)
	if t.Labels == nil {
		t.Labels = map[string]string{}
	}
	if g := templateGeneration(ds); g != nil {
		t.Labels[generationLabel] = strconv.FormatInt(*g, 10)
	}
	t.Labels[hashLabel] = hash
	t.Spec.Affinity = pinToNode(t.Spec.Affinity, node)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName:    ds.Name + "-",
			Namespace:       ds.Namespace,
			Labels:          t.Labels,
			Annotations:     t.Annotations,
			Finalizers:      t.Finalizers,
			OwnerReferences: []metav1.OwnerReference{ownership.ControllerRef(ds, kind)},
		},
		Spec: t.Spec,
	}
}

// syncNodes deletes the pods named in remove and creates one pod on each node of create,
// recording what it expects the informer to show.
func (c *Controller) syncNodes(ctx context.Context, key string, ds *appsv1.DaemonSet, remove, create []string, hash string) error {
	if len(remove) == 0 && len(create) == 0 {
		return nil
	}
	c.expect.expect(key, len(create), len(remove))
	var errs []error
	for _, node := range create {
		pod, err := c.kube.CoreV1().Pods(ds.Namespace).Create(ctx, newPod(ds, node, hash), metav1.CreateOptions{})
		if err != nil {
			c.expect.observe(key, true) // it will never be seen
			if apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
				continue // the namespace controller is emptying it
			}
			c.recorder.Eventf(ds, corev1.EventTypeWarning, "FailedCreate", "Error creating: %v", err)
			errs = append(errs, fmt.Errorf("create daemon pod for node %s: %w", node, err))
			continue
		}
		c.recorder.Eventf(ds, corev1.EventTypeNormal, "SuccessfulCreate", "Created pod: %s", pod.Name)
	}
	for _, name := range remove {
		err := c.kube.CoreV1().Pods(ds.Namespace).Delete(ctx, name, metav1.DeleteOptions{})
		if err != nil {
			c.expect.observe(key, false)
			if apierrors.IsNotFound(err) {
				continue
			}
			c.recorder.Eventf(ds, corev1.EventTypeWarning, "FailedDelete", "Error deleting: %v", err)
			errs = append(errs, fmt.Errorf("delete daemon pod %s/%s: %w", ds.Namespace, name, err))
			continue
		}
		c.recorder.Eventf(ds, corev1.EventTypeNormal, "SuccessfulDelete", "Deleted pod: %s", name)
	}
	return errors.Join(errs...)
}
