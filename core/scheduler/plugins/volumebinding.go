package plugins

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	storagelisters "k8s.io/client-go/listers/storage/v1"
	"k8s.io/component-helpers/storage/ephemeral"
	volumehelpers "k8s.io/component-helpers/storage/volume"

	"berth.dev/berth/core/scheduler/framework"
)

// VolumeBindingName is the name of the VolumeBinding plugin.
const VolumeBindingName = "VolumeBinding"

// VolumeBinding's reasons, worded as kube-scheduler's volumebinding plugin words them.
const (
	// ErrReasonBindConflict: no static volume matches an unbound WaitForFirstConsumer claim
	// on the node, and none can be provisioned there.
	ErrReasonBindConflict = "node(s) didn't find available persistent volumes to bind"
	// ErrReasonNodeConflict: a bound claim's volume is not reachable from the node.
	ErrReasonNodeConflict = "node(s) had volume node affinity conflict"
	// ErrReasonPVNotExist: a claim is bound to a volume that does not exist.
	ErrReasonPVNotExist = "node(s) unavailable due to one or more pvc(s) bound to non-existent pv(s)"
	// ErrReasonUnboundImmediate: a claim of an Immediate class is not bound yet; the PV
	// controller binds or provisions it without the scheduler.
	ErrReasonUnboundImmediate = "pod has unbound immediate PersistentVolumeClaims"
)

// DefaultVolumeBindTimeout is how long PreBind waits for the claims to be bound, as
// kube-scheduler's bindTimeoutSeconds (600).
const DefaultVolumeBindTimeout = 10 * time.Minute

// VolumeListers are what VolumeBinding reads: claims, volumes, classes, and which CSI
// drivers run where. The scheduler fills them from its informers.
type VolumeListers struct {
	Claims     corelisters.PersistentVolumeClaimLister
	Volumes    corelisters.PersistentVolumeLister
	Classes    storagelisters.StorageClassLister
	CSINodes   storagelisters.CSINodeLister
	CSIDrivers storagelisters.CSIDriverLister
}

func (l VolumeListers) complete() bool {
	return l.Claims != nil && l.Volumes != nil && l.Classes != nil && l.CSINodes != nil && l.CSIDrivers != nil
}

// VolumeBinding places pods with PersistentVolumeClaims (and generic ephemeral volumes) on
// nodes where their volumes are reachable, and binds the WaitForFirstConsumer claims
// there: it picks a matching static volume, or asks the claim's provisioner to make one on
// the chosen node (annotation volume.kubernetes.io/selected-node), and holds the pod's
// binding until every claim is bound.
type VolumeBinding struct {
	client kubernetes.Interface
	l      VolumeListers
	// BindTimeout bounds PreBind's wait for the claims (DefaultVolumeBindTimeout when 0).
	BindTimeout time.Duration
	// PollInterval is how often PreBind looks at the claims (1 s when 0, as Kubernetes).
	PollInterval time.Duration

	mu sync.Mutex
	// reserved maps a static volume chosen in Reserve to its claim (namespace/name) until
	// PreBind has seen it bound or Unreserve lets it go: the cycles of the next pods run
	// before the volume's claimRef reaches the informer, and must not pick it again.
	reserved map[string]string
}

// NewVolumeBinding returns the plugin; it writes through client and reads through l.
func NewVolumeBinding(client kubernetes.Interface, l VolumeListers) *VolumeBinding {
	return &VolumeBinding{client: client, l: l, reserved: map[string]string{}}
}

// Name returns VolumeBindingName.
func (*VolumeBinding) Name() string { return VolumeBindingName }

const volumeBindingKey framework.StateKey = "PreFilter" + VolumeBindingName

// staticBinding is a claim and the static volume chosen for it.
type staticBinding struct {
	claim *corev1.PersistentVolumeClaim
	pv    *corev1.PersistentVolume
}

// podVolumes is what one node needs done for the pod's unbound claims.
type podVolumes struct {
	static    []staticBinding
	provision []*corev1.PersistentVolumeClaim
	// nodeLabels are the node's labels as Filter saw them, for PreBind to check the
	// provisioned volumes' affinity (the binding cycle must not read the snapshot, which
	// the next scheduling cycle is already changing).
	nodeLabels map[string]string
}

