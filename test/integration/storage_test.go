package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"berth.dev/berth/core/hosttest"
)

// TestStorageOnBerthUp is issue 7's walkthrough on a real single-node `berth up` (containerd,
// berth's CSI driver as its child, the PV controller, the scheduler), driven with kubectl
// 1.33 as a user would, with the seeds' WordPress/MySQL storage in berth's images:
//   - the Secret, a hostPath PersistentVolume labelled vol: mysql and a claim selecting it:
//     both Bound; a Deployment writes to it; its replacement pod sees what it wrote;
//   - a claim of the default class (berth's driver) binds at once; a pod writing more than
//     it holds fails with "No space left on device"; the claim grown, the pod restarted
//     (the driver expands offline where the kernel forbids online resize) finishes;
//   - the driver killed, berth up restarts it; the pod keeps its volume, new claims bind;
//   - a claim beyond the driver's pool stays Pending with an event saying why;
//   - deleting the claim deletes the volume and its image file.
func TestStorageOnBerthUp(t *testing.T) {
	skipShort(t)
	hosttest.RequireHost(t)
	for _, tool := range []string{"losetup", "mkfs.ext4", "resize2fs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is missing: %v", tool, err)
		}
	}
	bin := berthBinary(t)
	// `berth up` runs berth-csi-local from beside itself.
	buildBeside(t, bin, "./cmd/berth-csi-local", false)
	dir := filepath.Join(t.TempDir(), "up")
	hostData := filepath.Join(t.TempDir(), "app")
	if err := os.MkdirAll(hostData, 0o755); err != nil {
		fatalf(t, "%v", err)
	}
	p, err := launchBerthCommand(bin, "up", dir, "--pod-cidr", hosttest.FreePodCIDR(t), "--proxy=false",
		"--dns-server=false", "--ingress=false", "--streaming-address", "0.0.0.0:0", "--node-name", "storage-node", "--csi-capacity", "4Gi")
	if err != nil {
		fatalf(t, "%v", err)
	}
	k := kubectlRun{Version: "1.33", Kubeconfig: p.kubeconfig}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("berth up output:\n%s", tail(p.logs.String(), 80))
			saveArtifact(t, "berth-up.log", p.logs.String())
			logProblems(t, k, p.logs.String())
			if b, err := os.ReadFile(filepath.Join(dir, "agent", "logs", "csi-local.log")); err == nil {
				t.Logf("csi-local log:\n%s", tail(string(b), 30))
			}
		}
		// Pods first (their volumes unmounted by the agent), then claims (volumes deleted
		// by the driver), then the cluster; then whatever is left on the host.
		k.run(t, "delete", "pods,deployments", "--all", "--grace-period=1", "--wait=true", "--timeout=60s")
		k.run(t, "delete", "pvc", "--all", "--wait=true", "--timeout=60s")
		if _, err := p.stop(60 * time.Second); err != nil {
			t.Logf("berth up after SIGTERM: %v", err)
		}
		hosttest.KillShims(t, dir)
		hosttest.UnmountUnder(t, dir)
		if n := hosttest.DetachLoopsUnder(t, dir); n > 0 && !t.Failed() {
			t.Errorf("%d loop devices were left attached after every pod and claim was deleted", n)
		}
		_ = exec.Command("ip", "link", "del", "berth0").Run()
		restateFailure(t)
	})

	waitFor(t, 90*time.Second, "the node Ready with berth's CSI driver registered", func() (bool, string) {
		res := k.run(t, "get", "csinode", "storage-node", "-o", "jsonpath={.spec.drivers[*].name}")
		return strings.TrimSpace(res.Stdout) == "local.csi.berth.dev", res.Stdout + res.Stderr
	})
	res := k.mustRun(t, "get", "storageclass")
	if !strings.Contains(res.Stdout, "local (default)") || !strings.Contains(res.Stdout, "local.csi.berth.dev") {
		fatalf(t, "kubectl get storageclass: want local (default) of local.csi.berth.dev:\n%s", res.Stdout)
	}

	// The seeds' static volume, selected by label.
	apply(t, k, fmt.Sprintf(seedStorageManifest, hostData))
	waitFor(t, 60*time.Second, "app-pv and app-pvc Bound to each other", func() (bool, string) {
		res := k.run(t, "get", "pv,pvc", "--no-headers")
		pv, pvc := false, false
		for _, l := range strings.Split(res.Stdout, "\n") {
			f := strings.Fields(l)
			pv = pv || (len(f) > 5 && f[0] == "persistentvolume/app-pv" && f[4] == "Bound" && f[5] == "default/app-pvc")
			pvc = pvc || (len(f) > 2 && f[0] == "persistentvolumeclaim/app-pvc" && f[1] == "Bound" && f[2] == "app-pv")
		}
		return pv && pvc, res.Stdout + res.Stderr
	})
	first := runningPod(t, k, "app=mysql", "")
	waitFor(t, 30*time.Second, "the first pod's line in the volume", func() (bool, string) {
		b, _ := os.ReadFile(filepath.Join(hostData, "boots"))
		return strings.Count(string(b), "boot") == 1, string(b)
	})
	k.mustRun(t, "delete", "pod", first, "--wait=false")
	second := runningPod(t, k, "app=mysql", first)
	waitFor(t, 30*time.Second, "the replacement pod to see both pods' lines", func() (bool, string) {
		res := k.run(t, "exec", second, "--", "cat", "/var/lib/mysql/boots")
		return strings.Count(res.Stdout, "boot") == 2, res.Stdout + res.Stderr
	})

	// A claim of the default class: berth's driver makes the volume at once.
	apply(t, k, dynamicClaimManifest)
	waitFor(t, 30*time.Second, "claim data Bound to a new volume", func() (bool, string) {
		res := k.run(t, "get", "pvc", "data", "-o", "jsonpath={.status.phase} {.spec.storageClassName} {.spec.volumeName}")
		f := strings.Fields(res.Stdout)
		return len(f) == 3 && f[0] == "Bound" && f[1] == "local" && strings.HasPrefix(f[2], "pvc-"), res.Stdout + res.Stderr
	})
	pv := strings.TrimSpace(k.mustRun(t, "get", "pvc", "data", "-o", "jsonpath={.spec.volumeName}").Stdout)
	image := filepath.Join(dir, "agent", "csi-local", "volumes", pv+".img")
	if _, err := os.Stat(image); err != nil {
		fatalf(t, "the volume's image file: %v", err)
	}
	apply(t, k, writerPodManifest)
	waitFor(t, 60*time.Second, "the writer to run out of space", func() (bool, string) {
		res := k.run(t, "logs", "writer")
		return strings.Contains(res.Stdout, "No space left on device"), res.Stdout + res.Stderr
	})

	// Grow the claim; the pod restarted finishes its write.
	k.mustRun(t, "patch", "pvc", "data", "-p", `{"spec":{"resources":{"requests":{"storage":"160Mi"}}}}`)
	waitFor(t, 30*time.Second, "the volume grown to 160Mi", func() (bool, string) {
		res := k.run(t, "get", "pv", pv, "-o", "jsonpath={.spec.capacity.storage}")
		return res.Stdout == "160Mi", res.Stdout + res.Stderr
	})
	k.mustRun(t, "delete", "pod", "writer", "--grace-period=1")
	apply(t, k, writerPodManifest)
	waitFor(t, 60*time.Second, "the restarted writer to finish", func() (bool, string) {
		res := k.run(t, "logs", "writer")
		return strings.Contains(res.Stdout, "WROTE"), res.Stdout + res.Stderr
	})
	waitFor(t, 30*time.Second, "the claim to report 160Mi with no resize pending", func() (bool, string) {
		res := k.run(t, "get", "pvc", "data", "-o", "jsonpath={.status.capacity.storage} {.status.conditions[*].type}")
		return strings.TrimSpace(res.Stdout) == "160Mi", res.Stdout + res.Stderr
	})

	// The driver crashes: berth up starts it again, the running pod keeps its volume, and
	// new claims are provisioned again once it is back.
	old := driverPID(t, dir)
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		fatalf(t, "kill the CSI driver (pid %d): %v", old, err)
	}
	waitFor(t, 30*time.Second, "the CSI driver restarted", func() (bool, string) {
		pid := driverPID(t, dir)
		return pid != 0 && pid != old, fmt.Sprintf("driver pid %d (killed %d)", pid, old)
	})
	res = k.mustRun(t, "exec", "writer", "--", "sh", "-c", "ls -l /data/big && echo still-here > /data/note && cat /data/note")
	if !strings.Contains(res.Stdout, "still-here") {
		t.Errorf("the pod's volume after the driver's restart:\n%s", res)
	}
	apply(t, k, strings.ReplaceAll(dynamicClaimManifest, "name: data", "name: after-restart"))
	waitFor(t, 60*time.Second, "a claim Bound after the driver's restart", func() (bool, string) {
		res := k.run(t, "get", "pvc", "after-restart", "-o", "jsonpath={.status.phase}")
		return res.Stdout == "Bound", res.Stdout + res.Stderr
	})

	// Too big for the pool: Pending, and an event says why.
	apply(t, k, hugeClaimManifest)
	waitFor(t, 30*time.Second, "a ProvisioningFailed event for claim huge", func() (bool, string) {
		res := k.run(t, "get", "events", "--field-selector", "involvedObject.name=huge,reason=ProvisioningFailed", "-o", "jsonpath={.items[*].message}")
		return strings.Contains(res.Stdout, "ResourceExhausted") && strings.Contains(res.Stdout, "10Ti"), res.Stdout + res.Stderr
	})
	if phase := k.mustRun(t, "get", "pvc", "huge", "-o", "jsonpath={.status.phase}").Stdout; phase != "Pending" {
		t.Errorf("claim huge is %s, want Pending", phase)
	}

	// Deleting the claim deletes the volume, its PersistentVolume and its image.
	k.mustRun(t, "delete", "pod", "writer", "--grace-period=1")
	k.mustRun(t, "delete", "pvc", "data")
	waitFor(t, 60*time.Second, "the volume and its image gone", func() (bool, string) {
		res := k.run(t, "get", "pv", pv)
		_, err := os.Stat(image)
		return res.Code != 0 && os.IsNotExist(err), fmt.Sprintf("%s%s image: %v", res.Stdout, res.Stderr, err)
	})
}

