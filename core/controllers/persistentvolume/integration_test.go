package persistentvolume_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"
	storagehelpers "k8s.io/component-helpers/storage/volume"

	"berth.dev/berth/core/controllers"
	"berth.dev/berth/core/internal/testserver"
)

const kubectl = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33"

// TestAgainstServer runs the real API server (admission included) and the whole controller
// manager, as berth server does, and walks through what users do with volumes: the static
// hostPath volume and selector claim of the classic MySQL walkthrough, release, pre-binding,
// WaitForFirstConsumer, the default class, a claim nothing can satisfy, resizing, and many
// claims racing for fewer volumes. No agent runs: nothing provisions, so a claim handed to a
// CSI driver stays Pending with its annotations set.
func TestAgainstServer(t *testing.T) {
	srv := testserver.Start(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- controllers.Run(ctx, srv.Config, controllers.Options{Log: srv.Log.With("component", "controllers")})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controllers.Run: %v", err)
		}
	})
	kube := srv.Kube
	ns := "default"

	t.Run("seed: hostPath volume and selector claim bind both ways", func(t *testing.T) {
		pv := createPV(t, kube, hostPathPV("app-pv", "20Gi", map[string]string{"vol": "mysql"}))
		if !slices.Contains(pv.Finalizers, "kubernetes.io/pv-protection") {
			t.Errorf("volume finalizers %v: admission must add kubernetes.io/pv-protection", pv.Finalizers)
		}
		pvc := createPVC(t, kube, ns, newClaim("app-pvc", "5Gi", func(c *corev1.PersistentVolumeClaim) {
			c.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"vol": "mysql"}}
		}))
		if !slices.Contains(pvc.Finalizers, "kubernetes.io/pvc-protection") || pvc.Spec.StorageClassName != nil {
			t.Errorf("claim finalizers %v, class %v: want kubernetes.io/pvc-protection and no class (no default class exists)", pvc.Finalizers, pvc.Spec.StorageClassName)
		}
		waitBound(t, kube, ns, "app-pvc", "app-pv")
		got, _ := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "app-pvc", metav1.GetOptions{})
		if q := got.Status.Capacity[corev1.ResourceStorage]; q.String() != "20Gi" {
			t.Errorf("claim capacity %s, want the volume's 20Gi", q.String())
		}
		if got.Annotations[storagehelpers.AnnBindCompleted] != "yes" || got.Annotations[storagehelpers.AnnBoundByController] != "yes" {
			t.Errorf("claim annotations %v: want bind-completed and bound-by-controller", got.Annotations)
		}

		// What kubectl shows.
		if _, err := os.Stat(kubectl); err != nil {
			t.Logf("no %s: kubectl check skipped", kubectl)
			return
		}
		out, err := exec.Command(kubectl, "--kubeconfig", writeKubeconfig(t, srv.Config), "get", "pv,pvc", "-n", ns).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl get pv,pvc: %v\n%s", err, out)
		}
		t.Logf("kubectl get pv,pvc:\n%s", out)
		var pvRow, pvcRow []string
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			switch {
			case len(f) > 0 && f[0] == "persistentvolume/app-pv":
				pvRow = f
			case len(f) > 0 && f[0] == "persistentvolumeclaim/app-pvc":
				pvcRow = f
			}
		}
		// NAME CAPACITY ACCESS MODES RECLAIM POLICY STATUS CLAIM ...; NAME STATUS VOLUME CAPACITY ...
		if len(pvRow) < 6 || pvRow[1] != "20Gi" || pvRow[2] != "RWO" || pvRow[3] != "Retain" || pvRow[4] != "Bound" || pvRow[5] != "default/app-pvc" {
			t.Errorf("kubectl pv row %q, want 20Gi RWO Retain Bound default/app-pvc", pvRow)
		}
		if len(pvcRow) < 5 || pvcRow[1] != "Bound" || pvcRow[2] != "app-pv" || pvcRow[3] != "20Gi" || pvcRow[4] != "RWO" {
			t.Errorf("kubectl pvc row %q, want Bound app-pv 20Gi RWO", pvcRow)
		}
	})

	t.Run("resize refused without an expandable class; shrink refused", func(t *testing.T) {
		err := setRequest(kube, ns, "app-pvc", "30Gi")
		want := `persistentvolumeclaims "app-pvc" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize`
		if !apierrors.IsForbidden(err) || err.Error() != want {
			t.Errorf("grow app-pvc: %v, want Forbidden: %s", err, want)
		}
		if err := setRequest(kube, ns, "app-pvc", "1Gi"); !apierrors.IsInvalid(err) {
			t.Errorf("shrink app-pvc: %v, want Invalid", err)
		}
		// The same through kubectl patch (the patch path of the API server).
		if _, err := os.Stat(kubectl); err != nil {
			return
		}
		out, err := exec.Command(kubectl, "--kubeconfig", writeKubeconfig(t, srv.Config), "-n", ns, "patch", "pvc", "app-pvc",
			"-p", `{"spec":{"resources":{"requests":{"storage":"30Gi"}}}}`).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Error from server (Forbidden): "+want) {
			t.Errorf("kubectl patch to 30Gi: %v\n%s\nwant Error from server (Forbidden): %s", err, out, want)
		}
	})

	t.Run("a claim in use keeps its finalizer; deleting it releases the volume (Retain)", func(t *testing.T) {
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "mysql"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "db", Image: "mysql"}}, Volumes: []corev1.Volume{{
				Name: "data", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "app-pvc"}},
			}}},
		}
		if _, err := kube.CoreV1().Pods(ns).Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := kube.CoreV1().PersistentVolumeClaims(ns).Delete(context.Background(), "app-pvc", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // room for the controller to get it wrong
		got, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "app-pvc", metav1.GetOptions{})
		if err != nil || got.DeletionTimestamp == nil {
			t.Fatalf("claim used by a pod: %v (deletionTimestamp %v); want it kept, Terminating", err, got.DeletionTimestamp)
		}
		// No agent runs the pod: deleting it is immediate.
		if err := kube.CoreV1().Pods(ns).Delete(context.Background(), "mysql", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, "the claim goes once no pod uses it", func() (bool, error) {
			_, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "app-pvc", metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
		testserver.WaitFor(t, "app-pv Released", func() (bool, error) {
			pv, err := kube.CoreV1().PersistentVolumes().Get(context.Background(), "app-pv", metav1.GetOptions{})
			return err == nil && pv.Status.Phase == corev1.VolumeReleased && pv.Spec.ClaimRef != nil, err
		})
		// A Released volume is not offered again.
		createPVC(t, kube, ns, newClaim("app-pvc", "5Gi", func(c *corev1.PersistentVolumeClaim) {
			c.Spec.Selector = &metav1.LabelSelector{MatchLabels: map[string]string{"vol": "mysql"}}
		}))
		time.Sleep(time.Second)
		if got, _ := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "app-pvc", metav1.GetOptions{}); got.Spec.VolumeName != "" {
			t.Errorf("the new app-pvc got %s, a Released volume", got.Spec.VolumeName)
		}
		// The volume itself, deleted while not bound, goes (its protection removed).
		if err := kube.CoreV1().PersistentVolumes().Delete(context.Background(), "app-pv", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, "app-pv gone", func() (bool, error) {
			_, err := kube.CoreV1().PersistentVolumes().Get(context.Background(), "app-pv", metav1.GetOptions{})
			return apierrors.IsNotFound(err), nil
		})
	})

	t.Run("pre-binding", func(t *testing.T) {
		createPV(t, kube, hostPathPV("reserved", "5Gi", nil, func(pv *corev1.PersistentVolume) {
			pv.Spec.ClaimRef = &corev1.ObjectReference{Namespace: ns, Name: "mine"}
		}))
		createPVC(t, kube, ns, newClaim("intruder", "1Gi", withClass("")))
		time.Sleep(time.Second)
		if got, _ := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "intruder", metav1.GetOptions{}); got.Spec.VolumeName != "" {
			t.Errorf("intruder got %s, a volume pre-bound to another claim", got.Spec.VolumeName)
		}
		createPVC(t, kube, ns, newClaim("mine", "1Gi", withClass("")))
		waitBound(t, kube, ns, "mine", "reserved")
	})

	t.Run("WaitForFirstConsumer waits for the selected node", func(t *testing.T) {
		mode := storagev1.VolumeBindingWaitForFirstConsumer
		createClass(t, kube, &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "local-wffc"}, Provisioner: storagehelpers.NotSupportedProvisioner, VolumeBindingMode: &mode})
		for _, n := range []string{"n1", "n2"} {
			if _, err := kube.CoreV1().Nodes().Create(context.Background(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n, Labels: map[string]string{corev1.LabelHostname: n}}}, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			createPV(t, kube, hostPathPV("local-"+n, "10Gi", nil, func(pv *corev1.PersistentVolume) {
				pv.Spec.StorageClassName = "local-wffc"
				pv.Spec.NodeAffinity = &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
					MatchExpressions: []corev1.NodeSelectorRequirement{{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{n}}},
				}}}}
			}))
		}
		createPVC(t, kube, ns, newClaim("waiter", "1Gi", withClass("local-wffc")))
		waitEvent(t, kube, ns, "waiter", "WaitForFirstConsumer", "waiting for first consumer to be created before binding")
		if got, _ := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "waiter", metav1.GetOptions{}); got.Spec.VolumeName != "" {
			t.Fatalf("waiter bound to %s before any node was selected", got.Spec.VolumeName)
		}
		// What the scheduler's VolumeBinding does once it places the claim's pod.
		if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
			c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "waiter", metav1.GetOptions{})
			if err != nil {
				return err
			}
			metav1.SetMetaDataAnnotation(&c.ObjectMeta, storagehelpers.AnnSelectedNode, "n2")
			_, err = kube.CoreV1().PersistentVolumeClaims(ns).Update(context.Background(), c, metav1.UpdateOptions{})
			return err
		}); err != nil {
			t.Fatal(err)
		}
		waitBound(t, kube, ns, "waiter", "local-n2")
	})

	t.Run("10Ti with no class stays Pending and says why", func(t *testing.T) {
		createPVC(t, kube, ns, newClaim("huge", "10Ti"))
		waitEvent(t, kube, ns, "huge", "FailedBinding", "no persistent volumes available for this claim and no storage class is set")
		if got, _ := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "huge", metav1.GetOptions{}); got.Status.Phase != corev1.ClaimPending {
			t.Errorf("huge phase %q, want Pending", got.Status.Phase)
		}
	})

	t.Run("default class: at admission, retroactively, then handed to its CSI driver", func(t *testing.T) {
		mode := storagev1.VolumeBindingImmediate
		yes := true
		createClass(t, kube, &storagev1.StorageClass{
			ObjectMeta:  metav1.ObjectMeta{Name: "local", Annotations: map[string]string{"storageclass.kubernetes.io/is-default-class": "true"}},
			Provisioner: "local.csi.berth.dev", VolumeBindingMode: &mode, AllowVolumeExpansion: &yes,
		})
		pvc := createPVC(t, kube, ns, newClaim("fresh", "1Gi"))
		if pvc.Spec.StorageClassName == nil || *pvc.Spec.StorageClassName != "local" {
			t.Errorf("claim created without a class got %v, want the default class local", pvc.Spec.StorageClassName)
		}
		testserver.WaitFor(t, "huge gets the default class retroactively", func() (bool, error) {
			c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "huge", metav1.GetOptions{})
			return err == nil && c.Spec.StorageClassName != nil && *c.Spec.StorageClassName == "local", err
		})
		// The driver has not registered anywhere yet.
		waitEvent(t, kube, ns, "fresh", "ProvisioningFailed", `provisioner "local.csi.berth.dev" is not a CSI driver known to this cluster`)

		// What the agent does when the driver registers on node n1.
		if _, err := kube.StorageV1().CSIDrivers().Create(context.Background(), &storagev1.CSIDriver{ObjectMeta: metav1.ObjectMeta{Name: "local.csi.berth.dev"}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kube.StorageV1().CSINodes().Create(context.Background(), &storagev1.CSINode{
			ObjectMeta: metav1.ObjectMeta{Name: "n1"},
			Spec:       storagev1.CSINodeSpec{Drivers: []storagev1.CSINodeDriver{{Name: "local.csi.berth.dev", NodeID: "n1"}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		testserver.WaitFor(t, "fresh handed to the driver for node n1", func() (bool, error) {
			c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "fresh", metav1.GetOptions{})
			return err == nil && c.Annotations[storagehelpers.AnnStorageProvisioner] == "local.csi.berth.dev" &&
				c.Annotations[storagehelpers.AnnBetaStorageProvisioner] == "local.csi.berth.dev" &&
				c.Annotations[storagehelpers.AnnSelectedNode] == "n1", err
		})
		waitEvent(t, kube, ns, "fresh", "ExternalProvisioning", "Waiting for a volume to be created either by the external provisioner 'local.csi.berth.dev'")

		// What the sidecar does: a volume pre-bound to the claim; the binder completes it.
		fresh, _ := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), "fresh", metav1.GetOptions{})
		pvName := "pvc-" + string(fresh.UID)
		createPV(t, kube, &corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: pvName, Annotations: map[string]string{storagehelpers.AnnDynamicallyProvisioned: "local.csi.berth.dev"}},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
				AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
				StorageClassName:              "local",
				ClaimRef:                      &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: ns, Name: "fresh", UID: fresh.UID},
				PersistentVolumeSource:        corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: "local.csi.berth.dev", VolumeHandle: pvName}},
			},
		})
		waitBound(t, kube, ns, "fresh", pvName)

		// Bound, expandable class: growing is admitted (the resizer's job from there).
		if err := setRequest(kube, ns, "fresh", "2Gi"); err != nil {
			t.Errorf("grow a bound claim of an expandable class: %v", err)
		}
	})

	t.Run("race: 8 claims, 3 volumes", func(t *testing.T) {
		for i := range 3 {
			createPV(t, kube, hostPathPV(fmt.Sprintf("race-%d", i), "1Gi", nil, func(pv *corev1.PersistentVolume) { pv.Spec.StorageClassName = "race" }))
		}
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(context.Background(), newClaim(fmt.Sprintf("racer-%d", i), "1Gi", withClass("race")), metav1.CreateOptions{}); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		testserver.WaitFor(t, "3 racers bound", func() (bool, error) {
			pvcs, err := kube.CoreV1().PersistentVolumeClaims(ns).List(context.Background(), metav1.ListOptions{})
			if err != nil {
				return false, err
			}
			n := 0
			for _, c := range pvcs.Items {
				if strings.HasPrefix(c.Name, "racer-") && c.Status.Phase == corev1.ClaimBound {
					n++
				}
			}
			return n == 3, nil
		})
		time.Sleep(time.Second) // room for a fourth binding that must not come
		pvcs, _ := kube.CoreV1().PersistentVolumeClaims(ns).List(context.Background(), metav1.ListOptions{})
		owner := map[string]string{}
		for _, c := range pvcs.Items {
			if !strings.HasPrefix(c.Name, "racer-") || c.Spec.VolumeName == "" {
				continue
			}
			if prev, ok := owner[c.Spec.VolumeName]; ok {
				t.Errorf("volume %s bound to both %s and %s", c.Spec.VolumeName, prev, c.Name)
			}
			owner[c.Spec.VolumeName] = c.Name
		}
		if len(owner) != 3 {
			t.Errorf("racers bound to %v, want 3 distinct volumes", owner)
		}
		for v, c := range owner {
			pv, err := kube.CoreV1().PersistentVolumes().Get(context.Background(), v, metav1.GetOptions{})
			if err != nil || pv.Spec.ClaimRef == nil || pv.Spec.ClaimRef.Name != c || pv.Status.Phase != corev1.VolumeBound {
				t.Errorf("volume %s: claimRef %+v phase %q, want %s Bound (err %v)", v, pv.Spec.ClaimRef, pv.Status.Phase, c, err)
			}
		}
	})
}

