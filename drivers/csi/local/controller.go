package local

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// GetPluginInfo names the driver.
func (d *Driver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: DriverName, VendorVersion: d.cfg.Version}, nil
}

// GetPluginCapabilities declares the controller service, node-local topology and online
// expansion (offline where the process may not grow mounted file systems).
func (d *Driver) GetPluginCapabilities(context.Context, *csi.GetPluginCapabilitiesRequest) (*csi.GetPluginCapabilitiesResponse, error) {
	expansion := csi.PluginCapability_VolumeExpansion_ONLINE
	if !d.onlineResize {
		expansion = csi.PluginCapability_VolumeExpansion_OFFLINE
	}
	service := func(t csi.PluginCapability_Service_Type) *csi.PluginCapability {
		return &csi.PluginCapability{Type: &csi.PluginCapability_Service_{Service: &csi.PluginCapability_Service{Type: t}}}
	}
	return &csi.GetPluginCapabilitiesResponse{Capabilities: []*csi.PluginCapability{
		service(csi.PluginCapability_Service_CONTROLLER_SERVICE),
		service(csi.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS),
		{Type: &csi.PluginCapability_VolumeExpansion_{VolumeExpansion: &csi.PluginCapability_VolumeExpansion{
			Type: expansion}}},
	}}, nil
}

// Probe reports ready: the driver is ready once it serves.
func (d *Driver) Probe(context.Context, *csi.ProbeRequest) (*csi.ProbeResponse, error) {
	return &csi.ProbeResponse{}, nil
}

