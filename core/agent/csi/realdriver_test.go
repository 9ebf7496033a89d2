package csi

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"berth.dev/berth/core/hosttest"
	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRealDriverStagePublish runs berth's own driver (cmd/berth-csi-local, built here)
// under the manager: a volume it creates is staged (a loop device with ext4) and
// published (mounted) at the kubelet's paths, a file written through the publication
// survives, and the pod's teardown leaves nothing mounted. Root only (loop devices,
// mounts).
func TestRealDriverStagePublish(t *testing.T) {
	hosttest.RequireLoopDevices(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "berth-csi-local")
	if out, err := exec.Command("go", "build", "-o", bin, "berth.dev/berth/cmd/berth-csi-local").CombinedOutput(); err != nil {
		t.Skipf("berth-csi-local does not build here: %v\n%s", err, out)
	}
	r := newRig(t, nil)
	// Runs after the driver stops and the pods are torn down, before the directories go:
	// a test failing half-way leaves no mount or loop device behind.
	t.Cleanup(func() {
		hosttest.UnmountUnder(t, r.dataDir)
		hosttest.DetachLoopsUnder(t, dir)
	})
	cmd := exec.Command(bin, "--endpoint", "unix://"+r.socket, "--node-id", testNode, "--state-dir", filepath.Join(dir, "state"), "--capacity", "1Gi")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var name string
	for deadline := time.Now().Add(20 * time.Second); ; {
		r.m.scan(ctx, true)
		if ds := r.m.drivers.list(); len(ds) == 1 {
			name = ds[0].name
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("berth-csi-local did not register")
		}
		time.Sleep(200 * time.Millisecond)
	}
	drv, _ := r.m.drivers.get(name)
	ctrl := csipb.NewControllerClient(drv.conn)
	capability := volumeCapability(false, "ext4", nil, []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce})
	created, err := ctrl.CreateVolume(ctx, &csipb.CreateVolumeRequest{Name: "pvc-real", VolumeCapabilities: []*csipb.VolumeCapability{capability},
		CapacityRange: &csipb.CapacityRange{RequiredBytes: 32 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	handle := created.GetVolume().GetVolumeId()
	t.Cleanup(func() {
		_, _ = ctrl.DeleteVolume(context.Background(), &csipb.DeleteVolumeRequest{VolumeId: handle})
	})

	pvc, pv := boundClaim("data", handle, corev1.PersistentVolumeFilesystem)
	pv.Spec.CSI.Driver, pv.Spec.CSI.VolumeAttributes, pv.Spec.MountOptions = name, created.GetVolume().GetVolumeContext(), nil
	for _, obj := range []any{pvc, pv} {
		var err error
		switch o := obj.(type) {
		case *corev1.PersistentVolumeClaim:
			_, err = r.kube.CoreV1().PersistentVolumeClaims("default").Create(ctx, o, metav1.CreateOptions{})
		case *corev1.PersistentVolume:
			_, err = r.kube.CoreV1().PersistentVolumes().Create(ctx, o, metav1.CreateOptions{})
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	p := claimPod("a", "uid-a", "data")
	t.Cleanup(func() { _ = r.m.TearDownPod(context.Background(), "uid-a") })
	m, err := r.m.SetUp(ctx, p, &p.Spec.Volumes[0])
	if err != nil {
		t.Fatal(err)
	}
	if !mounted(m.Path) {
		t.Fatalf("%s is not mounted after SetUp", m.Path)
	}
	if err := os.WriteFile(filepath.Join(m.Path, "hello"), []byte("hi"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.m.TearDownPod(ctx, "uid-a"); err != nil {
		t.Fatal(err)
	}
	staging := StagingPath(r.dataDir, name, handle)
	if mounted(m.Path) || mounted(staging) {
		t.Fatalf("still mounted after teardown: publication %v, staging %v", mounted(m.Path), mounted(staging))
	}
	// Published again: the file is still there.
	p2 := claimPod("b", "uid-b", "data")
	t.Cleanup(func() { _ = r.m.TearDownPod(context.Background(), "uid-b") })
	m2, err := r.m.SetUp(ctx, p2, &p2.Spec.Volumes[0])
	if err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(m2.Path, "hello")); err != nil || string(data) != "hi" {
		t.Fatalf("file after republish: %q, %v", data, err)
	}
	if err := r.m.TearDownPod(ctx, "uid-b"); err != nil {
		t.Fatal(err)
	}
}
