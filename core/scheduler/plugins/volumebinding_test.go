package plugins

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	volumehelpers "k8s.io/component-helpers/storage/volume"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/scheduler/framework"
)

// The tests run VolumeBinding on listers of fake informers over a fake clientset. The fake
// neither validates objects nor runs the PV controller: the tests play the PV controller
// and the provisioner themselves where PreBind waits for them.

const testDriver = "csi.example.com"

func class(name string, wffc bool, provisioner string, topo ...corev1.TopologySelectorTerm) *storagev1.StorageClass {
	mode := storagev1.VolumeBindingImmediate
	if wffc {
		mode = storagev1.VolumeBindingWaitForFirstConsumer
	}
	return &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: provisioner, VolumeBindingMode: &mode, AllowedTopologies: topo}
}

func claim(name, className, volumeName string) *corev1.PersistentVolumeClaim {
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("uid-" + name)},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: ptr.To(className),
			VolumeName:       volumeName,
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}
	if volumeName != "" {
		c.Status.Phase = corev1.ClaimBound
		c.Annotations = map[string]string{volumehelpers.AnnBindCompleted: "yes"}
	} else {
		c.Status.Phase = corev1.ClaimPending
	}
	return c
}

// volume is a PV of the class, Available (or Bound to claimRef), reachable from the nodes
// named (from every node when none are).
func volume(name, className, size string, claimRef *corev1.PersistentVolumeClaim, nodes ...string) *corev1.PersistentVolume {
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			StorageClassName:       className,
			Capacity:               corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: testDriver, VolumeHandle: name}},
		},
		Status: corev1.PersistentVolumeStatus{Phase: corev1.VolumeAvailable},
	}
	if claimRef != nil {
		pv.Spec.ClaimRef = &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: claimRef.Namespace, Name: claimRef.Name, UID: claimRef.UID}
		pv.Status.Phase = corev1.VolumeBound
	}
	if len(nodes) > 0 {
		pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: nodes}},
		}}}}
	}
	return pv
}

func csiNode(name string, drivers ...string) *storagev1.CSINode {
	cn := &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, d := range drivers {
		cn.Spec.Drivers = append(cn.Spec.Drivers, storagev1.CSINodeDriver{Name: d, NodeID: name})
	}
	return cn
}

func hostNode(name string, labels ...string) *framework.NodeInfo {
	return nodeInfo(newNode(name, func(n *corev1.Node) {
		n.Labels[corev1.LabelHostname] = name
		for i := 0; i+1 < len(labels); i += 2 {
			n.Labels[labels[i]] = labels[i+1]
		}
	}))
}

func withClaims(names ...string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		for _, n := range names {
			p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: "v-" + n,
				VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: n}}})
		}
	}
}

func withEphemeral(volName string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.Volumes = append(p.Spec.Volumes, corev1.Volume{Name: volName, VolumeSource: corev1.VolumeSource{Ephemeral: &corev1.EphemeralVolumeSource{}}})
	}
}

// newVolumeBinding returns the plugin on synced fake informers holding objs, and the
// fake clientset.
func newVolumeBinding(t *testing.T, objs ...runtime.Object) (*VolumeBinding, *fake.Clientset) {
	t.Helper()
	kube := fake.NewClientset(objs...)
	factory := informers.NewSharedInformerFactory(kube, 0)
	core, storage := factory.Core().V1(), factory.Storage().V1()
	l := VolumeListers{
		Claims: core.PersistentVolumeClaims().Lister(), Volumes: core.PersistentVolumes().Lister(),
		Classes: storage.StorageClasses().Lister(), CSINodes: storage.CSINodes().Lister(), CSIDrivers: storage.CSIDrivers().Lister(),
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); factory.Shutdown() })
	factory.Start(ctx.Done())
	for typ, ok := range factory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			t.Fatalf("informer of %v did not sync", typ)
		}
	}
	pl := NewVolumeBinding(kube, l)
	pl.PollInterval = 10 * time.Millisecond
	pl.BindTimeout = 10 * time.Second
	return pl, kube
}

