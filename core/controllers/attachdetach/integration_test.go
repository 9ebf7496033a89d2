package attachdetach_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"
	volumehelpers "k8s.io/component-helpers/storage/volume"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/controllers"
	"berth.dev/berth/core/controllers/attachdetach"
	"berth.dev/berth/core/internal/testserver"
	"berth.dev/berth/core/scheduler"
)

const (
	ns = "vol"
	// provisioner is a CSI driver that only node a runs (by its CSINode); the test plays
	// its provisioner.
	provisioner = "fake.csi.berth.dev"
	// attacher is a driver whose CSIDriver says attachRequired.
	attacher = "attach.csi.berth.dev"
)

// TestSchedulingAndAttaching runs the real API server, the real scheduler and the whole
// controller manager, with nodes as API objects only (no agent): the test plays the
// agent's and the provisioner's parts and checks what VolumeBinding, the attach-detach
// and the ephemeral volume controllers do.
func TestSchedulingAndAttaching(t *testing.T) {
	srv := testserver.Start(t)
	kube := srv.Kube
	ctx, cancel := context.WithCancel(context.Background())
	schedDone, ctrlDone := make(chan error, 1), make(chan error, 1)
	go func() {
		schedDone <- scheduler.Run(ctx, srv.Config, scheduler.Options{Log: srv.Log.With("component", "scheduler")})
	}()
	// No agent renews the nodes' Leases: a long grace period keeps them Ready meanwhile.
	go func() {
		ctrlDone <- controllers.Run(ctx, srv.Config, controllers.Options{Log: srv.Log.With("component", "controllers"), NodeGracePeriod: time.Hour})
	}()
	t.Cleanup(func() {
		cancel()
		for _, ch := range []chan error{schedDone, ctrlDone} {
			if err := <-ch; err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("component stopped with: %v", err)
			}
		}
	})

	mustCreate(t, func() error {
		_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err
	})
	node(t, kube, "a")
	node(t, kube, "b")
	csiNode(t, kube, "a", provisioner)
	csiNode(t, kube, "b")
	storageClass(t, kube, "wffc", provisioner, storagev1.VolumeBindingWaitForFirstConsumer)
	storageClass(t, kube, "imm", "nobody.example.com", storagev1.VolumeBindingImmediate)
	mustCreate(t, func() error {
		_, err := kube.StorageV1().CSIDrivers().Create(ctx, &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: attacher},
			Spec: storagev1.CSIDriverSpec{AttachRequired: ptr.To(true)}}, metav1.CreateOptions{})
		return err
	})
	provDone := make(chan struct{})
	go func() { defer close(provDone); provision(ctx, kube) }()
	t.Cleanup(func() { cancel(); <-provDone })

	t.Run("WaitForFirstConsumer claim is provisioned on the node that runs the driver", func(t *testing.T) {
		createClaim(t, kube, "data", "wffc", "")
		createPod(t, kube, "wffc-pod", podClaim("data"))
		p := waitBound(t, kube, "wffc-pod")
		if p.Spec.NodeName != "a" {
			t.Errorf("pod bound to %q, want a (the only node whose CSINode lists %s)", p.Spec.NodeName, provisioner)
		}
		c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "data", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if got := c.Annotations[volumehelpers.AnnSelectedNode]; got != "a" {
			t.Errorf("claim's selected-node = %q, want a", got)
		}
	})

	t.Run("claim bound to a volume of node b", func(t *testing.T) {
		c := createClaim(t, kube, "pinned", "", "pv-b")
		pv := csiVolume("pv-b", provisioner, "handle-b", "", c, "b")
		mustCreate(t, func() error {
			_, err := kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
			return err
		})
		bind(t, kube, "pinned", "pv-b")
		createPod(t, kube, "pinned-pod", podClaim("pinned"))
		if p := waitBound(t, kube, "pinned-pod"); p.Spec.NodeName != "b" {
			t.Errorf("pod bound to %q, want b (its volume's node)", p.Spec.NodeName)
		}
	})

	t.Run("unbound immediate claim", func(t *testing.T) {
		createClaim(t, kube, "waiting", "imm", "")
		createPod(t, kube, "imm-pod", podClaim("waiting"))
		want := "0/2 nodes are available: pod has unbound immediate PersistentVolumeClaims."
		waitEvent(t, kube, "imm-pod", "FailedScheduling", want)
	})

	t.Run("VolumeAttachment follows the pod and the node's volumes in use", func(t *testing.T) {
		c := createClaim(t, kube, "att", "", "pv-att")
		pv := csiVolume("pv-att", attacher, "h1", "", c)
		mustCreate(t, func() error {
			_, err := kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{})
			return err
		})
		bind(t, kube, "att", "pv-att")
		// The pod must go to a node that already lists the volume as in use (as the agent
		// will once it mounts it), well before the pod is deleted: informers of different
		// resources keep no order between them.
		createPod(t, kube, "att-pod", func(p *corev1.Pod) {
			podClaim("att")(p)
			p.Spec.NodeSelector = map[string]string{corev1.LabelHostname: "b"}
		})
		nodeName := "b"
		setVolumesInUse(t, kube, nodeName, attachdetach.UniqueVolumeName(attacher, "h1"))
		waitBound(t, kube, "att-pod")
		name := attachdetach.AttachmentName(attacher, "h1", nodeName)
		var va *storagev1.VolumeAttachment
		testserver.WaitFor(t, "the VolumeAttachment "+name, func() (bool, error) {
			var err error
			va, err = kube.StorageV1().VolumeAttachments().Get(ctx, name, metav1.GetOptions{})
			return err == nil, err
		})
		if va.Spec.Attacher != attacher || va.Spec.NodeName != nodeName || ptr.Deref(va.Spec.Source.PersistentVolumeName, "") != "pv-att" {
			t.Errorf("VolumeAttachment spec = %+v, want attacher %s, node %s, volume pv-att", va.Spec, attacher, nodeName)
		}

		// The attacher fails: the pod hears of it.
		va.Status.AttachError = &storagev1.VolumeError{Time: metav1.Now(), Message: "rpc error: code = Internal desc = boom"}
		if _, err := kube.StorageV1().VolumeAttachments().UpdateStatus(ctx, va, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitEvent(t, kube, "att-pod", attachdetach.ReasonFailedAttach, `AttachVolume.Attach failed for volume "pv-att" : rpc error: code = Internal desc = boom`)

		// The agent has the volume mounted; the pod goes; the attachment stays until the
		// agent no longer lists the volume.
		if err := kube.CoreV1().Pods(ns).Delete(ctx, "att-pod", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, "the pod is gone", func() (bool, error) {
			_, err := kube.CoreV1().Pods(ns).Get(ctx, "att-pod", metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		time.Sleep(time.Second)
		if _, err := kube.StorageV1().VolumeAttachments().Get(ctx, name, metav1.GetOptions{}); err != nil {
			t.Fatalf("the VolumeAttachment went while the node still used the volume: %v", err)
		}
		setVolumesInUse(t, kube, nodeName)
		testserver.WaitFor(t, "the VolumeAttachment is deleted", func() (bool, error) {
			_, err := kube.StorageV1().VolumeAttachments().Get(ctx, name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
	})

	t.Run("generic ephemeral volume gets its claim, owned by the pod", func(t *testing.T) {
		createPod(t, kube, "eph-pod", func(p *corev1.Pod) {
			p.Spec.Volumes = []corev1.Volume{{Name: "scratch", VolumeSource: corev1.VolumeSource{Ephemeral: &corev1.EphemeralVolumeSource{
				VolumeClaimTemplate: &corev1.PersistentVolumeClaimTemplate{
					ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "eph"}},
					Spec:       claimSpec("wffc", ""),
				},
			}}}}
		})
		var c *corev1.PersistentVolumeClaim
		testserver.WaitFor(t, "the claim eph-pod-scratch", func() (bool, error) {
			var err error
			c, err = kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "eph-pod-scratch", metav1.GetOptions{})
			return err == nil, err
		})
		pod, err := kube.CoreV1().Pods(ns).Get(ctx, "eph-pod", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ref := metav1.GetControllerOf(c)
		if ref == nil || ref.UID != pod.UID || ref.Kind != "Pod" || c.Labels["app"] != "eph" {
			t.Errorf("claim owner %+v labels %v, want the pod as controller and the template's labels", ref, c.Labels)
		}
		if p := waitBound(t, kube, "eph-pod"); p.Spec.NodeName != "a" {
			t.Errorf("pod with an ephemeral volume of class wffc bound to %q, want a", p.Spec.NodeName)
		}
		if err := kube.CoreV1().Pods(ns).Delete(ctx, "eph-pod", metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}); err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, "the garbage collector deletes the claim", func() (bool, error) {
			c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "eph-pod-scratch", metav1.GetOptions{})
			// The claim's protection finalizer may hold it for a while: deleting is enough.
			return apierrors.IsNotFound(err) || (err == nil && c.DeletionTimestamp != nil), nil
		})
	})
}

