package images

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// staticBinary is a static executable to build the image from: the image does not care
// what the binary does, and busybox-static is static and always here when containers can
// run at all. (The end-to-end test in core/agent runs the real berth-testserver.)
func staticBinary(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(DefaultBusyboxPath); err != nil {
		t.Skipf("busybox-static is missing (make deps installs it): %v", err)
	}
	return DefaultBusyboxPath
}

func TestBuildTestserver(t *testing.T) {
	bin := staticBinary(t)
	want, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	files, err := BuildTestserver(dir, bin)
	if err != nil {
		t.Fatal(err)
	}
	if wantFiles := []string{filepath.Join(dir, "testserver-1.0.tar"), filepath.Join(dir, "testserver-2.0.tar")}; !reflect.DeepEqual(files, wantFiles) {
		t.Fatalf("files %v, want %v", files, wantFiles)
	}
	var layerDigests []string
	for i, ref := range []string{TestserverRef, TestserverRefV2} {
		tag, err := name.NewTag(ref)
		if err != nil {
			t.Fatal(err)
		}
		img, err := tarball.ImageFromPath(files[i], &tag)
		if err != nil {
			t.Fatalf("read back %s as %s: %v", files[i], ref, err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		c := cfg.Config
		if cfg.OS != "linux" || cfg.Architecture == "" {
			t.Errorf("%s: os/arch %s/%s", ref, cfg.OS, cfg.Architecture)
		}
		if !reflect.DeepEqual(c.Entrypoint, []string{"/berth-testserver"}) || len(c.Cmd) != 0 {
			t.Errorf("%s: entrypoint %q, cmd %q", ref, c.Entrypoint, c.Cmd)
		}
		if version := "VERSION=" + TestserverTags[i]; !slices.Contains(c.Env, version) {
			t.Errorf("%s: env %q has no %s", ref, c.Env, version)
		}
		for _, port := range []string{"8080/tcp", "9000/tcp"} {
			if _, ok := c.ExposedPorts[port]; !ok {
				t.Errorf("%s: port %s not exposed: %v", ref, port, c.ExposedPorts)
			}
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("%s: layers %v, %v", ref, layers, err)
		}
		d, _ := layers[0].Digest()
		layerDigests = append(layerDigests, d.String())
		entries := layerFiles(t, layers[0])
		h, ok := entries["berth-testserver"]
		if !ok || h.hdr.Mode&0o111 == 0 || h.hdr.Typeflag != tar.TypeReg {
			t.Fatalf("%s: no executable berth-testserver in the layer (entries %v)", ref, keys(entries))
		}
		if !bytes.Equal(h.data, want) {
			t.Errorf("%s: berth-testserver in the layer differs from %s (%d bytes, want %d)", ref, bin, len(h.data), len(want))
		}
		if h := entries["tmp/"]; h.hdr == nil || h.hdr.Mode != 0o1777 {
			t.Errorf("%s: no world-writable /tmp", ref)
		}
		if h := entries["etc/passwd"]; h.hdr == nil || !strings.HasPrefix(string(h.data), "root:") {
			t.Errorf("%s: no /etc/passwd", ref)
		}
	}
	// The tags differ in their config only: one layer, stored once in containerd.
	if layerDigests[0] != layerDigests[1] {
		t.Errorf("the tags have different layers: %v", layerDigests)
	}
	// Reproducible: the same binary gives the same image.
	a, _ := Testserver(bin, "1.0")
	b, _ := Testserver(bin, "1.0")
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("two builds differ: %s, %s", da, db)
	}

	// The tarballs are fresh now; a newer binary makes them stale.
	if TestserverStale(dir, bin) {
		t.Errorf("TestserverStale right after a build")
	}
	newer := filepath.Join(t.TempDir(), "berth-testserver")
	if err := os.WriteFile(newer, want, 0o755); err != nil {
		t.Fatal(err)
	}
	future := time.Now().Add(time.Hour)
	if err := os.Chtimes(newer, future, future); err != nil {
		t.Fatal(err)
	}
	if !TestserverStale(dir, newer) || !TestserverStale(t.TempDir(), bin) {
		t.Errorf("TestserverStale misses a newer binary or missing tarballs")
	}
}

func TestTestserverRejectsWhatCannotRun(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ name, path, want string }{
		{"missing", filepath.Join(dir, "nope"), "not an ELF executable"},
		{"script", script, "not an ELF executable"},
	}
	// Any dynamically linked program of the host will do.
	for _, p := range []string{"/bin/ls", "/usr/bin/env"} {
		if _, err := os.Stat(p); err == nil {
			cases = append(cases, struct{ name, path, want string }{"dynamic", p, "CGO_ENABLED=0"})
			break
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := BuildTestserver(filepath.Join(dir, "out"), c.path); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("BuildTestserver(%s): %v, want an error containing %q", c.path, err, c.want)
			}
		})
	}
}

func TestFindTestserver(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "ts")
	if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(TestserverBinaryEnv, bin)
	if got, err := FindTestserver(); err != nil || got != bin {
		t.Errorf("with %s set: %q, %v", TestserverBinaryEnv, got, err)
	}
	t.Setenv(TestserverBinaryEnv, filepath.Join(dir, "missing"))
	if _, err := FindTestserver(); !errors.Is(err, ErrNoTestserver) || !strings.Contains(err.Error(), "missing") {
		t.Errorf("with a missing binary: %v", err)
	}
	// Unset: next to the test binary, where there is none.
	t.Setenv(TestserverBinaryEnv, "")
	exe, _ := os.Executable()
	if _, err := FindTestserver(); !errors.Is(err, ErrNoTestserver) || !strings.Contains(err.Error(), filepath.Dir(exe)) {
		t.Errorf("next to %s: %v", exe, err)
	}
}

type layerEntry struct {
	hdr  *tar.Header
	data []byte
}

func layerFiles(t *testing.T, layer interface {
	Uncompressed() (io.ReadCloser, error)
}) map[string]layerEntry {
	t.Helper()
	rc, err := layer.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	entries := map[string]layerEntry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return entries
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		entries[h.Name] = layerEntry{h, data}
	}
}

func keys(m map[string]layerEntry) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
