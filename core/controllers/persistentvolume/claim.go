package persistentvolume

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
	storagehelpers "k8s.io/component-helpers/storage/volume"

	"berth.dev/berth/core/internal/storageclass"

	"berth.dev/berth/core/controllers/reconcile"
)

// Event reasons, as Kubernetes' pkg/controller/volume/events.
const (
	reasonFailedBinding        = "FailedBinding"
	reasonVolumeMismatch       = "VolumeMismatch"
	reasonWaitForFirstConsumer = "WaitForFirstConsumer"
	reasonWaitForPodScheduled  = "WaitForPodScheduled"
	reasonExternalProvisioning = "ExternalProvisioning"
	reasonProvisioningFailed   = "ProvisioningFailed"
	reasonVolumeFailedDelete   = "VolumeFailedDelete"
	reasonVolumeFailedRecycle  = "VolumeFailedRecycle"
	reasonClaimLost            = "ClaimLost"
	reasonClaimMisbound        = "ClaimMisbound"
)

// reconcileClaim makes one claim ("namespace/name") right: bound when a volume fits, handed
// to its provisioner when none does, Lost when its volume went, its protection finalizer
// gone once no pod uses it while it is being deleted.
func (c *Controller) reconcileClaim(ctx context.Context, key string) (reconcile.Result, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return reconcile.Result{}, reconcile.Terminal(err)
	}
	claim, err := c.claims.PersistentVolumeClaims(ns).Get(name)
	if apierrors.IsNotFound(err) {
		// The volumes bound to it were queued by the delete handler and get released there.
		return reconcile.Result{}, nil
	}
	if err != nil {
		return reconcile.Result{}, err
	}
	if claim.DeletionTimestamp != nil && slices.Contains(claim.Finalizers, PVCProtectionFinalizer) {
		done, err := c.unprotectClaim(ctx, claim)
		if err != nil || done {
			return reconcile.Result{}, err
		}
	}
	if !metav1.HasAnnotation(claim.ObjectMeta, storagehelpers.AnnBindCompleted) {
		return reconcile.Result{}, c.syncUnboundClaim(ctx, claim)
	}
	return reconcile.Result{}, c.syncBoundClaim(ctx, claim)
}

// syncUnboundClaim binds a claim that has not completed binding, or says why it cannot.
func (c *Controller) syncUnboundClaim(ctx context.Context, claim *corev1.PersistentVolumeClaim) error {
	if claim.Spec.VolumeName != "" {
		return c.syncClaimForVolume(ctx, claim)
	}
	class, classErr := c.classOf(claim)
	if classErr != nil && !apierrors.IsNotFound(classErr) {
		return classErr
	}
	delayBinding := class != nil && class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer
	volume, err := c.findVolumeFor(claim, delayBinding)
	if err != nil {
		return fmt.Errorf("find a volume for claim %s/%s: %w", claim.Namespace, claim.Name, err)
	}
	if volume != nil {
		return c.bind(ctx, volume, claim)
	}
	// No volume fits. A claim without a class gets the default one, if there is one now (the
	// retroactive default of Kubernetes 1.28+); the update brings the claim back here.
	if storageclass.TakesDefault(claim) {
		if def := c.defaultClass(); def != nil {
			clone := claim.DeepCopy()
			clone.Spec.StorageClassName = &def.Name
			if _, err := c.kube.CoreV1().PersistentVolumeClaims(claim.Namespace).Update(ctx, clone, metav1.UpdateOptions{}); err != nil {
				return fmt.Errorf("assign default storage class %q to claim %s/%s: %w", def.Name, claim.Namespace, claim.Name, err)
			}
			return nil
		}
	}
	switch {
	case delayBinding && !storagehelpers.IsDelayBindingProvisioning(claim):
		c.emitWaitForFirstConsumer(claim)
	case storagehelpers.GetPersistentVolumeClaimClass(claim) != "":
		updated, err := c.provision(ctx, claim, class, classErr)
		if err != nil {
			return err
		}
		claim = updated
	default:
		c.recorder.Event(claim, corev1.EventTypeNormal, reasonFailedBinding, "no persistent volumes available for this claim and no storage class is set")
	}
	_, err = c.updateClaimStatus(ctx, claim, corev1.ClaimPending, nil)
	return err
}

