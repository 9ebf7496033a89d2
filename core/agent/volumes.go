package agent

// Pod volumes, set up as the kubelet's volume plugins do, on the node's file system:
//
//	DATA_DIR/pods/UID/volumes/kubernetes.io~empty-dir/NAME    emptyDir (tmpfs for medium Memory)
//	DATA_DIR/pods/UID/volumes/kubernetes.io~configmap/NAME    configMap
//	DATA_DIR/pods/UID/volumes/kubernetes.io~secret/NAME       secret (tmpfs)
//	DATA_DIR/pods/UID/volumes/kubernetes.io~downward-api/NAME downwardAPI (tmpfs)
//	DATA_DIR/pods/UID/volumes/kubernetes.io~projected/NAME    projected (tmpfs)
//
// hostPath volumes are the host's path itself. The pod's logs stay in their own directory,
// DATA_DIR/pods/NS_NAME_UID (podLogDir), since a container may be named "volumes".
// Files of configMap, secret, downwardAPI and projected volumes are written by
// writeAtomic (atomicwriter.go), so an update reaches running containers in one step.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	podresource "k8s.io/kubernetes/pkg/api/v1/resource"
	"k8s.io/kubernetes/pkg/fieldpath"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"

	"berth.dev/berth/core/agent/csi"
)

const (
	// volumeRefresh is how often a pod whose volumes follow ConfigMaps or Secrets is synced
	// again to bring their files up to date. With objectCacheTTL below it, each refresh
	// reads objects at most objectCacheTTL old, so an update reaches the pod's files
	// within about 25 s (the kubelet: within its sync period, about a minute), at the
	// cost of at most one GET per referenced object per node every volumeRefresh.
	volumeRefresh  = 15 * time.Second
	objectCacheTTL = 10 * time.Second
	// A volume that cannot be set up is tried again after 1 s, doubling, as the
	// kubelet's volume manager backs off; but to at most 30 s (the kubelet: 2 min), so
	// that a pod starts soon after the ConfigMap or Secret it waits for is created, at
	// the cost of one GET per waiting pod every 30 s.
	mountBackoffInitial = time.Second
	mountBackoffMax     = 30 * time.Second
	// defaultFileMode is the mode of a projected file when neither the item nor the
	// volume sets one (the API server defaults defaultMode to this too).
	defaultFileMode int32 = 0o644
)

// The kubelet's plugin directory names, kept so that tools that know them find berth's.
const (
	kindEmptyDir    = "kubernetes.io~empty-dir"
	kindConfigMap   = "kubernetes.io~configmap"
	kindSecret      = "kubernetes.io~secret"
	kindDownwardAPI = "kubernetes.io~downward-api"
	kindProjected   = "kubernetes.io~projected"
)

// podDir is where the pod's volumes live: DATA_DIR/pods/UID. A log directory always has
// an underscore in its name (podLogDir), a pod UID never.
func podDir(dataDir string, uid types.UID) string {
	return filepath.Join(dataDir, "pods", string(uid))
}

func volumeDir(dataDir string, uid types.UID, kind, name string) string {
	return filepath.Join(podDir(dataDir, uid), "volumes", kind, name)
}

// mountedVolume is a volume ready to be mounted into containers.
type mountedVolume struct {
	// hostPath is the node's path of the volume.
	hostPath string
	// readOnly: the kubelet mounts configMap, secret, downwardAPI and projected volumes
	// read-only whatever the volumeMount says.
	readOnly bool
	// block: hostPath is a block device file for volumeDevices (a CSI volume of
	// volumeMode Block), not a directory to mount.
	block bool
}

// podVolumes are a pod's volumes that are set up, by volume name.
type podVolumes map[string]mountedVolume

// volumeFailure is a volume that could not be set up.
type volumeFailure struct {
	name string
	err  error
	// blocking: the volume was never set up, so no container may start; a volume that
	// was keeps its last good content and the containers keep running.
	blocking bool
}

// message is the text of the FailedMount event, in the kubelet's words.
func (f volumeFailure) message() string {
	if msg, ok := csiFailureMessage(f.err); ok {
		return msg // names the kubelet's operation and the PV itself
	}
	return fmt.Sprintf("MountVolume.SetUp failed for volume %q : %v", f.name, f.err)
}