// boundClaim is a bound claim and its volume (nil when the volume does not exist).
type boundClaim struct {
	claim *corev1.PersistentVolumeClaim
	pv    *corev1.PersistentVolume
}

// volumeState is VolumeBinding's cycle state: the pod's claims sorted out in PreFilter,
// each node's decisions from Filter, the chosen node's in Reserve, and what PreBind wrote
// (for Unreserve to undo).
type volumeState struct {
	bound   []boundClaim
	delayed []*corev1.PersistentVolumeClaim
	// candidates are the volumes of each delayed claim's class.
	candidates map[string][]*corev1.PersistentVolume
	classes    map[string]*storagev1.StorageClass
	// csiNodes names, for each provisioner of a delayed claim's class that is a CSI driver,
	// the nodes whose CSINode lists it.
	csiNodes map[string]sets.Set[string]

	mu     sync.Mutex
	byNode map[string]*podVolumes
	chosen *podVolumes
	// boundPVs and annotated are what PreBind changed: claimRefs set and claims given a
	// selected node.
	boundPVs  []staticBinding
	annotated []*corev1.PersistentVolumeClaim
}

// Clone returns the state itself: Filter's decisions are per node and a preemption dry
// run only adds to them, as in Kubernetes.
func (s *volumeState) Clone() framework.StateData { return s }

// podClaimNames lists the claims a pod uses: its persistentVolumeClaim volumes and the
// claims of its generic ephemeral volumes (named <pod>-<volume>), each with whether it is
// ephemeral.
func podClaimNames(pod *corev1.Pod) (names []string, eph []bool) {
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		switch {
		case v.PersistentVolumeClaim != nil:
			names, eph = append(names, v.PersistentVolumeClaim.ClaimName), append(eph, false)
		case v.Ephemeral != nil:
			names, eph = append(names, ephemeral.VolumeClaimName(pod, v)), append(eph, true)
		}
	}
	return names, eph
}

// PreFilter sorts the pod's claims into bound ones and unbound WaitForFirstConsumer ones,
// and rejects the pod when a claim is missing, being deleted, or unbound of an Immediate
// class. A pod without claims skips the plugin.
func (pl *VolumeBinding) PreFilter(_ context.Context, state *framework.CycleState, pod *corev1.Pod) (*framework.PreFilterResult, *framework.Status) {
	names, eph := podClaimNames(pod)
	if len(names) == 0 {
		return nil, framework.NewStatus(framework.Skip)
	}
	if !pl.l.complete() {
		return nil, framework.AsStatus(errors.New("VolumeBinding was built without the claim, volume, class and CSI listers"))
	}
	s := &volumeState{
		candidates: map[string][]*corev1.PersistentVolume{},
		classes:    map[string]*storagev1.StorageClass{},
		csiNodes:   map[string]sets.Set[string]{},
		byNode:     map[string]*podVolumes{},
	}
	immediate := false
	for i, name := range names {
		claim, err := pl.l.Claims.PersistentVolumeClaims(pod.Namespace).Get(name)
		if apierrors.IsNotFound(err) {
			return nil, framework.NewStatus(framework.UnschedulableAndUnresolvable, fmt.Sprintf("persistentvolumeclaim %q not found", name))
		}
		if err != nil {
			return nil, framework.AsStatus(fmt.Errorf("get persistentvolumeclaim %s/%s: %w", pod.Namespace, name, err))
		}
		if claim.DeletionTimestamp != nil {
			return nil, framework.NewStatus(framework.UnschedulableAndUnresolvable, fmt.Sprintf("persistentvolumeclaim %q is being deleted", name))
		}
		if eph[i] {
			if err := ephemeral.VolumeIsForPod(pod, claim); err != nil {
				return nil, framework.NewStatus(framework.UnschedulableAndUnresolvable, err.Error())
			}
		}
		if claim.Spec.VolumeName != "" {
			pv, err := pl.l.Volumes.Get(claim.Spec.VolumeName)
			if err != nil && !apierrors.IsNotFound(err) {
				return nil, framework.AsStatus(fmt.Errorf("get persistentvolume %s: %w", claim.Spec.VolumeName, err))
			}
			s.bound = append(s.bound, boundClaim{claim: claim, pv: pv})
			continue
		}
		className := volumehelpers.GetPersistentVolumeClaimClass(claim)
		class, err := pl.l.Classes.Get(className)
		if className == "" || apierrors.IsNotFound(err) {
			// Without a class, binding is the PV controller's: Immediate.
			immediate = true
			continue
		}
		if err != nil {
			return nil, framework.AsStatus(fmt.Errorf("get storageclass %s: %w", className, err))
		}
		if class.VolumeBindingMode == nil || *class.VolumeBindingMode != storagev1.VolumeBindingWaitForFirstConsumer {
			immediate = true
			continue
		}
		s.classes[className] = class
		s.delayed = append(s.delayed, claim)
	}
	if immediate {
		return nil, framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonUnboundImmediate)
	}
	if len(s.delayed) > 0 {
		if err := pl.collectCandidates(s); err != nil {
			return nil, framework.AsStatus(err)
		}
	}
	state.Write(volumeBindingKey, s)
	return nil, nil
}