// syncClaimForVolume binds a claim that names its volume (spec.volumeName) to that volume
// only.
func (c *Controller) syncClaimForVolume(ctx context.Context, claim *corev1.PersistentVolumeClaim) error {
	volume, err := c.volumes.Get(claim.Spec.VolumeName)
	if apierrors.IsNotFound(err) {
		// It may be created later (a volume the user is about to make): wait.
		_, err = c.updateClaimStatus(ctx, claim, corev1.ClaimPending, nil)
		return err
	}
	if err != nil {
		return err
	}
	switch {
	case volume.Spec.ClaimRef == nil:
		if err := checkVolumeSatisfyClaim(volume, claim); err != nil {
			c.recorder.Event(claim, corev1.EventTypeWarning, reasonVolumeMismatch, fmt.Sprintf("Cannot bind to requested volume %q: %s", volume.Name, err))
			_, err = c.updateClaimStatus(ctx, claim, corev1.ClaimPending, nil)
			return err
		}
		return c.bind(ctx, volume, claim)
	case storagehelpers.IsVolumeBoundToClaim(volume, claim):
		return c.bind(ctx, volume, claim)
	default:
		c.recorder.Event(claim, corev1.EventTypeWarning, reasonFailedBinding, fmt.Sprintf("volume %q already bound to a different claim.", volume.Name))
		_, err = c.updateClaimStatus(ctx, claim, corev1.ClaimPending, nil)
		return err
	}
}

// syncBoundClaim keeps a claim that completed binding right: Lost when its volume went or
// went to another claim.
func (c *Controller) syncBoundClaim(ctx context.Context, claim *corev1.PersistentVolumeClaim) error {
	if claim.Spec.VolumeName == "" {
		return c.claimLost(ctx, claim, reasonClaimLost, "Bound claim has lost reference to PersistentVolume. Data on the volume is lost!")
	}
	volume, err := c.volumes.Get(claim.Spec.VolumeName)
	if apierrors.IsNotFound(err) {
		// The informer may not have seen a volume just created: ask the API server before
		// declaring the data lost.
		volume, err = c.kube.CoreV1().PersistentVolumes().Get(ctx, claim.Spec.VolumeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return c.claimLost(ctx, claim, reasonClaimLost, "Bound claim has lost its PersistentVolume. Data on the volume is lost!")
		}
	}
	if err != nil {
		return err
	}
	if volume.Spec.ClaimRef == nil || volume.Spec.ClaimRef.UID == claim.UID {
		// Bound (or the volume's half of the binding is missing): make both halves whole.
		return c.bind(ctx, volume, claim)
	}
	return c.claimLost(ctx, claim, reasonClaimMisbound, "Two claims are bound to the same volume, this one is bound incorrectly")
}

func (c *Controller) claimLost(ctx context.Context, claim *corev1.PersistentVolumeClaim, reason, message string) error {
	if claim.Status.Phase == corev1.ClaimLost {
		return nil
	}
	updated, err := c.updateClaimStatus(ctx, claim, corev1.ClaimLost, nil)
	if err != nil {
		return err
	}
	c.recorder.Event(updated, corev1.EventTypeWarning, reason, message)
	return nil
}

// findVolumeFor is the binder's search: among the volumes whose access modes include the
// claim's, fewest modes first (Kubernetes' access-mode index), FindMatchingVolume's pick.
// A claim of a WaitForFirstConsumer class matches only volumes pre-bound to it until the
// scheduler (or a user) names its node in volume.kubernetes.io/selected-node; then only
// volumes whose node affinity admits that node.
func (c *Controller) findVolumeFor(claim *corev1.PersistentVolumeClaim, delayBinding bool) (*corev1.PersistentVolume, error) {
	all, err := c.volumes.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	if delayBinding && storagehelpers.IsDelayBindingProvisioning(claim) {
		node, err := c.nodes.Get(claim.Annotations[storagehelpers.AnnSelectedNode])
		if err != nil {
			// Not there (yet): nothing can be checked against its labels.
			return nil, nil
		}
		return storagehelpers.FindMatchingVolume(claim, all, node, nil, false, false)
	}
	for _, group := range accessModeGroups(all, claim.Spec.AccessModes) {
		v, err := storagehelpers.FindMatchingVolume(claim, group, nil, nil, delayBinding, false)
		if err != nil || v != nil {
			return v, err
		}
	}
	return nil, nil
}