// volumeEnv is what setting up volumes needs from the agent.
type volumeEnv struct {
	dataDir string
	// objects reads ConfigMaps and Secrets; fresh is true for a volume set up for the
	// first time, which must not see a stale cached copy.
	objects func(fresh bool) objectSource
	// allocatable is the node's, for resourceFieldRef of a container without limits.
	allocatable corev1.ResourceList
	// mountTmpfs mounts a tmpfs of size bytes (0: the kernel's default) on dir; nil is
	// the real mount(2).
	mountTmpfs func(dir string, size int64) error
	// csi sets up persistentVolumeClaim, ephemeral and csi volumes (csivolumes.go); nil:
	// they are not supported.
	csi func(v *corev1.Volume) (mountedVolume, bool, error)
}

// setUpVolumes makes every volume of pod ready: directories made, tmpfs mounted, files
// written or brought up to date, hostPath types checked. It returns the volumes ready,
// the ones that failed, and whether the pod's volumes follow API objects (and so want
// a periodic refresh).
func setUpVolumes(pod *corev1.Pod, env volumeEnv) (podVolumes, []volumeFailure, bool) {
	vols := podVolumes{}
	var failures []volumeFailure
	refresh := false
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		if followsObjects(v) {
			refresh = true
		}
		mv, wasSetUp, err := setUpVolume(pod, v, env)
		if err != nil {
			failures = append(failures, volumeFailure{name: v.Name, err: err, blocking: !wasSetUp})
			if !wasSetUp {
				continue
			}
		}
		vols[v.Name] = mv
	}
	return vols, failures, refresh
}

// followsObjects tells whether v's files come from ConfigMaps or Secrets, which change
// without the pod changing. (A downwardAPI volume changes with the pod, whose update
// syncs it anyway.)
func followsObjects(v *corev1.Volume) bool {
	switch {
	case v.ConfigMap != nil, v.Secret != nil:
		return true
	case v.Projected != nil:
		for _, s := range v.Projected.Sources {
			if s.ConfigMap != nil || s.Secret != nil {
				return true
			}
		}
	}
	return false
}

// setUpVolume sets up one volume. wasSetUp tells whether a usable earlier version of it
// is in place (then mv is valid even when err is not nil).
func setUpVolume(pod *corev1.Pod, v *corev1.Volume, env volumeEnv) (mv mountedVolume, wasSetUp bool, err error) {
	src := &v.VolumeSource
	switch {
	case src.EmptyDir != nil:
		dir := volumeDir(env.dataDir, pod.UID, kindEmptyDir, v.Name)
		if src.EmptyDir.Medium == corev1.StorageMediumMemory {
			var size int64
			if src.EmptyDir.SizeLimit != nil {
				size = src.EmptyDir.SizeLimit.Value()
			}
			if err := ensureTmpfs(dir, size, env); err != nil {
				return mv, false, err
			}
		} else if err := os.MkdirAll(dir, 0o750); err != nil {
			return mv, false, fmt.Errorf("create emptyDir %s: %w", dir, err)
		}
		// Any user of any container may write an emptyDir, as with the kubelet; a tmpfs
		// keeps its sticky bit.
		mode := fs.FileMode(0o777)
		if statMode(dir)&fs.ModeSticky != 0 {
			mode |= fs.ModeSticky
		}
		if err := os.Chmod(dir, mode); err != nil {
			return mv, false, fmt.Errorf("chmod emptyDir %s: %w", dir, err)
		}
		return mountedVolume{hostPath: dir}, false, nil
	case src.HostPath != nil:
		if err := checkHostPath(src.HostPath.Path, src.HostPath.Type); err != nil {
			return mv, false, err
		}
		return mountedVolume{hostPath: src.HostPath.Path}, false, nil
	case src.ConfigMap != nil:
		dir := volumeDir(env.dataDir, pod.UID, kindConfigMap, v.Name)
		return writeVolume(dir, false, env, func(objects objectSource) (map[string]fileProjection, error) {
			return configMapPayload(pod.Namespace, src.ConfigMap, objects)
		})
	case src.Secret != nil:
		dir := volumeDir(env.dataDir, pod.UID, kindSecret, v.Name)
		return writeVolume(dir, true, env, func(objects objectSource) (map[string]fileProjection, error) {
			return secretPayload(pod.Namespace, src.Secret, objects)
		})
	case src.DownwardAPI != nil:
		dir := volumeDir(env.dataDir, pod.UID, kindDownwardAPI, v.Name)
		return writeVolume(dir, true, env, func(objects objectSource) (map[string]fileProjection, error) {
			return downwardAPIPayload(pod, src.DownwardAPI.Items, src.DownwardAPI.DefaultMode, env.allocatable)
		})
	case src.Projected != nil:
		dir := volumeDir(env.dataDir, pod.UID, kindProjected, v.Name)
		return writeVolume(dir, true, env, func(objects objectSource) (map[string]fileProjection, error) {
			return projectedPayload(pod, src.Projected, objects, env.allocatable)
		})
	}
	if env.csi != nil && csi.Handles(v) {
		return env.csi(v)
	}
	return mv, false, fmt.Errorf("berth's agent does not support %s volumes yet", volumeType(src))
}