// collectCandidates reads, once per pod, the volumes of the delayed claims' classes and
// the nodes that run each of their provisioners that is a CSI driver.
func (pl *VolumeBinding) collectCandidates(s *volumeState) error {
	pvs, err := pl.l.Volumes.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list persistentvolumes: %w", err)
	}
	for _, pv := range pvs {
		if c := volumehelpers.GetPersistentVolumeClass(pv); s.classes[c] != nil {
			s.candidates[c] = append(s.candidates[c], pv)
		}
	}
	csiNodes, err := pl.l.CSINodes.List(labels.Everything())
	if err != nil {
		return fmt.Errorf("list csinodes: %w", err)
	}
	listed := map[string]sets.Set[string]{}
	for _, cn := range csiNodes {
		for _, d := range cn.Spec.Drivers {
			if listed[d.Name] == nil {
				listed[d.Name] = sets.New[string]()
			}
			listed[d.Name].Insert(cn.Name)
		}
	}
	for _, class := range s.classes {
		p := class.Provisioner
		if _, done := s.csiNodes[p]; done {
			continue
		}
		// A provisioner is a CSI driver when it has a CSIDriver object or some node runs
		// it; it then provisions only on nodes whose CSINode lists it. Others (an
		// external provisioner that is not CSI) may provision anywhere.
		_, err := pl.l.CSIDrivers.Get(p)
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("get csidriver %s: %w", p, err)
		}
		if err == nil || listed[p] != nil {
			s.csiNodes[p] = listed[p]
			if s.csiNodes[p] == nil {
				s.csiNodes[p] = sets.New[string]()
			}
		}
	}
	return nil
}

// PreFilterExtensions returns nil: other pods do not change where volumes fit.
func (*VolumeBinding) PreFilterExtensions() framework.PreFilterExtensions { return nil }

func readVolumeState(state *framework.CycleState) (*volumeState, error) {
	d, err := state.Read(volumeBindingKey)
	if err != nil {
		return nil, err
	}
	s, ok := d.(*volumeState)
	if !ok {
		return nil, fmt.Errorf("cycle state %q holds %T, want *volumeState", volumeBindingKey, d)
	}
	return s, nil
}

// Filter admits a node when every bound claim's volume is reachable from it and every
// unbound WaitForFirstConsumer claim can get a volume there: a matching Available static
// volume, or else one its class can provision there.
func (pl *VolumeBinding) Filter(_ context.Context, state *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) *framework.Status {
	s, err := readVolumeState(state)
	if err != nil {
		return framework.AsStatus(err)
	}
	n := node.Node()
	if n == nil {
		return framework.AsStatus(fmt.Errorf("node %q not found", node.Name()))
	}
	var reasons []string
	for _, b := range s.bound {
		if b.pv == nil {
			reasons = append(reasons, ErrReasonPVNotExist)
			break
		}
		if volumehelpers.CheckNodeAffinity(b.pv, n.Labels) != nil {
			reasons = append(reasons, ErrReasonNodeConflict)
			break
		}
	}
	decisions := &podVolumes{nodeLabels: n.Labels}
	if len(s.delayed) > 0 {
		excluded := pl.reservedExcept(s.delayed)
		for _, claim := range s.delayed {
			class := volumehelpers.GetPersistentVolumeClaimClass(claim)
			pv, err := volumehelpers.FindMatchingVolume(claim, s.candidates[class], n, excluded, false, true)
			if err != nil {
				return framework.AsStatus(fmt.Errorf("match a volume to claim %s/%s: %w", claim.Namespace, claim.Name, err))
			}
			if pv != nil {
				excluded[pv.Name] = pv
				decisions.static = append(decisions.static, staticBinding{claim: claim, pv: pv})
				continue
			}
			if !s.canProvision(s.classes[class], n) {
				reasons = append(reasons, ErrReasonBindConflict)
				break
			}
			decisions.provision = append(decisions.provision, claim)
		}
	}
	if len(reasons) > 0 {
		return framework.NewStatus(framework.UnschedulableAndUnresolvable, reasons...)
	}
	s.mu.Lock()
	s.byNode[n.Name] = decisions
	s.mu.Unlock()
	return nil
}

