package csi

// The node's record of CSI volumes, kept on disk so that a restarted agent knows what it
// staged and published (and unpublishes and unstages it once no pod needs it), in the
// kubelet's directory layout:
//
//	DATA_DIR/plugins/kubernetes.io/csi/DRIVER/SHA256(HANDLE)/globalmount        staging path
//	DATA_DIR/plugins/kubernetes.io/csi/DRIVER/SHA256(HANDLE)/vol_data.json      volumeRecord
//	DATA_DIR/plugins/kubernetes.io/csi/DRIVER/SHA256(HANDLE)/publications/UID~NAME.json
//	DATA_DIR/pods/UID/volumes/kubernetes.io~csi/NAME/mount                    publish path
//	DATA_DIR/pods/UID/volumeDevices/kubernetes.io~csi/PV                      block publish path
//
// A volume's publications live beside its staging record rather than in the pod's
// directory, so the reference count of a staged volume is one directory listing, and the
// agent's removal of a pod's directory cannot lose the record of a volume still staged.

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

const (
	// csiKind is the kubelet's plugin directory name of CSI volumes in a pod's directory.
	csiKind = "kubernetes.io~csi"
	// volumeRecordFile is the volume's record beside its staging path (the kubelet's name).
	volumeRecordFile = "vol_data.json"
	publicationsDir  = "publications"
)

// UniqueName is the name Kubernetes gives a CSI volume in node.status.volumesInUse and
// volumesAttached: kubernetes.io/csi/DRIVER^HANDLE.
func UniqueName(driver, handle string) corev1.UniqueVolumeName {
	return corev1.UniqueVolumeName("kubernetes.io/csi/" + driver + "^" + handle)
}

// volumeDir is the directory of one volume's records and staging path.
func volumeDir(dataDir, driver, handle string) string {
	sum := sha256.Sum256([]byte(handle))
	return filepath.Join(dataDir, "plugins", "kubernetes.io", "csi", driver, hex.EncodeToString(sum[:]))
}

// StagingPath is where a volume of driver is staged on the node (NodeStageVolume's
// staging_target_path): one per volume per node.
func StagingPath(dataDir, driver, handle string) string {
	return filepath.Join(volumeDir(dataDir, driver, handle), "globalmount")
}

// PublishPath is where the volume named name (the pod's volume name, or the PV's name for
// a block volume, as the kubelet names them) is published for the pod (NodePublishVolume's
// target_path).
func PublishPath(dataDir string, podUID types.UID, name string, block bool) string {
	if block {
		return filepath.Join(dataDir, "pods", string(podUID), "volumeDevices", csiKind, name)
	}
	return filepath.Join(dataDir, "pods", string(podUID), "volumes", csiKind, name, "mount")
}

// EphemeralHandle is the volume id of an inline (ephemeral) CSI volume, as the kubelet
// makes it: "csi-" and the hex SHA-256 of the pod UID and the volume's name.
func EphemeralHandle(podUID types.UID, volumeName string) string {
	sum := sha256.Sum256([]byte(string(podUID) + volumeName))
	return "csi-" + hex.EncodeToString(sum[:])
}

// volumeRecord is what the node did with one volume of one driver.
type volumeRecord struct {
	Driver       string `json:"driver"`
	VolumeHandle string `json:"volumeHandle"`
	PVName       string `json:"pvName,omitempty"`
	// Stage: NodeStageVolume was called, or is being called, so NodeUnstageVolume is due
	// once no pod publishes the volume. Staged: it succeeded.
	Stage  bool `json:"stage,omitempty"`
	Staged bool `json:"staged,omitempty"`
	// StagingPath is empty for drivers without STAGE_UNSTAGE_VOLUME.
	StagingPath string `json:"stagingPath,omitempty"`
	Block       bool   `json:"block,omitempty"`
}

// publication is one pod's use of a volume.
type publication struct {
	PodUID       types.UID `json:"podUID"`
	PodNamespace string    `json:"podNamespace"`
	PodName      string    `json:"podName"`
	// VolumeName is the pod's name of the volume (pod.spec.volumes[].name).
	VolumeName   string `json:"volumeName"`
	Driver       string `json:"driver"`
	VolumeHandle string `json:"volumeHandle"`
	PVName       string `json:"pvName,omitempty"`
	PVCNamespace string `json:"pvcNamespace,omitempty"`
	PVCName      string `json:"pvcName,omitempty"`
	TargetPath   string `json:"targetPath"`
	StagingPath  string `json:"stagingPath,omitempty"`
	Block        bool   `json:"block,omitempty"`
	Ephemeral    bool   `json:"ephemeral,omitempty"`
	ReadOnly     bool   `json:"readOnly,omitempty"`
	// Published: NodePublishVolume succeeded. A record without it means the call was
	// made (or was about to be) and NodeUnpublishVolume is due all the same.
	Published bool `json:"published,omitempty"`
}

// key names a publication among its volume's: the pod UID and the pod's volume name.
func (p *publication) key() string { return string(p.PodUID) + "~" + p.VolumeName }

func (p *publication) file(dataDir string) string {
	return filepath.Join(volumeDir(dataDir, p.Driver, p.VolumeHandle), publicationsDir, p.key()+".json")
}

func (r *volumeRecord) file(dataDir string) string {
	return filepath.Join(volumeDir(dataDir, r.Driver, r.VolumeHandle), volumeRecordFile)
}

// writeJSON writes v to path atomically (a temporary file renamed over it), so that a
// crash leaves the old record or the new one, never half of one.
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode %s: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return nil
}

// removeFile removes path; a missing file is not an error.
func removeFile(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return nil
}

// volumeState is a volume's record and its publications, in memory.
type volumeState struct {
	rec  volumeRecord
	pubs map[string]*publication // by publication key
	// verified: this process has checked (or made) the staging, so a later pod need not
	// stage again; a record read from disk after a restart is not verified.
	verified bool
}

// loadState reads every volume record and publication under dataDir. Unreadable records
// are reported and skipped: they name nothing the agent could clean up anyway.
func loadState(dataDir string) (map[corev1.UniqueVolumeName]*volumeState, []error) {
	out := map[corev1.UniqueVolumeName]*volumeState{}
	var errs []error
	root := filepath.Join(dataDir, "plugins", "kubernetes.io", "csi")
	recs, _ := filepath.Glob(filepath.Join(root, "*", "*", volumeRecordFile))
	for _, path := range recs {
		var rec volumeRecord
		if err := readJSON(path, &rec); err != nil {
			errs = append(errs, err)
			continue
		}
		vs := &volumeState{rec: rec, pubs: map[string]*publication{}}
		files, _ := filepath.Glob(filepath.Join(filepath.Dir(path), publicationsDir, "*.json"))
		for _, f := range files {
			var p publication
			if err := readJSON(f, &p); err != nil {
				errs = append(errs, err)
				continue
			}
			vs.pubs[p.key()] = &p
		}
		out[UniqueName(rec.Driver, rec.VolumeHandle)] = vs
	}
	return out, errs
}

func readJSON(path string, v any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode %s: %w", path, err)
	}
	return nil
}

// validDriverName refuses a driver name that would leave the plugins directory; the API
// validates CSIDriver names as DNS subdomains, but a socket may report anything.
func validDriverName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\\\x00") || len(name) > 63 {
		return fmt.Errorf("invalid CSI driver name %q", name)
	}
	return nil
}