// writeVolume brings a configMap, secret, downwardAPI or projected volume's files in dir
// up to date with what payload computes. memory puts dir on a tmpfs, so that Secrets
// never reach the node's disk.
func writeVolume(dir string, memory bool, env volumeEnv, payload func(objectSource) (map[string]fileProjection, error)) (mountedVolume, bool, error) {
	mv := mountedVolume{hostPath: dir, readOnly: true}
	_, err := os.Lstat(filepath.Join(dir, atomicDataDir))
	wasSetUp := err == nil
	if memory {
		if err := ensureTmpfs(dir, 0, env); err != nil {
			return mv, wasSetUp, err
		}
	}
	files, err := payload(env.objects(!wasSetUp))
	if err != nil {
		return mv, wasSetUp, err
	}
	if _, err := writeAtomic(dir, files); err != nil {
		return mv, wasSetUp, err
	}
	return mv, true, nil
}

func statMode(path string) fs.FileMode {
	if fi, err := os.Stat(path); err == nil {
		return fi.Mode()
	}
	return 0
}

// ensureTmpfs mounts a tmpfs on dir unless one is there already (a restarted agent
// finds its running pods' tmpfs mounted and must not hide their content).
func ensureTmpfs(dir string, size int64, env volumeEnv) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	mounted, err := isMountPoint(dir)
	if err != nil || mounted {
		return err
	}
	if env.mountTmpfs != nil {
		return env.mountTmpfs(dir, size)
	}
	opts := "mode=1777"
	if size > 0 {
		opts += ",size=" + strconv.FormatInt(size, 10)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
		return fmt.Errorf("mount tmpfs on %s: %w", dir, err)
	}
	return nil
}

// isMountPoint tells whether something is mounted on dir: its device differs from its
// parent's (enough for the tmpfs mounts the agent makes).
func isMountPoint(dir string) (bool, error) {
	var st, parent unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return false, fmt.Errorf("stat %s: %w", dir, err)
	}
	if err := unix.Lstat(filepath.Dir(dir), &parent); err != nil {
		return false, fmt.Errorf("stat %s: %w", filepath.Dir(dir), err)
	}
	return st.Dev != parent.Dev, nil
}

// volumeType names the kind of a volume source berth does not handle, for its message.
func volumeType(src *corev1.VolumeSource) string {
	switch {
	case src.PersistentVolumeClaim != nil:
		return "persistentVolumeClaim"
	case src.Ephemeral != nil:
		return "ephemeral"
	case src.CSI != nil:
		return "csi"
	case src.NFS != nil:
		return "nfs"
	case src.Image != nil:
		return "image"
	case src.ISCSI != nil:
		return "iscsi"
	}
	return "these"
}