func mustCreate(t *testing.T, create func() error) {
	t.Helper()
	if err := create(); err != nil {
		t.Fatal(err)
	}
}

// node creates a Ready node labelled with its hostname.
func node(t *testing.T, kube kubernetes.Interface, name string) {
	t.Helper()
	ctx := context.Background()
	n, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi"), corev1.ResourcePods: resource.MustParse("110")}
	now := metav1.Now()
	n.Status.Capacity, n.Status.Allocatable = res, res
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}}
	if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func csiNode(t *testing.T, kube kubernetes.Interface, name string, drivers ...string) {
	t.Helper()
	cn := &storagev1.CSINode{ObjectMeta: metav1.ObjectMeta{Name: name}}
	for _, d := range drivers {
		cn.Spec.Drivers = append(cn.Spec.Drivers, storagev1.CSINodeDriver{Name: d, NodeID: name, TopologyKeys: []string{corev1.LabelHostname}})
	}
	mustCreate(t, func() error {
		_, err := kube.StorageV1().CSINodes().Create(context.Background(), cn, metav1.CreateOptions{})
		return err
	})
}

func storageClass(t *testing.T, kube kubernetes.Interface, name, provisioner string, mode storagev1.VolumeBindingMode) {
	t.Helper()
	mustCreate(t, func() error {
		_, err := kube.StorageV1().StorageClasses().Create(context.Background(), &storagev1.StorageClass{
			ObjectMeta: metav1.ObjectMeta{Name: name}, Provisioner: provisioner, VolumeBindingMode: &mode,
		}, metav1.CreateOptions{})
		return err
	})
}