func TestVolumeBindingFilter(t *testing.T) {
	ownedBy := func(c *corev1.PersistentVolumeClaim, pod *corev1.Pod) *corev1.PersistentVolumeClaim {
		c.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID, Controller: ptr.To(true)}}
		return c
	}
	deleting := claim("gone", "wffc", "")
	deleting.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	boundB := claim("bound-b", "wffc", "pv-b")
	ephPod := newPod("eph", withEphemeral("scratch"))
	base := []runtime.Object{
		class("wffc", true, testDriver),
		class("imm", false, testDriver),
		class("zoned", true, testDriver, corev1.TopologySelectorTerm{MatchLabelExpressions: []corev1.TopologySelectorLabelRequirement{{Key: "zone", Values: []string{"z1"}}}}),
		class("static-only", true, volumehelpers.NotSupportedProvisioner),
		class("external", true, "example.com/nfs"),
		csiNode("a", testDriver), csiNode("b"),
		boundB, volume("pv-b", "wffc", "1Gi", boundB, "b"),
		claim("lost", "wffc", "pv-missing"),
		claim("unbound", "wffc", ""), claim("imm", "imm", ""), claim("noclass", "", ""),
		claim("zoned", "zoned", ""), claim("static", "static-only", ""), claim("ext", "external", ""),
		deleting,
		volume("pv-static-b", "static-only", "2Gi", nil, "b"),
		ownedBy(claim("eph-scratch", "wffc", ""), ephPod),
		claim("eph-other", "wffc", ""),
	}
	a, b, c := hostNode("a", "zone", "z1"), hostNode("b", "zone", "z2"), hostNode("c")
	for _, tc := range []struct {
		name string
		pod  *corev1.Pod
		// want is the status on each of a, b and c; pre, when set, the PreFilter rejection.
		pre  *framework.Status
		want [3]*framework.Status
	}{
		{name: "no claims: skipped", pod: newPod("p")},
		{name: "missing claim", pod: newPod("p", withClaims("nope")),
			pre: framework.NewStatus(framework.UnschedulableAndUnresolvable, `persistentvolumeclaim "nope" not found`)},
		{name: "claim being deleted", pod: newPod("p", withClaims("gone")),
			pre: framework.NewStatus(framework.UnschedulableAndUnresolvable, `persistentvolumeclaim "gone" is being deleted`)},
		{name: "unbound immediate claim", pod: newPod("p", withClaims("unbound", "imm")),
			pre: framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonUnboundImmediate)},
		{name: "unbound claim without a class is immediate", pod: newPod("p", withClaims("noclass")),
			pre: framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonUnboundImmediate)},
		{name: "bound claim: the volume's node only", pod: newPod("p", withClaims("bound-b")),
			want: [3]*framework.Status{framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonNodeConflict), nil,
				framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonNodeConflict)}},
		{name: "bound to a missing volume", pod: newPod("p", withClaims("lost")),
			want: [3]*framework.Status{framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonPVNotExist),
				framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonPVNotExist),
				framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonPVNotExist)}},
		{name: "provisioning where the CSINode lists the driver", pod: newPod("p", withClaims("unbound")),
			want: [3]*framework.Status{nil, framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonBindConflict),
				framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonBindConflict)}},
		{name: "bound and unbound together", pod: newPod("p", withClaims("bound-b", "unbound")),
			want: [3]*framework.Status{framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonNodeConflict),
				framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonBindConflict),
				framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonNodeConflict, ErrReasonBindConflict)}},
		{name: "allowedTopologies", pod: newPod("p", withClaims("zoned")),
			want: [3]*framework.Status{nil, framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonBindConflict),
				framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonBindConflict)}},
		{name: "static volume only where it is reachable", pod: newPod("p", withClaims("static")),
			want: [3]*framework.Status{framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonBindConflict), nil,
				framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonBindConflict)}},
		{name: "a provisioner that is not CSI provisions anywhere", pod: newPod("p", withClaims("ext"))},
		{name: "generic ephemeral volume", pod: ephPod,
			want: [3]*framework.Status{nil, framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonBindConflict),
				framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonBindConflict)}},
		{name: "generic ephemeral volume not created yet", pod: newPod("eph2", withEphemeral("scratch")),
			pre: framework.NewStatus(framework.UnschedulableAndUnresolvable, `persistentvolumeclaim "eph2-scratch" not found`)},
		{name: "generic ephemeral volume of another owner", pod: newPod("eph", withEphemeral("other")),
			pre: framework.NewStatus(framework.UnschedulableAndUnresolvable, "PVC ns/eph-other was not created for pod ns/eph (pod is not owner)")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pl, _ := newVolumeBinding(t, base...)
			state := framework.NewCycleState()
			_, s := pl.PreFilter(context.Background(), state, tc.pod)
			if tc.pre != nil {
				if !sameStatus(s, tc.pre) {
					t.Fatalf("PreFilter = %v, want %v", s, tc.pre)
				}
				return
			}
			if len(tc.pod.Spec.Volumes) == 0 {
				if !s.IsSkip() {
					t.Fatalf("PreFilter = %v, want Skip", s)
				}
				return
			}
			if !s.IsSuccess() {
				t.Fatalf("PreFilter = %v", s)
			}
			for i, n := range []*framework.NodeInfo{a, b, c} {
				if got := pl.Filter(context.Background(), state, tc.pod, n); !sameStatus(got, tc.want[i]) {
					t.Errorf("Filter(%s) = %v, want %v", n.Name(), got, tc.want[i])
				}
			}
		})
	}
}

