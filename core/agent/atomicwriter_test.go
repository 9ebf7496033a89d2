package agent

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// readVolume reads the user-visible files of a volume through their links, as a
// container does.
func readVolume(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(rel string)
	walk = func(rel string) {
		entries, err := os.ReadDir(filepath.Join(dir, rel))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if rel == "" && strings.HasPrefix(e.Name(), "..") {
				continue
			}
			name := filepath.Join(rel, e.Name())
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.IsDir() {
				walk(name)
				continue
			}
			data, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			out[name] = string(data)
		}
	}
	walk("")
	return out
}

func versionDirs(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if isVersionDir(e.Name()) {
			out = append(out, e.Name())
		}
	}
	sort.Strings(out)
	return out
}

func TestWriteAtomicSwapAndCleanup(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "vol")
	v1 := map[string]fileProjection{
		"a":     {data: []byte("one"), mode: 0o600},
		"sub/b": {data: []byte("two"), mode: 0o644},
	}
	changed, err := writeAtomic(dir, v1)
	if err != nil || !changed {
		t.Fatalf("first write: changed %v, %v", changed, err)
	}
	first, err := os.Readlink(filepath.Join(dir, atomicDataDir))
	if err != nil || !isVersionDir(first) {
		t.Fatalf("..data -> %q, %v", first, err)
	}
	for name, want := range map[string]string{"a": "..data/a", "sub": "..data/sub"} {
		if got, err := os.Readlink(filepath.Join(dir, name)); err != nil || got != want {
			t.Errorf("%s -> %q (%v), want %q", name, got, err, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(dir, "a")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode of a: %v, %v", fi.Mode(), err)
	}
	if got := readVolume(t, dir); got["a"] != "one" || got["sub/b"] != "two" || len(got) != 2 {
		t.Errorf("content %v", got)
	}

	// The same payload again writes nothing.
	if changed, err := writeAtomic(dir, v1); err != nil || changed {
		t.Fatalf("rewrite: changed %v, %v", changed, err)
	}
	// A crash left a version and a temporary link behind; a user file that is not ours
	// stays.
	stale := filepath.Join(dir, "..2001_01_01_00_00_00.123")
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(stale), filepath.Join(dir, atomicDataDirTmp)); err != nil {
		t.Fatal(err)
	}

	// A new version: one swap, the old version and the dropped name go.
	v2 := map[string]fileProjection{"a": {data: []byte("three"), mode: 0o644}, "c": {data: []byte("four"), mode: 0o400}}
	changed, err = writeAtomic(dir, v2)
	if err != nil || !changed {
		t.Fatalf("second write: changed %v, %v", changed, err)
	}
	second, _ := os.Readlink(filepath.Join(dir, atomicDataDir))
	if second == first {
		t.Errorf("..data still points to %s", first)
	}
	if got := versionDirs(t, dir); len(got) != 1 || got[0] != second {
		t.Errorf("version dirs %v, want only %s", got, second)
	}
	if _, err := os.Lstat(filepath.Join(dir, "sub")); !os.IsNotExist(err) {
		t.Errorf("sub is still there: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, atomicDataDirTmp)); !os.IsNotExist(err) {
		t.Errorf("..data_tmp is still there: %v", err)
	}
	if got := readVolume(t, dir); got["a"] != "three" || got["c"] != "four" || len(got) != 2 {
		t.Errorf("content %v", got)
	}
	// A mode change alone is a new version.
	v2["c"] = fileProjection{data: []byte("four"), mode: 0o440}
	if changed, err := writeAtomic(dir, v2); err != nil || !changed {
		t.Errorf("mode change: changed %v, %v", changed, err)
	}
	// An empty payload empties the volume.
	if _, err := writeAtomic(dir, map[string]fileProjection{}); err != nil {
		t.Fatal(err)
	}
	if got := readVolume(t, dir); len(got) != 0 {
		t.Errorf("after an empty payload: %v", got)
	}
}

func TestWriteAtomicRefusesBadPaths(t *testing.T) {
	for _, p := range []string{"../escape", "a/../../b", "/etc/passwd", "..data", "..hidden", ""} {
		_, err := writeAtomic(filepath.Join(t.TempDir(), "vol"), map[string]fileProjection{p: {data: []byte("x"), mode: 0o644}})
		if err == nil {
			t.Errorf("path %q was accepted", p)
		}
	}
}