func claimSpec(class, volumeName string) corev1.PersistentVolumeClaimSpec {
	return corev1.PersistentVolumeClaimSpec{
		StorageClassName: ptr.To(class),
		VolumeName:       volumeName,
		AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
		Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
	}
}

func createClaim(t *testing.T, kube kubernetes.Interface, name, class, volumeName string) *corev1.PersistentVolumeClaim {
	t.Helper()
	c, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(context.Background(), &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: claimSpec(class, volumeName),
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// csiVolume is a 1Gi CSI volume bound (claimRef) to the claim, reachable from the nodes
// named (from every node when none are).
func csiVolume(name, driver, handle, class string, claim *corev1.PersistentVolumeClaim, nodes ...string) *corev1.PersistentVolume {
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeSpec{
			StorageClassName:              class,
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
			PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: driver, VolumeHandle: handle}},
			ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: claim.Namespace, Name: claim.Name, UID: claim.UID},
		},
	}
	if len(nodes) > 0 {
		pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: nodes}},
		}}}}
	}
	return pv
}

// bind completes the binding of a claim to its volume as the PV controller does, unless
// the PV controller has done it already.
func bind(t *testing.T, kube kubernetes.Interface, claim, pv string) {
	t.Helper()
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		v, err := kube.CoreV1().PersistentVolumes().Get(ctx, pv, metav1.GetOptions{})
		if err != nil || v.Status.Phase == corev1.VolumeBound {
			return err
		}
		v.Status.Phase = corev1.VolumeBound
		_, err = kube.CoreV1().PersistentVolumes().UpdateStatus(ctx, v, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("bind volume %s: %v", pv, err)
	}
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if c.Spec.VolumeName == "" || !metav1.HasAnnotation(c.ObjectMeta, volumehelpers.AnnBindCompleted) {
			c.Spec.VolumeName = pv
			metav1.SetMetaDataAnnotation(&c.ObjectMeta, volumehelpers.AnnBindCompleted, "yes")
			if c, err = kube.CoreV1().PersistentVolumeClaims(ns).Update(ctx, c, metav1.UpdateOptions{}); err != nil {
				return err
			}
		}
		if c.Status.Phase == corev1.ClaimBound {
			return nil
		}
		c.Status.Phase = corev1.ClaimBound
		c.Status.AccessModes = c.Spec.AccessModes
		c.Status.Capacity = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}
		_, err = kube.CoreV1().PersistentVolumeClaims(ns).UpdateStatus(ctx, c, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("bind claim %s: %v", claim, err)
	}
}