// driverPID is the process id of the berth-csi-local serving the cluster under dir, or 0.
func driverPID(t *testing.T, dir string) int {
	t.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, f := range procs {
		b, err := os.ReadFile(f)
		if err != nil || !strings.Contains(string(b), "berth-csi-local") || !strings.Contains(string(b), dir) {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(f, "/proc/%d/cmdline", &pid); err == nil {
			return pid
		}
	}
	return 0
}

// apply applies a manifest with kubectl.
func apply(t *testing.T, k kubectlRun, manifest string) {
	t.Helper()
	f := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(f, []byte(manifest), 0o644); err != nil {
		fatalf(t, "%v", err)
	}
	k.mustRun(t, "apply", "-f", f)
}

// runningPod waits for a Ready pod matching selector other than not, and returns its name.
func runningPod(t *testing.T, k kubectlRun, selector, not string) string {
	t.Helper()
	var name string
	waitFor(t, 60*time.Second, "a Ready pod "+selector, func() (bool, string) {
		res := k.run(t, "get", "pods", "-l", selector, "--no-headers", "-o", "custom-columns=N:.metadata.name,R:.status.containerStatuses[0].ready,D:.metadata.deletionTimestamp")
		for _, l := range strings.Split(res.Stdout, "\n") {
			f := strings.Fields(l)
			if len(f) == 3 && f[0] != not && f[1] == "true" && f[2] == "<none>" {
				name = f[0]
				return true, ""
			}
		}
		return false, res.Stdout + res.Stderr
	})
	return name
}

// The seeds' mysql storage (app-pv, app-pvc with a selector), with busybox in MySQL's
// place: each start appends a line to the volume.
const seedStorageManifest = `apiVersion: v1
kind: Secret
metadata: {name: mysql-pass}
stringData: {password: s3cret}
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: app-pv
  labels: {vol: mysql}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: %s}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: app-pvc}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
  selector:
    matchLabels: {vol: mysql}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: mysql}
spec:
  selector: {matchLabels: {app: mysql}}
  template:
    metadata: {labels: {app: mysql}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: mysql
        image: berth.local/busybox:1.35
        command: ["sh", "-c", "echo boot >> /var/lib/mysql/boots; exec sleep 3600"]
        env:
        - name: MYSQL_ROOT_PASSWORD
          valueFrom: {secretKeyRef: {name: mysql-pass, key: password}}
        volumeMounts:
        - {name: mysql-persistent-storage, mountPath: /var/lib/mysql}
      volumes:
      - name: mysql-persistent-storage
        persistentVolumeClaim: {claimName: app-pvc}
`

const dynamicClaimManifest = `apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: data}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 64Mi}}
`

// writerPodManifest writes 100 MiB into its claim (64Mi at first).
const writerPodManifest = `apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  terminationGracePeriodSeconds: 1
  restartPolicy: Never
  containers:
  - name: w
    image: berth.local/busybox:1.35
    command: ["sh", "-c", "dd if=/dev/zero of=/data/big bs=1M count=100 && echo WROTE; exec sleep 3600"]
    volumeMounts: [{name: d, mountPath: /data}]
  volumes:
  - name: d
    persistentVolumeClaim: {claimName: data}
`

const hugeClaimManifest = `apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: huge}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 10Ti}}
`
