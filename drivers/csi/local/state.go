package local

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// Access types of a volume: a file system (ext4 in the image) or the raw image as a block device.
const (
	modeFilesystem = "filesystem"
	modeBlock      = "block"
)

// volume is one volume of the pool as state.json records it.
type volume struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	Mode   string `json:"mode"`
	FsType string `json:"fsType,omitempty"`
	// SourceSnapshot and SourceVolume record what the volume was restored or cloned from, so
	// that a repeated CreateVolume with another source is told apart (AlreadyExists).
	SourceSnapshot string    `json:"sourceSnapshot,omitempty"`
	SourceVolume   string    `json:"sourceVolume,omitempty"`
	Created        time.Time `json:"created"`
	// Pending marks a volume whose image is still being made: its size is reserved in the
	// pool, but it is not listed; a driver that restarts finds it half made and removes it.
	Pending bool `json:"pending,omitempty"`

	// Attached is the node-side loop device when ControllerPublishVolume attached it
	// (--controller-publish); empty otherwise.
	Attached *attachment `json:"attached,omitempty"`
	// Staged is set between NodeStageVolume and NodeUnstageVolume.
	Staged *staging `json:"staged,omitempty"`
	// Published maps each target path to its publication.
	Published map[string]publication `json:"published,omitempty"`
}

// attachment records a ControllerPublishVolume.
type attachment struct {
	NodeID   string `json:"nodeID"`
	Device   string `json:"device"`
	ReadOnly bool   `json:"readOnly,omitempty"`
}

// staging records a NodeStageVolume: the loop device and, for file systems, where it is mounted.
type staging struct {
	Path   string   `json:"path"`
	Device string   `json:"device"`
	Flags  []string `json:"mountFlags,omitempty"`
}

// publication records a NodePublishVolume.
type publication struct {
	ReadOnly bool     `json:"readOnly,omitempty"`
	Flags    []string `json:"mountFlags,omitempty"`
	// SingleWriter: published with SINGLE_NODE_SINGLE_WRITER, so no other target may
	// have the volume at the same time.
	SingleWriter bool `json:"singleWriter,omitempty"`
}

// snapshot is a point-in-time copy of a volume's image.
type snapshot struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	SourceVolume string    `json:"sourceVolume"`
	Size         int64     `json:"size"`
	Mode         string    `json:"mode"`
	Created      time.Time `json:"created"`
}

// stateFile is the on-disk form of the driver's state.
type stateFile struct {
	// Version lets a later driver tell an old layout apart.
	Version   int                  `json:"version"`
	Volumes   map[string]*volume   `json:"volumes"`
	Snapshots map[string]*snapshot `json:"snapshots"`
}

// store is the driver's state, guarded by one mutex, and saved on every change before the
// call that made it returns. Saves are group commits: changes made while a save is under
// way are written together by the next one, so a burst of calls (100 CreateVolumes at
// once) costs a few fsyncs rather than one each. Long work (mkfs, copies, mounts) runs
// outside the mutex, serialised per volume by keyedMutex.
type store struct {
	path string
	mu   sync.Mutex // guards st and gen
	st   stateFile
	gen  uint64 // counts changes to st

	saveMu sync.Mutex // one save at a time
	saved  uint64     // the gen the file holds (guarded by saveMu)
}

const stateVersion = 1

