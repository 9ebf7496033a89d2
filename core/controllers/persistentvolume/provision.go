package persistentvolume

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	storagehelpers "k8s.io/component-helpers/storage/volume"
)

// provision hands a claim that no volume fits to its class's provisioner: it names the CSI
// driver in the storage-provisioner annotations (both keys, as Kubernetes) and, for an
// Immediate class, the node the driver's sidecar should create the volume for in
// volume.kubernetes.io/selected-node. The sidecar then creates a volume pre-bound to the
// claim, and the binder completes the binding. classErr is classOf's error (a missing
// class). It returns the claim as now stored.
func (c *Controller) provision(ctx context.Context, claim *corev1.PersistentVolumeClaim, class *storagev1.StorageClass, classErr error) (*corev1.PersistentVolumeClaim, error) {
	if classErr != nil {
		// The lister's NotFound reads as Kubernetes': storageclass.storage.k8s.io "x" not found.
		c.recorder.Event(claim, corev1.EventTypeWarning, reasonProvisioningFailed, classErr.Error())
		return claim, nil
	}
	driver := class.Provisioner
	if strings.HasPrefix(driver, "kubernetes.io/") {
		// kubernetes.io/no-provisioner (static local volumes) and the in-tree provisioners,
		// which berth does not have: Kubernetes' words for a missing in-tree plugin.
		c.recorder.Event(claim, corev1.EventTypeWarning, reasonProvisioningFailed, fmt.Sprintf("no volume plugin matched name: %s", driver))
		return claim, nil
	}
	if !c.knownDriver(driver) {
		c.recorder.Event(claim, corev1.EventTypeWarning, reasonProvisioningFailed,
			fmt.Sprintf("storageclass %q: provisioner %q is not a CSI driver known to this cluster (no CSIDriver object of that name and no node's CSINode lists it); waiting for the driver to register", class.Name, driver))
		return claim, nil
	}
	clone := claim.DeepCopy()
	delayBinding := class.VolumeBindingMode != nil && *class.VolumeBindingMode == storagev1.VolumeBindingWaitForFirstConsumer
	if !delayBinding {
		selected := claim.Annotations[storagehelpers.AnnSelectedNode]
		if _, err := c.nodes.Get(selected); selected == "" || err != nil {
			// None chosen yet, or the chosen node is gone: choose (again).
			node, why := c.pickNode(driver, class)
			if node == "" {
				c.recorder.Event(claim, corev1.EventTypeWarning, reasonProvisioningFailed, why)
				return claim, nil
			}
			metav1.SetMetaDataAnnotation(&clone.ObjectMeta, storagehelpers.AnnSelectedNode, node)
		}
	}
	metav1.SetMetaDataAnnotation(&clone.ObjectMeta, storagehelpers.AnnStorageProvisioner, driver)
	metav1.SetMetaDataAnnotation(&clone.ObjectMeta, storagehelpers.AnnBetaStorageProvisioner, driver)
	if !annotationsEqual(claim.Annotations, clone.Annotations) {
		updated, err := c.kube.CoreV1().PersistentVolumeClaims(claim.Namespace).Update(ctx, clone, metav1.UpdateOptions{})
		if err != nil {
			c.recorder.Event(claim, corev1.EventTypeWarning, reasonProvisioningFailed, fmt.Sprintf("Error saving claim: %v", err))
			return nil, fmt.Errorf("hand claim %s/%s to provisioner %s: %w", claim.Namespace, claim.Name, driver, err)
		}
		if node := updated.Annotations[storagehelpers.AnnSelectedNode]; node != claim.Annotations[storagehelpers.AnnSelectedNode] && !delayBinding {
			c.picks.add(updated.UID, driver, node)
		}
		claim = updated
	}
	if c.waiting.due(claim.UID, time.Now(), c.opts.ResyncPeriod) {
		c.recorder.Event(claim, corev1.EventTypeNormal, reasonExternalProvisioning, fmt.Sprintf("Waiting for a volume to be created either by the external provisioner '%s' "+
			"or manually by the system administrator. If volume creation is delayed, please verify that "+
			"the provisioner is running and correctly registered.", driver))
	}
	return claim, nil
}

// waitingSaid remembers when each claim was last told it waits for its provisioner, so
// that the event repeats once per resync period, as on Kubernetes, rather than on every
// update of the claim (a claim changes several times while it is provisioned, and each
// repeated event is one more write for the API server during a burst of claims).
type waitingSaid struct {
	mu   sync.Mutex
	last map[types.UID]time.Time
}

// due tells whether the claim should be told again now, and if so notes that it was.
func (w *waitingSaid) due(uid types.UID, now time.Time, every time.Duration) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if t, ok := w.last[uid]; ok && now.Sub(t) < every {
		return false
	}
	if w.last == nil {
		w.last = map[types.UID]time.Time{}
	}
	if len(w.last) > 1000 {
		// Claims bound or deleted long ago: forget them.
		for k, t := range w.last {
			if now.Sub(t) >= every {
				delete(w.last, k)
			}
		}
	}
	w.last[uid] = now
	return true
}

func annotationsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// pickNode chooses the node an Immediate class's volume is created for: one whose CSINode
// lists the driver and whose labels satisfy the class's allowedTopologies; Ready nodes
// first, then those with the fewest volumes of the driver (existing ones whose node affinity
// admits the node, and claims sent there that have no volume yet), then by name. When none
// qualifies it returns "" and the reason, for an event.
func (c *Controller) pickNode(driver string, class *storagev1.StorageClass) (string, string) {
	csiNodes, err := c.csiNodes.List(labels.Everything())
	if err != nil {
		return "", fmt.Sprintf("list CSINodes: %v", err)
	}
	type candidate struct {
		name    string
		ready   bool
		volumes int
	}
	var cands []candidate
	withDriver := 0
	for _, cn := range csiNodes {
		if !csiNodeHasDriver(cn, driver) {
			continue
		}
		node, err := c.nodes.Get(cn.Name)
		if err != nil || node.DeletionTimestamp != nil {
			continue
		}
		withDriver++
		if !matchTopology(class.AllowedTopologies, node.Labels) {
			continue
		}
		cands = append(cands, candidate{name: node.Name, ready: nodeReady(node)})
	}
	if len(cands) == 0 {
		if withDriver > 0 {
			return "", fmt.Sprintf("no node has CSI driver %s and matches the allowedTopologies of storage class %q", driver, class.Name)
		}
		return "", fmt.Sprintf("no node has CSI driver %s", driver)
	}
	names := make([]string, len(cands))
	for i := range cands {
		names[i] = cands[i].name
	}
	load := c.driverLoad(driver, names)
	for i := range cands {
		cands[i].volumes = load[cands[i].name]
	}
	sort.Slice(cands, func(i, j int) bool {
		a, b := cands[i], cands[j]
		if a.ready != b.ready {
			return a.ready
		}
		if a.volumes != b.volumes {
			return a.volumes < b.volumes
		}
		return a.name < b.name
	})
	return cands[0].name, ""
}

// driverLoad counts, per node, the driver's volumes there: volumes it provisioned whose node
// affinity admits the node, claims handed to it for that node that have no volume yet, and
// this controller's own recent choices that the informer has not shown yet.
func (c *Controller) driverLoad(driver string, nodes []string) map[string]int {
	load := map[string]int{}
	nodeLabels := map[string]map[string]string{}
	for _, n := range nodes {
		if node, err := c.nodes.Get(n); err == nil {
			nodeLabels[n] = node.Labels
		}
	}
	pvs, _ := c.volumes.List(labels.Everything())
	for _, pv := range pvs {
		if pv.Annotations[storagehelpers.AnnDynamicallyProvisioned] != driver && (pv.Spec.CSI == nil || pv.Spec.CSI.Driver != driver) {
			continue
		}
		for n, l := range nodeLabels {
			if storagehelpers.CheckNodeAffinity(pv, l) == nil {
				load[n]++
			}
		}
	}
	seen := map[types.UID]bool{}
	pvcs, _ := c.claims.List(labels.Everything())
	for _, pvc := range pvcs {
		node := pvc.Annotations[storagehelpers.AnnSelectedNode]
		if node == "" {
			continue
		}
		seen[pvc.UID] = true
		if pvc.Spec.VolumeName == "" && pvc.Annotations[storagehelpers.AnnStorageProvisioner] == driver {
			load[node]++
		}
	}
	for node, n := range c.picks.pending(driver, seen) {
		load[node] += n
	}
	return load
}

// matchTopology reports whether a node's labels satisfy a class's allowedTopologies: no
// terms, or one term whose every expression the labels meet.
func matchTopology(terms []corev1.TopologySelectorTerm, nodeLabels map[string]string) bool {
	if len(terms) == 0 {
		return true
	}
	for _, term := range terms {
		ok := true
		for _, e := range term.MatchLabelExpressions {
			v, has := nodeLabels[e.Key]
			if !has || !contains(e.Values, v) {
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

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func nodeReady(n *corev1.Node) bool {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// recentPicks remembers the nodes this controller chose for claims until the claims'
// informer shows them, so that a burst of claims spreads over the nodes instead of all
// going to the node that looked emptiest before the burst.
type recentPicks struct {
	mu    sync.Mutex
	picks map[types.UID]pick
}

type pick struct {
	driver, node string
	at           time.Time
}

// pickMemory is how long a choice is remembered at most; the informer shows it long before.
const pickMemory = time.Minute

func (r *recentPicks) add(uid types.UID, driver, node string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.picks == nil {
		r.picks = map[types.UID]pick{}
	}
	r.picks[uid] = pick{driver: driver, node: node, at: time.Now()}
}

// pending returns, per node, the driver's choices not among seen (the claims the informer
// already shows there), forgetting what is seen or old.
func (r *recentPicks) pending(driver string, seen map[types.UID]bool) map[string]int {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for uid, p := range r.picks {
		if seen[uid] || time.Since(p.at) > pickMemory {
			delete(r.picks, uid)
			continue
		}
		if p.driver == driver {
			out[p.node]++
		}
	}
	return out
}
