package persistentvolume

import (
	"berth.dev/berth/core/internal/storageclass"

	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	storagehelpers "k8s.io/component-helpers/storage/volume"
)

const driver = "local.csi.berth.dev"

// TestBinding table-tests which volume a claim gets (or none), with the fake clientset.
func TestBinding(t *testing.T) {
	mysql := func(pv *corev1.PersistentVolume) { pv.Labels = map[string]string{"vol": "mysql"} }
	selectMySQL := func(pvc *corev1.PersistentVolumeClaim) {
		pvc.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"vol": "mysql"}}
	}
	rwoRox := func(pv *corev1.PersistentVolume) {
		pv.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce, corev1.ReadOnlyMany}
	}
	preBound := func(name string) func(*corev1.PersistentVolume) {
		return func(pv *corev1.PersistentVolume) {
			pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "default", Name: name}
		}
	}
	block := func(pvc *corev1.PersistentVolumeClaim) {
		m := corev1.PersistentVolumeBlock
		pvc.Spec.VolumeMode = &m
	}
	tests := []struct {
		name    string
		objs    []runtime.Object
		claim   *corev1.PersistentVolumeClaim
		want    string // the volume the claim gets, "" for none
		event   string // reason of an event the claim must get
		message string // ... and part of its message
	}{
		{
			name:  "seed: selector vol=mysql",
			objs:  []runtime.Object{volume("other", "20Gi"), volume("app-pv", "20Gi", mysql)},
			claim: claim("app-pvc", "1Gi", selectMySQL),
			want:  "app-pv",
		},
		{
			name:  "smallest volume that fits",
			objs:  []runtime.Object{volume("v5", "5Gi"), volume("v10", "10Gi"), volume("v50", "50Gi")},
			claim: claim("c", "8Gi"),
			want:  "v10",
		},
		{
			name:  "fewest access modes first, however big",
			objs:  []runtime.Object{volume("rwo-rox", "10Gi", rwoRox), volume("rwo", "100Gi")},
			claim: claim("c", "1Gi"),
			want:  "rwo",
		},
		{
			name: "access modes must include the claim's",
			objs: []runtime.Object{volume("rwo", "10Gi")},
			claim: claim("c", "1Gi", func(pvc *corev1.PersistentVolumeClaim) {
				pvc.Spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteMany}
			}),
			event: reasonFailedBinding, message: "no persistent volumes available for this claim and no storage class is set",
		},
		{
			name:  "volume mode must match",
			objs:  []runtime.Object{volume("fs", "10Gi")},
			claim: claim("c", "1Gi", block),
		},
		{
			name:  "class must match; no class and no volume says so",
			objs:  []runtime.Object{volume("fast", "10Gi", pvClass("fast"))},
			claim: claim("c", "1Gi"),
			event: reasonFailedBinding, message: "no persistent volumes available for this claim and no storage class is set",
		},
		{
			name:  "too big: 10Ti",
			objs:  []runtime.Object{volume("app-pv", "20Gi", mysql)},
			claim: claim("big", "10Ti"),
			event: reasonFailedBinding, message: "no persistent volumes available for this claim and no storage class is set",
		},
		{
			name:  "a volume pre-bound to another claim is not taken",
			objs:  []runtime.Object{volume("reserved", "10Gi", preBound("someone-else"))},
			claim: claim("c", "1Gi"),
		},
		{
			name:  "a volume pre-bound to this claim wins over a smaller one",
			objs:  []runtime.Object{volume("small", "1Gi"), volume("reserved", "10Gi", preBound("c"))},
			claim: claim("c", "1Gi"),
			want:  "reserved",
		},
		{
			name:  "spec.volumeName binds only that volume",
			objs:  []runtime.Object{volume("small", "1Gi"), volume("named", "10Gi")},
			claim: claim("c", "1Gi", func(pvc *corev1.PersistentVolumeClaim) { pvc.Spec.VolumeName = "named" }),
			want:  "named",
		},
		{
			name:  "spec.volumeName of a volume too small",
			objs:  []runtime.Object{volume("named", "1Gi")},
			claim: claim("c", "5Gi", func(pvc *corev1.PersistentVolumeClaim) { pvc.Spec.VolumeName = "named" }),
			event: reasonVolumeMismatch, message: `Cannot bind to requested volume "named": requested PV is too small`,
		},
		{
			name:  "class not found",
			claim: claim("c", "1Gi", withClass("gold")),
			event: reasonProvisioningFailed, message: `storageclass.storage.k8s.io "gold" not found`,
		},
		{
			name:  "no-provisioner class without a volume",
			objs:  []runtime.Object{class("manual", storagehelpers.NotSupportedProvisioner, storagev1.VolumeBindingImmediate)},
			claim: claim("c", "1Gi", withClass("manual")),
			event: reasonProvisioningFailed, message: "no volume plugin matched name: kubernetes.io/no-provisioner",
		},
		{
			name:  "provisioner that is no known CSI driver",
			objs:  []runtime.Object{class("nfs", "example.com/nfs", storagev1.VolumeBindingImmediate)},
			claim: claim("c", "1Gi", withClass("nfs")),
			event: reasonProvisioningFailed, message: `provisioner "example.com/nfs" is not a CSI driver known to this cluster`,
		},
		{
			name:  "WaitForFirstConsumer without a node waits",
			objs:  []runtime.Object{class("wffc", storagehelpers.NotSupportedProvisioner, storagev1.VolumeBindingWaitForFirstConsumer), volume("local", "10Gi", pvClass("wffc"))},
			claim: claim("c", "1Gi", withClass("wffc")),
			event: reasonWaitForFirstConsumer, message: "waiting for first consumer to be created before binding",
		},
		{
			name: "WaitForFirstConsumer binds a volume the selected node can reach",
			objs: []runtime.Object{
				class("wffc", storagehelpers.NotSupportedProvisioner, storagev1.VolumeBindingWaitForFirstConsumer),
				node("a", map[string]string{corev1.LabelHostname: "a"}), node("b", map[string]string{corev1.LabelHostname: "b"}),
				volume("on-a", "10Gi", pvClass("wffc"), pvOnNode("a")), volume("on-b", "10Gi", pvClass("wffc"), pvOnNode("b")),
			},
			claim: claim("c", "1Gi", withClass("wffc"), annotate(storagehelpers.AnnSelectedNode, "b")),
			want:  "on-b",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, append(tc.objs, tc.claim)...)
			got := h.pvc(tc.claim.Name)
			bound := ""
			if got.Status.Phase == corev1.ClaimBound {
				bound = got.Spec.VolumeName
			}
			if bound != tc.want {
				t.Fatalf("claim bound to %q, want %q (events %q)", got.Spec.VolumeName, tc.want, h.eventsSeen())
			}
			if tc.want == "" {
				if got.Status.Phase != corev1.ClaimPending {
					t.Errorf("unbound claim phase %q, want Pending", got.Status.Phase)
				}
				if tc.event != "" {
					h.expectEvent(tc.event, tc.message)
				}
				return
			}
			pv := h.pv(tc.want)
			checkBound(t, pv, got)
		})
	}
}

