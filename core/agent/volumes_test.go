package agent

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"
)

func TestCheckHostPath(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	missing := filepath.Join(dir, "missing")
	typ := func(s corev1.HostPathType) *corev1.HostPathType { return &s }
	for _, tc := range []struct {
		path string
		t    *corev1.HostPathType
		err  string // "" for success
	}{
		{missing, nil, ""},
		{missing, typ(corev1.HostPathUnset), ""},
		{dir, typ(corev1.HostPathDirectory), ""},
		{file, typ(corev1.HostPathDirectory), "hostPath type check failed: " + file + " is not a directory"},
		{missing, typ(corev1.HostPathDirectory), "hostPath type check failed: " + missing + " is not a directory"},
		{file, typ(corev1.HostPathFile), ""},
		{dir, typ(corev1.HostPathFile), "hostPath type check failed: " + dir + " is not a file"},
		{sock, typ(corev1.HostPathSocket), ""},
		{file, typ(corev1.HostPathSocket), "hostPath type check failed: " + file + " is not a socket file"},
		{"/dev/null", typ(corev1.HostPathCharDev), ""},
		{file, typ(corev1.HostPathCharDev), "hostPath type check failed: " + file + " is not a character device"},
		{"/dev/null", typ(corev1.HostPathBlockDev), "hostPath type check failed: /dev/null is not a block device"},
		{file, typ(corev1.HostPathDirectoryOrCreate), "hostPath type check failed: " + file + " is not a directory"},
		{dir, typ(corev1.HostPathFileOrCreate), "hostPath type check failed: " + dir + " is not a file"},
		{dir, typ("Weird"), "Weird is an invalid volume type"},
	} {
		err := checkHostPath(tc.path, tc.t)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != tc.err {
			name := "<nil>"
			if tc.t != nil {
				name = string(*tc.t)
			}
			t.Errorf("checkHostPath(%s, %q) = %q, want %q", tc.path, name, got, tc.err)
		}
	}
	// The ...OrCreate types create what is missing.
	newDir := filepath.Join(dir, "new", "dir")
	if err := checkHostPath(newDir, typ(corev1.HostPathDirectoryOrCreate)); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(newDir); err != nil || !fi.IsDir() {
		t.Errorf("DirectoryOrCreate did not create %s: %v", newDir, err)
	}
	newFile := filepath.Join(dir, "newfile")
	if err := checkHostPath(newFile, typ(corev1.HostPathFileOrCreate)); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(newFile); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("FileOrCreate did not create %s: %v", newFile, err)
	}
}