func hostPathPV(name, size string, labels map[string]string, mods ...func(*corev1.PersistentVolume)) *corev1.PersistentVolume {
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:               corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)},
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/tmp/data"}},
		},
	}
	for _, m := range mods {
		m(pv)
	}
	return pv
}

func newClaim(name, size string, mods ...func(*corev1.PersistentVolumeClaim)) *corev1.PersistentVolumeClaim {
	c := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse(size)}},
		},
	}
	for _, m := range mods {
		m(c)
	}
	return c
}

func withClass(name string) func(*corev1.PersistentVolumeClaim) {
	return func(c *corev1.PersistentVolumeClaim) { c.Spec.StorageClassName = &name }
}

func createPV(t *testing.T, kube kubernetes.Interface, pv *corev1.PersistentVolume) *corev1.PersistentVolume {
	t.Helper()
	got, err := kube.CoreV1().PersistentVolumes().Create(context.Background(), pv, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create volume %s: %v", pv.Name, err)
	}
	return got
}

func createPVC(t *testing.T, kube kubernetes.Interface, ns string, pvc *corev1.PersistentVolumeClaim) *corev1.PersistentVolumeClaim {
	t.Helper()
	got, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(context.Background(), pvc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create claim %s: %v", pvc.Name, err)
	}
	return got
}