// checkBound checks both halves of a binding as Kubernetes leaves them.
func checkBound(t *testing.T, pv *corev1.PersistentVolume, pvc *corev1.PersistentVolumeClaim) {
	t.Helper()
	if pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.Name != pvc.Name || pv.Spec.ClaimRef.UID != pvc.UID {
		t.Errorf("volume claimRef %+v, want the claim %s with its UID", pv.Spec.ClaimRef, pvc.Name)
	}
	if pv.Status.Phase != corev1.VolumeBound || pvc.Status.Phase != corev1.ClaimBound {
		t.Errorf("phases: volume %q, claim %q; want Bound, Bound", pv.Status.Phase, pvc.Status.Phase)
	}
	if pvc.Annotations[storagehelpers.AnnBindCompleted] != "yes" {
		t.Errorf("claim annotations %v: want %s", pvc.Annotations, storagehelpers.AnnBindCompleted)
	}
	want := pv.Spec.Capacity[corev1.ResourceStorage]
	if got := pvc.Status.Capacity[corev1.ResourceStorage]; got.Cmp(want) != 0 {
		t.Errorf("claim capacity %s, want the volume's %s", got.String(), want.String())
	}
	if len(pvc.Status.AccessModes) != len(pv.Spec.AccessModes) {
		t.Errorf("claim access modes %v, want the volume's %v", pvc.Status.AccessModes, pv.Spec.AccessModes)
	}
}