func TestConfigMapAndSecretPayloads(t *testing.T) {
	objects := fakeObjects{
		configMaps: map[string]map[string]string{"cfg": {"a": "1", "b": "2"}},
		secrets:    map[string]map[string][]byte{"sec": {"user": []byte("root"), "pass": []byte("hunter2")}},
	}
	got := func(files map[string]fileProjection) map[string]string {
		out := map[string]string{}
		for p, f := range files {
			out[p] = fmt.Sprintf("%s %04o", f.data, f.mode)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		run  func() (map[string]fileProjection, error)
		want map[string]string
		err  string
	}{
		{"configMap all keys, default mode", func() (map[string]fileProjection, error) {
			return configMapPayload("ns", &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}, objects)
		}, map[string]string{"a": "1 0644", "b": "2 0644"}, ""},
		{"configMap items, defaultMode and an item's mode", func() (map[string]fileProjection, error) {
			return configMapPayload("ns", &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"},
				Items:                []corev1.KeyToPath{{Key: "a", Path: "dir/a.conf"}, {Key: "b", Path: "b.conf", Mode: ptr.To[int32](0o600)}},
				DefaultMode:          ptr.To[int32](0o440),
			}, objects)
		}, map[string]string{"dir/a.conf": "1 0440", "b.conf": "2 0600"}, ""},
		{"configMap missing key", func() (map[string]fileProjection, error) {
			return configMapPayload("ns", &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"},
				Items:                []corev1.KeyToPath{{Key: "nope", Path: "x"}},
			}, objects)
		}, nil, "configmap references non-existent config key: nope"},
		{"configMap missing key, optional", func() (map[string]fileProjection, error) {
			return configMapPayload("ns", &corev1.ConfigMapVolumeSource{
				LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"},
				Items:                []corev1.KeyToPath{{Key: "nope", Path: "x"}, {Key: "a", Path: "a"}}, Optional: ptr.To(true),
			}, objects)
		}, map[string]string{"a": "1 0644"}, ""},
		{"configMap missing", func() (map[string]fileProjection, error) {
			return configMapPayload("ns", &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "gone"}}, objects)
		}, nil, `configmaps "gone" not found`},
		{"configMap missing, optional", func() (map[string]fileProjection, error) {
			return configMapPayload("ns", &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "gone"}, Optional: ptr.To(true)}, objects)
		}, map[string]string{}, ""},
		{"secret items", func() (map[string]fileProjection, error) {
			return secretPayload("ns", &corev1.SecretVolumeSource{SecretName: "sec", Items: []corev1.KeyToPath{{Key: "pass", Path: "p"}}, DefaultMode: ptr.To[int32](0o400)}, objects)
		}, map[string]string{"p": "hunter2 0400"}, ""},
		{"secret missing key", func() (map[string]fileProjection, error) {
			return secretPayload("ns", &corev1.SecretVolumeSource{SecretName: "sec", Items: []corev1.KeyToPath{{Key: "token", Path: "t"}}}, objects)
		}, nil, "references non-existent secret key: token"},
		{"secret missing", func() (map[string]fileProjection, error) {
			return secretPayload("ns", &corev1.SecretVolumeSource{SecretName: "gone"}, objects)
		}, nil, `secrets "gone" not found`},
	} {
		files, err := tc.run()
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if g := got(files); !equalMaps(g, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, g, tc.want)
		}
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func volumeTestPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: "web", Namespace: "shop", UID: "0b1c2d3e-uid",
			Labels:      map[string]string{"app": "web", "tier": "front\"end"},
			Annotations: map[string]string{"z": "last", "a": "first\nline"},
		},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{
			Name: "main",
			Resources: corev1.ResourceRequirements{
				Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")},
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m")},
			},
		}}},
	}
}

func TestDownwardAPIPayload(t *testing.T) {
	pod := volumeTestPod()
	allocatable := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("1Gi")}
	field := func(path, fp string) corev1.DownwardAPIVolumeFile {
		return corev1.DownwardAPIVolumeFile{Path: path, FieldRef: &corev1.ObjectFieldSelector{FieldPath: fp}}
	}
	res := func(path, r, divisor string) corev1.DownwardAPIVolumeFile {
		f := corev1.DownwardAPIVolumeFile{Path: path, ResourceFieldRef: &corev1.ResourceFieldSelector{ContainerName: "main", Resource: r}}
		if divisor != "" {
			f.ResourceFieldRef.Divisor = resource.MustParse(divisor)
		}
		return f
	}
	files, err := downwardAPIPayload(pod, []corev1.DownwardAPIVolumeFile{
		field("name", "metadata.name"),
		field("namespace", "metadata.namespace"),
		field("uid", "metadata.uid"),
		field("labels", "metadata.labels"),
		field("annotations", "metadata.annotations"),
		field("app", "metadata.labels['app']"),
		res("mem_limit", "limits.memory", "1Mi"),
		res("cpu_request", "requests.cpu", "1m"),
		res("cpu_limit", "limits.cpu", ""), // unset: the node's allocatable
	}, ptr.To[int32](0o444), allocatable)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"name":        "web",
		"namespace":   "shop",
		"uid":         "0b1c2d3e-uid",
		"labels":      "app=\"web\"\ntier=\"front\\\"end\"",
		"annotations": "a=\"first\\nline\"\nz=\"last\"",
		"app":         "web",
		"mem_limit":   "64",
		"cpu_request": "250",
		"cpu_limit":   "2",
	}
	for p, w := range want {
		if f, ok := files[p]; !ok || string(f.data) != w || f.mode != 0o444 {
			t.Errorf("%s: %q mode %o, want %q", p, f.data, f.mode, w)
		}
	}
	if _, err := downwardAPIPayload(pod, []corev1.DownwardAPIVolumeFile{field("ip", "status.podIP")}, nil, allocatable); err == nil {
		t.Error("status.podIP in a volume was accepted")
	}
}