// accessModeGroups groups volumes by their set of access modes, keeps the sets that contain
// every mode the claim asks for, and orders them by how many modes they have: a claim for
// ReadWriteOnce gets an RWO volume before an RWO+ROX one, as in Kubernetes.
func accessModeGroups(volumes []*corev1.PersistentVolume, want []corev1.PersistentVolumeAccessMode) [][]*corev1.PersistentVolume {
	byModes := map[string][]*corev1.PersistentVolume{}
	count := map[string]int{}
	for _, v := range volumes {
		modes := map[corev1.PersistentVolumeAccessMode]bool{}
		for _, m := range v.Spec.AccessModes {
			modes[m] = true
		}
		ok := true
		for _, m := range want {
			if !modes[m] {
				ok = false
				break
			}
		}
		if !ok {
			continue
		}
		names := make([]string, 0, len(modes))
		for m := range modes {
			names = append(names, string(m))
		}
		sort.Strings(names)
		k := strings.Join(names, ",")
		byModes[k] = append(byModes[k], v)
		count[k] = len(names)
	}
	keys := make([]string, 0, len(byModes))
	for k := range byModes {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if count[keys[i]] != count[keys[j]] {
			return count[keys[i]] < count[keys[j]]
		}
		return keys[i] < keys[j]
	})
	groups := make([][]*corev1.PersistentVolume, 0, len(keys))
	for _, k := range keys {
		groups = append(groups, byModes[k])
	}
	return groups
}

// checkVolumeSatisfyClaim says why a volume a claim asked for by name does not fit it, in
// Kubernetes' words.
func checkVolumeSatisfyClaim(volume *corev1.PersistentVolume, claim *corev1.PersistentVolumeClaim) error {
	if volume.DeletionTimestamp != nil {
		return fmt.Errorf("the volume is marked for deletion %q", volume.Name)
	}
	requested := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	capacity := volume.Spec.Capacity[corev1.ResourceStorage]
	if capacity.Value() < requested.Value() {
		return fmt.Errorf("requested PV is too small")
	}
	if storagehelpers.GetPersistentVolumeClass(volume) != storagehelpers.GetPersistentVolumeClaimClass(claim) {
		return fmt.Errorf("storageClassName does not match")
	}
	if storagehelpers.CheckVolumeModeMismatches(&claim.Spec, &volume.Spec) {
		return fmt.Errorf("incompatible volumeMode")
	}
	if !storagehelpers.CheckAccessModes(claim, volume) {
		return fmt.Errorf("incompatible accessMode")
	}
	return nil
}

// classOf returns the claim's StorageClass: nil without error when the claim has none, nil
// and the lister's NotFound error when it names one that does not exist.
func (c *Controller) classOf(claim *corev1.PersistentVolumeClaim) (*storagev1.StorageClass, error) {
	name := storagehelpers.GetPersistentVolumeClaimClass(claim)
	if name == "" {
		return nil, nil
	}
	return c.classes.Get(name)
}

// defaultClass is Kubernetes' GetDefaultClass: of the classes annotated as default, the
// newest (then the first by name).
func (c *Controller) defaultClass() *storagev1.StorageClass {
	classes, err := c.classes.List(labels.Everything())
	if err != nil {
		return nil
	}
	return storageclass.Default(classes)
}

// emitWaitForFirstConsumer tells why a claim of a WaitForFirstConsumer class is not bound:
// no pod using it has been scheduled yet.
func (c *Controller) emitWaitForFirstConsumer(claim *corev1.PersistentVolumeClaim) {
	reason, message := reasonWaitForFirstConsumer, "waiting for first consumer to be created before binding"
	var waiting []string
	objs, _ := c.podIndex.ByIndex(claimIndex, claim.Namespace+"/"+claim.Name)
	for _, o := range objs {
		pod := o.(*corev1.Pod)
		if pod.Spec.NodeName == "" && !podTerminated(pod) {
			waiting = append(waiting, pod.Name)
		}
	}
	sort.Strings(waiting)
	switch {
	case len(waiting) == 1:
		reason, message = reasonWaitForPodScheduled, fmt.Sprintf("waiting for pod %s to be scheduled", waiting[0])
	case len(waiting) > 1:
		reason, message = reasonWaitForPodScheduled, fmt.Sprintf("waiting for pods %s to be scheduled", strings.Join(waiting, ","))
	}
	c.recorder.Event(claim, corev1.EventTypeNormal, reason, message)
}