// checkHostPath checks path against a hostPath volume's type, creating it for the
// ...OrCreate types, with the kubelet's messages.
func checkHostPath(path string, t *corev1.HostPathType) error {
	if t == nil || *t == corev1.HostPathUnset {
		return nil // no check: the runtime creates a missing path as a directory
	}
	fi, statErr := os.Stat(path)
	exists := statErr == nil
	is := func(mode fs.FileMode) bool { return exists && fi.Mode().Type() == mode }
	switch *t {
	case corev1.HostPathDirectoryOrCreate:
		if !exists {
			if err := os.MkdirAll(path, 0o755); err != nil {
				return fmt.Errorf("create hostPath directory %s: %w", path, err)
			}
			return nil
		}
		fallthrough
	case corev1.HostPathDirectory:
		if !is(fs.ModeDir) {
			return fmt.Errorf("hostPath type check failed: %s is not a directory", path)
		}
	case corev1.HostPathFileOrCreate:
		if !exists {
			f, err := os.OpenFile(path, os.O_CREATE, 0o644)
			if err != nil {
				return fmt.Errorf("create hostPath file %s: %w", path, err)
			}
			return f.Close()
		}
		fallthrough
	case corev1.HostPathFile:
		if !is(0) {
			return fmt.Errorf("hostPath type check failed: %s is not a file", path)
		}
	case corev1.HostPathSocket:
		if !is(fs.ModeSocket) {
			return fmt.Errorf("hostPath type check failed: %s is not a socket file", path)
		}
	case corev1.HostPathCharDev:
		if !is(fs.ModeDevice | fs.ModeCharDevice) {
			return fmt.Errorf("hostPath type check failed: %s is not a character device", path)
		}
	case corev1.HostPathBlockDev:
		if !is(fs.ModeDevice) {
			return fmt.Errorf("hostPath type check failed: %s is not a block device", path)
		}
	default:
		return fmt.Errorf("%s is an invalid volume type", *t)
	}
	return nil
}

// itemMode is an item's mode, else the volume's default, else 0644.
func itemMode(mode, defaultMode *int32) int32 {
	switch {
	case mode != nil:
		return *mode
	case defaultMode != nil:
		return *defaultMode
	}
	return defaultFileMode
}

// notFound is the kubelet's wording of a missing object: `configmap "x" not found`.
func notFound(resource, name string) error {
	return apierrors.NewNotFound(schema.GroupResource{Resource: resource}, name)
}

// keysPayload projects data (all keys, or items) as files; kind names the object in the
// error of a missing key.
func keysPayload(data map[string][]byte, items []corev1.KeyToPath, defaultMode *int32, optional bool, missingKey string) (map[string]fileProjection, error) {
	out := map[string]fileProjection{}
	if len(items) == 0 {
		for k, v := range data {
			out[k] = fileProjection{data: v, mode: itemMode(nil, defaultMode)}
		}
		return out, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional {
				continue
			}
			return nil, fmt.Errorf("%s: %s", missingKey, it.Key)
		}
		out[it.Path] = fileProjection{data: v, mode: itemMode(it.Mode, defaultMode)}
	}
	return out, nil
}

func configMapData(cm *corev1.ConfigMap) map[string][]byte {
	data := make(map[string][]byte, len(cm.Data)+len(cm.BinaryData))
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return data
}

// configMapPayload is the files of a configMap volume. A missing optional ConfigMap gives
// an empty volume.
func configMapPayload(namespace string, src *corev1.ConfigMapVolumeSource, objects objectSource) (map[string]fileProjection, error) {
	cm, err := objects.ConfigMap(namespace, src.Name)
	if err != nil {
		if apierrors.IsNotFound(err) && optional(src.Optional) {
			return map[string]fileProjection{}, nil
		}
		return nil, err
	}
	return keysPayload(configMapData(cm), src.Items, src.DefaultMode, optional(src.Optional), "configmap references non-existent config key")
}

// secretPayload is the files of a secret volume.
func secretPayload(namespace string, src *corev1.SecretVolumeSource, objects objectSource) (map[string]fileProjection, error) {
	s, err := objects.Secret(namespace, src.SecretName)
	if err != nil {
		if apierrors.IsNotFound(err) && optional(src.Optional) {
			return map[string]fileProjection{}, nil
		}
		return nil, err
	}
	return keysPayload(s.Data, src.Items, src.DefaultMode, optional(src.Optional), "references non-existent secret key")
}