func TestProjectedPayload(t *testing.T) {
	pod := volumeTestPod()
	objects := fakeObjects{
		configMaps: map[string]map[string]string{"cfg": {"a": "1"}},
		secrets:    map[string]map[string][]byte{"sec": {"s": []byte("2")}},
	}
	src := &corev1.ProjectedVolumeSource{DefaultMode: ptr.To[int32](0o440), Sources: []corev1.VolumeProjection{
		{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}},
		{Secret: &corev1.SecretProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Items: []corev1.KeyToPath{{Key: "s", Path: "creds/s"}}}},
		{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "name", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}}},
		{ConfigMap: &corev1.ConfigMapProjection{LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Optional: ptr.To(true)}},
	}}
	files, err := projectedPayload(pod, src, objects, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != 3 || string(files["a"].data) != "1" || string(files["creds/s"].data) != "2" || string(files["name"].data) != "web" || files["a"].mode != 0o440 {
		t.Errorf("projected files %v", files)
	}
	src.Sources = append(src.Sources, corev1.VolumeProjection{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token"}})
	if _, err := projectedPayload(pod, src, objects, nil); err == nil || !strings.Contains(err.Error(), "berth does not issue service account tokens yet") {
		t.Errorf("serviceAccountToken: %v", err)
	}
	src.Sources = []corev1.VolumeProjection{{ClusterTrustBundle: &corev1.ClusterTrustBundleProjection{Path: "ca.pem"}}}
	if _, err := projectedPayload(pod, src, objects, nil); err == nil || !strings.Contains(err.Error(), "berth does not issue cluster trust bundles yet") {
		t.Errorf("clusterTrustBundle: %v", err)
	}
}

func TestPrepareSubPath(t *testing.T) {
	base := filepath.Join(t.TempDir(), "vol")
	outside := t.TempDir()
	if err := os.MkdirAll(filepath.Join(base, "existing"), 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o777); err != nil {
		t.Fatal(err)
	}
	// Links a container could plant in its emptyDir.
	if err := os.Symlink(outside, filepath.Join(base, "abs")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../..", filepath.Join(base, "existing", "up")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("existing", filepath.Join(base, "inside")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/nonexistent/x", filepath.Join(base, "dangling")); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		sub, want string // want "" for a refusal
	}{
		{"new/deeper", filepath.Join(base, "new", "deeper")},
		{"existing", filepath.Join(base, "existing")},
		{"inside", filepath.Join(base, "existing")},
		{"abs", ""},
		{"abs/x", ""},
		{"existing/up", ""},
		{"existing/up/etc", ""},
		{"dangling", ""},
	} {
		got, err := prepareSubPath(base, tc.sub)
		if tc.want == "" {
			if err == nil {
				t.Errorf("subPath %q escaped to %s", tc.sub, got)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("subPath %q: %q, %v, want %q", tc.sub, got, err, tc.want)
		}
	}
	if fi, err := os.Stat(filepath.Join(base, "new", "deeper")); err != nil || fi.Mode().Perm() != 0o777 {
		t.Errorf("created subPath mode %v, %v; want the volume's 0777", fi.Mode(), err)
	}
	if _, err := os.Stat(filepath.Join(outside, "x")); !os.IsNotExist(err) {
		t.Errorf("something was created outside the volume: %v", err)
	}
	for _, sub := range []string{"../x", "a/../../x", "/etc"} {
		if err := validateSubPath(sub); err == nil {
			t.Errorf("subPath %q passed validation", sub)
		}
	}
}

func TestContainerMounts(t *testing.T) {
	base := t.TempDir()
	pod := volumeTestPod()
	c := &pod.Spec.Containers[0]
	hostToContainer := corev1.MountPropagationHostToContainer
	bidirectional := corev1.MountPropagationBidirectional
	c.VolumeMounts = []corev1.VolumeMount{
		{Name: "scratch", MountPath: "/scratch"},
		{Name: "cfg", MountPath: "/etc/cfg"},
		{Name: "scratch", MountPath: "/ro", ReadOnly: true, MountPropagation: &hostToContainer},
		{Name: "scratch", MountPath: "/per-pod", SubPathExpr: "$(POD_NAME)/logs", MountPropagation: &bidirectional},
	}
	vols := podVolumes{
		"scratch": {hostPath: base},
		"cfg":     {hostPath: "/data/cfg", readOnly: true},
	}
	mounts, err := containerMounts(pod, c, vols, map[string]string{"POD_NAME": "web"})
	if err != nil {
		t.Fatal(err)
	}
	want := []*runtimeapi.Mount{
		{ContainerPath: "/scratch", HostPath: base, Propagation: runtimeapi.MountPropagation_PROPAGATION_PRIVATE},
		{ContainerPath: "/etc/cfg", HostPath: "/data/cfg", Readonly: true, Propagation: runtimeapi.MountPropagation_PROPAGATION_PRIVATE},
		{ContainerPath: "/ro", HostPath: base, Readonly: true, Propagation: runtimeapi.MountPropagation_PROPAGATION_HOST_TO_CONTAINER},
		{ContainerPath: "/per-pod", HostPath: filepath.Join(base, "web", "logs"), Propagation: runtimeapi.MountPropagation_PROPAGATION_BIDIRECTIONAL},
	}
	if len(mounts) != len(want) {
		t.Fatalf("mounts %v", mounts)
	}
	for i := range want {
		if mounts[i].String() != want[i].String() {
			t.Errorf("mount %d: %v, want %v", i, mounts[i], want[i])
		}
	}

	// An unknown volume, and a subPath that climbs out, are configuration errors.
	for _, vm := range []corev1.VolumeMount{
		{Name: "nope", MountPath: "/x"},
		{Name: "scratch", MountPath: "/x", SubPathExpr: "$(UP)/etc"},
		{Name: "scratch", MountPath: "/x", SubPath: "../etc"},
	} {
		c.VolumeMounts = []corev1.VolumeMount{vm}
		_, err := containerMounts(pod, c, vols, map[string]string{"UP": ".."})
		var ce *configError
		if !errors.As(err, &ce) {
			t.Errorf("volumeMount %+v: %v, want a configuration error", vm, err)
		}
	}
	c.VolumeMounts = []corev1.VolumeMount{{Name: "nope", MountPath: "/x"}}
	if _, err := containerMounts(pod, c, vols, nil); err == nil || err.Error() != `cannot find volume "nope" to mount into container "main"` {
		t.Errorf("unknown volume: %v", err)
	}
}

func TestSetUpVolumes(t *testing.T) {
	dataDir := t.TempDir()
	pod := volumeTestPod()
	hostDir := t.TempDir()
	objects := fakeObjects{configMaps: map[string]map[string]string{"cfg": {"k": "v1"}}, secrets: map[string]map[string][]byte{}}
	var tmpfs []string
	env := volumeEnv{
		dataDir: dataDir,
		objects: func(bool) objectSource { return objects },
		// No real tmpfs here: the end-to-end test mounts them.
		mountTmpfs: func(dir string, size int64) error { tmpfs = append(tmpfs, filepath.Base(dir)); return nil },
	}
	dirType := corev1.HostPathDirectory
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "scratch", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "mem", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
		{Name: "host", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: hostDir, Type: &dirType}}},
		{Name: "cfg", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
		{Name: "sec", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "sec"}}},
	}
	vols, failures, refresh := setUpVolumes(pod, env)
	if !refresh {
		t.Error("a pod with configMap and secret volumes wants no refresh")
	}
	if len(failures) != 1 || failures[0].name != "sec" || !failures[0].blocking ||
		failures[0].message() != `MountVolume.SetUp failed for volume "sec" : secrets "sec" not found` {
		t.Fatalf("failures %+v", failures)
	}
	if _, ok := vols["sec"]; ok || len(vols) != 4 {
		t.Errorf("volumes %v", vols)
	}
	if vols["host"].hostPath != hostDir || !vols["cfg"].readOnly || vols["scratch"].readOnly {
		t.Errorf("volumes %v", vols)
	}
	if want := volumeDir(dataDir, pod.UID, kindEmptyDir, "scratch"); vols["scratch"].hostPath != want {
		t.Errorf("emptyDir at %s, want %s", vols["scratch"].hostPath, want)
	}
	if fi, err := os.Stat(vols["scratch"].hostPath); err != nil || fi.Mode().Perm() != 0o777 {
		t.Errorf("emptyDir mode %v, %v", fi.Mode(), err)
	}
	if strings.Join(tmpfs, ",") != "mem,sec" {
		t.Errorf("tmpfs mounted on %v, want mem and sec", tmpfs)
	}

	// The Secret appears: every volume is ready.
	objects.secrets["sec"] = map[string][]byte{"p": []byte("x")}
	if _, failures, _ = setUpVolumes(pod, env); len(failures) != 0 {
		t.Fatalf("failures %+v", failures)
	}
	// The ConfigMap goes: the volume keeps its last content and does not block.
	delete(objects.configMaps, "cfg")
	vols, failures, _ = setUpVolumes(pod, env)
	if len(failures) != 1 || failures[0].name != "cfg" || failures[0].blocking {
		t.Errorf("failures %+v", failures)
	}
	if got := readVolume(t, vols["cfg"].hostPath); got["k"] != "v1" {
		t.Errorf("configMap volume after the ConfigMap went: %v", got)
	}
	// A bad hostPath type blocks.
	fileType := corev1.HostPathFile
	pod.Spec.Volumes[2].HostPath.Type = &fileType
	_, failures, _ = setUpVolumes(pod, env)
	found := false
	for _, f := range failures {
		if f.name == "host" && f.blocking && f.message() == `MountVolume.SetUp failed for volume "host" : hostPath type check failed: `+hostDir+` is not a file` {
			found = true
		}
	}
	if !found {
		t.Errorf("failures %+v", failures)
	}
}

