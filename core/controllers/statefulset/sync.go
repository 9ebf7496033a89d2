package statefulset

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"berth.dev/berth/core/controllers/history"
)

// pass is one reconcile's view of a set's pods: the slots of the ordinals it should run
// (nil where a pod is missing) and the condemned pods beyond them, highest ordinal first.
type pass struct {
	set                   *appsv1.StatefulSet
	currentSet, updateSet *appsv1.StatefulSet
	current, update       string // revision names
	slots                 []*corev1.Pod
	condemned             []*corev1.Pod
	now                   time.Time
}

// pods is what the pass leaves behind, for the status: the slots' pods and the condemned
// ones (those it deleted marked as terminating).
func (p *pass) pods() []*corev1.Pod {
	var out []*corev1.Pod
	for _, pod := range p.slots {
		if pod != nil {
			out = append(out, pod)
		}
	}
	return append(out, p.condemned...)
}

// newPass sorts the set's pods into slots and condemned ones.
func newPass(set *appsv1.StatefulSet, current, update *appsv1.ControllerRevision, pods []*corev1.Pod, now time.Time) (*pass, error) {
	currentSet, err := history.Apply(set, current)
	if err != nil {
		return nil, err
	}
	updateSet, err := history.Apply(set, update)
	if err != nil {
		return nil, err
	}
	p := &pass{set: set, currentSet: currentSet, updateSet: updateSet, current: current.Name, update: update.Name,
		slots: make([]*corev1.Pod, replicas(set)), now: now}
	start := startOrdinal(set)
	for _, pod := range pods {
		_, ord := parentAndOrdinal(pod.Name)
		switch {
		case ord >= start && ord < start+len(p.slots):
			p.slots[ord-start] = pod
		case ord >= 0:
			p.condemned = append(p.condemned, pod)
		}
	}
	slices.SortFunc(p.condemned, func(a, b *corev1.Pod) int {
		_, oa := parentAndOrdinal(a.Name)
		_, ob := parentAndOrdinal(b.Name)
		return ob - oa
	})
	return p, nil
}

// versionedPod builds the missing pod of slot i at the revision it should run: below the
// partition (or, without rollingUpdate settings, below status.currentReplicas) the current
// revision, else the update revision, as Kubernetes decides.
func (p *pass) versionedPod(i int) *corev1.Pod {
	ord := startOrdinal(p.set) + i
	s := p.set.Spec.UpdateStrategy
	rolling := s.Type == appsv1.RollingUpdateStatefulSetStrategyType || s.Type == ""
	if (rolling && s.RollingUpdate == nil && i < int(p.set.Status.CurrentReplicas)) ||
		(s.RollingUpdate != nil && s.RollingUpdate.Partition != nil && i < int(*s.RollingUpdate.Partition)) {
		return newPod(p.currentSet, ord, p.current)
	}
	return newPod(p.updateSet, ord, p.update)
}