func createClass(t *testing.T, kube kubernetes.Interface, sc *storagev1.StorageClass) {
	t.Helper()
	if _, err := kube.StorageV1().StorageClasses().Create(context.Background(), sc, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create class %s: %v", sc.Name, err)
	}
}

// setRequest changes a claim's storage request, as kubectl edit or patch would.
func setRequest(kube kubernetes.Interface, ns, name, size string) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		c.Spec.Resources.Requests[corev1.ResourceStorage] = resource.MustParse(size)
		_, err = kube.CoreV1().PersistentVolumeClaims(ns).Update(context.Background(), c, metav1.UpdateOptions{})
		return err
	})
}

// waitBound waits until claim and volume are bound to each other, both phases Bound.
func waitBound(t *testing.T, kube kubernetes.Interface, ns, claim, volume string) {
	t.Helper()
	testserver.WaitFor(t, fmt.Sprintf("%s and %s bound both ways", claim, volume), func() (bool, error) {
		c, err := kube.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), claim, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		v, err := kube.CoreV1().PersistentVolumes().Get(context.Background(), volume, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return c.Spec.VolumeName == volume && c.Status.Phase == corev1.ClaimBound &&
			v.Spec.ClaimRef != nil && v.Spec.ClaimRef.Name == claim && v.Spec.ClaimRef.UID == c.UID && v.Status.Phase == corev1.VolumeBound, nil
	})
}