// downwardAPIPayload is the files of downwardAPI items: pod fields as the downward API
// formats them (labels and annotations as sorted key="value" lines), container resources
// rounded up to their divisor, a limit not set reading as the node's allocatable.
func downwardAPIPayload(pod *corev1.Pod, items []corev1.DownwardAPIVolumeFile, defaultMode *int32, allocatable corev1.ResourceList) (map[string]fileProjection, error) {
	out := map[string]fileProjection{}
	var errs []error
	for _, it := range items {
		var value string
		var err error
		switch {
		case it.FieldRef != nil:
			value, err = fieldpath.ExtractFieldPathAsString(pod, it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			value, err = podresource.ExtractResourceValueByContainerNameAndNodeAllocatable(it.ResourceFieldRef, pod, it.ResourceFieldRef.ContainerName, allocatable)
		default:
			err = fmt.Errorf("downwardAPI item %q names neither fieldRef nor resourceFieldRef", it.Path)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[it.Path] = fileProjection{data: []byte(value), mode: itemMode(it.Mode, defaultMode)}
	}
	return out, utilerrors.NewAggregate(errs)
}

// projectedPayload merges the files of a projected volume's sources. Service account
// tokens and cluster trust bundles fail: berth issues neither yet.
func projectedPayload(pod *corev1.Pod, src *corev1.ProjectedVolumeSource, objects objectSource, allocatable corev1.ResourceList) (map[string]fileProjection, error) {
	out := map[string]fileProjection{}
	var errs []error
	merge := func(files map[string]fileProjection, err error) {
		if err != nil {
			errs = append(errs, err)
			return
		}
		for p, f := range files {
			out[p] = f
		}
	}
	for _, s := range src.Sources {
		switch {
		case s.ConfigMap != nil:
			cm := &corev1.ConfigMapVolumeSource{LocalObjectReference: s.ConfigMap.LocalObjectReference,
				Items: s.ConfigMap.Items, DefaultMode: src.DefaultMode, Optional: s.ConfigMap.Optional}
			merge(configMapPayload(pod.Namespace, cm, objects))
		case s.Secret != nil:
			sec := &corev1.SecretVolumeSource{SecretName: s.Secret.Name,
				Items: s.Secret.Items, DefaultMode: src.DefaultMode, Optional: s.Secret.Optional}
			merge(secretPayload(pod.Namespace, sec, objects))
		case s.DownwardAPI != nil:
			merge(downwardAPIPayload(pod, s.DownwardAPI.Items, src.DefaultMode, allocatable))
		case s.ServiceAccountToken != nil:
			errs = append(errs, fmt.Errorf("serviceAccountToken projection of %q: berth does not issue service account tokens yet", s.ServiceAccountToken.Path))
		case s.ClusterTrustBundle != nil:
			errs = append(errs, fmt.Errorf("clusterTrustBundle projection of %q: berth does not issue cluster trust bundles yet", s.ClusterTrustBundle.Path))
		default:
			errs = append(errs, errors.New("a projected source of a kind berth does not support yet"))
		}
	}
	return out, utilerrors.NewAggregate(errs)
}

// containerMounts is the CRI mounts of c's volumeMounts. env resolves $(VAR) in
// subPathExpr.
func containerMounts(pod *corev1.Pod, c *corev1.Container, vols podVolumes, env map[string]string) ([]*runtimeapi.Mount, error) {
	var out []*runtimeapi.Mount
	for _, vm := range c.VolumeMounts {
		v, ok := vols[vm.Name]
		if !ok {
			return nil, configErrorf("cannot find volume %q to mount into container %q", vm.Name, c.Name)
		}
		if v.block {
			return nil, configErrorf("volume %q has volumeMode Block, but is specified in volumeMounts", vm.Name)
		}
		hostPath := v.hostPath
		sub := vm.SubPath
		if vm.SubPathExpr != "" {
			sub = expansion.Expand(vm.SubPathExpr, expansion.MappingFuncFor(env))
		}
		if sub != "" {
			if err := validateSubPath(sub); err != nil {
				return nil, configErrorf("failed to prepare subPath for volumeMount %q of container %q: %v", vm.Name, c.Name, err)
			}
			p, err := prepareSubPath(v.hostPath, sub)
			if err != nil {
				return nil, configErrorf("failed to prepare subPath for volumeMount %q of container %q: %v", vm.Name, c.Name, err)
			}
			hostPath = p
		}
		containerPath := vm.MountPath
		if !filepath.IsAbs(containerPath) {
			containerPath = filepath.Join("/", containerPath)
		}
		out = append(out, &runtimeapi.Mount{
			ContainerPath: containerPath,
			HostPath:      hostPath,
			Readonly:      vm.ReadOnly || v.readOnly,
			Propagation:   mountPropagation(vm.MountPropagation),
		})
	}
	return out, nil
}

func mountPropagation(p *corev1.MountPropagationMode) runtimeapi.MountPropagation {
	if p == nil {
		return runtimeapi.MountPropagation_PROPAGATION_PRIVATE
	}
	switch *p {
	case corev1.MountPropagationHostToContainer:
		return runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER
	case corev1.MountPropagationBidirectional:
		return runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL
	}
	return runtimeapi.MountPropagation_PROPAGATION_PRIVATE
}

// validateSubPath refuses a subPath that is absolute or has a ".." element.
func validateSubPath(sub string) error {
	if filepath.IsAbs(sub) {
		return fmt.Errorf("subPath %q must be a relative path", sub)
	}
	for _, part := range strings.Split(sub, "/") {
		if part == ".." {
			return fmt.Errorf("subPath %q must not contain '..'", sub)
		}
	}
	return nil
}

// prepareSubPath is the node's path of sub inside the volume at base, creating missing
// directories (with the volume's mode, as the kubelet does). Symlinks are followed only
// while they stay inside the volume: a container may have planted one that points
// anywhere on the node. (A container racing this check by swapping a link afterwards is
// not defended against; the kubelet's bind mount through an open file descriptor is.)
func prepareSubPath(base, sub string) (string, error) {
	root, err := filepath.EvalSymlinks(base)
	if err != nil {
		return "", fmt.Errorf("resolve volume path %s: %w", base, err)
	}
	perm := statMode(root).Perm()
	cur := root
	for _, part := range strings.Split(filepath.Clean(sub), "/") {
		if part == "" || part == "." {
			continue
		}
		next := filepath.Join(cur, part)
		real, err := filepath.EvalSymlinks(next)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if _, lerr := os.Lstat(next); lerr == nil {
				return "", fmt.Errorf("subPath %q: %s is a dangling symlink", sub, part)
			}
			if err := os.Mkdir(next, perm); err != nil {
				return "", fmt.Errorf("subPath %q: create %s: %w", sub, next, err)
			}
			if err := os.Chmod(next, perm); err != nil {
				return "", fmt.Errorf("subPath %q: chmod %s: %w", sub, next, err)
			}
			real = next
		case err != nil:
			return "", fmt.Errorf("subPath %q: %w", sub, err)
		}
		if !within(root, real) {
			return "", fmt.Errorf("subPath %q is outside of the volume %s", sub, base)
		}
		cur = real
	}
	return cur, nil
}

// within tells whether path is root or below it.
func within(root, path string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// teardownPodVolumes unmounts whatever is mounted below the pod's directory and removes
// it. It never follows a symlink (os.RemoveAll does not), and removes nothing while a
// mount is left, so neither hostPath content nor anything a container mounted through a
// Bidirectional volume is deleted.
func teardownPodVolumes(dataDir string, uid types.UID) error {
	dir := podDir(dataDir, uid)
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("volumes of pod %s: %w", uid, err)
	}
	if !fi.IsDir() {
		return os.Remove(dir)
	}
	points, err := mountsUnder(dir)
	if err != nil {
		return err
	}
	for _, p := range points {
		if err := unix.Unmount(p, 0); err != nil {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				return fmt.Errorf("unmount volume %s of pod %s: %w", p, uid, err)
			}
		}
	}
	if left, err := mountsUnder(dir); err != nil {
		return err
	} else if len(left) > 0 {
		return fmt.Errorf("volumes of pod %s: %s is still mounted", uid, left[0])
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove volumes of pod %s: %w", uid, err)
	}
	return nil
}