// TestVolumeBindingReserveExcludes checks that a static volume reserved for one pod's
// claim is not offered to another claim until it is released.
func TestVolumeBindingReserveExcludes(t *testing.T) {
	pl, _ := newVolumeBinding(t, class("static-only", true, volumehelpers.NotSupportedProvisioner),
		claim("one", "static-only", ""), claim("two", "static-only", ""), volume("pv-1", "static-only", "1Gi", nil))
	n := hostNode("a")
	ctx := context.Background()
	first, second := newPod("first", withClaims("one")), newPod("second", withClaims("two"))
	s1 := framework.NewCycleState()
	if _, s := pl.PreFilter(ctx, s1, first); !s.IsSuccess() {
		t.Fatal(s)
	}
	if s := pl.Filter(ctx, s1, first, n); !s.IsSuccess() {
		t.Fatal(s)
	}
	if s := pl.Reserve(ctx, s1, first, "a"); !s.IsSuccess() {
		t.Fatal(s)
	}
	s2 := framework.NewCycleState()
	if _, s := pl.PreFilter(ctx, s2, second); !s.IsSuccess() {
		t.Fatal(s)
	}
	want := framework.NewStatus(framework.UnschedulableAndUnresolvable, ErrReasonBindConflict)
	if got := pl.Filter(ctx, s2, second, n); !sameStatus(got, want) {
		t.Errorf("Filter of the second pod while pv-1 is reserved = %v, want %v", got, want)
	}
	pl.Unreserve(ctx, s1, first, "a")
	if got := pl.Filter(ctx, s2, second, n); !got.IsSuccess() {
		t.Errorf("Filter of the second pod once pv-1 is released = %v, want success", got)
	}
}

// prepare runs PreFilter, Filter on the node and Reserve, as the scheduler does.
func prepare(t *testing.T, pl *VolumeBinding, pod *corev1.Pod, n *framework.NodeInfo) *framework.CycleState {
	t.Helper()
	ctx := context.Background()
	state := framework.NewCycleState()
	if _, s := pl.PreFilter(ctx, state, pod); !s.IsSuccess() {
		t.Fatalf("PreFilter: %v", s)
	}
	if s := pl.Filter(ctx, state, pod, n); !s.IsSuccess() {
		t.Fatalf("Filter: %v", s)
	}
	if s := pl.Reserve(ctx, state, pod, n.Name()); !s.IsSuccess() {
		t.Fatalf("Reserve: %v", s)
	}
	return state
}