// waitEvent waits for an event of the persistentvolume-controller on a claim.
func waitEvent(t *testing.T, kube kubernetes.Interface, ns, claim, reason, text string) {
	t.Helper()
	var seen []string
	testserver.WaitFor(t, fmt.Sprintf("event %s %q on %s", reason, text, claim), func() (bool, error) {
		evs, err := kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		seen = seen[:0]
		for _, e := range evs.Items {
			if e.InvolvedObject.Kind != "PersistentVolumeClaim" || e.InvolvedObject.Name != claim {
				continue
			}
			seen = append(seen, e.Reason+": "+e.Message)
			if e.Reason == reason && strings.Contains(e.Message, text) && e.Source.Component == "persistentvolume-controller" {
				return true, nil
			}
		}
		return false, fmt.Errorf("events on %s: %q", claim, seen)
	})
}

// writeKubeconfig writes the test server's client configuration for kubectl.
func writeKubeconfig(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["berth"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthority: cfg.CAFile, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificate: cfg.CertFile, ClientCertificateData: cfg.CertData,
		ClientKey: cfg.KeyFile, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken,
	}
	kc.Contexts["berth"] = &clientcmdapi.Context{Cluster: "berth", AuthInfo: "admin"}
	kc.CurrentContext = "berth"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}
