package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The layout the kubelet's AtomicWriter gives a configMap, secret, downwardAPI or
// projected volume, which berth keeps so that programs written for Kubernetes (and their
// file watchers) see the same thing:
//
//	DIR/..2026_12_01_21_01_00.123456789/KEY   the files of one version
//	DIR/..data -> ..2026_12_01_21_01_00.123456789
//	DIR/KEY -> ..data/KEY                       what the container sees
//
// A new version is written into a new timestamped directory and becomes visible with one
// rename of a symlink over ..data, so a reader never sees half of an update: it sees
// every file old or every file new.
const (
	atomicDataDir    = "..data"
	atomicDataDirTmp = "..data_tmp"
	// atomicTSLayout is the name of a version's directory, completed by a random suffix.
	atomicTSLayout = "..2006_01_02_15_04_05."
	// maxProjectedPath bounds a file's path in a volume, as the API's validation does.
	maxProjectedPath = 4096
)

// fileProjection is one file of a volume: its content and its permission bits.
type fileProjection struct {
	data []byte
	mode int32
}

// writeAtomic makes dir hold exactly payload (paths relative to dir), swapping in the new
// version atomically when it differs from the current one. It reports whether it wrote a
// new version. Versions left behind by an interrupted write are removed.
func writeAtomic(dir string, payload map[string]fileProjection) (bool, error) {
	clean := make(map[string]fileProjection, len(payload))
	for p, f := range payload {
		if err := validateProjectedPath(p); err != nil {
			return false, err
		}
		clean[filepath.Clean(p)] = f
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("create volume dir %s: %w", dir, err)
	}
	dataLink := filepath.Join(dir, atomicDataDir)
	old, err := os.Readlink(dataLink)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("read %s: %w", dataLink, err)
	}
	if old != "" {
		same, err := payloadMatches(filepath.Join(dir, old), clean)
		if err != nil {
			return false, err
		}
		if same {
			// Up to date; the user-visible links may still be missing after a crash.
			return false, linkVisible(dir, clean, old)
		}
	}

	tsDir, err := os.MkdirTemp(dir, time.Now().UTC().Format(atomicTSLayout))
	if err != nil {
		return false, fmt.Errorf("create version dir in %s: %w", dir, err)
	}
	if err := os.Chmod(tsDir, 0o755); err != nil {
		return false, fmt.Errorf("chmod %s: %w", tsDir, err)
	}
	for p, f := range clean {
		full := filepath.Join(tsDir, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return false, fmt.Errorf("create dir for %s: %w", p, err)
		}
		if err := os.WriteFile(full, f.data, fs.FileMode(f.mode)&fs.ModePerm); err != nil {
			return false, fmt.Errorf("write %s: %w", p, err)
		}
		// WriteFile's mode passes through the umask; the volume's mode must not.
		if err := os.Chmod(full, fs.FileMode(f.mode)&fs.ModePerm); err != nil {
			return false, fmt.Errorf("chmod %s: %w", p, err)
		}
	}
	tsName := filepath.Base(tsDir)
	tmpLink := filepath.Join(dir, atomicDataDirTmp)
	if err := os.Remove(tmpLink); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("remove stale %s: %w", tmpLink, err)
	}
	if err := os.Symlink(tsName, tmpLink); err != nil {
		return false, fmt.Errorf("link new version in %s: %w", dir, err)
	}
	// The swap: rename(2) replaces ..data in one step.
	if err := os.Rename(tmpLink, dataLink); err != nil {
		return false, fmt.Errorf("swap %s: %w", dataLink, err)
	}
	if err := linkVisible(dir, clean, tsName); err != nil {
		return true, err
	}
	return true, nil
}

// linkVisible creates DIR/NAME -> ..data/NAME for each top-level name of payload and
// removes the user-visible links of names that are no longer there, and every version
// directory but current.
func linkVisible(dir string, payload map[string]fileProjection, current string) error {
	want := map[string]bool{}
	for p := range payload {
		want[strings.SplitN(p, string(filepath.Separator), 2)[0]] = true
	}
	for name := range want {
		link := filepath.Join(dir, name)
		target := filepath.Join(atomicDataDir, name)
		if got, err := os.Readlink(link); err == nil && got == target {
			continue
		}
		if err := os.Remove(link); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("replace %s: %w", link, err)
		}
		if err := os.Symlink(target, link); err != nil {
			return fmt.Errorf("link %s: %w", link, err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read volume dir %s: %w", dir, err)
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case name == atomicDataDir || name == current || want[name]:
		case strings.HasPrefix(name, ".."):
			// An older version, or one an interrupted write left behind. Only directories
			// this writer made (..YYYY_...) and its own temporary link are ever removed.
			if name == atomicDataDirTmp || isVersionDir(name) {
				if err := os.RemoveAll(filepath.Join(dir, name)); err != nil {
					return fmt.Errorf("remove old version %s: %w", name, err)
				}
			}
		case e.Type()&fs.ModeSymlink != 0:
			// A user-visible name whose key went away: only our own links are removed.
			if target, err := os.Readlink(filepath.Join(dir, name)); err == nil && strings.HasPrefix(target, atomicDataDir+"/") {
				if err := os.Remove(filepath.Join(dir, name)); err != nil {
					return fmt.Errorf("remove %s: %w", name, err)
				}
			}
		}
	}
	return nil
}

// isVersionDir tells the name of a version directory (..2006_01_02_15_04_05.SUFFIX).
func isVersionDir(name string) bool {
	if len(name) <= len(atomicTSLayout) {
		return false
	}
	_, err := time.Parse(atomicTSLayout, name[:len(atomicTSLayout)])
	return err == nil
}

// payloadMatches tells whether version dir holds exactly payload, content and mode.
func payloadMatches(dir string, payload map[string]fileProjection) (bool, error) {
	seen := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			return nil
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		f, ok := payload[rel]
		if !ok {
			return errMismatch
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		if info.Mode().Perm() != fs.FileMode(f.mode)&fs.ModePerm || !info.Mode().IsRegular() {
			return errMismatch
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if !bytes.Equal(data, f.data) {
			return errMismatch
		}
		seen++
		return nil
	})
	switch {
	case errors.Is(err, errMismatch), errors.Is(err, fs.ErrNotExist):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("compare volume version %s: %w", dir, err)
	}
	return seen == len(payload), nil
}

var errMismatch = errors.New("payload differs")

// validateProjectedPath refuses a path that is absolute, climbs out with "..", starts
// with ".." (the writer's own names) or is too long, as the kubelet does.
func validateProjectedPath(p string) error {
	switch {
	case p == "":
		return errors.New("invalid path: must not be empty")
	case len(p) > maxProjectedPath:
		return fmt.Errorf("invalid path %q: must be less than or equal to %d characters", p, maxProjectedPath)
	case filepath.IsAbs(p):
		return fmt.Errorf("invalid path %q: must be relative path", p)
	case strings.HasPrefix(p, ".."):
		return fmt.Errorf("invalid path %q: must not start with '..'", p)
	}
	for _, part := range strings.Split(p, string(filepath.Separator)) {
		if part == ".." {
			return fmt.Errorf("invalid path %q: must not contain '..'", p)
		}
	}
	return nil
}