// loadStore reads DIR/state.json, or starts empty when there is none.
func loadStore(dir string) (*store, error) {
	s := &store{path: filepath.Join(dir, "state.json")}
	s.st = stateFile{Version: stateVersion, Volumes: map[string]*volume{}, Snapshots: map[string]*snapshot{}}
	data, err := os.ReadFile(s.path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(data, &s.st); err != nil {
		return nil, fmt.Errorf("parse state %s: %w", s.path, err)
	}
	if s.st.Volumes == nil {
		s.st.Volumes = map[string]*volume{}
	}
	if s.st.Snapshots == nil {
		s.st.Snapshots = map[string]*snapshot{}
	}
	return s, nil
}

// flush returns once the file holds change gen or a later one: either an earlier save
// already covered it, or this call writes the state as it is now, with every change made
// meanwhile.
func (s *store) flush(gen uint64) error {
	s.saveMu.Lock()
	defer s.saveMu.Unlock()
	if s.saved >= gen {
		return nil
	}
	s.mu.Lock()
	data, err := json.MarshalIndent(&s.st, "", "  ")
	now := s.gen
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	if err := writeAtomic(s.path, data); err != nil {
		return err
	}
	s.saved = now
	return nil
}

// writeAtomic writes data to path atomically (temp file, fsync, rename, fsync of the
// directory), so that a crash leaves either the old or the new state, never a torn one.
func writeAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return fmt.Errorf("write state %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return fmt.Errorf("sync state %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close state %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("replace state: %w", err)
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	defer dir.Close()
	if err := dir.Sync(); err != nil {
		return fmt.Errorf("sync state dir: %w", err)
	}
	return nil
}

// update runs fn on the state under the mutex and, when fn returns nil, returns once the
// change is saved.
func (s *store) update(fn func(st *stateFile) error) error {
	s.mu.Lock()
	if err := fn(&s.st); err != nil {
		s.mu.Unlock()
		return err
	}
	s.gen++
	gen := s.gen
	s.mu.Unlock()
	return s.flush(gen)
}

// view runs fn on the state under the mutex, without saving.
func (s *store) view(fn func(st *stateFile)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(&s.st)
}

// getVolume returns a deep copy of a volume, or nil.
func (s *store) getVolume(id string) *volume {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.st.Volumes[id]
	if !ok {
		return nil
	}
	return v.clone()
}

func (v *volume) clone() *volume {
	c := *v
	if v.Attached != nil {
		a := *v.Attached
		c.Attached = &a
	}
	if v.Staged != nil {
		st := *v.Staged
		c.Staged = &st
	}
	c.Published = make(map[string]publication, len(v.Published))
	for k, p := range v.Published {
		c.Published[k] = p
	}
	return &c
}

// allocated is the bytes the pool has given out: every volume (pending ones included) and
// every snapshot image.
func (st *stateFile) allocated() int64 {
	var n int64
	for _, v := range st.Volumes {
		n += v.Size
	}
	for _, s := range st.Snapshots {
		n += s.Size
	}
	return n
}

// volumeByName finds a volume by its CreateVolume name.
func (st *stateFile) volumeByName(name string) *volume {
	for _, v := range st.Volumes {
		if v.Name == name {
			return v
		}
	}
	return nil
}

// snapshotByName finds a snapshot by its CreateSnapshot name.
func (st *stateFile) snapshotByName(name string) *snapshot {
	for _, s := range st.Snapshots {
		if s.Name == name {
			return s
		}
	}
	return nil
}

// tokenPrefix marks paging tokens this driver made: a token is the prefix and the id of the
// first entry of the next page. Entries are listed in id order and a page starts at the
// first id not below the token's, so a token stays good when entries come or go between pages.
const tokenPrefix = "next:"

// errBadToken is returned for a starting_token this driver did not make (codes.Aborted).
var errBadToken = errors.New("starting_token was not made by this driver")

// page picks one page of ids (sorted here) by a starting token and a maximum count (0 = all),
// and returns the page and the token of the next one ("" when this is the last).
func page(ids []string, token string, max int32) ([]string, string, error) {
	if max < 0 {
		return nil, "", fmt.Errorf("max_entries %d is negative", max)
	}
	sort.Strings(ids)
	start := 0
	if token != "" {
		from, ok := strings.CutPrefix(token, tokenPrefix)
		if !ok || from == "" {
			return nil, "", fmt.Errorf("%w: %q", errBadToken, token)
		}
		start = sort.SearchStrings(ids, from)
	}
	rest := ids[start:]
	if max == 0 || int(max) >= len(rest) {
		return rest, "", nil
	}
	return rest[:max], tokenPrefix + rest[max], nil
}