// sync makes one step towards the set's spec; with OrderedReady it returns at the first
// pod it must wait for. wait is set when the step waits on a pod becoming available after
// minReadySeconds (nothing else would wake the controller then).
func (c *Controller) sync(ctx context.Context, p *pass) (wait bool, err error) {
	set := p.set
	if set.DeletionTimestamp != nil {
		return false, nil // the garbage collector removes the pods
	}
	monotonic := set.Spec.PodManagementPolicy != appsv1.ParallelPodManagement
	minReady := set.Spec.MinReadySeconds

	// The first unhealthy pod may be deleted on scale-down even when it is not ready:
	// waiting for it would block forever. "First" is the lowest ordinal, so the condemned
	// (highest first) are searched from the end.
	var firstUnhealthy *corev1.Pod
	byOrdinal := slices.Clone(p.condemned)
	slices.Reverse(byOrdinal)
	for _, pod := range append(slices.Clone(p.slots), byOrdinal...) {
		if pod != nil && (!runningAndReady(pod) || terminating(pod)) {
			firstUnhealthy = pod
			break
		}
	}

	// 1. Every ordinal below replicas: replace finished pods, create missing ones, and with
	// OrderedReady stop at the first pod that is not yet running, ready and available.
	for i, pod := range p.slots {
		if pod != nil && finished(pod) && !terminating(pod) {
			// The replacement comes once the deletion is seen: it reuses the name.
			if err := c.deletePod(ctx, set, pod); err != nil {
				return false, err
			}
			p.slots[i] = markDeleted(pod, p.now)
			if monotonic {
				return false, nil
			}
			continue
		}
		if pod == nil {
			created, err := c.createPod(ctx, set, p.versionedPod(i))
			if err != nil {
				return false, err
			}
			p.slots[i] = created
			if monotonic {
				return false, nil
			}
			continue
		}
		if !monotonic {
			if err := c.fixIdentity(ctx, set, pod); err != nil {
				return false, err
			}
			continue
		}
		if terminating(pod) || !runningAndReady(pod) {
			return false, nil
		}
		if !available(pod, minReady, p.now) {
			return true, nil
		}
		if err := c.fixIdentity(ctx, set, pod); err != nil {
			return false, err
		}
	}

	// 2. Scale down from the highest ordinal; with OrderedReady one pod at a time, each
	// once the one before it is gone.
	for i, pod := range p.condemned {
		if terminating(pod) {
			if monotonic {
				return false, nil
			}
			continue
		}
		if monotonic && pod != firstUnhealthy && !runningAndReady(pod) {
			return false, nil
		}
		if monotonic && pod != firstUnhealthy && !available(pod, minReady, p.now) {
			return true, nil
		}
		if err := c.condemnClaims(ctx, set, pod); err != nil {
			return false, err
		}
		if err := c.deletePod(ctx, set, pod); err != nil {
			return false, err
		}
		p.condemned[i] = markDeleted(pod, p.now)
		if monotonic {
			return false, nil
		}
	}

	// 3. RollingUpdate: replace the highest-ordinal pod not at the update revision, down to
	// the partition, one at a time and only while all above it are available.
	s := set.Spec.UpdateStrategy
	if s.Type == appsv1.OnDeleteStatefulSetStrategyType {
		return false, nil
	}
	partition := 0
	if s.RollingUpdate != nil && s.RollingUpdate.Partition != nil {
		partition = int(*s.RollingUpdate.Partition)
	}
	for i := len(p.slots) - 1; i >= partition; i-- {
		pod := p.slots[i]
		if pod == nil {
			return false, nil
		}
		if pod.Labels[revisionLabel] != p.update && !terminating(pod) {
			if err := c.deletePod(ctx, set, pod); err != nil {
				return false, err
			}
			p.slots[i] = markDeleted(pod, p.now)
			return false, nil
		}
		if terminating(pod) || !runningAndReady(pod) {
			return false, nil
		}
		if !available(pod, minReady, p.now) {
			return true, nil
		}
	}
	return false, nil
}

// markDeleted is how the pass remembers a pod it deleted: a terminating copy.
func markDeleted(pod *corev1.Pod, now time.Time) *corev1.Pod {
	p := pod.DeepCopy()
	t := metav1.NewTime(now)
	p.DeletionTimestamp = &t
	return p
}

// createPod creates the pod's claims, then the pod. A pod that already exists means the
// informer is behind: the pass ends and the pod's event brings the next one.
func (c *Controller) createPod(ctx context.Context, set *appsv1.StatefulSet, pod *corev1.Pod) (*corev1.Pod, error) {
	_, ord := parentAndOrdinal(pod.Name)
	if err := c.createClaims(ctx, set, pod, ord); err != nil {
		return nil, err
	}
	created, err := c.kube.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return pod, nil
	}
	if err != nil {
		c.recorder.Eventf(set, corev1.EventTypeWarning, "FailedCreate", "create Pod %s in StatefulSet %s failed error: %s", pod.Name, set.Name, err)
		return nil, fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	c.recorder.Eventf(set, corev1.EventTypeNormal, "SuccessfulCreate", "create Pod %s in StatefulSet %s successful", pod.Name, set.Name)
	return created, nil
}

