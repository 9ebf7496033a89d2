package csi_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/agent/csi"
	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/core/internal/testserver"
)

// TestAgentWithFakeDriver runs the real agent on berth's simulated CRI runtime (its
// binary, built here: core may not import drivers/) against a real API server, with the
// fake CSI driver's socket in the agent's plugins dir: the driver is published on the
// CSINode, the Node and a CSIDriver; a pod of a claim bound by hand to a CSI PV gets the
// volume staged and published with the PV's arguments and runs, the node lists the volume
// in volumesInUse, the pod's deletion unpublishes and unstages it, and the driver's
// socket going away deregisters it.
func TestAgentWithFakeDriver(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the simulated runtime and starts an API server")
	}
	srv := testserver.Start(t)
	kube := srv.Kube
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	bin := filepath.Join(dir, "berth-cri-sim")
	if out, err := exec.Command("go", "build", "-o", bin, "berth.dev/berth/cmd/berth-cri-sim").CombinedOutput(); err != nil {
		t.Fatalf("build berth-cri-sim: %v\n%s", err, out)
	}
	short, err := os.MkdirTemp("", "csiit")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(short) })
	criSocket := filepath.Join(short, "cri.sock")
	sim := exec.Command(bin, "--socket", criSocket, "--pod-cidr", "10.124.0.0/24")
	sim.Stdout, sim.Stderr = srv.Logs, srv.Logs
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Process.Kill(); _ = sim.Wait() })

	plugins := filepath.Join(short, "plugins")
	drv := csi.StartFakeDriver(t, filepath.Join(plugins, "fake.sock"),
		&csi.FakeDriver{Name: "fake.csi.berth.dev", NodeID: "fake-node-1", Stage: true, Topology: map[string]string{"topology.fake/node": "n1"}})

	const node = "csi-node"
	dataDir := filepath.Join(dir, "agent")
	a, err := agent.New(agent.Config{
		Kube: kube, NodeName: node, RuntimeEndpoint: "unix://" + criSocket, DataDir: dataDir,
		PodCIDR: "10.124.0.0/24", NodeIP: "127.0.0.1", Log: srv.Log.With("component", "agent"),
		LeaseRenewInterval: time.Second, StatusInterval: time.Second, CSIPluginsDir: plugins,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("agent did not stop")
		}
	})

	testserver.WaitFor(t, "the driver on the CSINode, the Node and a CSIDriver", func() (bool, error) {
		cn, err := kube.StorageV1().CSINodes().Get(ctx, node, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		_, cdErr := kube.StorageV1().CSIDrivers().Get(ctx, "fake.csi.berth.dev", metav1.GetOptions{})
		return len(cn.Spec.Drivers) == 1 && cn.Spec.Drivers[0].NodeID == "fake-node-1" &&
			n.Labels["topology.fake/node"] == "n1" && n.Annotations[csi.NodeIDAnnotation] != "" && cdErr == nil, nil
	})

	// A claim bound by hand to a CSI PV.
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "data", Namespace: "default"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, VolumeName: "pv-data",
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}
	pvc, err = kube.CoreV1().PersistentVolumeClaims("default").Create(ctx, pvc, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-data"},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:    corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			ClaimRef:    &corev1.ObjectReference{Kind: "PersistentVolumeClaim", Namespace: "default", Name: "data", UID: pvc.UID},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{
				Driver: "fake.csi.berth.dev", VolumeHandle: "vol-1", FSType: "ext4", VolumeAttributes: map[string]string{"k": "v"},
			}},
		},
	}
	if pv, err = kube.CoreV1().PersistentVolumes().Create(ctx, pv, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pv.Status.Phase = corev1.VolumeBound
	if _, err := kube.CoreV1().PersistentVolumes().UpdateStatus(ctx, pv, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	pvc.Status.Phase = corev1.ClaimBound
	pvc.Status.Capacity = corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}
	if _, err := kube.CoreV1().PersistentVolumeClaims("default").UpdateStatus(ctx, pvc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "user", Namespace: "default"},
		Spec: corev1.PodSpec{
			NodeName:                      node,
			TerminationGracePeriodSeconds: ptr.To[int64](1),
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}}}},
			Containers: []corev1.Container{{Name: "main", Image: images.BusyboxRef, ImagePullPolicy: corev1.PullIfNotPresent,
				Command:      []string{"sleep", "3600"},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}}},
		},
	}
	if pod, err = kube.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testserver.WaitFor(t, "the pod Running", func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, "user", metav1.GetOptions{})
		return err == nil && p.Status.Phase == corev1.PodRunning, err
	})
	stages, pubs := drv.Calls("NodeStageVolume"), drv.Calls("NodePublishVolume")
	if len(stages) != 1 || len(pubs) != 1 {
		t.Fatalf("%d stages and %d publishes, want 1 each", len(stages), len(pubs))
	}
	st := stages[0].(*csipb.NodeStageVolumeRequest)
	pb := pubs[0].(*csipb.NodePublishVolumeRequest)
	staging := csi.StagingPath(dataDir, "fake.csi.berth.dev", "vol-1")
	target := csi.PublishPath(dataDir, pod.UID, "data", false)
	if st.VolumeId != "vol-1" || st.StagingTargetPath != staging || st.VolumeContext["k"] != "v" || st.VolumeCapability.GetMount().GetFsType() != "ext4" {
		t.Errorf("NodeStageVolume = %v", st)
	}
	if pb.VolumeId != "vol-1" || pb.StagingTargetPath != staging || pb.TargetPath != target || pb.Readonly {
		t.Errorf("NodePublishVolume = %v", pb)
	}
	unique := csi.UniqueName("fake.csi.berth.dev", "vol-1")
	testserver.WaitFor(t, "the volume in node.status.volumesInUse", func() (bool, error) {
		n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		return err == nil && slices.Contains(n.Status.VolumesInUse, unique), err
	})

	if err := kube.CoreV1().Pods("default").Delete(ctx, "user", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testserver.WaitFor(t, "the pod gone", func() (bool, error) {
		_, err := kube.CoreV1().Pods("default").Get(ctx, "user", metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if n, m := len(drv.Calls("NodeUnpublishVolume")), len(drv.Calls("NodeUnstageVolume")); n != 1 || m != 1 {
		t.Fatalf("after the pod's deletion: %d unpublishes and %d unstages, want 1 each", n, m)
	}
	testserver.WaitFor(t, "the volume out of volumesInUse", func() (bool, error) {
		n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		return err == nil && len(n.Status.VolumesInUse) == 0, err
	})

	drv.Stop()
	testserver.WaitFor(t, "the driver deregistered", func() (bool, error) {
		cn, err := kube.StorageV1().CSINodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return len(cn.Spec.Drivers) == 0, nil
	})
	fmt.Fprintln(srv.Logs, "done")
}