// mountsUnder is the mount points below dir in this mount namespace, deepest first.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	var points []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		p := unescapeMountPath(f[4])
		if strings.HasPrefix(p, dir+"/") {
			points = append(points, p)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(points)))
	return points, nil
}

// unescapeMountPath undoes the octal escapes (\040 for a space ...) of /proc/self/mountinfo.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// volumeManager is the agent's state for volumes: a short-lived cache of the ConfigMaps
// and Secrets that volumes project, and the back-off of pods whose volumes fail. The
// zero value is ready.
type volumeManager struct {
	mu      sync.Mutex
	objects map[objectKey]cachedObject
	lastGC  time.Time
	backoff *backoff
	// shared: DATA_DIR/pods was made a shared mount (ensureShared).
	shared bool
	// teardown serialises removals: a pod's deletion and a sweep may meet.
	teardown sync.Mutex
}

// wantsPropagation tells whether a container of pod mounts a volume with
// HostToContainer or Bidirectional propagation.
func wantsPropagation(pod *corev1.Pod) bool {
	for _, cs := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for _, c := range cs {
			for _, vm := range c.VolumeMounts {
				if vm.MountPropagation != nil && *vm.MountPropagation != corev1.MountPropagationNone {
					return true
				}
			}
		}
	}
	return false
}