// reservedExcept returns the static volumes other claims hold in their binding cycles, as
// a set FindMatchingVolume skips.
func (pl *VolumeBinding) reservedExcept(claims []*corev1.PersistentVolumeClaim) map[string]*corev1.PersistentVolume {
	own := sets.New[string]()
	for _, c := range claims {
		own.Insert(c.Namespace + "/" + c.Name)
	}
	out := map[string]*corev1.PersistentVolume{}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for pv, claim := range pl.reserved {
		if !own.Has(claim) {
			out[pv] = nil
		}
	}
	return out
}

// canProvision reports whether the class can provision a volume for the node: it has a
// provisioner, the node runs that provisioner when it is a CSI driver, and the class's
// allowedTopologies admit the node.
func (s *volumeState) canProvision(class *storagev1.StorageClass, n *corev1.Node) bool {
	if class == nil || class.Provisioner == "" || class.Provisioner == volumehelpers.NotSupportedProvisioner {
		return false
	}
	if nodes, isCSI := s.csiNodes[class.Provisioner]; isCSI && !nodes.Has(n.Name) {
		return false
	}
	return topologyAdmits(class.AllowedTopologies, n.Labels)
}

// topologyAdmits reports whether node labels satisfy allowedTopologies: any one term,
// each of whose expressions needs the label with one of its values. No terms admit all.
func topologyAdmits(terms []corev1.TopologySelectorTerm, nodeLabels map[string]string) bool {
	if len(terms) == 0 {
		return true
	}
	for _, term := range terms {
		ok := true
		for _, e := range term.MatchLabelExpressions {
			v, has := nodeLabels[e.Key]
			if !has || !sets.New(e.Values...).Has(v) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

// Reserve remembers the chosen node's decisions and holds its static volumes.
func (pl *VolumeBinding) Reserve(_ context.Context, state *framework.CycleState, _ *corev1.Pod, nodeName string) *framework.Status {
	s, err := readVolumeState(state)
	if err != nil {
		return nil // PreFilter skipped the plugin: the pod has no claims
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	d := s.byNode[nodeName]
	if d == nil {
		return framework.AsStatus(fmt.Errorf("no volume decisions for node %q", nodeName))
	}
	s.chosen = d
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for _, b := range d.static {
		pl.reserved[b.pv.Name] = b.claim.Namespace + "/" + b.claim.Name
	}
	return nil
}

// release lets go of the static volumes reserved for the decisions.
func (pl *VolumeBinding) release(d *podVolumes) {
	if d == nil {
		return
	}
	pl.mu.Lock()
	defer pl.mu.Unlock()
	for _, b := range d.static {
		if pl.reserved[b.pv.Name] == b.claim.Namespace+"/"+b.claim.Name {
			delete(pl.reserved, b.pv.Name)
		}
	}
}

// PreBind writes the decisions (a static volume's claimRef, as the PV controller would;
// a provisioned claim's selected node) and waits until every claim is bound, so that the
// pod reaches its node with its volumes. A provisioner that gives up removes the selected
// node; the binding cycle then fails and the pod is scheduled again.
func (pl *VolumeBinding) PreBind(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, nodeName string) *framework.Status {
	s, err := readVolumeState(state)
	if err != nil {
		return nil
	}
	s.mu.Lock()
	d := s.chosen
	s.mu.Unlock()
	if d == nil || (len(d.static) == 0 && len(d.provision) == 0) {
		return nil
	}
	for _, b := range d.static {
		if err := pl.bindStatic(ctx, s, b); err != nil {
			return framework.AsStatus(err)
		}
	}
	for _, c := range d.provision {
		if err := pl.selectNode(ctx, s, c, nodeName); err != nil {
			return framework.AsStatus(err)
		}
	}
	timeout, interval := pl.BindTimeout, pl.PollInterval
	if timeout <= 0 {
		timeout = DefaultVolumeBindTimeout
	}
	if interval <= 0 {
		interval = time.Second
	}
	seen := sets.New[string]()
	err = wait.PollUntilContextTimeout(ctx, interval, timeout, true, func(context.Context) (bool, error) {
		return pl.allBound(d, nodeName, seen)
	})
	if err != nil {
		return framework.AsStatus(fmt.Errorf("binding volumes of pod %s/%s: %w", pod.Namespace, pod.Name, err))
	}
	pl.release(d)
	return nil
}

// bindStatic sets the volume's claimRef (and bound-by-controller) to the claim.
func (pl *VolumeBinding) bindStatic(ctx context.Context, s *volumeState, b staticBinding) error {
	pv, err := pl.client.CoreV1().PersistentVolumes().Get(ctx, b.pv.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get persistentvolume %s to bind it to claim %s/%s: %w", b.pv.Name, b.claim.Namespace, b.claim.Name, err)
	}
	upd, dirty, err := volumehelpers.GetBindVolumeToClaim(pv, b.claim)
	if err != nil {
		return fmt.Errorf("bind persistentvolume %s to claim %s/%s: %w", pv.Name, b.claim.Namespace, b.claim.Name, err)
	}
	if dirty {
		if _, err := pl.client.CoreV1().PersistentVolumes().Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("bind persistentvolume %s to claim %s/%s: %w", pv.Name, b.claim.Namespace, b.claim.Name, err)
		}
		s.mu.Lock()
		s.boundPVs = append(s.boundPVs, b)
		s.mu.Unlock()
	}
	return nil
}

// selectNode asks the claim's provisioner to provision on the node; it also names the
// provisioner on the claim when the PV controller has not done so yet.
func (pl *VolumeBinding) selectNode(ctx context.Context, s *volumeState, c *corev1.PersistentVolumeClaim, nodeName string) error {
	claim, err := pl.client.CoreV1().PersistentVolumeClaims(c.Namespace).Get(ctx, c.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("get persistentvolumeclaim %s/%s to select node %s: %w", c.Namespace, c.Name, nodeName, err)
	}
	if claim.Spec.VolumeName != "" || claim.Annotations[volumehelpers.AnnSelectedNode] == nodeName {
		return nil
	}
	upd := claim.DeepCopy()
	if upd.Annotations == nil {
		upd.Annotations = map[string]string{}
	}
	upd.Annotations[volumehelpers.AnnSelectedNode] = nodeName
	if class := s.classes[volumehelpers.GetPersistentVolumeClaimClass(claim)]; class != nil && upd.Annotations[volumehelpers.AnnStorageProvisioner] == "" {
		upd.Annotations[volumehelpers.AnnStorageProvisioner] = class.Provisioner
		upd.Annotations[volumehelpers.AnnBetaStorageProvisioner] = class.Provisioner
	}
	if _, err := pl.client.CoreV1().PersistentVolumeClaims(c.Namespace).Update(ctx, upd, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("select node %s for persistentvolumeclaim %s/%s: %w", nodeName, c.Namespace, c.Name, err)
	}
	s.mu.Lock()
	s.annotated = append(s.annotated, c)
	s.mu.Unlock()
	return nil
}

// allBound reports whether every claim of the decisions is bound to a volume reachable
// from the node; it fails when binding can no longer happen (the provisioner gave up, the
// claimRef was taken away). seen remembers the claims and volumes whose decision the
// informer has shown already: only then does its absence mean that it was undone, not
// that the informer lags behind PreBind's write.
func (pl *VolumeBinding) allBound(d *podVolumes, nodeName string, seen sets.Set[string]) (bool, error) {
	check := func(c *corev1.PersistentVolumeClaim) (*corev1.PersistentVolumeClaim, bool, error) {
		claim, err := pl.l.Claims.PersistentVolumeClaims(c.Namespace).Get(c.Name)
		if err != nil {
			return nil, false, fmt.Errorf("persistentvolumeclaim %s/%s: %w", c.Namespace, c.Name, err)
		}
		if claim.UID != c.UID {
			return nil, false, fmt.Errorf("persistentvolumeclaim %s/%s was replaced", c.Namespace, c.Name)
		}
		if claim.Spec.VolumeName == "" || (claim.Status.Phase != corev1.ClaimBound && !metav1.HasAnnotation(claim.ObjectMeta, volumehelpers.AnnBindCompleted)) {
			return claim, false, nil
		}
		pv, err := pl.l.Volumes.Get(claim.Spec.VolumeName)
		if apierrors.IsNotFound(err) {
			return claim, false, nil // the informer has not seen it yet
		}
		if err != nil {
			return nil, false, err
		}
		if volumehelpers.CheckNodeAffinity(pv, d.nodeLabels) != nil {
			return nil, false, fmt.Errorf("pv %q node affinity doesn't match node %q", pv.Name, nodeName)
		}
		return claim, true, nil
	}
	done := true
	for _, b := range d.static {
		claim, ok, err := check(b.claim)
		if err != nil {
			return false, err
		}
		if !ok {
			pv, err := pl.l.Volumes.Get(b.pv.Name)
			if err == nil && claim.Spec.VolumeName == "" {
				key := "pv/" + pv.Name
				if pv.Spec.ClaimRef != nil && pv.Spec.ClaimRef.UID == claim.UID {
					seen.Insert(key)
				} else if seen.Has(key) {
					return false, fmt.Errorf("pv %q claimRef removed or given to another claim", pv.Name)
				}
			}
			done = false
		}
	}
	for _, c := range d.provision {
		claim, ok, err := check(c)
		if err != nil {
			return false, err
		}
		if !ok {
			key := "pvc/" + claim.Namespace + "/" + claim.Name
			if claim.Annotations[volumehelpers.AnnSelectedNode] == nodeName {
				seen.Insert(key)
			} else if claim.Spec.VolumeName == "" && seen.Has(key) {
				return false, fmt.Errorf("provisioning failed for PVC %q", claim.Name)
			}
			done = false
		}
	}
	return done, nil
}

// Unreserve lets the chosen static volumes go, and undoes what PreBind wrote for claims
// that are still unbound: a claimRef it set, a selected node it set.
func (pl *VolumeBinding) Unreserve(ctx context.Context, state *framework.CycleState, _ *corev1.Pod, nodeName string) {
	s, err := readVolumeState(state)
	if err != nil {
		return
	}
	s.mu.Lock()
	d, boundPVs, annotated := s.chosen, s.boundPVs, s.annotated
	s.chosen, s.boundPVs, s.annotated = nil, nil, nil
	s.mu.Unlock()
	pl.release(d)
	// The undo must happen even when the scheduler is stopping.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	for _, b := range boundPVs {
		claim, err := pl.client.CoreV1().PersistentVolumeClaims(b.claim.Namespace).Get(ctx, b.claim.Name, metav1.GetOptions{})
		if err == nil && claim.Spec.VolumeName != "" {
			continue // bound meanwhile: the binding stands
		}
		pv, err := pl.client.CoreV1().PersistentVolumes().Get(ctx, b.pv.Name, metav1.GetOptions{})
		if err != nil || pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.UID != b.claim.UID || pv.Status.Phase == corev1.VolumeBound {
			continue
		}
		upd := pv.DeepCopy()
		upd.Spec.ClaimRef = nil
		delete(upd.Annotations, volumehelpers.AnnBoundByController)
		// A failure leaves the claimRef; the PV controller then completes that binding.
		_, _ = pl.client.CoreV1().PersistentVolumes().Update(ctx, upd, metav1.UpdateOptions{})
	}
	for _, c := range annotated {
		claim, err := pl.client.CoreV1().PersistentVolumeClaims(c.Namespace).Get(ctx, c.Name, metav1.GetOptions{})
		if err != nil || claim.UID != c.UID || claim.Spec.VolumeName != "" || claim.Annotations[volumehelpers.AnnSelectedNode] != nodeName {
			continue
		}
		upd := claim.DeepCopy()
		delete(upd.Annotations, volumehelpers.AnnSelectedNode)
		// A failure leaves the selected node; the pod's next cycle overwrites it.
		_, _ = pl.client.CoreV1().PersistentVolumeClaims(c.Namespace).Update(ctx, upd, metav1.UpdateOptions{})
	}
}