func TestTeardownPodVolumes(t *testing.T) {
	dataDir := t.TempDir()
	outside := t.TempDir()
	keep := filepath.Join(outside, "keep")
	if err := os.WriteFile(keep, []byte("host data"), 0o644); err != nil {
		t.Fatal(err)
	}
	vol := volumeDir(dataDir, "uid-1", kindEmptyDir, "scratch")
	if err := os.MkdirAll(vol, 0o777); err != nil {
		t.Fatal(err)
	}
	// A container's link to the host (as a hostPath user might make) is removed, not
	// followed.
	if err := os.Symlink(outside, filepath.Join(vol, "host")); err != nil {
		t.Fatal(err)
	}
	if err := teardownPodVolumes(dataDir, "uid-1"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(podDir(dataDir, "uid-1")); !os.IsNotExist(err) {
		t.Errorf("pod dir still there: %v", err)
	}
	if data, err := os.ReadFile(keep); err != nil || string(data) != "host data" {
		t.Errorf("host file: %q, %v", data, err)
	}
	if err := teardownPodVolumes(dataDir, "uid-1"); err != nil {
		t.Errorf("second teardown: %v", err)
	}
}

func TestUnescapeMountPath(t *testing.T) {
	for in, want := range map[string]string{`/a\040b`: "/a b", `/plain`: "/plain", `/tab\011x`: "/tab\tx", `/end\04`: `/end\04`} {
		if got := unescapeMountPath(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestVolumeObjectCache(t *testing.T) {
	var m volumeManager
	now := time.Unix(1000, 0)
	fetches := 0
	fetch := func() (any, error) { fetches++; return fetches, nil }
	key := objectKey{"configmap", "ns", "cfg"}
	get := func(fresh bool) any {
		t.Helper()
		v, err := m.cached(key, fresh, now, fetch)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if v := get(false); v != 1 {
		t.Errorf("first read %v", v)
	}
	now = now.Add(objectCacheTTL / 2)
	if v := get(false); v != 1 || fetches != 1 {
		t.Errorf("read within the TTL: %v after %d fetches", v, fetches)
	}
	if v := get(true); v != 2 {
		t.Errorf("fresh read %v", v)
	}
	now = now.Add(objectCacheTTL + time.Second)
	if v := get(false); v != 3 {
		t.Errorf("read after the TTL %v", v)
	}
	// Errors are not cached: a missing object is looked up again next time.
	missing := objectKey{"secret", "ns", "late"}
	calls := 0
	for range 2 {
		if _, err := m.cached(missing, false, now, func() (any, error) { calls++; return nil, notFound("secret", "late") }); err == nil {
			t.Fatal("no error")
		}
	}
	if calls != 2 {
		t.Errorf("a missing object was fetched %d times in 2 reads", calls)
	}
	if err := notFound("configmap", "x"); err.Error() != `configmap "x" not found` {
		t.Errorf("not found wording %q", err)
	}
	// Expired entries are dropped.
	now = now.Add(2 * time.Minute)
	_, _ = m.cached(objectKey{"configmap", "ns", "other"}, false, now, fetch)
	if _, ok := m.objects[key]; ok {
		t.Error("an expired entry was kept")
	}
}
