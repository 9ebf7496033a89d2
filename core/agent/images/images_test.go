package images

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestBuildAll(t *testing.T) {
	if _, err := os.Stat(DefaultBusyboxPath); err != nil {
		t.Skipf("busybox-static is missing (make deps installs it): %v", err)
	}
	dir := t.TempDir()
	files, err := BuildAll(dir, DefaultBusyboxPath)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, BusyboxFile), filepath.Join(dir, PauseFile)}
	if !reflect.DeepEqual(files, want) {
		t.Fatalf("files %v, want %v", files, want)
	}
	for _, tc := range []struct {
		file, ref  string
		entrypoint bool
	}{{files[0], BusyboxRef, false}, {files[1], PauseRef, true}} {
		tag, _ := name.NewTag(tc.ref)
		img, err := tarball.ImageFromPath(tc.file, &tag)
		if err != nil {
			t.Fatalf("read back %s: %v", tc.file, err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cfg.OS != "linux" || cfg.Architecture == "" || (len(cfg.Config.Entrypoint) > 0) != tc.entrypoint {
			t.Errorf("%s: config %+v", tc.ref, cfg)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("%s: layers %v, %v", tc.ref, layers, err)
		}
		rc, err := layers[0].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		entries := map[string]*tar.Header{}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			entries[h.Name] = h
		}
		rc.Close()
		if h := entries["bin/busybox"]; h == nil || h.Mode&0o111 == 0 {
			t.Errorf("%s: no executable bin/busybox", tc.ref)
		}
		for _, applet := range []string{"sh", "sleep", "echo"} {
			if h := entries["bin/"+applet]; h == nil || h.Typeflag != tar.TypeSymlink || h.Linkname != "busybox" {
				t.Errorf("%s: bin/%s is not a link to busybox: %+v", tc.ref, applet, h)
			}
		}
	}
	// The build is reproducible: a second one gives the same image.
	a, _ := Busybox(DefaultBusyboxPath)
	b, _ := Busybox(DefaultBusyboxPath)
	da, _ := a.Digest()
	db, _ := b.Digest()
	if da != db {
		t.Errorf("two builds differ: %s, %s", da, db)
	}
}
