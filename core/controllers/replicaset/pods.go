package replicaset

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/validation"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"berth.dev/berth/core/controllers/ownership"
)

// manageReplicas creates or deletes pods so that the owner has spec.replicas active ones, at
// most BurstReplicas per pass, and records what it expects the pod informer to report.
func (c *Controller) manageReplicas(ctx context.Context, key Key, o *owner, active []*corev1.Pod) error {
	rs := o.rs
	diff := len(active) - int(desiredReplicas(rs))
	switch {
	case diff < 0:
		n := min(-diff, c.burst)
		// Expect them all before the first create: the informer may report a pod before
		// Create returns.
		c.expectations.expectCreations(key, n)
		c.log.Debug("too few replicas", "owner", key, "need", desiredReplicas(rs), "creating", n)
		gvk := c.kinds[key.Kind].gvk()
		created, err := slowStartBatch(n, func() error { return c.createPod(ctx, o, gvk) })
		// The informer will never report the creates that were skipped or failed.
		if skipped := n - created; skipped > 0 {
			c.log.Debug("slow-start failure, skipping pod creations", "owner", key, "skipped", skipped)
			c.expectations.creationsObserved(key, skipped)
		}
		return err
	case diff > 0:
		n := min(diff, c.burst)
		c.log.Debug("too many replicas", "owner", key, "need", desiredReplicas(rs), "deleting", n)
		victims := podsToDelete(active, n)
		podKeys := make([]string, len(victims))
		for i, p := range victims {
			podKeys[i] = podKey(p)
		}
		c.expectations.expectDeletions(key, podKeys)
		errs := make(chan error, len(victims))
		var wg sync.WaitGroup
		for _, pod := range victims {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := c.deletePodOf(ctx, o, pod.Name); err != nil {
					// The informer will never report this deletion.
					c.expectations.deletionObserved(key, podKey(pod))
					if !apierrors.IsNotFound(err) {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		// The errors are most likely alike: the first one tells.
		return <-errs
	}
	return nil
}

// slowStartBatch calls fn count times in batches of 1, 2, 4 ... run concurrently, and
// stops after the first batch with a failure, so that a create every pod would fail on
// (a quota, an admission rule) is tried a few times rather than count times. It returns
// how many calls succeeded and the first error.
func slowStartBatch(count int, fn func() error) (int, error) {
	done := 0
	for batch := min(count, 1); batch > 0; batch = min(2*batch, count-done) {
		errs := make(chan error, batch)
		var wg sync.WaitGroup
		for range batch {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := fn(); err != nil {
					errs <- err
				}
			}()
		}
		wg.Wait()
		close(errs)
		done += batch - len(errs)
		if err := <-errs; err != nil {
			return done, err
		}
	}
	return done, nil
}

// createPod creates one pod from the owner's template and records the outcome as an event.
func (c *Controller) createPod(ctx context.Context, o *owner, gvk schema.GroupVersionKind) error {
	pod := podFromTemplate(o.rs, gvk)
	if len(pod.Labels) == 0 {
		return fmt.Errorf("unable to create pods, no labels")
	}
	created, err := c.kube.CoreV1().Pods(o.rs.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		// A namespace being deleted refuses every create; that is no failure of the owner.
		if apierrors.HasStatusCause(err, corev1.NamespaceTerminatingCause) {
			return nil
		}
		c.recorder.Eventf(o.stored, corev1.EventTypeWarning, reasonFailedCreate, "Error creating: %v", err)
		return err
	}
	c.log.Debug("created pod", "owner", o.rs.Namespace+"/"+o.rs.Name, "pod", created.Name)
	c.recorder.Eventf(o.stored, corev1.EventTypeNormal, reasonSuccessfulCreate, "Created pod: %v", created.Name)
	return nil
}

// deletePodOf deletes one of the owner's pods and records the outcome as an event.
func (c *Controller) deletePodOf(ctx context.Context, o *owner, name string) error {
	err := c.kube.CoreV1().Pods(o.rs.Namespace).Delete(ctx, name, metav1.DeleteOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return err
	case err != nil:
		c.recorder.Eventf(o.stored, corev1.EventTypeWarning, reasonFailedDelete, "Error deleting: %v", err)
		return fmt.Errorf("unable to delete pods: %w", err)
	}
	c.log.Debug("deleted pod", "owner", o.rs.Namespace+"/"+o.rs.Name, "pod", name)
	c.recorder.Eventf(o.stored, corev1.EventTypeNormal, reasonSuccessfulDelete, "Deleted pod: %v", name)
	return nil
}

// podFromTemplate builds a pod of the owner: the template's labels, annotations, finalizers
// and spec, a name generated from the owner's, and the owner as its controller.
func podFromTemplate(rs *appsv1.ReplicaSet, gvk schema.GroupVersionKind) *corev1.Pod {
	t := &rs.Spec.Template
	// "<name>-" reads better; a name too long for the dash goes without it.
	prefix := rs.Name + "-"
	if len(validation.NameIsDNSSubdomain(prefix, true)) != 0 {
		prefix = rs.Name
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName:    prefix,
			Namespace:       rs.Namespace,
			Labels:          maps.Clone(t.Labels),
			Annotations:     maps.Clone(t.Annotations),
			Finalizers:      slices.Clone(t.Finalizers),
			OwnerReferences: []metav1.OwnerReference{ownership.ControllerRef(rs, gvk)},
		},
		Spec: *t.Spec.DeepCopy(),
	}
	return pod
}

// podKey names a pod in the expectations: namespace/name.
func podKey(p *corev1.Pod) string { return p.Namespace + "/" + p.Name }