func TestBoundByControllerAnnotations(t *testing.T) {
	h := newHarness(t, volume("pv", "1Gi"), claim("c", "1Gi"))
	pv, pvc := h.pv("pv"), h.pvc("c")
	if pv.Annotations[storagehelpers.AnnBoundByController] != "yes" || pvc.Annotations[storagehelpers.AnnBoundByController] != "yes" {
		t.Errorf("bound-by-controller: volume %v, claim %v; want yes on both", pv.Annotations, pvc.Annotations)
	}
	// A user's pre-binding is not the controller's.
	pre := volume("pre", "1Gi", func(pv *corev1.PersistentVolume) {
		pv.Spec.ClaimRef = &corev1.ObjectReference{Namespace: "default", Name: "d"}
	})
	h = newHarness(t, pre, claim("d", "1Gi", func(pvc *corev1.PersistentVolumeClaim) { pvc.Spec.VolumeName = "pre" }))
	pv, pvc = h.pv("pre"), h.pvc("d")
	checkBound(t, pv, pvc)
	if _, ok := pv.Annotations[storagehelpers.AnnBoundByController]; ok {
		t.Errorf("volume pre-bound by the user got %s", storagehelpers.AnnBoundByController)
	}
	if _, ok := pvc.Annotations[storagehelpers.AnnBoundByController]; ok {
		t.Errorf("claim naming its volume got %s", storagehelpers.AnnBoundByController)
	}
}