// provision plays the provisioner of the wffc class until ctx ends: each claim given a
// selected node gets a volume on that node, and is bound to it.
func provision(ctx context.Context, kube kubernetes.Interface) {
	for ctx.Err() == nil {
		time.Sleep(100 * time.Millisecond)
		list, err := kube.CoreV1().PersistentVolumeClaims(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for i := range list.Items {
			c := &list.Items[i]
			selected := c.Annotations[volumehelpers.AnnSelectedNode]
			if selected == "" || c.Spec.VolumeName != "" || ptr.Deref(c.Spec.StorageClassName, "") != "wffc" {
				continue
			}
			pv := csiVolume("pvc-"+string(c.UID), provisioner, "vol-"+string(c.UID), "wffc", c, selected)
			pv.Annotations = map[string]string{volumehelpers.AnnDynamicallyProvisioned: provisioner}
			pv.Spec.PersistentVolumeReclaimPolicy = corev1.PersistentVolumeReclaimDelete
			if _, err := kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
				continue
			}
			if ctx.Err() == nil {
				bindQuietly(ctx, kube, c.Name, pv.Name)
			}
		}
	}
}

// bindQuietly is bind for the provisioner goroutine, which must not fail the test.
func bindQuietly(ctx context.Context, kube kubernetes.Interface, claim, pv string) {
	_ = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(ctx, claim, metav1.GetOptions{})
		if err != nil || c.Spec.VolumeName != "" {
			return err
		}
		c.Spec.VolumeName = pv
		metav1.SetMetaDataAnnotation(&c.ObjectMeta, volumehelpers.AnnBindCompleted, "yes")
		if c, err = kube.CoreV1().PersistentVolumeClaims(ns).Update(ctx, c, metav1.UpdateOptions{}); err != nil {
			return err
		}
		c.Status.Phase = corev1.ClaimBound
		_, err = kube.CoreV1().PersistentVolumeClaims(ns).UpdateStatus(ctx, c, metav1.UpdateOptions{})
		return err
	})
}

func podClaim(claim string) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		p.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim}}}}
	}
}

func createPod(t *testing.T, kube kubernetes.Interface, name string, mutate func(*corev1.Pod)) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox"}}},
	}
	mutate(p)
	mustCreate(t, func() error {
		_, err := kube.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{})
		return err
	})
}

func waitBound(t *testing.T, kube kubernetes.Interface, name string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	testserver.WaitFor(t, "pod "+name+" is bound", func() (bool, error) {
		var err error
		p, err = kube.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		return err == nil && p.Spec.NodeName != "", err
	})
	return p
}

// waitEvent waits for an event of the reason on the pod whose message starts with prefix.
func waitEvent(t *testing.T, kube kubernetes.Interface, pod, reason, prefix string) {
	t.Helper()
	var seen []string
	testserver.WaitFor(t, reason+" event for "+pod, func() (bool, error) {
		list, err := kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("involvedObject.name", pod).String(),
		})
		if err != nil {
			return false, err
		}
		seen = seen[:0]
		for _, e := range list.Items {
			if e.Reason == reason && strings.HasPrefix(e.Message, prefix) {
				return true, nil
			}
			seen = append(seen, e.Reason+": "+e.Message)
		}
		return false, errors.New("events so far: " + strings.Join(seen, " | "))
	})
}

func setVolumesInUse(t *testing.T, kube kubernetes.Interface, name string, vols ...corev1.UniqueVolumeName) {
	t.Helper()
	ctx := context.Background()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := kube.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status.VolumesInUse = vols
		_, err = kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("set volumesInUse of node %s: %v", name, err)
	}
}