// bind writes both halves of a binding, volume first (claimRef, then phase Bound), then the
// claim (volumeName and annotations, then status), as Kubernetes does: a failure part-way
// leaves a state the next pass completes, and the volume write, which carries the
// resourceVersion the choice was made on, is what stops two claims from taking one volume.
func (c *Controller) bind(ctx context.Context, volume *corev1.PersistentVolume, claim *corev1.PersistentVolumeClaim) error {
	clone, dirty, err := storagehelpers.GetBindVolumeToClaim(volume, claim)
	if err != nil {
		return err
	}
	if dirty {
		if volume, err = c.kube.CoreV1().PersistentVolumes().Update(ctx, clone, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("bind volume %s to claim %s/%s: %w", clone.Name, claim.Namespace, claim.Name, err)
		}
	}
	if volume, err = c.updateVolumePhase(ctx, volume, corev1.VolumeBound, ""); err != nil {
		return err
	}
	if claim, err = c.bindClaimToVolume(ctx, claim, volume); err != nil {
		return err
	}
	_, err = c.updateClaimStatus(ctx, claim, corev1.ClaimBound, volume)
	return err
}

func (c *Controller) bindClaimToVolume(ctx context.Context, claim *corev1.PersistentVolumeClaim, volume *corev1.PersistentVolume) (*corev1.PersistentVolumeClaim, error) {
	clone := claim.DeepCopy()
	dirty := false
	if claim.Spec.VolumeName != volume.Name {
		clone.Spec.VolumeName = volume.Name
		if !metav1.HasAnnotation(clone.ObjectMeta, storagehelpers.AnnBoundByController) {
			metav1.SetMetaDataAnnotation(&clone.ObjectMeta, storagehelpers.AnnBoundByController, "yes")
		}
		dirty = true
	}
	if !metav1.HasAnnotation(clone.ObjectMeta, storagehelpers.AnnBindCompleted) {
		metav1.SetMetaDataAnnotation(&clone.ObjectMeta, storagehelpers.AnnBindCompleted, "yes")
		dirty = true
	}
	if !dirty {
		return claim, nil
	}
	updated, err := c.kube.CoreV1().PersistentVolumeClaims(claim.Namespace).Update(ctx, clone, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("bind claim %s/%s to volume %s: %w", claim.Namespace, claim.Name, volume.Name, err)
	}
	return updated, nil
}

// updateClaimStatus sets a claim's phase and, from volume (nil: cleared), its access modes
// and, when it becomes Bound, its capacity.
func (c *Controller) updateClaimStatus(ctx context.Context, claim *corev1.PersistentVolumeClaim, phase corev1.PersistentVolumeClaimPhase, volume *corev1.PersistentVolume) (*corev1.PersistentVolumeClaim, error) {
	clone := claim.DeepCopy()
	dirty := false
	if claim.Status.Phase != phase {
		clone.Status.Phase = phase
		dirty = true
	}
	if volume == nil {
		if claim.Status.AccessModes != nil || claim.Status.Capacity != nil {
			clone.Status.AccessModes, clone.Status.Capacity = nil, nil
			dirty = true
		}
	} else {
		if !reflect.DeepEqual(claim.Status.AccessModes, volume.Spec.AccessModes) {
			clone.Status.AccessModes = volume.Spec.AccessModes
			dirty = true
		}
		// Capacity is set when the claim becomes Bound only: afterwards the resizer and the
		// agent own it (a smaller status than the volume means a file system resize is due).
		if claim.Status.Phase != phase {
			vcap, ok := volume.Spec.Capacity[corev1.ResourceStorage]
			if !ok {
				return nil, fmt.Errorf("volume %s has no storage capacity", volume.Name)
			}
			if ccap, ok := claim.Status.Capacity[corev1.ResourceStorage]; !ok || vcap.Cmp(ccap) != 0 {
				clone.Status.Capacity = corev1.ResourceList{corev1.ResourceStorage: vcap}
				dirty = true
			}
		}
	}
	if !dirty {
		return claim, nil
	}
	updated, err := c.kube.CoreV1().PersistentVolumeClaims(claim.Namespace).UpdateStatus(ctx, clone, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("set claim %s/%s %s: %w", claim.Namespace, claim.Name, phase, err)
	}
	c.opts.Log.Debug("claim entered phase", "claim", claim.Namespace+"/"+claim.Name, "phase", phase)
	return updated, nil
}