// ControllerGetCapabilities lists the controller RPCs the driver implements.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	types := []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	}
	if d.cfg.ControllerPublish {
		types = append(types, csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
			csi.ControllerServiceCapability_RPC_PUBLISH_READONLY)
	}
	caps := make([]*csi.ControllerServiceCapability, len(types))
	for i, t := range types {
		caps[i] = &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{
			Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}}
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// safeID is a name that can serve as an id (and a file name) as it is.
var safeID = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$`)

// idFor derives an id from a CreateVolume/CreateSnapshot name: the name itself when it is a
// safe file name (so that pvc-<uid> volumes keep their name), else a hash of it.
func idFor(prefix, name string) string {
	if safeID.MatchString(name) {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return prefix + hex.EncodeToString(sum[:16])
}

// supportedModes are the access modes of a volume that lives on one node.
var supportedModes = map[csi.VolumeCapability_AccessMode_Mode]bool{
	csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER:        true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY:   true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER: true,
	csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:  true,
}

// checkCapabilities validates volume capabilities and returns the access type they ask for
// (modeFilesystem or modeBlock). The error says what is wrong; callers pick the code.
func checkCapabilities(caps []*csi.VolumeCapability) (string, error) {
	if len(caps) == 0 {
		return "", errors.New("volume_capabilities is required")
	}
	mode := ""
	for i, c := range caps {
		m, err := checkCapability(c)
		if err != nil {
			return "", fmt.Errorf("volume_capabilities[%d]: %w", i, err)
		}
		if mode != "" && m != mode {
			return "", errors.New("volume_capabilities mix block and mount access types")
		}
		mode = m
	}
	return mode, nil
}

func checkCapability(c *csi.VolumeCapability) (string, error) {
	if c == nil {
		return "", errors.New("volume_capability is required")
	}
	am := c.GetAccessMode()
	if am == nil {
		return "", errors.New("access_mode is required")
	}
	if !supportedModes[am.GetMode()] {
		return "", fmt.Errorf("access mode %s is not supported: volumes of %s live on one node", am.GetMode(), DriverName)
	}
	switch {
	case c.GetBlock() != nil:
		return modeBlock, nil
	case c.GetMount() != nil:
		if fs := c.GetMount().GetFsType(); fs != "" && fs != "ext4" {
			return "", fmt.Errorf("fsType %q is not supported (only ext4)", fs)
		}
		return modeFilesystem, nil
	default:
		return "", errors.New("access_type (block or mount) is required")
	}
}

// fsTypeParams are the CreateVolume parameters that may name the file system.
var fsTypeParams = []string{"fsType", "fstype", "csi.storage.k8s.io/fstype"}

// volumeSize picks the size of a new volume from its capacity range: the required bytes (or
// the default, capped by the limit) rounded up to whole MiB. min is the size of the content
// source, below which a volume cannot be.
func volumeSize(r *csi.CapacityRange, min int64) (int64, error) {
	req, lim := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || lim < 0 {
		return 0, status.Errorf(codes.InvalidArgument, "capacity_range has negative bytes (required %d, limit %d)", req, lim)
	}
	if lim > 0 && req > lim {
		return 0, status.Errorf(codes.OutOfRange, "capacity_range required_bytes %d exceeds limit_bytes %d", req, lim)
	}
	size := req
	if size == 0 {
		size = max(DefaultVolumeSize, min)
		if lim > 0 && size > lim {
			size = lim
		}
	}
	size = max(size, min)
	if rounded := roundUp(size); lim == 0 || rounded <= lim {
		size = rounded
	} else {
		// The limit leaves no room for whole MiB; whole 4 KiB blocks will do.
		size = (size + 4095) / 4096 * 4096
	}
	if size < min || size < sizeAlign {
		return 0, status.Errorf(codes.OutOfRange, "capacity_range (required %d, limit %d) cannot hold the %s the volume needs", req, lim, human(max(min, sizeAlign)))
	}
	if lim > 0 && size > lim {
		return 0, status.Errorf(codes.OutOfRange, "capacity_range limit_bytes %d is below the %s the volume needs", lim, human(size))
	}
	return size, nil
}

func roundUp(n int64) int64 {
	return (n + sizeAlign - 1) / sizeAlign * sizeAlign
}

// human prints a byte count the way a person reads it (1.5Gi, 64Mi, 512Ki, 100).
func human(n int64) string {
	units := []struct {
		name string
		size int64
	}{{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10}}
	for _, u := range units {
		if n >= u.size {
			if n%u.size == 0 {
				return fmt.Sprintf("%d%s", n/u.size, u.name)
			}
			return fmt.Sprintf("%.1f%s", float64(n)/float64(u.size), u.name)
		}
	}
	return fmt.Sprintf("%d", n)
}

// topology is this node's segment.
func (d *Driver) topology() []*csi.Topology {
	return []*csi.Topology{{Segments: map[string]string{TopologyKey: d.cfg.NodeID}}}
}

// reachable says whether a topology segment includes this node.
func (d *Driver) reachable(t *csi.Topology) bool {
	return t.GetSegments()[TopologyKey] == d.cfg.NodeID
}

// errExhausted is the error of a request the pool cannot hold.
func (d *Driver) errExhausted(what string, need, avail int64) error {
	return status.Errorf(codes.ResourceExhausted, "%s needs %s (%d bytes) but only %s (%d bytes) of the %s pool of node %s is free",
		what, human(need), need, human(avail), avail, human(d.cfg.Capacity), d.cfg.NodeID)
}

// CreateVolume makes a volume: a sparse image with an ext4 file system (or raw, for block),
// or a copy of a snapshot or another volume. It is idempotent by name.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	name := req.GetName()
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	mode, err := checkCapabilities(req.GetVolumeCapabilities())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	fsType := ""
	if mode == modeFilesystem {
		fsType = "ext4"
		for _, k := range fsTypeParams {
			if v, ok := req.GetParameters()[k]; ok && v != "" && !strings.EqualFold(v, "ext4") {
				return nil, status.Errorf(codes.InvalidArgument, "parameter %s: fsType %q is not supported (only ext4)", k, v)
			}
		}
	}
	if ar := req.GetAccessibilityRequirements(); len(ar.GetRequisite()) > 0 {
		ok := false
		for _, t := range ar.GetRequisite() {
			ok = ok || d.reachable(t)
		}
		if !ok {
			return nil, status.Errorf(codes.ResourceExhausted, "accessibility_requirements: no requisite topology includes %s=%s, the only node this driver serves", TopologyKey, d.cfg.NodeID)
		}
	}

	// The content source fixes a minimum size and the image to copy.
	var srcSnap, srcVol, srcImage string
	var srcSize int64
	if src := req.GetVolumeContentSource(); src != nil {
		switch {
		case src.GetSnapshot() != nil:
			srcSnap = src.GetSnapshot().GetSnapshotId()
			if srcSnap == "" {
				return nil, status.Error(codes.InvalidArgument, "volume_content_source.snapshot.snapshot_id is required")
			}
			var snap *snapshot
			d.state.view(func(st *stateFile) {
				if s, ok := st.Snapshots[srcSnap]; ok {
					c := *s
					snap = &c
				}
			})
			if snap == nil {
				return nil, status.Errorf(codes.NotFound, "source snapshot %s not found", srcSnap)
			}
			if snap.Mode != mode {
				return nil, status.Errorf(codes.InvalidArgument, "source snapshot %s is a %s image, the volume asks for %s", srcSnap, snap.Mode, mode)
			}
			srcImage, srcSize = d.snapshotPath(srcSnap), snap.Size
		case src.GetVolume() != nil:
			srcVol = src.GetVolume().GetVolumeId()
			if srcVol == "" {
				return nil, status.Error(codes.InvalidArgument, "volume_content_source.volume.volume_id is required")
			}
			v := d.state.getVolume(srcVol)
			if v == nil || v.Pending {
				return nil, status.Errorf(codes.NotFound, "source volume %s not found", srcVol)
			}
			if v.Mode != mode {
				return nil, status.Errorf(codes.InvalidArgument, "source volume %s is a %s volume, the clone asks for %s", srcVol, v.Mode, mode)
			}
			srcImage, srcSize = d.volumePath(srcVol), v.Size
		default:
			return nil, status.Error(codes.InvalidArgument, "volume_content_source names neither a snapshot nor a volume")
		}
	}
	size, err := volumeSize(req.GetCapacityRange(), srcSize)
	if err != nil {
		return nil, err
	}

	unlock := d.locks.lock("volume-name/" + name)
	defer unlock()
	id := idFor("vol-", name)
	var existing *volume
	err = d.state.update(func(st *stateFile) error {
		if v := st.volumeByName(name); v != nil {
			existing = v.clone()
			return errUnchanged
		}
		if _, taken := st.Volumes[id]; taken {
			return status.Errorf(codes.AlreadyExists, "volume id %s derived from name %q is taken by another volume", id, name)
		}
		if avail := d.cfg.Capacity - st.allocated(); size > avail {
			return d.errExhausted("volume "+name, size, avail)
		}
		st.Volumes[id] = &volume{ID: id, Name: name, Size: size, Mode: mode, FsType: fsType,
			SourceSnapshot: srcSnap, SourceVolume: srcVol, Created: time.Now().UTC(), Pending: true}
		return nil
	})
	if existing != nil {
		return d.existingVolume(existing, req, mode, srcSnap, srcVol)
	}
	if err != nil {
		return nil, err
	}

	if err := d.makeImage(ctx, id, mode, size, srcImage, srcVol); err != nil {
		_ = os.Remove(d.volumePath(id))
		_ = d.state.update(func(st *stateFile) error { delete(st.Volumes, id); return nil })
		return nil, status.Errorf(codes.Internal, "create volume %s: %v", name, err)
	}
	var v *volume
	if err := d.state.update(func(st *stateFile) error {
		st.Volumes[id].Pending = false
		v = st.Volumes[id].clone()
		return nil
	}); err != nil {
		return nil, status.Errorf(codes.Internal, "create volume %s: %v", name, err)
	}
	d.log.Info("created volume", "volume", id, "size", size, "mode", mode, "snapshot", srcSnap, "clone", srcVol)
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(v)}, nil
}

// errUnchanged ends a state update without saving and without error.
var errUnchanged = errors.New("unchanged")

// existingVolume answers a CreateVolume whose name exists: the same volume again if the
// request is compatible, AlreadyExists otherwise.
func (d *Driver) existingVolume(v *volume, req *csi.CreateVolumeRequest, mode, srcSnap, srcVol string) (*csi.CreateVolumeResponse, error) {
	if v.Pending {
		return nil, status.Errorf(codes.Aborted, "volume %s is still being created", v.Name)
	}
	r := req.GetCapacityRange()
	switch {
	case r.GetRequiredBytes() > v.Size:
		return nil, status.Errorf(codes.AlreadyExists, "volume %s exists with %s, smaller than the required %d bytes", v.Name, human(v.Size), r.GetRequiredBytes())
	case r.GetLimitBytes() > 0 && r.GetLimitBytes() < v.Size:
		return nil, status.Errorf(codes.AlreadyExists, "volume %s exists with %s, above the limit of %d bytes", v.Name, human(v.Size), r.GetLimitBytes())
	case v.Mode != mode:
		return nil, status.Errorf(codes.AlreadyExists, "volume %s exists as a %s volume, not %s", v.Name, v.Mode, mode)
	case v.SourceSnapshot != srcSnap || v.SourceVolume != srcVol:
		return nil, status.Errorf(codes.AlreadyExists, "volume %s exists with another content source", v.Name)
	}
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(v)}, nil
}

// makeImage writes the image of a new volume.
func (d *Driver) makeImage(ctx context.Context, id, mode string, size int64, srcImage, srcVol string) error {
	ctx, cancel := opContext(ctx)
	defer cancel()
	path := d.volumePath(id)
	if srcImage == "" {
		// A file system volume gets its file system when it is first staged (NodeStage
		// formats an empty volume), which keeps CreateVolume to a sparse file and out of
		// the way of a burst of claims.
		return createImage(path, size)
	}
	if srcVol != "" {
		// A clone copies a volume that may be in use: hold its lock and flush it first.
		unlock := d.locks.lock("volume/" + srcVol)
		defer unlock()
		thaw := d.freeze(ctx, srcVol)
		defer thaw()
	}
	if err := copyImage(srcImage, path); err != nil {
		return err
	}
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	if size > info.Size() {
		if err := growImage(path, size); err != nil {
			return err
		}
		if mode == modeFilesystem {
			return resizeExt4Offline(ctx, path)
		}
	}
	return nil
}

// csiVolume is a volume as CSI describes it.
func (d *Driver) csiVolume(v *volume) *csi.Volume {
	size := v.Size
	if d.cfg.Defect == DefectWrongCapacity {
		size /= 2
	}
	out := &csi.Volume{VolumeId: v.ID, CapacityBytes: size, AccessibleTopology: d.topology()}
	switch {
	case v.SourceSnapshot != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.SourceSnapshot}}}
	case v.SourceVolume != "":
		out.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.SourceVolume}}}
	}
	return out
}

// DeleteVolume removes a volume and its image. Unknown volumes are fine (idempotent); a
// volume still attached, staged or published is refused.
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	unlock := d.locks.lock("volume/" + id)
	defer unlock()
	v := d.state.getVolume(id)
	if v == nil {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if d.cfg.Defect != DefectDeletePublished {
		if err := inUse(v); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "delete volume %s: %v", id, err)
		}
	}
	if err := os.Remove(d.volumePath(id)); err != nil && !os.IsNotExist(err) {
		return nil, status.Errorf(codes.Internal, "delete volume %s: %v", id, err)
	}
	if err := d.state.update(func(st *stateFile) error { delete(st.Volumes, id); return nil }); err != nil {
		return nil, status.Errorf(codes.Internal, "delete volume %s: %v", id, err)
	}
	d.log.Info("deleted volume", "volume", id)
	return &csi.DeleteVolumeResponse{}, nil
}

// inUse says where a volume is still in use, or nil.
func inUse(v *volume) error {
	switch {
	case len(v.Published) > 0:
		paths := make([]string, 0, len(v.Published))
		for p := range v.Published {
			paths = append(paths, p)
		}
		sort.Strings(paths)
		return fmt.Errorf("still published at %s", strings.Join(paths, ", "))
	case v.Staged != nil:
		return fmt.Errorf("still staged at %s", v.Staged.Path)
	case v.Attached != nil:
		return fmt.Errorf("still published to node %s", v.Attached.NodeID)
	}
	return nil
}

// ValidateVolumeCapabilities confirms the capabilities a volume supports.
func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "volume_capabilities is required")
	}
	v := d.state.getVolume(id)
	if v == nil || v.Pending {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", id)
	}
	mode, err := checkCapabilities(req.GetVolumeCapabilities())
	if err == nil && mode != v.Mode {
		err = fmt.Errorf("volume %s is a %s volume, not %s", id, v.Mode, mode)
	}
	if err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

// ListVolumes lists volumes in id order, a page at a time.
func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	var vols map[string]*volume
	d.state.view(func(st *stateFile) {
		vols = make(map[string]*volume, len(st.Volumes))
		for id, v := range st.Volumes {
			if !v.Pending {
				vols[id] = v.clone()
			}
		}
	})
	ids := make([]string, 0, len(vols))
	for id := range vols {
		ids = append(ids, id)
	}
	pageIDs, next, err := page(ids, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, pageError(err)
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, id := range pageIDs {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: d.csiVolume(vols[id])})
	}
	return resp, nil
}

func pageError(err error) error {
	if errors.Is(err, errBadToken) {
		return status.Error(codes.Aborted, err.Error())
	}
	return status.Error(codes.InvalidArgument, err.Error())
}

// GetCapacity reports the free bytes of the pool: 0 for a topology that excludes this node
// or capabilities the driver cannot serve.
func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if t := req.GetAccessibleTopology(); t != nil && !d.reachable(t) {
		return &csi.GetCapacityResponse{AvailableCapacity: 0}, nil
	}
	if len(req.GetVolumeCapabilities()) > 0 {
		if _, err := checkCapabilities(req.GetVolumeCapabilities()); err != nil {
			return &csi.GetCapacityResponse{AvailableCapacity: 0}, nil
		}
	}
	avail := d.available()
	if d.cfg.Defect == DefectWrongCapacity {
		avail = d.cfg.Capacity
	}
	return &csi.GetCapacityResponse{
		AvailableCapacity: avail,
		MaximumVolumeSize: wrapperspb.Int64(avail),
		MinimumVolumeSize: wrapperspb.Int64(sizeAlign),
	}, nil
}

// available is the pool minus what volumes and snapshots hold.
func (d *Driver) available() int64 {
	var avail int64
	d.state.view(func(st *stateFile) { avail = d.cfg.Capacity - st.allocated() })
	return max(avail, 0)
}

// ControllerExpandVolume grows a volume's image. File systems are grown by NodeExpandVolume
// (node_expansion_required); a loop device already attached is refreshed here.
func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "capacity_range is required")
	}
	unlock := d.locks.lock("volume/" + id)
	defer unlock()
	v := d.state.getVolume(id)
	if v == nil || v.Pending {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", id)
	}
	if c := req.GetVolumeCapability(); c != nil {
		if mode, err := checkCapability(c); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "volume_capability: %v", err)
		} else if mode != v.Mode {
			return nil, status.Errorf(codes.InvalidArgument, "volume_capability: volume %s is a %s volume, not %s", id, v.Mode, mode)
		}
	}
	r := req.GetCapacityRange()
	if r.GetRequiredBytes() < v.Size && r.GetRequiredBytes() > 0 {
		return nil, status.Errorf(codes.OutOfRange, "volume %s has %s; shrinking to %d bytes is not supported", id, human(v.Size), r.GetRequiredBytes())
	}
	size, err := volumeSize(r, v.Size)
	if err != nil {
		return nil, err
	}
	nodeExpand := v.Mode == modeFilesystem
	if size > v.Size {
		err := d.state.update(func(st *stateFile) error {
			if avail := d.cfg.Capacity - st.allocated(); size-v.Size > avail {
				return d.errExhausted("expansion of volume "+id+" to "+human(size), size-v.Size, avail)
			}
			st.Volumes[id].Size = size
			return nil
		})
		if err != nil {
			return nil, err
		}
		if err := growImage(d.volumePath(id), size); err != nil {
			_ = d.state.update(func(st *stateFile) error { st.Volumes[id].Size = v.Size; return nil })
			return nil, status.Errorf(codes.Internal, "expand volume %s: %v", id, err)
		}
		d.log.Info("expanded volume", "volume", id, "from", v.Size, "to", size)
	}
	opCtx, cancel := opContext(ctx)
	defer cancel()
	if dev, err := d.loops.find(opCtx, d.volumePath(id)); err == nil && dev != "" {
		if err := refresh(opCtx, dev); err != nil {
			return nil, status.Errorf(codes.Internal, "expand volume %s: %v", id, err)
		}
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: size, NodeExpansionRequired: nodeExpand}, nil
}

// ControllerPublishVolume attaches a volume's loop device for its node (--controller-publish
// only) and hands the device to NodeStageVolume in publish_context.
func (d *Driver) ControllerPublishVolume(ctx context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	if !d.cfg.ControllerPublish {
		return nil, status.Error(codes.Unimplemented, "ControllerPublishVolume needs --controller-publish")
	}
	id, node := req.GetVolumeId(), req.GetNodeId()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case node == "":
		return nil, status.Error(codes.InvalidArgument, "node_id is required")
	case req.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	mode, err := checkCapability(req.GetVolumeCapability())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "volume_capability: %v", err)
	}
	unlock := d.locks.lock("volume/" + id)
	defer unlock()
	v := d.state.getVolume(id)
	if v == nil || v.Pending {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", id)
	}
	if node != d.cfg.NodeID {
		return nil, status.Errorf(codes.NotFound, "node %s not found: volumes of this driver live on node %s", node, d.cfg.NodeID)
	}
	if mode != v.Mode {
		return nil, status.Errorf(codes.InvalidArgument, "volume_capability: volume %s is a %s volume, not %s", id, v.Mode, mode)
	}
	if a := v.Attached; a != nil {
		if a.ReadOnly != req.GetReadonly() {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is published to node %s with readonly=%t", id, a.NodeID, a.ReadOnly)
		}
	}
	opCtx, cancel := opContext(ctx)
	defer cancel()
	dev, err := d.loops.attach(opCtx, d.volumePath(id))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "publish volume %s: %v", id, err)
	}
	if err := d.state.update(func(st *stateFile) error {
		st.Volumes[id].Attached = &attachment{NodeID: node, Device: dev, ReadOnly: req.GetReadonly()}
		return nil
	}); err != nil {
		return nil, status.Errorf(codes.Internal, "publish volume %s: %v", id, err)
	}
	return &csi.ControllerPublishVolumeResponse{PublishContext: map[string]string{"devicePath": dev}}, nil
}

// ControllerUnpublishVolume detaches what ControllerPublishVolume attached.
func (d *Driver) ControllerUnpublishVolume(ctx context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	if !d.cfg.ControllerPublish {
		return nil, status.Error(codes.Unimplemented, "ControllerUnpublishVolume needs --controller-publish")
	}
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	}
	unlock := d.locks.lock("volume/" + id)
	defer unlock()
	v := d.state.getVolume(id)
	if v == nil {
		// The spec asks for NotFound; a volume that is gone is not attached either.
		return nil, status.Errorf(codes.NotFound, "volume %s not found", id)
	}
	if v.Attached == nil || (req.GetNodeId() != "" && req.GetNodeId() != v.Attached.NodeID) {
		return &csi.ControllerUnpublishVolumeResponse{}, nil
	}
	if v.Staged != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is still staged at %s", id, v.Staged.Path)
	}
	opCtx, cancel := opContext(ctx)
	defer cancel()
	if err := d.loops.detach(opCtx, d.volumePath(id)); err != nil {
		return nil, status.Errorf(codes.Internal, "unpublish volume %s: %v", id, err)
	}
	if err := d.state.update(func(st *stateFile) error { st.Volumes[id].Attached = nil; return nil }); err != nil {
		return nil, status.Errorf(codes.Internal, "unpublish volume %s: %v", id, err)
	}
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}

// CreateSnapshot copies a volume's image (flushing and freezing a mounted file system for
// the copy). Snapshots are ready at once and idempotent by name.
func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	name, src := req.GetName(), req.GetSourceVolumeId()
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	if src == "" {
		return nil, status.Error(codes.InvalidArgument, "source_volume_id is required")
	}
	unlockName := d.locks.lock("snapshot-name/" + name)
	defer unlockName()
	var existing *snapshot
	d.state.view(func(st *stateFile) {
		if s := st.snapshotByName(name); s != nil {
			c := *s
			existing = &c
		}
	})
	if existing != nil {
		if existing.SourceVolume != src {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %s exists for volume %s, not %s", name, existing.SourceVolume, src)
		}
		return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(existing)}, nil
	}
	unlock := d.locks.lock("volume/" + src)
	defer unlock()
	v := d.state.getVolume(src)
	if v == nil || v.Pending {
		return nil, status.Errorf(codes.NotFound, "source volume %s not found", src)
	}
	id := idFor("snap-", name)
	if avail := d.available(); v.Size > avail {
		return nil, d.errExhausted("snapshot "+name, v.Size, avail)
	}
	opCtx, cancel := opContext(ctx)
	defer cancel()
	thaw := d.freeze(opCtx, src)
	err := copyImage(d.volumePath(src), d.snapshotPath(id))
	thaw()
	if err != nil {
		return nil, status.Errorf(codes.Internal, "create snapshot %s: %v", name, err)
	}
	snap := &snapshot{ID: id, Name: name, SourceVolume: src, Size: v.Size, Mode: v.Mode, Created: time.Now().UTC()}
	if err := d.state.update(func(st *stateFile) error {
		if _, taken := st.Snapshots[id]; taken {
			return status.Errorf(codes.AlreadyExists, "snapshot id %s derived from name %q is taken", id, name)
		}
		st.Snapshots[id] = snap
		return nil
	}); err != nil {
		return nil, err
	}
	d.log.Info("created snapshot", "snapshot", id, "volume", src, "size", v.Size)
	return &csi.CreateSnapshotResponse{Snapshot: csiSnapshot(snap)}, nil
}

func csiSnapshot(s *snapshot) *csi.Snapshot {
	return &csi.Snapshot{SizeBytes: s.Size, SnapshotId: s.ID, SourceVolumeId: s.SourceVolume,
		CreationTime: timestamppb.New(s.Created), ReadyToUse: true}
}

// DeleteSnapshot removes a snapshot; unknown ones are fine. Volumes restored from it are
// copies and stay.
func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "snapshot_id is required")
	}
	unlock := d.locks.lock("snapshot/" + id)
	defer unlock()
	if err := os.Remove(d.snapshotPath(id)); err != nil && !os.IsNotExist(err) {
		return nil, status.Errorf(codes.Internal, "delete snapshot %s: %v", id, err)
	}
	if err := d.state.update(func(st *stateFile) error { delete(st.Snapshots, id); return nil }); err != nil {
		return nil, status.Errorf(codes.Internal, "delete snapshot %s: %v", id, err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots lists snapshots in id order, filtered by id or source volume, a page at a time.
func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	snaps := map[string]*snapshot{}
	d.state.view(func(st *stateFile) {
		for id, s := range st.Snapshots {
			if req.GetSnapshotId() != "" && id != req.GetSnapshotId() {
				continue
			}
			if req.GetSourceVolumeId() != "" && s.SourceVolume != req.GetSourceVolumeId() {
				continue
			}
			c := *s
			snaps[id] = &c
		}
	})
	ids := make([]string, 0, len(snaps))
	for id := range snaps {
		ids = append(ids, id)
	}
	pageIDs, next, err := page(ids, req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, pageError(err)
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, id := range pageIDs {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: csiSnapshot(snaps[id])})
	}
	return resp, nil
}