// ensureShared makes dir a mount point with shared propagation, once, as the kubelet
// makes its root directory rshared: the runtime gives a HostToContainer or Bidirectional
// mount only from a shared (or slave) mount, and on a host whose / is private nothing
// else would be.
func (m *volumeManager) ensureShared(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.shared {
		return nil
	}
	shared, mounted, err := mountPropagationOf(dir)
	if err != nil {
		return err
	}
	if !shared {
		if !mounted {
			if err := unix.Mount(dir, dir, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("bind mount %s on itself: %w", dir, err)
			}
		}
		if err := unix.Mount("", dir, "", unix.MS_SHARED|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("make %s a shared mount: %w", dir, err)
		}
	}
	m.shared = true
	return nil
}

// mountPropagationOf tells whether dir is a mount point and whether that mount is
// shared, from /proc/self/mountinfo (the last mount on dir is the visible one).
func mountPropagationOf(dir string) (shared, mounted bool, err error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false, false, fmt.Errorf("read mount table: %w", err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 7 || unescapeMountPath(f[4]) != dir {
			continue
		}
		mounted, shared = true, false
		// Optional fields run from the 7th to the "-" separator.
		for _, opt := range f[6:] {
			if opt == "-" {
				break
			}
			if strings.HasPrefix(opt, "shared:") {
				shared = true
			}
		}
	}
	return shared, mounted, nil
}

type objectKey struct{ resource, namespace, name string }

type cachedObject struct {
	obj     any
	fetched time.Time
}

// cached returns the object under key, fetched at most objectCacheTTL ago unless fresh.
// Errors are not cached: a missing object is looked up again on the next try.
func (m *volumeManager) cached(key objectKey, fresh bool, now time.Time, fetch func() (any, error)) (any, error) {
	m.mu.Lock()
	if m.objects == nil {
		m.objects = map[objectKey]cachedObject{}
	}
	if now.Sub(m.lastGC) > time.Minute {
		for k, e := range m.objects {
			if now.Sub(e.fetched) > objectCacheTTL {
				delete(m.objects, k)
			}
		}
		m.lastGC = now
	}
	e, ok := m.objects[key]
	m.mu.Unlock()
	if ok && !fresh && now.Sub(e.fetched) <= objectCacheTTL {
		return e.obj, nil
	}
	obj, err := fetch()
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	m.objects[key] = cachedObject{obj: obj, fetched: now}
	m.mu.Unlock()
	return obj, nil
}

func (m *volumeManager) retryAfter(uid types.UID, now time.Time) time.Duration {
	m.mu.Lock()
	if m.backoff == nil {
		m.backoff = newBackoff(mountBackoffInitial, mountBackoffMax)
	}
	b := m.backoff
	m.mu.Unlock()
	b.GC(now)
	return b.Next(string(uid), now)
}

func (m *volumeManager) succeeded(uid types.UID) {
	m.mu.Lock()
	b := m.backoff
	m.mu.Unlock()
	if b != nil {
		b.Forget(string(uid))
	}
}

// volumeObjects reads ConfigMaps and Secrets for volumes through the agent's cache,
// with the kubelet's wording for a missing one.
type volumeObjects struct {
	ctx   context.Context
	a     *Agent
	fresh bool
}

func (o *volumeObjects) ConfigMap(namespace, name string) (*corev1.ConfigMap, error) {
	obj, err := o.a.volumes.cached(objectKey{"configmap", namespace, name}, o.fresh, o.a.now(), func() (any, error) {
		return o.a.cfg.Kube.CoreV1().ConfigMaps(namespace).Get(o.ctx, name, metav1.GetOptions{})
	})
	if apierrors.IsNotFound(err) {
		return nil, notFound("configmap", name)
	} else if err != nil {
		return nil, fmt.Errorf("get configmap %s/%s: %w", namespace, name, err)
	}
	return obj.(*corev1.ConfigMap), nil
}