func TestDynamicProvisioning(t *testing.T) {
	local := class("local", driver, storagev1.VolumeBindingImmediate)
	driverObj := &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: driver}}
	provisioned := func(name, onNode string) *corev1.PersistentVolume {
		return volume(name, "1Gi", pvClass("other"), pvOnNode(onNode), func(pv *corev1.PersistentVolume) {
			pv.Annotations = map[string]string{storagehelpers.AnnDynamicallyProvisioned: driver}
		})
	}
	hostname := func(n string) map[string]string { return map[string]string{corev1.LabelHostname: n, "zone": "z-" + n} }

	t.Run("fewest volumes of the driver first", func(t *testing.T) {
		h := newHarness(t, local, driverObj, node("a", hostname("a")), node("b", hostname("b")), csiNode("a", driver), csiNode("b", driver),
			provisioned("old", "a"), claim("c", "1Gi", withClass("local")))
		got := h.pvc("c")
		if got.Annotations[storagehelpers.AnnStorageProvisioner] != driver || got.Annotations[storagehelpers.AnnBetaStorageProvisioner] != driver {
			t.Errorf("claim annotations %v: want both storage-provisioner keys = %s", got.Annotations, driver)
		}
		if n := got.Annotations[storagehelpers.AnnSelectedNode]; n != "b" {
			t.Errorf("selected node %q, want b (a already has a volume of the driver)", n)
		}
		if got.Status.Phase != corev1.ClaimPending {
			t.Errorf("claim phase %q, want Pending until the volume exists", got.Status.Phase)
		}
		h.expectEvent(reasonExternalProvisioning, "Waiting for a volume to be created either by the external provisioner '"+driver+"' or manually by the system administrator.")

		// The sidecar creates the volume pre-bound to the claim; the binder completes it.
		pv := volume("pvc-"+string(got.UID), "1Gi", pvClass("local"), pvOnNode("b"), func(pv *corev1.PersistentVolume) {
			pv.Annotations = map[string]string{storagehelpers.AnnDynamicallyProvisioned: driver}
			pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "default", Name: "c", UID: got.UID}
			pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete
		})
		h.create(pv)
		h.drain()
		checkBound(t, h.pv(pv.Name), h.pvc("c"))

		// Delete policy and a CSI provisioner: the sidecar's to delete, untouched here.
		if err := h.kube.CoreV1().PersistentVolumeClaims("default").Delete(h.ctx, "c", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		h.drain()
		if got := h.pv(pv.Name); got.Status.Phase != corev1.VolumeReleased {
			t.Errorf("provisioned volume after its claim went: phase %q, want Released (for the sidecar to delete)", got.Status.Phase)
		}
	})

	t.Run("a burst spreads over the nodes", func(t *testing.T) {
		objs := []runtime.Object{local, driverObj, node("a", hostname("a")), node("b", hostname("b")), csiNode("a", driver), csiNode("b", driver)}
		for _, n := range []string{"c1", "c2", "c3", "c4"} {
			objs = append(objs, claim(n, "1Gi", withClass("local")))
		}
		h := newHarness(t, objs...)
		count := map[string]int{}
		for _, n := range []string{"c1", "c2", "c3", "c4"} {
			count[h.pvc(n).Annotations[storagehelpers.AnnSelectedNode]]++
		}
		if count["a"] != 2 || count["b"] != 2 {
			t.Errorf("claims per node %v, want 2 and 2", count)
		}
	})

	t.Run("allowedTopologies", func(t *testing.T) {
		zoned := class("zoned", driver, storagev1.VolumeBindingImmediate, func(sc *storagev1.StorageClass) {
			sc.AllowedTopologies = []corev1.TopologySelectorTerm{{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{{Key: "zone", Values: []string{"z-b"}}}}}
		})
		h := newHarness(t, zoned, node("a", hostname("a")), node("b", hostname("b")), csiNode("a", driver), csiNode("b", driver),
			claim("c", "1Gi", withClass("zoned")))
		if n := h.pvc("c").Annotations[storagehelpers.AnnSelectedNode]; n != "b" {
			t.Errorf("selected node %q, want b (the only one in zone z-b)", n)
		}
	})

	t.Run("known driver, no node has it", func(t *testing.T) {
		h := newHarness(t, local, driverObj, node("a", hostname("a")), claim("c", "1Gi", withClass("local")))
		got := h.pvc("c")
		if _, ok := got.Annotations[storagehelpers.AnnStorageProvisioner]; ok {
			t.Errorf("claim handed to the provisioner although no node has the driver: %v", got.Annotations)
		}
		h.expectEvent(reasonProvisioningFailed, "no node has CSI driver "+driver)
	})

	t.Run("WaitForFirstConsumer: provisioned for the scheduler's node", func(t *testing.T) {
		wffc := class("wffc", driver, storagev1.VolumeBindingWaitForFirstConsumer)
		h := newHarness(t, wffc, driverObj, node("a", hostname("a")), csiNode("a", driver), claim("c", "1Gi", withClass("wffc")))
		if got := h.pvc("c"); got.Annotations[storagehelpers.AnnStorageProvisioner] != "" {
			t.Errorf("claim handed to the provisioner before a consumer: %v", got.Annotations)
		}
		h.expectEvent(reasonWaitForFirstConsumer, "waiting for first consumer to be created before binding")
		c := h.pvc("c")
		metav1.SetMetaDataAnnotation(&c.ObjectMeta, storagehelpers.AnnSelectedNode, "a")
		if _, err := h.kube.CoreV1().PersistentVolumeClaims("default").Update(h.ctx, c, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		h.drain()
		if got := h.pvc("c"); got.Annotations[storagehelpers.AnnStorageProvisioner] != driver || got.Annotations[storagehelpers.AnnSelectedNode] != "a" {
			t.Errorf("claim annotations %v: want the provisioner, node a kept", got.Annotations)
		}
	})
}

