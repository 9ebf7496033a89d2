package images

import (
	"archive/tar"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// TestserverRepo is the repository of the test server image, built from the static
	// berth-testserver binary (cmd/berth-testserver): HTTP on 8080 (/healthz, /hostname,
	// /env, /echo, /version), TCP echo on 9000.
	TestserverRepo = "berth.local/testserver"
	// TestserverRef and TestserverRefV2 are the two tags berth builds. They run the same
	// binary and differ only in the VERSION environment variable of the image config, which
	// the server reports, so that a rolling update from one to the other is visible.
	TestserverRef   = TestserverRepo + ":1.0"
	TestserverRefV2 = TestserverRepo + ":2.0"

	// TestserverBinaryName is the binary's file name; berth looks for it next to its own
	// executable (make build puts both in bin/).
	TestserverBinaryName = "berth-testserver"
	// TestserverBinaryEnv, when set, is the path of the binary to build the image from,
	// instead of the one next to berth's executable.
	TestserverBinaryEnv = "BERTH_TESTSERVER"

	// TestserverPath is where the binary is in the image, and its entrypoint.
	TestserverPath = "/berth-testserver"
)

// TestserverTags are the tags BuildTestserver writes, in order.
var TestserverTags = []string{"1.0", "2.0"}

// TestserverFile is the tarball's name for tag in the directory BuildTestserver writes.
func TestserverFile(tag string) string { return "testserver-" + tag + ".tar" }

// ErrNoTestserver is returned by FindTestserver when there is no binary where it looked.
var ErrNoTestserver = errors.New("no berth-testserver binary")

// FindTestserver returns the path of the berth-testserver binary: $BERTH_TESTSERVER when
// set, berth-testserver in the directory of the running executable otherwise. The error
// wraps ErrNoTestserver when no file is there, and names where it looked.
func FindTestserver() (string, error) {
	path := os.Getenv(TestserverBinaryEnv)
	if path == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("%w: cannot tell where this executable is (set %s): %v", ErrNoTestserver, TestserverBinaryEnv, err)
		}
		path = filepath.Join(filepath.Dir(exe), TestserverBinaryName)
	}
	st, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("%w at %s (make build puts one in bin/, or set %s): %v", ErrNoTestserver, path, TestserverBinaryEnv, err)
	}
	if st.IsDir() {
		return "", fmt.Errorf("%w at %s: it is a directory", ErrNoTestserver, path)
	}
	return path, nil
}

// Testserver builds the test server image for tag from the static binary at binary: the
// binary as /berth-testserver (the entrypoint), a writable /tmp, passwd and group files,
// and VERSION=tag in the environment.
func Testserver(binary, tag string) (v1.Image, error) {
	layer, err := testserverLayer(binary)
	if err != nil {
		return nil, err
	}
	return image(layer, v1.Config{
		Env:        []string{"PATH=/", "VERSION=" + tag},
		Entrypoint: []string{TestserverPath},
		ExposedPorts: map[string]struct{}{
			"8080/tcp": {},
			"9000/tcp": {},
		},
		Labels: map[string]string{"org.opencontainers.image.title": "berth-testserver", "org.opencontainers.image.version": tag},
	})
}

// BuildTestserver writes one tarball per tag of TestserverTags into dir from the static
// binary at binary and returns their paths.
func BuildTestserver(dir, binary string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("images dir: %w", err)
	}
	var files []string
	for _, tag := range TestserverTags {
		img, err := Testserver(binary, tag)
		if err != nil {
			return nil, err
		}
		path := filepath.Join(dir, TestserverFile(tag))
		if err := WriteTarball(path, TestserverRepo+":"+tag, img); err != nil {
			return nil, err
		}
		files = append(files, path)
	}
	return files, nil
}

// TestserverStale reports whether the tarballs BuildTestserver writes into dir are
// missing or older than the binary at binary, so that a rebuilt binary reaches the image.
func TestserverStale(dir, binary string) bool {
	bin, err := os.Stat(binary)
	if err != nil {
		return true
	}
	for _, tag := range TestserverTags {
		st, err := os.Stat(filepath.Join(dir, TestserverFile(tag)))
		if err != nil || st.ModTime().Before(bin.ModTime()) {
			return true
		}
	}
	return false
}

// testserverLayer is the image's one layer. The binary must be static: the image has no
// C library and no dynamic loader.
func testserverLayer(binary string) (v1.Layer, error) {
	if err := checkStatic(binary); err != nil {
		return nil, err
	}
	bin, err := os.ReadFile(binary)
	if err != nil {
		return nil, fmt.Errorf("read the test server binary: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	entries := []struct {
		hdr  tar.Header
		data []byte
	}{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "etc/", Mode: 0o755}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644}, data: []byte("root:x:0:0:root:/:/berth-testserver\nnobody:x:65534:65534:nobody:/nonexistent:/berth-testserver\n")},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "etc/group", Mode: 0o644}, data: []byte("root:x:0:\nnogroup:x:65534:\n")},
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "tmp/", Mode: 0o1777}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: TestserverPath[1:], Mode: 0o755}, data: bin},
	}
	for _, e := range entries {
		e.hdr.ModTime = epoch
		e.hdr.Size = int64(len(e.data))
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, fmt.Errorf("test server layer: %w", err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("test server layer: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("test server layer: %w", err)
	}
	data := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("test server layer: %w", err)
	}
	return layer, nil
}

// checkStatic fails for a file that is not an ELF executable, or one that asks for a
// dynamic loader (a PT_INTERP program header): such a binary could not start in the image.
func checkStatic(binary string) error {
	f, err := elf.Open(binary)
	if err != nil {
		return fmt.Errorf("test server binary %s is not an ELF executable: %w", binary, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("test server binary %s is dynamically linked; build it with CGO_ENABLED=0 (make build does)", binary)
		}
	}
	return nil
}
