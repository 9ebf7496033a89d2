package sidecar

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/core/hosttest"
	"berth.dev/berth/core/internal/testserver"
)

// TestLocalDriverProvisionDelete runs the sidecars against berth's real driver
// (cmd/berth-csi-local): a 64Mi claim gets its volume image and PV, and once released
// both are gone.
func TestLocalDriverProvisionDelete(t *testing.T) {
	hosttest.RequireLoopDevices(t)
	srv := testserver.Start(t)
	kube := srv.Kube
	ctx := context.Background()
	ensureNamespace(t, kube)

	dir := t.TempDir()
	bin := filepath.Join(dir, "berth-csi-local")
	if out, err := exec.Command("go", "build", "-o", bin, "berth.dev/berth/cmd/berth-csi-local").CombinedOutput(); err != nil {
		t.Fatalf("build berth-csi-local: %v\n%s", err, out)
	}
	short, err := os.MkdirTemp("", "sidecar-local")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	sock := filepath.Join(short, "csi.sock")
	stateDir := filepath.Join(dir, "state")
	driver := exec.Command(bin, "--endpoint", "unix://"+sock, "--node-id", "node1", "--state-dir", stateDir, "--capacity", "1Gi")
	driver.Stdout, driver.Stderr = srv.Logs, srv.Logs
	if err := driver.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = driver.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = driver.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = driver.Process.Kill()
			<-done
		}
	})
	testserver.WaitFor(t, "driver socket", func() (bool, error) {
		_, err := os.Stat(sock)
		return err == nil, err
	})
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	// What the agent learns from the driver before it calls Run.
	info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	name := info.GetName()
	pcaps, err := csi.NewIdentityClient(conn).GetPluginCapabilities(ctx, &csi.GetPluginCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	nodeScoped := false
	for _, c := range pcaps.GetCapabilities() {
		if c.GetService().GetType() == csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS {
			nodeScoped = true
		}
	}
	nodeInfo, err := csi.NewNodeClient(conn).NodeGetInfo(ctx, &csi.NodeGetInfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	runSidecar(t, Config{
		Client: kube, Conn: conn, DriverName: name, NodeName: "node1",
		Topology: nodeInfo.GetAccessibleTopology().GetSegments(), NodeScoped: nodeScoped,
		Logger: srv.Log.With("component", "sidecar"),
	})

	reclaim := corev1.PersistentVolumeReclaimDelete
	immediate := storagev1.VolumeBindingImmediate
	if _, err := kube.StorageV1().StorageClasses().Create(ctx, &storagev1.StorageClass{
		ObjectMeta: metav1.ObjectMeta{Name: "local-test"}, Provisioner: name,
		ReclaimPolicy: &reclaim, VolumeBindingMode: &immediate,
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	class := "local-test"
	claim, err := kube.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "local", Annotations: map[string]string{
			annStorageProvisioner: name, annBetaStorageProvisioner: name, annSelectedNode: "node1",
		}},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: &class,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pvName := "pvc-" + string(claim.UID)
	var pv *corev1.PersistentVolume
	testserver.WaitFor(t, "PV "+pvName, func() (bool, error) {
		pv, err = getPV(kube, pvName)
		return err == nil, err
	})
	if got := pv.Spec.Capacity[corev1.ResourceStorage]; got.Value() < 64<<20 {
		t.Errorf("capacity %s < 64Mi", got.String())
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != name || pv.Spec.CSI.FSType != "ext4" || !onNode(pv, nodeInfo.GetAccessibleTopology().GetSegments()) {
		t.Errorf("PV csi %+v affinity %+v", pv.Spec.CSI, pv.Spec.NodeAffinity)
	}
	image := filepath.Join(stateDir, "volumes", pv.Spec.CSI.VolumeHandle+".img")
	if _, err := os.Stat(image); err != nil {
		t.Errorf("volume image: %v", err)
	}

	pv.Status.Phase = corev1.VolumeReleased
	if _, err := kube.CoreV1().PersistentVolumes().UpdateStatus(ctx, pv, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testserver.WaitFor(t, "PV "+pvName+" deleted", func() (bool, error) {
		pv, err := getPV(kube, pvName)
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		if err != nil {
			return false, err
		}
		if pv.DeletionTimestamp != nil && !slices.Contains(pv.Finalizers, provisionerFinalizer) && len(pv.Finalizers) > 0 {
			// The PV controller's part: kubernetes.io/pv-protection off an unbound PV.
			pv.Finalizers = nil
			_, err := kube.CoreV1().PersistentVolumes().Update(ctx, pv, metav1.UpdateOptions{})
			return false, err
		}
		return false, fmt.Errorf("deletion %v finalizers %v", pv.DeletionTimestamp, pv.Finalizers)
	})
	if _, err := os.Stat(image); !os.IsNotExist(err) {
		t.Errorf("volume image still there after DeleteVolume: %v", err)
	}
}