// createClaims creates the PVCs of the pod's volumeClaimTemplates that do not exist yet; a
// claim being deleted is an error (the pod would lose its data), as in Kubernetes.
func (c *Controller) createClaims(ctx context.Context, set *appsv1.StatefulSet, pod *corev1.Pod, ord int) error {
	for _, claim := range claimsInOrder(set, ord) {
		existing, err := c.claims.PersistentVolumeClaims(claim.Namespace).Get(claim.Name)
		if err == nil {
			if existing.DeletionTimestamp != nil {
				return fmt.Errorf("claim %s/%s for pod %s is being deleted", claim.Namespace, claim.Name, pod.Name)
			}
			continue
		}
		if !apierrors.IsNotFound(err) {
			return fmt.Errorf("get claim %s/%s: %w", claim.Namespace, claim.Name, err)
		}
		_, err = c.kube.CoreV1().PersistentVolumeClaims(claim.Namespace).Create(ctx, claim, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			continue
		}
		if err != nil {
			c.recorder.Eventf(set, corev1.EventTypeWarning, "FailedCreate", "create Claim %s for Pod %s in StatefulSet %s failed error: %s", claim.Name, pod.Name, set.Name, err)
			return fmt.Errorf("create claim %s/%s: %w", claim.Namespace, claim.Name, err)
		}
		c.recorder.Eventf(set, corev1.EventTypeNormal, "SuccessfulCreate", "create Claim %s Pod %s in StatefulSet %s success", claim.Name, pod.Name, set.Name)
	}
	return nil
}

// claimsInOrder lists the pod's claims in the order of the set's templates.
func claimsInOrder(set *appsv1.StatefulSet, ord int) []*corev1.PersistentVolumeClaim {
	cs := claims(set, ord)
	out := make([]*corev1.PersistentVolumeClaim, 0, len(cs))
	for _, t := range set.Spec.VolumeClaimTemplates {
		out = append(out, cs[t.Name])
	}
	return out
}

// deletePod deletes the pod (the uid precondition spares a namesake created since).
func (c *Controller) deletePod(ctx context.Context, set *appsv1.StatefulSet, pod *corev1.Pod) error {
	err := c.kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &pod.UID}})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil
	}
	if err != nil {
		c.recorder.Eventf(set, corev1.EventTypeWarning, "FailedDelete", "delete Pod %s in StatefulSet %s failed error: %s", pod.Name, set.Name, err)
		return fmt.Errorf("delete pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	c.recorder.Eventf(set, corev1.EventTypeNormal, "SuccessfulDelete", "delete Pod %s in StatefulSet %s successful", pod.Name, set.Name)
	return nil
}

// fixIdentity puts back the identity labels of a pod someone edited.
func (c *Controller) fixIdentity(ctx context.Context, set *appsv1.StatefulSet, pod *corev1.Pod) error {
	if identityMatches(set, pod) {
		return nil
	}
	fixed := pod.DeepCopy()
	_, ord := parentAndOrdinal(pod.Name)
	setIdentity(set, fixed, ord)
	if _, err := c.kube.CoreV1().Pods(pod.Namespace).Update(ctx, fixed, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
		c.recorder.Eventf(set, corev1.EventTypeWarning, "FailedUpdate", "update Pod %s in StatefulSet %s failed error: %s", pod.Name, set.Name, err)
		return fmt.Errorf("restore identity of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	c.recorder.Eventf(set, corev1.EventTypeNormal, "SuccessfulUpdate", "update Pod %s in StatefulSet %s successful", pod.Name, set.Name)
	return nil
}

// condemnClaims, under whenScaled: Delete, makes the condemned pod an owner of its claims,
// so that the garbage collector deletes them once the pod is gone (as Kubernetes does).
func (c *Controller) condemnClaims(ctx context.Context, set *appsv1.StatefulSet, pod *corev1.Pod) error {
	policy := set.Spec.PersistentVolumeClaimRetentionPolicy
	if policy == nil || policy.WhenScaled != appsv1.DeletePersistentVolumeClaimRetentionPolicyType {
		return nil
	}
	_, ord := parentAndOrdinal(pod.Name)
	f := false
	ref := metav1.OwnerReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID, Controller: &f, BlockOwnerDeletion: &f}
	for _, claim := range claimsInOrder(set, ord) {
		existing, err := c.claims.PersistentVolumeClaims(claim.Namespace).Get(claim.Name)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("get claim %s/%s: %w", claim.Namespace, claim.Name, err)
		}
		if slices.ContainsFunc(existing.OwnerReferences, func(r metav1.OwnerReference) bool { return r.UID == pod.UID }) {
			continue
		}
		data, err := json.Marshal(map[string]any{"metadata": map[string]any{"ownerReferences": []metav1.OwnerReference{ref}, "uid": existing.UID}})
		if err != nil {
			return err
		}
		_, err = c.kube.CoreV1().PersistentVolumeClaims(claim.Namespace).Patch(ctx, claim.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("hand claim %s/%s to pod %s: %w", claim.Namespace, claim.Name, pod.Name, err)
		}
	}
	return nil
}