func TestRetroactiveDefaultClass(t *testing.T) {
	h := newHarness(t, claim("c", "1Gi"))
	if got := h.pvc("c"); got.Spec.StorageClassName != nil {
		t.Fatalf("class %q assigned with no default class", *got.Spec.StorageClassName)
	}
	older := class("older", driver, storagev1.VolumeBindingImmediate, func(sc *storagev1.StorageClass) {
		sc.Annotations = map[string]string{storageclass.IsDefaultAnnotation: "true"}
		sc.CreationTimestamp = metav1.Unix(1000, 0)
	})
	newer := class("newer", driver, storagev1.VolumeBindingImmediate, func(sc *storagev1.StorageClass) {
		sc.Annotations = map[string]string{storageclass.IsDefaultAnnotation: "true"}
		sc.CreationTimestamp = metav1.Unix(2000, 0)
	})
	h.create(older)
	h.create(newer)
	h.sync()
	if got := h.pvc("c"); got.Spec.StorageClassName == nil || *got.Spec.StorageClassName != "newer" {
		t.Errorf("class %v, want the newest default, newer", got.Spec.StorageClassName)
	}
	// An explicit "" means no class and stays so.
	h = newHarness(t, older, claim("none", "1Gi", withClass("")))
	if got := h.pvc("none"); got.Spec.StorageClassName == nil || *got.Spec.StorageClassName != "" {
		t.Errorf(`class %v, want "" kept`, got.Spec.StorageClassName)
	}
}

func TestReclaim(t *testing.T) {
	tests := []struct {
		name    string
		mod     func(*corev1.PersistentVolume)
		phase   corev1.PersistentVolumePhase
		event   string
		message string
	}{
		{name: "Retain", phase: corev1.VolumeReleased},
		{
			name: "Delete of a hostPath volume",
			mod: func(pv *corev1.PersistentVolume) {
				pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete
			},
			phase: corev1.VolumeFailed, event: reasonVolumeFailedDelete,
			message: `error getting deleter volume plugin for volume "pv": no deletable volume plugin matched`,
		},
		{
			name: "Recycle",
			mod: func(pv *corev1.PersistentVolume) {
				pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimRecycle
			},
			phase: corev1.VolumeFailed, event: reasonVolumeFailedRecycle, message: "Recycle reclaim policy is not supported by berth",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var mods []func(*corev1.PersistentVolume)
			if tc.mod != nil {
				mods = append(mods, tc.mod)
			}
			h := newHarness(t, volume("pv", "1Gi", mods...), claim("c", "1Gi"))
			checkBound(t, h.pv("pv"), h.pvc("c"))
			if err := h.kube.CoreV1().PersistentVolumeClaims("default").Delete(h.ctx, "c", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			h.drain()
			pv := h.pv("pv")
			if pv.Status.Phase != tc.phase {
				t.Errorf("volume phase %q, want %q", pv.Status.Phase, tc.phase)
			}
			if pv.Spec.ClaimRef == nil {
				t.Errorf("released volume lost its claimRef: it must not be offered to another claim")
			}
			if tc.event != "" {
				h.expectEvent(tc.event, tc.message)
			}
			// A new claim does not get the released volume.
			h.create(claim("again", "1Gi"))
			h.drain()
			if got := h.pvc("again"); got.Spec.VolumeName != "" {
				t.Errorf("a released volume was bound again to %s", got.Spec.VolumeName)
			}
		})
	}
}