func waitClaim(t *testing.T, kube *fake.Clientset, name string, cond func(*corev1.PersistentVolumeClaim) bool) *corev1.PersistentVolumeClaim {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := kube.CoreV1().PersistentVolumeClaims("ns").Get(context.Background(), name, metav1.GetOptions{})
		if err == nil && cond(c) {
			return c
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for claim %s", name)
	return nil
}

func TestVolumeBindingPreBindProvisions(t *testing.T) {
	ctx := context.Background()
	pl, kube := newVolumeBinding(t, class("wffc", true, testDriver), csiNode("a", testDriver), claim("data", "wffc", ""))
	pod := newPod("p", withClaims("data"))
	state := prepare(t, pl, pod, hostNode("a"))
	done := make(chan *framework.Status, 1)
	go func() { done <- pl.PreBind(ctx, state, pod, "a") }()

	// The provisioner: sees the selected node, makes the volume there, the PV controller binds.
	c := waitClaim(t, kube, "data", func(c *corev1.PersistentVolumeClaim) bool {
		return c.Annotations[volumehelpers.AnnSelectedNode] == "a"
	})
	if got := c.Annotations[volumehelpers.AnnStorageProvisioner]; got != testDriver {
		t.Errorf("storage-provisioner annotation = %q, want %q", got, testDriver)
	}
	pv := volume("pvc-"+string(c.UID), "wffc", "1Gi", c, "a")
	if _, err := kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-done:
		t.Fatalf("PreBind returned %v before the claim was bound", s)
	case <-time.After(100 * time.Millisecond):
	}
	c.Spec.VolumeName = pv.Name
	c.Status.Phase = corev1.ClaimBound
	c.Annotations[volumehelpers.AnnBindCompleted] = "yes"
	if _, err := kube.CoreV1().PersistentVolumeClaims("ns").Update(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if s := <-done; !s.IsSuccess() {
		t.Fatalf("PreBind = %v, want success once bound", s)
	}
}

func TestVolumeBindingPreBindProvisioningFails(t *testing.T) {
	ctx := context.Background()
	pl, kube := newVolumeBinding(t, class("wffc", true, testDriver), csiNode("a", testDriver), claim("data", "wffc", ""))
	pod := newPod("p", withClaims("data"))
	state := prepare(t, pl, pod, hostNode("a"))
	done := make(chan *framework.Status, 1)
	go func() { done <- pl.PreBind(ctx, state, pod, "a") }()
	c := waitClaim(t, kube, "data", func(c *corev1.PersistentVolumeClaim) bool {
		return c.Annotations[volumehelpers.AnnSelectedNode] == "a"
	})
	// Let PreBind see the annotation before the provisioner gives up and removes it.
	time.Sleep(100 * time.Millisecond)
	delete(c.Annotations, volumehelpers.AnnSelectedNode)
	if _, err := kube.CoreV1().PersistentVolumeClaims("ns").Update(ctx, c, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	s := <-done
	if s.Code() != framework.Error || !strings.Contains(s.Message(), `provisioning failed for PVC "data"`) {
		t.Fatalf("PreBind = %v, want an error saying provisioning failed", s)
	}
}

func TestVolumeBindingStaticBindAndUnreserve(t *testing.T) {
	ctx := context.Background()
	pl, kube := newVolumeBinding(t, class("static-only", true, volumehelpers.NotSupportedProvisioner),
		claim("data", "static-only", ""), volume("pv-1", "static-only", "1Gi", nil))
	pod := newPod("p", withClaims("data"))
	state := prepare(t, pl, pod, hostNode("a"))
	pl.BindTimeout = 200 * time.Millisecond
	// Nobody completes the binding: PreBind times out after setting the claimRef ...
	if s := pl.PreBind(ctx, state, pod, "a"); s.IsSuccess() {
		t.Fatal("PreBind succeeded without the claim being bound")
	}
	pv, err := kube.CoreV1().PersistentVolumes().Get(ctx, "pv-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.Name != "data" || pv.Annotations[volumehelpers.AnnBoundByController] != "yes" {
		t.Fatalf("PreBind left claimRef %+v and annotations %v, want the claim data, bound by controller", pv.Spec.ClaimRef, pv.Annotations)
	}
	// ... and Unreserve takes it back.
	pl.Unreserve(ctx, state, pod, "a")
	pv, err = kube.CoreV1().PersistentVolumes().Get(ctx, "pv-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pv.Spec.ClaimRef != nil {
		t.Errorf("after Unreserve the volume keeps claimRef %+v", pv.Spec.ClaimRef)
	}
}

func TestTopologyAdmits(t *testing.T) {
	term := func(kv ...string) corev1.TopologySelectorTerm {
		var t corev1.TopologySelectorTerm
		for i := 0; i+1 < len(kv); i += 2 {
			t.MatchLabelExpressions = append(t.MatchLabelExpressions, corev1.TopologySelectorLabelRequirement{Key: kv[i], Values: strings.Split(kv[i+1], ",")})
		}
		return t
	}
	labels := map[string]string{"zone": "z1", "rack": "r2"}
	for _, tc := range []struct {
		name  string
		terms []corev1.TopologySelectorTerm
		want  bool
	}{
		{"no terms", nil, true},
		{"one value matches", []corev1.TopologySelectorTerm{term("zone", "z0,z1")}, true},
		{"every expression of a term", []corev1.TopologySelectorTerm{term("zone", "z1", "rack", "r1")}, false},
		{"any term", []corev1.TopologySelectorTerm{term("zone", "z9"), term("rack", "r2")}, true},
		{"missing label", []corev1.TopologySelectorTerm{term("region", "x")}, false},
	} {
		if got := topologyAdmits(tc.terms, labels); got != tc.want {
			t.Errorf("%s: topologyAdmits = %v, want %v", tc.name, got, tc.want)
		}
	}
}
