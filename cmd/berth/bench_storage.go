package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
)

const (
	storageNamespace = "bench-storage"
	storageClassName = "bench-local"
	// localDriverName is berth's CSI driver (drivers/csi/local).
	localDriverName = "local.csi.berth.dev"
	// The targets of issue 7.
	targetBindP99        = time.Second
	targetPVCStartupCost = 300 * time.Millisecond
)

// storageBenchOptions are the flags of `berth bench storage`.
type storageBenchOptions struct {
	claims, pods int
	size         string
	serverBinary string
	agentBinary  string
	driverBinary string
	startTimeout time.Duration
	timeout      time.Duration
}

func newBenchStorageCommand() *cobra.Command {
	var o storageBenchOptions
	cmd := &cobra.Command{
		Use:   "storage",
		Short: "Provision claims through berth's CSI driver and start pods with and without one; print binding and start-up latency",
		Long: `Measure storage on a real node. Starts a berth server (API server, controllers with the
PersistentVolume controller, scheduler) on a temporary data dir, a containerd of its own,
the agent as a separate process, and berth's CSI driver (berth-csi-local) with its socket
in the agent's plugins_registry, its volumes in the temporary dir. A StorageClass of the
driver with Immediate binding and reclaimPolicy Delete is created.

Binding: --claims PersistentVolumeClaims of --size are created at once (16 at a time);
each one's latency runs from its create call to the watch event that shows it Bound (the
PV controller hands it to the agent's provisioner, which creates the volume through the
driver - a sparse file, formatted when first staged - and the PersistentVolume, which the PV
controller binds). Target: p99 at most 1 s. The claims are then deleted, and with them
their volumes.

Start-up: --pods times, alternately, a pod of busybox sleep without a volume, and the same
pod mounting a claim of its own, created and Bound beforehand: each pod's start-up runs
from its create call to the watch event that shows it Ready, so the second includes
staging (a loop device, mkfs on first use, an fsck and a mount) and publishing (a bind mount). Target: the
pod with a claim at most 300 ms slower at p50.

Everything is removed afterwards, on failure too. Needs root, containerd, runc, Debian's
CNI plugins, busybox-static, losetup and mkfs.ext4. A missed target is a figure, not a
failure.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.claims < 1 || o.pods < 1 {
				return fmt.Errorf("--claims and --pods must be at least 1")
			}
			if _, err := resource.ParseQuantity(o.size); err != nil {
				return fmt.Errorf("--size %q: %w", o.size, err)
			}
			if err := checkStartupHost(); err != nil {
				return fmt.Errorf("bench storage: %w", err)
			}
			for _, tool := range []string{"losetup", "mkfs.ext4"} {
				if _, err := exec.LookPath(tool); err != nil {
					return fmt.Errorf("bench storage: %s is missing: %w", tool, err)
				}
			}
			exe, err := os.Executable()
			if err != nil {
				return fmt.Errorf("find the berth binary (use --server-binary, --agent-binary and --driver-binary): %w", err)
			}
			if o.serverBinary == "" {
				o.serverBinary = exe
			}
			if o.agentBinary == "" {
				o.agentBinary = exe
				if alone := filepath.Join(filepath.Dir(exe), "berth-agent"); fileExists(alone) {
					o.agentBinary = alone
				}
			}
			if o.driverBinary == "" {
				o.driverBinary = filepath.Join(filepath.Dir(exe), "berth-csi-local")
			}
			if !fileExists(o.driverBinary) {
				return fmt.Errorf("bench storage: the CSI driver %s is missing (make build puts it there; or --driver-binary)", o.driverBinary)
			}
			if err := runStorageBench(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr()); err != nil {
				return fmt.Errorf("bench storage: %w", err)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.claims, "claims", 100, "how many claims to provision at once")
	f.IntVar(&o.pods, "pods", 10, "how many pods to start of each kind (without and with a claim)")
	f.StringVar(&o.size, "size", "64Mi", "each claim's size")
	f.StringVar(&o.serverBinary, "server-binary", "", "berth binary whose server command is started (default: this binary)")
	f.StringVar(&o.agentBinary, "agent-binary", "", "binary the agent is started from (default: berth-agent next to this binary, else this binary)")
	f.StringVar(&o.driverBinary, "driver-binary", "", "berth's CSI driver (default: berth-csi-local next to this binary)")
	f.DurationVar(&o.startTimeout, "start-timeout", time.Minute, "how long to wait for the server, containerd, the node and the driver to become ready")
	f.DurationVar(&o.timeout, "timeout", 3*time.Minute, "how long each phase may take before the run fails")
	return cmd
}

// storageResult is what one run measured.
type storageResult struct {
	bind, release      quantiles
	allBound           time.Duration
	plain, withClaim   quantiles
	claimBoundForPod   quantiles // the pods' own claims, create to Bound, one at a time
	cidr, bridge, size string
}

func runStorageBench(ctx context.Context, o storageBenchOptions, out, logw io.Writer) error {
	return withBenchCluster(ctx, o.serverBinary, nil, o.startTimeout, 0, logw, func(ctx context.Context, c *benchCluster) error {
		return measureStorage(ctx, c, o, out, logw)
	})
}

// measureStorage runs the node (containerd, the driver, the agent) next to the cluster c,
// then the two measurements. Its defers undo everything in reverse order.
func measureStorage(ctx context.Context, c *benchCluster, o storageBenchOptions, out, logw io.Writer) (err error) {
	dir, err := os.MkdirTemp("", "berth-storage-")
	if err != nil {
		return fmt.Errorf("create temp dir for containerd, the driver and the agent: %w", err)
	}
	fmt.Fprintf(logw, "node dir %s (containerd, the driver's volumes, the agent's data and logs)\n", dir)
	defer func() {
		if rerr := os.RemoveAll(dir); rerr != nil {
			cleanupError(&err, fmt.Errorf("remove %s: %w", dir, rerr), logw)
		}
	}()
	res := &storageResult{size: o.size}
	if res.cidr, err = freeBenchPodCIDR(); err != nil {
		return err
	}
	res.bridge = fmt.Sprintf("berthv%d", os.Getpid()%100000)
	rt, err := startBenchRuntime(ctx, dir, res.cidr, res.bridge, o.startTimeout)
	if err != nil {
		return err
	}
	defer func() { cleanupError(&err, rt.stop(logw), logw) }()

	agentDir := filepath.Join(dir, "agent")
	registry := filepath.Join(agentDir, "plugins_registry")
	if err := os.MkdirAll(registry, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", registry, err)
	}
	drv, err := startBenchDriver(o.driverBinary, filepath.Join(registry, localDriverName+".sock"), filepath.Join(dir, "csi"), filepath.Join(dir, "csi.log"))
	if err != nil {
		return err
	}
	// Stopped after the agent (defers run last first), so the agent's last unmounts are
	// answered; then whatever it left mounted or attached under dir is undone.
	defer func() {
		cleanupError(&err, drv.stop(), logw)
		cleanupError(&err, detachLoopsUnder(dir), logw)
	}()

	kubeconfig := filepath.Join(filepath.Dir(c.srv.logPath), "admin.kubeconfig")
	agent, err := startBenchAgent(o.agentBinary, kubeconfig, rt.proc.Endpoint, agentDir, res.cidr)
	if err != nil {
		return err
	}
	defer func() {
		cleanupError(&err, agent.stop(30*time.Second), logw)
		if err != nil {
			fmt.Fprintf(logw, "the end of the agent log:\n%s", agent.logTail(30))
		}
	}()
	if err := waitNodeReady(ctx, c.kube, agent, o.startTimeout); err != nil {
		return err
	}
	if err := waitDriverRegistered(ctx, c.kube, startupNodeName, localDriverName, o.startTimeout); err != nil {
		return err
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: storageNamespace}}
	if _, err := c.kube.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", storageNamespace, err)
	}
	immediate, del := storagev1.VolumeBindingImmediate, corev1.PersistentVolumeReclaimDelete
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: storageClassName}, Provisioner: localDriverName,
		VolumeBindingMode: &immediate, ReclaimPolicy: &del}
	if _, err := c.kube.StorageV1().StorageClasses().Create(ctx, sc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create StorageClass %s: %w", storageClassName, err)
	}
	// Registered before anything is created, so that pods and claims go (through the agent
	// and the driver) before they stop.
	defer func() { cleanupError(&err, removeStorageObjects(c.kube, o.timeout), logw) }()

	fmt.Fprintf(logw, "binding: %d claims of %s at once\n", o.claims, o.size)
	if err := measureBinding(ctx, c.kube, o, res); err != nil {
		return err
	}
	fmt.Fprintf(logw, "start-up: %d pods without and %d with a claim, alternately\n", o.pods, o.pods)
	if err := measurePodsWithClaims(ctx, c.kube, o, res); err != nil {
		return err
	}
	writeStorageResult(out, c.machine, o, res)
	return nil
}

// measureBinding creates o.claims claims at once and times each from its create call to
// Bound, then deletes them and times each until its PersistentVolume is gone.
func measureBinding(ctx context.Context, kube kubernetes.Interface, o storageBenchOptions, res *storageResult) error {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	w, err := kube.CoreV1().PersistentVolumeClaims(storageNamespace).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("watch claims: %w", err)
	}
	defer w.Stop()
	var mu sync.Mutex
	created := map[string]time.Time{}
	names := make(chan string)
	errs := make(chan error, 16)
	var wg sync.WaitGroup
	start := time.Now()
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for name := range names {
				t := time.Now()
				if _, err := kube.CoreV1().PersistentVolumeClaims(storageNamespace).Create(ctx, benchClaim(name, o.size), metav1.CreateOptions{}); err != nil {
					errs <- fmt.Errorf("create claim %s: %w", name, err)
					return
				}
				mu.Lock()
				created[name] = t
				mu.Unlock()
			}
		}()
	}
	go func() {
		defer close(names)
		for i := range o.claims {
			select {
			case names <- fmt.Sprintf("bind-%03d", i):
			case <-ctx.Done():
				return
			}
		}
	}()
	bound := map[string]time.Time{}
	for len(bound) < o.claims {
		select {
		case err := <-errs:
			return err
		case ev, ok := <-w.ResultChan():
			if !ok {
				return fmt.Errorf("the claims' watch ended with %d of %d Bound", len(bound), o.claims)
			}
			pvc, isClaim := ev.Object.(*corev1.PersistentVolumeClaim)
			if isClaim && pvc.Status.Phase == corev1.ClaimBound {
				if _, seen := bound[pvc.Name]; !seen {
					bound[pvc.Name] = time.Now()
				}
			}
		case <-ctx.Done():
			return fmt.Errorf("%d of %d claims Bound after %s: %w", len(bound), o.claims, o.timeout, pendingReason(kube))
		}
	}
	res.allBound = time.Since(start)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	lat := make([]time.Duration, 0, len(bound))
	for name, t := range bound {
		lat = append(lat, t.Sub(created[name]))
	}
	res.bind = quantilesOf(lat)

	// Deletion: claim deleted, volume deleted by the driver, PV gone.
	pvs := map[string]time.Time{}
	pvw, err := kube.CoreV1().PersistentVolumes().Watch(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("watch volumes: %w", err)
	}
	defer pvw.Stop()
	list, err := kube.CoreV1().PersistentVolumeClaims(storageNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("list claims: %w", err)
	}
	for _, pvc := range list.Items {
		pvs[pvc.Spec.VolumeName] = time.Now()
		if err := kube.CoreV1().PersistentVolumeClaims(storageNamespace).Delete(ctx, pvc.Name, metav1.DeleteOptions{}); err != nil {
			return fmt.Errorf("delete claim %s: %w", pvc.Name, err)
		}
	}
	var gone []time.Duration
	for len(gone) < len(pvs) {
		select {
		case ev, ok := <-pvw.ResultChan():
			if !ok {
				return errors.New("the volumes' watch ended")
			}
			if pv, isPV := ev.Object.(*corev1.PersistentVolume); isPV && ev.Type == watch.Deleted {
				if t, ours := pvs[pv.Name]; ours {
					gone = append(gone, time.Since(t))
				}
			}
		case <-ctx.Done():
			return fmt.Errorf("%d of %d volumes deleted after %s", len(gone), len(pvs), o.timeout)
		}
	}
	res.release = quantilesOf(gone)
	return nil
}

// measurePodsWithClaims starts o.pods pods without a volume and o.pods with a claim of
// their own, alternately and one at a time, each removed before the next.
func measurePodsWithClaims(ctx context.Context, kube kubernetes.Interface, o storageBenchOptions, res *storageResult) error {
	var plain, withClaim, claimBound []time.Duration
	for i := range o.pods {
		d, err := timePodReady(ctx, kube, benchStoragePod(fmt.Sprintf("plain-%02d", i), ""), o.timeout)
		if err != nil {
			return err
		}
		plain = append(plain, d)

		claim := fmt.Sprintf("data-%02d", i)
		b, err := timeClaimBound(ctx, kube, benchClaim(claim, o.size), o.timeout)
		if err != nil {
			return err
		}
		claimBound = append(claimBound, b)
		d, err = timePodReady(ctx, kube, benchStoragePod(fmt.Sprintf("claim-%02d", i), claim), o.timeout)
		if err != nil {
			return err
		}
		withClaim = append(withClaim, d)
		if err := deleteAndWait(ctx, kube, "persistentvolumeclaims", claim, o.timeout); err != nil {
			return err
		}
	}
	res.plain, res.withClaim, res.claimBoundForPod = quantilesOf(plain), quantilesOf(withClaim), quantilesOf(claimBound)
	return nil
}

// timePodReady creates pod and returns the time from the create call to the watch event
// that shows it Ready; then it deletes the pod and waits until it is gone.
func timePodReady(ctx context.Context, kube kubernetes.Interface, pod *corev1.Pod, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	pods := kube.CoreV1().Pods(storageNamespace)
	w, err := pods.Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", pod.Name).String()})
	if err != nil {
		return 0, fmt.Errorf("watch pod %s: %w", pod.Name, err)
	}
	defer w.Stop()
	start := time.Now()
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return 0, fmt.Errorf("create pod %s: %w", pod.Name, err)
	}
	var took time.Duration
	for took == 0 {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return 0, fmt.Errorf("the watch of pod %s ended", pod.Name)
			}
			if p, isPod := ev.Object.(*corev1.Pod); isPod && podIsReady(p) {
				took = time.Since(start)
			}
		case <-ctx.Done():
			return 0, fmt.Errorf("pod %s not Ready after %s: %w", pod.Name, timeout, podEvents(kube, pod.Name))
		}
	}
	return took, deleteAndWait(ctx, kube, "pods", pod.Name, timeout)
}

// timeClaimBound creates a claim and returns the time from the create call to the watch
// event that shows it Bound.
func timeClaimBound(ctx context.Context, kube kubernetes.Interface, pvc *corev1.PersistentVolumeClaim, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	claims := kube.CoreV1().PersistentVolumeClaims(storageNamespace)
	w, err := claims.Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", pvc.Name).String()})
	if err != nil {
		return 0, fmt.Errorf("watch claim %s: %w", pvc.Name, err)
	}
	defer w.Stop()
	start := time.Now()
	if _, err := claims.Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		return 0, fmt.Errorf("create claim %s: %w", pvc.Name, err)
	}
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return 0, fmt.Errorf("the watch of claim %s ended", pvc.Name)
			}
			if c, isClaim := ev.Object.(*corev1.PersistentVolumeClaim); isClaim && c.Status.Phase == corev1.ClaimBound {
				return time.Since(start), nil
			}
		case <-ctx.Done():
			return 0, fmt.Errorf("claim %s not Bound after %s: %w", pvc.Name, timeout, pendingReason(kube))
		}
	}
}

// deleteAndWait deletes a pod or claim of the benchmark's namespace and waits until it is
// gone (a claim's volume then goes too, in the background).
func deleteAndWait(ctx context.Context, kube kubernetes.Interface, resource, name string, timeout time.Duration) error {
	get := func() error {
		if resource == "pods" {
			_, err := kube.CoreV1().Pods(storageNamespace).Get(ctx, name, metav1.GetOptions{})
			return err
		}
		_, err := kube.CoreV1().PersistentVolumeClaims(storageNamespace).Get(ctx, name, metav1.GetOptions{})
		return err
	}
	var err error
	if resource == "pods" {
		err = kube.CoreV1().Pods(storageNamespace).Delete(ctx, name, metav1.DeleteOptions{})
	} else {
		err = kube.CoreV1().PersistentVolumeClaims(storageNamespace).Delete(ctx, name, metav1.DeleteOptions{})
	}
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s %s: %w", resource, name, err)
	}
	deadline := time.Now().Add(timeout)
	for {
		err := get()
		if apierrors.IsNotFound(err) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s %s still there %s after its delete (last: %v)", resource, name, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// removeStorageObjects deletes what the benchmark left in its namespace: pods first, so
// that their volumes are unmounted, then claims, so that their volumes are deleted, and
// waits for the volumes to go.
func removeStorageObjects(kube kubernetes.Interface, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	var errs []error
	if err := kube.CoreV1().Pods(storageNamespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		errs = append(errs, fmt.Errorf("delete pods: %w", err))
	}
	if err := kube.CoreV1().PersistentVolumeClaims(storageNamespace).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
		errs = append(errs, fmt.Errorf("delete claims: %w", err))
	}
	for {
		pods, perr := kube.CoreV1().Pods(storageNamespace).List(ctx, metav1.ListOptions{})
		pvs, verr := kube.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if perr == nil && verr == nil && len(pods.Items) == 0 && len(pvs.Items) == 0 {
			return errors.Join(errs...)
		}
		if ctx.Err() != nil {
			left := "?"
			if perr == nil && verr == nil {
				left = fmt.Sprintf("%d pods and %d volumes", len(pods.Items), len(pvs.Items))
			}
			return errors.Join(append(errs, fmt.Errorf("%s left after %s", left, timeout))...)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// pendingReason is the newest event of the benchmark's namespace, to say why a claim or
// pod is late.
func pendingReason(kube kubernetes.Interface) error {
	return podEvents(kube, "")
}

// podEvents returns the newest warning event of the benchmark's namespace (of one object
// when name is set) as an error.
func podEvents(kube kubernetes.Interface, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	opts := metav1.ListOptions{}
	if name != "" {
		opts.FieldSelector = fields.OneTermEqualSelector("involvedObject.name", name).String()
	}
	evs, err := kube.CoreV1().Events(storageNamespace).List(ctx, opts)
	if err != nil || len(evs.Items) == 0 {
		return errors.New("no event says why")
	}
	last := evs.Items[len(evs.Items)-1]
	return fmt.Errorf("last event: %s %s %s: %s", last.InvolvedObject.Kind, last.InvolvedObject.Name, last.Reason, last.Message)
}

func benchClaim(name, size string) *corev1.PersistentVolumeClaim {
	class := storageClassName
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: storageNamespace},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: &class,
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{
				corev1.ResourceStorage: resource.MustParse(size),
			}},
		},
	}
}

// benchStoragePod is busybox sleeping, with the claim mounted at /data when one is named.
func benchStoragePod(name, claim string) *corev1.Pod {
	grace := int64(1)
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: storageNamespace},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "c", Image: "berth.local/busybox:1.35", ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"sleep", "3600"},
			}},
		},
	}
	if claim != "" {
		pod.Spec.Volumes = []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
			PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: claim},
		}}}
		pod.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "data", MountPath: "/data"}}
	}
	return pod
}

// waitDriverRegistered waits until the node's CSINode lists the driver.
func waitDriverRegistered(ctx context.Context, kube kubernetes.Interface, node, driver string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		cn, err := kube.StorageV1().CSINodes().Get(ctx, node, metav1.GetOptions{})
		if err == nil {
			for _, d := range cn.Spec.Drivers {
				if d.Name == driver {
					return nil
				}
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CSI driver %s not registered on node %s after %s (CSINode: %v)", driver, node, timeout, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// benchDriver is berth's CSI driver, run by the benchmark.
type benchDriver struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

func startBenchDriver(binary, socket, stateDir, logPath string) (*benchDriver, error) {
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create driver log: %w", err)
	}
	defer logFile.Close()
	cmd := exec.Command(binary, "--endpoint", "unix://"+socket, "--node-id", startupNodeName,
		"--state-dir", stateDir, "--capacity", "1Ti")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", binary, err)
	}
	d := &benchDriver{cmd: cmd, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(d.exited)
	}()
	return d, nil
}

func (d *benchDriver) stop() error {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
		return nil
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
		return errors.New("the CSI driver did not stop within 10 s of SIGTERM; killed")
	}
}

// detachLoopsUnder unmounts what is mounted under dir and detaches the loop devices whose
// backing files are there, so that a failed run leaves nothing attached.
func detachLoopsUnder(dir string) error {
	errs := []error{unmountUnder(dir)}
	out, err := exec.Command("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE").Output()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("losetup --list: %w", err))...)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && strings.HasPrefix(f[1], dir+"/") {
			if out, err := exec.Command("losetup", "-d", f[0]).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("losetup -d %s: %w: %s", f[0], err, strings.TrimSpace(string(out))))
			}
		}
	}
	return errors.Join(errs...)
}

func writeStorageResult(out io.Writer, machine machineInfo, o storageBenchOptions, r *storageResult) {
	line := func(k, v, tgt string) {
		if tgt == "" {
			fmt.Fprintf(out, "%-26s %s\n", k+":", v)
			return
		}
		fmt.Fprintf(out, "%-26s %-34s %s\n", k+":", v, tgt)
	}
	sec := func(d time.Duration) string { return fmt.Sprintf("%.3f s", d.Seconds()) }
	line("machine", fmt.Sprintf("%d CPUs, %s, %s memory, Linux %s", machine.CPUs, machine.CPUModel, gib(machine.MemoryBytes), machine.Kernel), "")
	line("load average", machine.LoadAvg+" (before the run)", "")
	line("run", fmt.Sprintf("1 node: agent (own process) on containerd, berth-csi-local; StorageClass %s Immediate, Delete", storageClassName), "")
	line("claims", fmt.Sprintf("%d of %s at once, 16 creates at a time", o.claims, r.size), "")
	line("create to Bound p50", sec(r.bind.P50), "")
	line("create to Bound p99", sec(r.bind.P99), fmt.Sprintf("target ≤ %s  %s", sec(targetBindP99), passMiss(r.bind.P99 <= targetBindP99)))
	line("create to Bound max", sec(r.bind.Max), "")
	line("all Bound", sec(r.allBound)+" after the first create", "")
	line("claim delete to PV gone", fmt.Sprintf("p50 %s, p99 %s (volume deleted through the driver)", sec(r.release.P50), sec(r.release.P99)), "")
	line("pods", fmt.Sprintf("%d without and %d with a claim of their own (Bound first), alternately, one at a time", o.pods, o.pods), "")
	line("pod start-up p50", fmt.Sprintf("without %s, with a claim %s", sec(r.plain.P50), sec(r.withClaim.P50)), "")
	cost := r.withClaim.P50 - r.plain.P50
	line("claim's cost p50", sec(cost), fmt.Sprintf("target ≤ %s  %s", sec(targetPVCStartupCost), passMiss(cost <= targetPVCStartupCost)))
	line("pod start-up p99", fmt.Sprintf("without %s, with a claim %s", sec(r.plain.P99), sec(r.withClaim.P99)), "")
	line("the pods' claims Bound", fmt.Sprintf("p50 %s, p99 %s (one at a time, before each pod)", sec(r.claimBoundForPod.P50), sec(r.claimBoundForPod.P99)), "")
}