func TestClaimLost(t *testing.T) {
	h := newHarness(t, volume("pv", "1Gi"), claim("c", "1Gi"))
	checkBound(t, h.pv("pv"), h.pvc("c"))
	if err := h.kube.CoreV1().PersistentVolumes().Delete(h.ctx, "pv", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.drain()
	if got := h.pvc("c"); got.Status.Phase != corev1.ClaimLost {
		t.Errorf("claim phase %q after its volume went, want Lost", got.Status.Phase)
	}
	h.expectEvent(reasonClaimLost, "Bound claim has lost its PersistentVolume. Data on the volume is lost!")
}

func TestProtection(t *testing.T) {
	deleting := metav1.Now()
	usedBy := func(name string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
			Spec: corev1.PodSpec{Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "c"},
			}}}},
			Status: corev1.PodStatus{Phase: phase},
		}
	}
	beingDeleted := func(pvc *corev1.PersistentVolumeClaim) {
		pvc.DeletionTimestamp = &deleting
		pvc.Finalizers = []string{PVCProtectionFinalizer}
	}
	t.Run("claim used by a running pod keeps its finalizer", func(t *testing.T) {
		h := newHarness(t, claim("c", "1Gi", beingDeleted), usedBy("db", corev1.PodRunning), usedBy("done", corev1.PodSucceeded))
		if got := h.pvc("c"); len(got.Finalizers) != 1 {
			t.Errorf("finalizers %v, want %s kept while pod db runs", got.Finalizers, PVCProtectionFinalizer)
		}
		if err := h.kube.CoreV1().Pods("default").Delete(h.ctx, "db", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		h.drain()
		if got := h.pvc("c"); len(got.Finalizers) != 0 {
			t.Errorf("finalizers %v after the last running pod went, want none", got.Finalizers)
		}
	})
	t.Run("unbound volume being deleted loses its finalizer", func(t *testing.T) {
		free := volume("free", "1Gi", func(pv *corev1.PersistentVolume) {
			pv.DeletionTimestamp = &deleting
			pv.Finalizers = []string{PVProtectionFinalizer}
		})
		h := newHarness(t, free, claim("c", "1Gi", func(pvc *corev1.PersistentVolumeClaim) { pvc.Spec.VolumeName = "free" }))
		if got := h.pv("free"); len(got.Finalizers) != 0 {
			t.Errorf("unbound volume being deleted keeps finalizers %v", got.Finalizers)
		}
		// A claim that names a volume being deleted is not bound to it.
		if got := h.pvc("c"); got.Status.Phase != corev1.ClaimPending {
			t.Errorf("claim naming a volume being deleted: phase %q, want Pending", got.Status.Phase)
		}
		h.expectEvent(reasonVolumeMismatch, `the volume is marked for deletion "free"`)
	})
}

func TestBoundVolumeKeepsProtection(t *testing.T) {
	pv := volume("pv", "1Gi", func(pv *corev1.PersistentVolume) { pv.Finalizers = []string{PVProtectionFinalizer} })
	h := newHarness(t, pv, claim("c", "1Gi"))
	checkBound(t, h.pv("pv"), h.pvc("c"))
	got := h.pv("pv")
	now := metav1.Now()
	got.DeletionTimestamp = &now
	if _, err := h.kube.CoreV1().PersistentVolumes().Update(h.ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.drain()
	if got := h.pv("pv"); len(got.Finalizers) != 1 {
		t.Errorf("bound volume being deleted lost its finalizer: %v", got.Finalizers)
	}
	if err := h.kube.CoreV1().PersistentVolumeClaims("default").Delete(h.ctx, "c", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.drain()
	if got := h.pv("pv"); len(got.Finalizers) != 0 || got.Status.Phase != corev1.VolumeReleased {
		t.Errorf("released volume being deleted: finalizers %v, phase %q; want none, Released", got.Finalizers, got.Status.Phase)
	}
}
