package agent_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/hosttest"
	"berth.dev/berth/core/internal/testserver"
)

// TestVolumesOnContainerd runs a pod with every volume type the agent supports on a real
// containerd and reads them from inside the container; an update of a ConfigMap reaches
// the running container; a pod whose ConfigMap is missing waits in ContainerCreating with
// FailedMount events and starts once it exists; the volumes survive an agent restart;
// deleting the pods leaves no mount and no directory behind, and the hostPath content.
func TestVolumesOnContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containerd, real containers and an API server")
	}
	hosttest.RequireHost(t)
	start := time.Now()
	step := func(what string) { t.Logf("%5.1fs %s", time.Since(start).Seconds(), what) }
	dir := t.TempDir()
	srv := testserver.Start(t)
	kube := srv.Kube
	cidr := hosttest.FreePodCIDR(t)
	rt := startContainerd(t, dir, cidr, fmt.Sprintf("berthv%d", time.Now().UnixNano()%1000000), srv.Logs)

	const node = "node-volumes"
	ctx := context.Background()
	agentDir := filepath.Join(dir, "agent")
	startAgent := func(component string) (stop func()) {
		return runAgent(t, agent.Config{
			Kube: kube, NodeName: node, RuntimeEndpoint: rt.Endpoint, DataDir: agentDir,
			PodCIDR: cidr, Log: srv.Log.With("component", component), LeaseRenewInterval: time.Second,
		})
	}
	stopAgent := startAgent("agent")
	step("containerd, API server and agent up")

	hostDir := filepath.Join(dir, "host")
	if err := os.MkdirAll(hostDir, 0o755); err != nil {
		t.Fatal(err)
	}
	hostFile := filepath.Join(hostDir, "host.txt")
	if err := os.WriteFile(hostFile, []byte("from the host"), 0o644); err != nil {
		t.Fatal(err)
	}
	hostCreated := filepath.Join(dir, "host-created")

	cm, err := kube.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "cfg"}, Data: map[string]string{"a": "one", "b": "two"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "sec"}, Data: map[string][]byte{"password": []byte("s3cret")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// A pod whose ConfigMap does not exist yet, created first so that its wait overlaps
	// the rest.
	late := busyboxPod("late", node, corev1.RestartPolicyAlways, "sleep", "3600")
	late.Spec.Volumes = []corev1.Volume{{Name: "late", VolumeSource: corev1.VolumeSource{
		ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "late"}}}}}
	late.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "late", MountPath: "/late"}}
	if late, err = kube.CoreV1().Pods("default").Create(ctx, late, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	dirType, createType := corev1.HostPathDirectory, corev1.HostPathDirectoryOrCreate
	field := func(path, fp string) corev1.DownwardAPIVolumeFile {
		return corev1.DownwardAPIVolumeFile{Path: path, FieldRef: &corev1.ObjectFieldSelector{FieldPath: fp}}
	}
	vols := busyboxPod("vols", node, corev1.RestartPolicyAlways, "sleep", "3600")
	vols.Labels["tier"] = "test"
	vols.Spec.Volumes = []corev1.Volume{
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "mem", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{
			Medium: corev1.StorageMediumMemory, SizeLimit: ptr.To(resource.MustParse("16Mi"))}}},
		{Name: "host", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: hostDir, Type: &dirType}}},
		{Name: "hostnew", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: hostCreated, Type: &createType}}},
		{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
			LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"},
			Items:                []corev1.KeyToPath{{Key: "a", Path: "conf/a.txt"}},
			DefaultMode:          ptr.To[int32](0o440),
		}}},
		{Name: "sec", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "sec"}}},
		{Name: "meta", VolumeSource: corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{
			Items: []corev1.DownwardAPIVolumeFile{field("labels", "metadata.labels"), field("name", "metadata.name")},
		}}},
		{Name: "proj", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{
			{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}, Items: []corev1.KeyToPath{{Key: "b", Path: "b"}}}},
			{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Items: []corev1.KeyToPath{{Key: "password", Path: "pw"}}}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{field("ns", "metadata.namespace")}}},
		}}}},
	}
	c := &vols.Spec.Containers[0]
	c.Env = []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}
	for _, v := range vols.Spec.Volumes {
		c.VolumeMounts = append(c.VolumeMounts, corev1.VolumeMount{Name: v.Name, MountPath: "/v/" + v.Name})
	}
	c.VolumeMounts = append(c.VolumeMounts,
		corev1.VolumeMount{Name: "scratch", MountPath: "/sub", SubPath: "sub/dir"},
		corev1.VolumeMount{Name: "scratch", MountPath: "/expr", SubPathExpr: "per-$(POD_NAME)"},
		corev1.VolumeMount{Name: "host", MountPath: "/host-ro", ReadOnly: true},
		corev1.VolumeMount{Name: "scratch", MountPath: "/prop", MountPropagation: ptr.To(corev1.MountPropagationHostToContainer)})
	if vols, err = kube.CoreV1().Pods("default").Create(ctx, vols, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	var id string
	testserver.WaitForWithin(t, "pod vols Running", 30*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, "vols", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) != 1 {
			return false, err
		}
		id = strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
		return p.Status.Phase == corev1.PodRunning && p.Status.ContainerStatuses[0].State.Running != nil,
			fmt.Errorf("phase %s, %+v", p.Status.Phase, p.Status.ContainerStatuses[0].State)
	})
	step("pod vols Running")

	sh := func(script string) (string, int32) {
		t.Helper()
		resp, err := rt.Runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"sh", "-c", script}, Timeout: 10})
		if err != nil {
			t.Fatalf("exec %q: %v", script, err)
		}
		return strings.TrimSpace(string(resp.Stdout) + string(resp.Stderr)), resp.ExitCode
	}
	for _, tc := range []struct{ script, want string }{
		{"cat /v/cfg/conf/a.txt", "one"},
		{"stat -L -c %a /v/cfg/conf/a.txt", "440"},
		{"readlink /v/cfg/conf", "..data/conf"},
		{"ls /v/cfg", "conf"},
		{"cat /v/sec/password", "s3cret"},
		{"cat /v/meta/name", "vols"},
		{"cat /v/meta/labels", "app=\"vols\"\ntier=\"test\""},
		{"cat /v/proj/b /v/proj/pw /v/proj/ns", "twos3cretdefault"},
		{"cat /v/host/host.txt", "from the host"},
		{"awk '$2 == \"/v/mem\" {print $3}' /proc/mounts", "tmpfs"},
		{"df -k /v/mem | awk 'NR==2 {print $2}'", "16384"},
		{"awk '$2 == \"/v/sec\" {print $3}' /proc/mounts", "tmpfs"},
		{"echo scratch > /v/scratch/x && echo sub > /sub/f && echo expr > /expr/f && echo mem > /v/mem/m && echo ok", "ok"},
		{"touch /v/cfg/new 2>/dev/null || echo read-only", "read-only"},
		{"touch /host-ro/new 2>/dev/null || echo read-only", "read-only"},
		{"touch /v/hostnew/made-inside && echo ok", "ok"},
	} {
		if got, code := sh(tc.script); got != tc.want || code != 0 {
			t.Errorf("%s: %q (exit %d), want %q", tc.script, got, code, tc.want)
		}
	}
	scratch := filepath.Join(agentDir, "pods", string(vols.UID), "volumes", "kubernetes.io~empty-dir", "scratch")
	for rel, want := range map[string]string{"x": "scratch", "sub/dir/f": "sub", "per-vols/f": "expr"} {
		if data, err := os.ReadFile(filepath.Join(scratch, rel)); err != nil || strings.TrimSpace(string(data)) != want {
			t.Errorf("emptyDir file %s on the node: %q, %v", rel, data, err)
		}
	}
	if _, err := os.Stat(filepath.Join(hostCreated, "made-inside")); err != nil {
		t.Errorf("DirectoryOrCreate hostPath: %v", err)
	}
	// HostToContainer: a mount the node makes inside the volume after the container
	// started reaches the container (the deletion below has to unmount it).
	hostMnt := filepath.Join(scratch, "hostmnt")
	if err := os.MkdirAll(hostMnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", hostMnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(hostMnt, "f"), []byte("propagated"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, code := sh("cat /prop/hostmnt/f"); got != "propagated" || code != 0 {
		t.Errorf("HostToContainer: %q (exit %d)", got, code)
	}
	if got, _ := sh("cat /v/scratch/hostmnt/f 2>/dev/null || echo private"); got != "private" {
		t.Errorf("a private mount of the same volume sees the node's later mount: %q", got)
	}
	step("volumes read from inside the container")

	// The pod without its ConfigMap waits with FailedMount and without a sandbox; its
	// ConfigMap is created now, and it is checked on after the update below.
	wantMsg := `MountVolume.SetUp failed for volume "late" : configmap "late" not found`
	testserver.WaitForWithin(t, "FailedMount for pod late", 30*time.Second, func() (bool, error) {
		events, err := kube.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		var seen []string
		for _, e := range events.Items {
			if e.InvolvedObject.Name == "late" && e.Reason == "FailedMount" {
				seen = append(seen, e.Message)
				if e.Message == wantMsg && e.Type == corev1.EventTypeWarning {
					return true, nil
				}
			}
		}
		return false, fmt.Errorf("FailedMount events %q", seen)
	})
	if p, err := kube.CoreV1().Pods("default").Get(ctx, "late", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	} else if cs := p.Status.ContainerStatuses; p.Status.Phase != corev1.PodPending || len(cs) != 1 || cs[0].State.Waiting == nil || cs[0].State.Waiting.Reason != "ContainerCreating" {
		t.Errorf("pod late before its ConfigMap: phase %s, statuses %+v", p.Status.Phase, cs)
	}
	if sbs := rt.sandboxes(t, map[string]string{"io.kubernetes.pod.uid": string(late.UID)}); len(sbs) != 0 {
		t.Errorf("pod late has sandboxes before its volumes are ready: %v", sbs)
	}
	if _, err := kube.CoreV1().ConfigMaps("default").Create(ctx, &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: "late"}, Data: map[string]string{"k": "finally"},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// An update of the ConfigMap reaches the running container, in one step.
	cm.Data["a"] = "uno"
	if _, err := kube.CoreV1().ConfigMaps("default").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	updated := time.Now()
	testserver.WaitForWithin(t, "the ConfigMap's update inside the container", 45*time.Second, func() (bool, error) {
		got, _ := sh("cat /v/cfg/conf/a.txt")
		return got == "uno", fmt.Errorf("a.txt is %q", got)
	})
	step(fmt.Sprintf("ConfigMap update seen in the container after %.1fs", time.Since(updated).Seconds()))

	testserver.WaitForWithin(t, "pod late Running once its ConfigMap exists", 60*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, "late", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s, %+v", p.Status.Phase, p.Status.ContainerStatuses)
	})
	lateFile := filepath.Join(agentDir, "pods", string(late.UID), "volumes", "kubernetes.io~configmap", "late", "k")
	if data, err := os.ReadFile(lateFile); err != nil || string(data) != "finally" {
		t.Errorf("pod late's volume: %q, %v", data, err)
	}
	step("pod late Running after its ConfigMap was created")

	// A restarted agent keeps the running pod's volumes, tmpfs content included.
	stopAgent()
	startAgent("agent2")
	time.Sleep(3 * time.Second) // a few relists and syncs
	if got, code := sh("cat /v/mem/m /v/scratch/x /v/sec/password"); got != "mem\nscratch\ns3cret" || code != 0 {
		t.Errorf("volumes after an agent restart: %q (exit %d)", got, code)
	}
	step("agent restarted, volumes kept")

	// Deletion: no mount and no directory of the pods is left, the host's files are.
	for _, p := range []*corev1.Pod{vols, late} {
		if err := kube.CoreV1().Pods("default").Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []*corev1.Pod{vols, late} {
		testserver.WaitForWithin(t, "pod "+p.Name+" gone", 30*time.Second, func() (bool, error) {
			_, err := kube.CoreV1().Pods("default").Get(ctx, p.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), err
		})
		podDir := filepath.Join(agentDir, "pods", string(p.UID))
		if _, err := os.Lstat(podDir); !os.IsNotExist(err) {
			t.Errorf("pod %s deleted, but %s is still there (%v)", p.Name, podDir, err)
		}
		data, err := os.ReadFile("/proc/self/mountinfo")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data), podDir+"/") {
			t.Errorf("pod %s deleted, but something is still mounted under %s", p.Name, podDir)
		}
	}
	if data, err := os.ReadFile(hostFile); err != nil || string(data) != "from the host" {
		t.Errorf("hostPath file after the pod's deletion: %q, %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(hostCreated, "made-inside")); err != nil {
		t.Errorf("hostPath content after the pod's deletion: %v", err)
	}
	step("pods deleted, volumes gone")
}