func (o *volumeObjects) Secret(namespace, name string) (*corev1.Secret, error) {
	obj, err := o.a.volumes.cached(objectKey{"secret", namespace, name}, o.fresh, o.a.now(), func() (any, error) {
		return o.a.cfg.Kube.CoreV1().Secrets(namespace).Get(o.ctx, name, metav1.GetOptions{})
	})
	if apierrors.IsNotFound(err) {
		return nil, notFound("secret", name)
	} else if err != nil {
		return nil, fmt.Errorf("get secret %s/%s: %w", namespace, name, err)
	}
	return obj.(*corev1.Secret), nil
}

// setUpPodVolumes sets up pod's volumes for a sync, with a FailedMount event for each
// volume that fails. ready is false when a volume that was never set up failed and the
// pod has no running sandbox: then no sandbox or container may start yet, and retry
// says when to try again. (Once the pod runs, as with the kubelet, a failure no longer
// holds it: a hostPath that went away later does not stop its containers' restarts.)
// refresh says the pod wants a periodic sync to follow its ConfigMaps and Secrets.
func (a *Agent) setUpPodVolumes(ctx context.Context, pod *corev1.Pod, running bool) (vols podVolumes, ready bool, retry time.Duration, refresh bool) {
	if len(pod.Spec.Volumes) == 0 {
		return podVolumes{}, true, 0, false
	}
	env := volumeEnv{
		dataDir: a.cfg.DataDir,
		objects: func(fresh bool) objectSource { return &volumeObjects{ctx: ctx, a: a, fresh: fresh} },
		csi: func(v *corev1.Volume) (mountedVolume, bool, error) {
			return a.setUpCSIVolume(ctx, pod, v)
		},
	}
	for _, v := range pod.Spec.Volumes {
		if v.DownwardAPI != nil || v.Projected != nil {
			env.allocatable = a.nodeCapacity() // for resourceFieldRef without a limit
			break
		}
	}
	if wantsPropagation(pod) {
		if err := a.volumes.ensureShared(filepath.Join(a.cfg.DataDir, "pods")); err != nil {
			// The runtime refuses the mount then, with its own message.
			a.log.Error("make the pods dir a shared mount for mountPropagation", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		}
	}
	vols, failures, refresh := setUpVolumes(pod, env)
	ready = true
	for _, f := range failures {
		a.recorder.Event(pod, corev1.EventTypeWarning, "FailedMount", f.message())
		if f.blocking && !running {
			ready = false
		}
	}
	if !ready {
		return vols, false, a.volumes.retryAfter(pod.UID, a.now()), refresh
	}
	a.volumes.succeeded(pod.UID)
	return vols, true, 0, refresh
}

// tearDownVolumes removes a finished or deleted pod's volumes: its CSI volumes are
// unpublished through their drivers first, then the rest is unmounted and removed.
func (a *Agent) tearDownVolumes(ctx context.Context, uid types.UID) error {
	a.volumes.teardown.Lock()
	defer a.volumes.teardown.Unlock()
	a.volumes.succeeded(uid)
	if err := a.tearDownCSIVolumes(ctx, uid); err != nil {
		return err
	}
	return teardownPodVolumes(a.cfg.DataDir, uid)
}

// sweepVolumes tears down the volumes of pods that are neither in the API (on this
// node) nor in the runtime: pods deleted while the agent was down, or force-deleted.
func (a *Agent) sweepVolumes(ctx context.Context) {
	entries, err := os.ReadDir(filepath.Join(a.cfg.DataDir, "pods"))
	if err != nil {
		return
	}
	var candidates []types.UID
	for _, e := range entries {
		if e.IsDir() && !strings.Contains(e.Name(), "_") {
			candidates = append(candidates, types.UID(e.Name()))
		}
	}
	if a.csi != nil {
		// Pods whose directory went while a CSI volume of theirs stayed published.
		candidates = append(candidates, a.csi.PodUIDs()...)
	}
	if len(candidates) == 0 {
		return
	}
	live := map[types.UID]bool{}
	pods, err := a.pods.List(labels.Everything())
	if err != nil {
		return
	}
	for _, p := range pods {
		live[p.UID] = true
	}
	sandboxes, err := a.listSandboxes(ctx, nil)
	if err != nil {
		return
	}
	for _, sb := range sandboxes {
		live[types.UID(sb.Labels[labelPodUID])] = true
	}
	for _, uid := range candidates {
		if live[uid] {
			continue
		}
		if err := a.tearDownVolumes(ctx, uid); err != nil {
			a.log.Error("remove volumes of a pod gone", "uid", uid, "err", err)
		}
	}
}
