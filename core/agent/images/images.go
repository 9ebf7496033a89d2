// Package images builds, offline and in Go, the small images berth's tests and docs use
// (a busybox image from Debian's busybox-static, a pause image for pod sandboxes and the
// test server image from the static berth-testserver binary), writes them as image
// tarballs and imports tarballs into a containerd, so that no registry is ever needed.
package images

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// BusyboxRef is the busybox image: every applet of busybox-static on PATH, `sh` by default.
	// Its tag is busybox-static's version, not latest: an image tagged latest defaults to
	// imagePullPolicy Always, and with no registry to pull from, `kubectl run --image` of it
	// would fail with ErrImagePull.
	BusyboxRef = "berth.local/busybox:1.35"
	// PauseRef is the image of pod sandboxes (containerd's sandbox_image): its entrypoint
	// sleeps until SIGTERM or SIGINT and then exits 0.
	PauseRef = "berth.local/pause:3.10"

	// DefaultBusyboxPath is where Debian's busybox-static installs its binary.
	DefaultBusyboxPath = "/bin/busybox"

	// BusyboxFile and PauseFile are the tarballs' names in the directory BuildAll writes.
	BusyboxFile = "busybox.tar"
	PauseFile   = "pause.tar"
)

// pauseScript is the pause entrypoint. A process with PID 1 only receives the signals it
// handles, so the shell traps TERM and INT; sleeping in the background and waiting lets the
// trap run at once instead of after the sleep.
const pauseScript = "trap 'exit 0' TERM INT; while :; do sleep 2147483647 & wait $!; done"

// epoch is every file's modification time, so that a rebuild gives the same digests and a
// second import is a no-op.
var epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// fallbackApplets are linked when `busybox --list` cannot run (another architecture, say).
var fallbackApplets = []string{
	"[", "awk", "cat", "chmod", "cp", "date", "dd", "df", "du", "echo", "env", "false", "grep",
	"head", "hostname", "id", "ip", "kill", "ln", "ls", "mkdir", "mv", "nc", "nslookup", "ping",
	"printenv", "printf", "ps", "pwd", "rm", "sed", "sh", "sleep", "sort", "tail", "tee", "test",
	"touch", "tr", "true", "uname", "wc", "wget", "whoami",
}

// Busybox builds the busybox image from the static busybox binary at path.
func Busybox(path string) (v1.Image, error) {
	layer, err := busyboxLayer(path)
	if err != nil {
		return nil, err
	}
	return image(layer, v1.Config{
		Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
		Cmd: []string{"sh"},
	})
}

// Pause builds the pause image, on the same layer as the busybox image.
func Pause(path string) (v1.Image, error) {
	layer, err := busyboxLayer(path)
	if err != nil {
		return nil, err
	}
	return image(layer, v1.Config{
		Env:        []string{"PATH=/bin"},
		Entrypoint: []string{"/bin/sh", "-c", pauseScript},
	})
}

// BuildAll writes BusyboxFile and PauseFile into dir from the busybox binary at
// busyboxPath and returns their paths.
func BuildAll(dir, busyboxPath string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("images dir: %w", err)
	}
	busybox, err := Busybox(busyboxPath)
	if err != nil {
		return nil, err
	}
	pause, err := Pause(busyboxPath)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, img := range []struct {
		file, ref string
		image     v1.Image
	}{{BusyboxFile, BusyboxRef, busybox}, {PauseFile, PauseRef, pause}} {
		path := filepath.Join(dir, img.file)
		if err := WriteTarball(path, img.ref, img.image); err != nil {
			return nil, err
		}
		files = append(files, path)
	}
	return files, nil
}

// WriteTarball writes img as ref into a tarball at path, in the `docker save` layout
// (manifest.json with RepoTags) that `ctr images import` and k3s-style airgap folders take.
// It writes to a temporary file first, so a reader never sees half a tarball.
func WriteTarball(path, ref string, img v1.Image) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	tmp := path + ".tmp"
	if err := tarball.WriteToFile(tmp, tag, img); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write image %s to %s: %w", ref, path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write image %s: %w", ref, err)
	}
	return nil
}

// Import imports the image tarball file into the containerd at address (its gRPC socket)
// in namespace (k8s.io for the CRI plugin), with the ctr client Debian's containerd ships.
func Import(ctx context.Context, address, namespace, file string) error {
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		return fmt.Errorf("import %s: the ctr client of containerd is needed: %w", file, err)
	}
	out, err := exec.CommandContext(ctx, ctr, "--address", address, "--namespace", namespace,
		"images", "import", file).CombinedOutput()
	if err != nil {
		return fmt.Errorf("import %s into %s: %w: %s", file, address, err, strings.TrimSpace(string(out)))
	}
	return nil
}

func image(layer v1.Layer, cfg v1.Config) (v1.Image, error) {
	// The config comes first: AppendLayers then adds the layer's diff ID and history to it.
	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	base, err := mutate.ConfigFile(base, &v1.ConfigFile{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Created:      v1.Time{Time: epoch},
		Config:       cfg,
		RootFS:       v1.RootFS{Type: "layers"},
	})
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	img, err := mutate.Append(base, mutate.Addendum{Layer: layer, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "berth images"}})
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	return img, nil
}

// busyboxLayer is a root file system with busybox as /bin/busybox, a symlink per applet in
// /bin, a writable /tmp and the passwd and group files that `id` and `whoami` read.
func busyboxLayer(path string) (v1.Layer, error) {
	bin, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read busybox (install busybox-static): %w", err)
	}
	applets := listApplets(path)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: epoch})
	}
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: epoch}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	err = func() error {
		for _, d := range []string{"bin", "dev", "etc", "proc", "root", "sys", "usr", "usr/bin", "var"} {
			if err := dir(d, 0o755); err != nil {
				return err
			}
		}
		if err := dir("tmp", 0o1777); err != nil {
			return err
		}
		if err := file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")); err != nil {
			return err
		}
		if err := file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n")); err != nil {
			return err
		}
		if err := file("bin/busybox", 0o755, bin); err != nil {
			return err
		}
		for _, a := range applets {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777, ModTime: epoch}); err != nil {
				return err
			}
		}
		// Scripts often start with #!/usr/bin/env.
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/bin/env", Linkname: "../../bin/busybox", Mode: 0o777, ModTime: epoch}); err != nil {
			return err
		}
		return tw.Close()
	}()
	if err != nil {
		return nil, fmt.Errorf("busybox layer: %w", err)
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("busybox layer: %w", err)
	}
	return layer, nil
}

// listApplets asks busybox which applets it has; the binary is static, so it runs here
// whenever it can run in the image.
func listApplets(path string) []string {
	out, err := exec.Command(path, "--list").Output()
	if err != nil {
		return fallbackApplets
	}
	seen := map[string]bool{"busybox": true}
	var applets []string
	for _, a := range strings.Fields(string(out)) {
		if !seen[a] && !strings.Contains(a, "/") {
			seen[a] = true
			applets = append(applets, a)
		}
	}
	sort.Strings(applets)
	return applets
}
