package local

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"
	utilexec "k8s.io/utils/exec"
)

// NodeGetInfo names this node and its topology segment.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{
		NodeId:             d.cfg.NodeID,
		MaxVolumesPerNode:  d.cfg.MaxVolumesPerNode,
		AccessibleTopology: d.topology()[0],
	}, nil
}

// NodeGetCapabilities lists the node RPCs the driver implements.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	types := []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
		csi.NodeServiceCapability_RPC_VOLUME_CONDITION,
		csi.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER,
	}
	caps := make([]*csi.NodeServiceCapability, len(types))
	for i, t := range types {
		caps[i] = &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{
			Rpc: &csi.NodeServiceCapability_RPC{Type: t}}}
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// mounted says whether path is a mount point (a missing path is not). It reads the mount
// table, since a bind mount of a directory on the same file system fools a stat check.
func (d *Driver) mounted(path string) (bool, error) {
	m, err := d.mounter.IsMountPoint(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("check mount point %s: %w", path, err)
	}
	return m, nil
}

// unmountAll unmounts path until nothing is mounted there (a path may carry stacked mounts).
func (d *Driver) unmountAll(path string) error {
	for range 8 {
		m, err := d.mounted(path)
		if err != nil || !m {
			return err
		}
		if err := d.mounter.Unmount(path); err != nil {
			return fmt.Errorf("unmount %s: %w", path, err)
		}
	}
	return fmt.Errorf("unmount %s: still mounted after 8 unmounts", path)
}

// NodeStageVolume attaches a volume's image to a loop device (reusing one that is attached
// already, after a restart for instance) and, for file systems, checks and mounts it at the
// staging path.
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetStagingTargetPath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case path == "":
		return nil, status.Error(codes.InvalidArgument, "staging_target_path is required")
	case req.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume_capability is required")
	}
	path = filepath.Clean(path)
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
	if mode != v.Mode {
		return nil, status.Errorf(codes.InvalidArgument, "volume_capability: volume %s is a %s volume, not %s", id, v.Mode, mode)
	}
	if d.cfg.ControllerPublish {
		dev := req.GetPublishContext()["devicePath"]
		if dev == "" {
			return nil, status.Error(codes.InvalidArgument, "publish_context devicePath is required: the driver runs with --controller-publish, ControllerPublishVolume provides it")
		}
		if v.Attached == nil {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not published to node %s (ControllerPublishVolume first)", id, d.cfg.NodeID)
		}
	}
	opCtx, cancel := opContext(ctx)
	defer cancel()
	if s := v.Staged; s != nil {
		ok, err := d.stagedAt(opCtx, v, s.Path)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "stage volume %s: %v", id, err)
		}
		switch {
		case ok && s.Path == path:
			return &csi.NodeStageVolumeResponse{}, nil
		case ok:
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is staged at %s, not %s", id, s.Path, path)
		}
		// Recorded but gone (the node rebooted): stage again.
	}
	image := d.volumePath(id)
	dev, err := d.loops.attach(opCtx, image)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "stage volume %s: %v", id, err)
	}
	var flags []string
	if mode == modeFilesystem {
		flags = req.GetVolumeCapability().GetMount().GetMountFlags()
		if err := d.mountStaging(opCtx, dev, image, path, flags); err != nil {
			if v.Attached == nil {
				_ = d.loops.detach(opCtx, image)
			}
			return nil, status.Errorf(codes.Internal, "stage volume %s: %v", id, err)
		}
	}
	if err := d.state.update(func(st *stateFile) error {
		st.Volumes[id].Staged = &staging{Path: path, Device: dev, Flags: flags}
		return nil
	}); err != nil {
		return nil, status.Errorf(codes.Internal, "stage volume %s: %v", id, err)
	}
	d.log.Info("staged volume", "volume", id, "device", dev, "path", path)
	return &csi.NodeStageVolumeResponse{}, nil
}

// stagedAt says whether a volume's staging at path is still in place: its image is attached
// and, for file systems, mounted there.
func (d *Driver) stagedAt(ctx context.Context, v *volume, path string) (bool, error) {
	dev, err := d.loops.find(ctx, d.volumePath(v.ID))
	if err != nil || dev == "" {
		return false, err
	}
	if v.Mode == modeBlock {
		return true, nil
	}
	return d.mounted(path)
}

// mountStaging checks the file system on dev, grows it to its image's size if needed, and
// mounts it at path.
func (d *Driver) mountStaging(ctx context.Context, dev, image, path string, flags []string) error {
	if err := os.MkdirAll(path, 0o750); err != nil {
		return fmt.Errorf("create staging path: %w", err)
	}
	if m, err := d.mounted(path); err != nil {
		return err
	} else if m {
		// Something else is mounted there (ours is not, stagedAt said so).
		return fmt.Errorf("staging path %s is already a mount point", path)
	}
	if formatted, err := hasFilesystem(ctx, dev); err != nil {
		return err
	} else if !formatted {
		if err := makeExt4(ctx, dev); err != nil {
			return fmt.Errorf("format the new volume: %w", err)
		}
	}
	if err := fsck(ctx, dev, false); err != nil {
		return err
	}
	// A volume expanded while unstaged (or while online growth was impossible) is grown now,
	// before anything uses it.
	if grow, err := needsGrowth(ctx, dev, image); err != nil {
		return err
	} else if grow {
		if err := resizeExt4Offline(ctx, dev); err != nil {
			return fmt.Errorf("grow file system: %w", err)
		}
	}
	if err := d.mounter.Mount(dev, path, "ext4", flags); err != nil {
		return fmt.Errorf("mount %s at %s: %w", dev, path, err)
	}
	return nil
}

// NodeUnstageVolume unmounts the staging path and detaches the loop device (unless
// ControllerPublishVolume attached it: then ControllerUnpublishVolume detaches it).
func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetStagingTargetPath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case path == "":
		return nil, status.Error(codes.InvalidArgument, "staging_target_path is required")
	}
	path = filepath.Clean(path)
	unlock := d.locks.lock("volume/" + id)
	defer unlock()
	opCtx, cancel := opContext(ctx)
	defer cancel()
	v := d.state.getVolume(id)
	if v == nil {
		return nil, d.cleanupUnknown(opCtx, id, path)
	}
	if len(v.Published) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "unstage volume %s: %v", id, inUse(v))
	}
	if v.Staged == nil {
		return &csi.NodeUnstageVolumeResponse{}, nil
	}
	if v.Staged.Path != path {
		return nil, status.Errorf(codes.InvalidArgument, "volume %s is staged at %s, not %s", id, v.Staged.Path, path)
	}
	if v.Mode == modeFilesystem {
		if err := d.unmountAll(path); err != nil {
			return nil, status.Errorf(codes.Internal, "unstage volume %s: %v", id, err)
		}
	}
	if v.Attached == nil {
		if err := d.loops.detach(opCtx, d.volumePath(id)); err != nil {
			return nil, status.Errorf(codes.Internal, "unstage volume %s: %v", id, err)
		}
	}
	if err := d.state.update(func(st *stateFile) error { st.Volumes[id].Staged = nil; return nil }); err != nil {
		return nil, status.Errorf(codes.Internal, "unstage volume %s: %v", id, err)
	}
	d.log.Info("unstaged volume", "volume", id, "path", path)
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// cleanupUnknown handles a node call for a volume the state does not know: NotFound, as the
// spec asks, unless something is still mounted at path (a volume deleted while in use):
// then the mount goes, with its loop device, and the call succeeds so that the CO can finish.
func (d *Driver) cleanupUnknown(ctx context.Context, id, path string) error {
	m, err := d.mounted(path)
	if err != nil {
		return status.Errorf(codes.Internal, "volume %s: %v", id, err)
	}
	if !m {
		return status.Errorf(codes.NotFound, "volume %s not found", id)
	}
	dev, _, err := mount.GetDeviceNameFromMount(d.mounter, path)
	if err != nil {
		return status.Errorf(codes.Internal, "volume %s: find device mounted at %s: %v", id, path, err)
	}
	if err := d.unmountAll(path); err != nil {
		return status.Errorf(codes.Internal, "volume %s: %v", id, err)
	}
	if back, err := backingFile(dev); err == nil && filepath.Dir(back) == filepath.Join(d.cfg.StateDir, "volumes") ||
		err == nil && filepath.Base(back) == id+".img (deleted)" {
		if err := detachDevice(ctx, dev); err != nil {
			return status.Errorf(codes.Internal, "volume %s: %v", id, err)
		}
	}
	d.log.Info("cleaned up mount of unknown volume", "volume", id, "path", path)
	return nil
}

// NodePublishVolume bind-mounts the staged file system (or the loop device, for block
// volumes) at the target path, read-only when asked.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	id, target, staging := req.GetVolumeId(), req.GetTargetPath(), req.GetStagingTargetPath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case target == "":
		return nil, status.Error(codes.InvalidArgument, "target_path is required")
	case req.GetVolumeCapability() == nil:
		return nil, status.Error(codes.InvalidArgument, "volume_capability is required")
	case staging == "":
		return nil, status.Error(codes.FailedPrecondition, "staging_target_path is required: the driver stages volumes (STAGE_UNSTAGE_VOLUME)")
	}
	target, staging = filepath.Clean(target), filepath.Clean(staging)
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
	if mode != v.Mode {
		return nil, status.Errorf(codes.InvalidArgument, "volume_capability: volume %s is a %s volume, not %s", id, v.Mode, mode)
	}
	if v.Staged == nil || v.Staged.Path != staging {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged at %s", id, staging)
	}
	readOnly := req.GetReadonly() ||
		req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY
	if p, ok := v.Published[target]; ok {
		m, err := d.mounted(target)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "publish volume %s: %v", id, err)
		}
		switch {
		case m && p.ReadOnly != readOnly:
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is published at %s with readonly=%t", id, target, p.ReadOnly)
		case m && d.cfg.Defect == DefectSecondPublishFails:
			return nil, status.Errorf(codes.Internal, "mount %s at %s: target is busy", v.Staged.Device, target)
		case m:
			return &csi.NodePublishVolumeResponse{}, nil
		}
	}
	// SINGLE_NODE_SINGLE_WRITER (ReadWriteOncePod): one target at a time, whichever of
	// the two publications asked for it (the CSI spec: FAILED_PRECONDITION).
	singleWriter := req.GetVolumeCapability().GetAccessMode().GetMode() == csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER
	for other, p := range v.Published {
		if other != target && (singleWriter || p.SingleWriter) {
			return nil, status.Errorf(codes.FailedPrecondition,
				"volume %s is published at %s with access mode SINGLE_NODE_SINGLE_WRITER (or is asked for so): it cannot be published at %s too", id, other, target)
		}
	}
	var clash string
	d.state.view(func(st *stateFile) {
		for oid, o := range st.Volumes {
			if _, ok := o.Published[target]; ok && oid != id {
				clash = oid
			}
		}
	})
	if clash != "" {
		return nil, status.Errorf(codes.AlreadyExists, "target_path %s is in use by volume %s", target, clash)
	}
	opts := []string{"bind"}
	if readOnly && d.cfg.Defect != DefectIgnoreReadonly {
		opts = append(opts, "ro")
	}
	var flags []string
	source := staging
	if mode == modeFilesystem {
		flags = req.GetVolumeCapability().GetMount().GetMountFlags()
		opts = append(opts, flags...)
		if err := os.MkdirAll(target, 0o750); err != nil {
			return nil, status.Errorf(codes.Internal, "publish volume %s: create target: %v", id, err)
		}
	} else {
		source = v.Staged.Device
		if err := makeFile(target); err != nil {
			return nil, status.Errorf(codes.Internal, "publish volume %s: %v", id, err)
		}
	}
	if m, err := d.mounted(target); err != nil {
		return nil, status.Errorf(codes.Internal, "publish volume %s: %v", id, err)
	} else if m {
		return nil, status.Errorf(codes.AlreadyExists, "target_path %s is already a mount point", target)
	}
	if err := d.mounter.Mount(source, target, "", opts); err != nil {
		return nil, status.Errorf(codes.Internal, "publish volume %s: mount %s at %s: %v", id, source, target, err)
	}
	if err := d.state.update(func(st *stateFile) error {
		vol := st.Volumes[id]
		if vol.Published == nil {
			vol.Published = map[string]publication{}
		}
		vol.Published[target] = publication{ReadOnly: readOnly, Flags: flags, SingleWriter: singleWriter}
		return nil
	}); err != nil {
		return nil, status.Errorf(codes.Internal, "publish volume %s: %v", id, err)
	}
	d.log.Info("published volume", "volume", id, "target", target, "readOnly", readOnly)
	return &csi.NodePublishVolumeResponse{}, nil
}

// makeFile creates the file a block volume is bind-mounted onto, and its directory.
func makeFile(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return fmt.Errorf("create target dir: %w", err)
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o640)
	if err != nil {
		return fmt.Errorf("create target file: %w", err)
	}
	return f.Close()
}

// NodeUnpublishVolume unmounts the target path and removes it.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case target == "":
		return nil, status.Error(codes.InvalidArgument, "target_path is required")
	}
	target = filepath.Clean(target)
	unlock := d.locks.lock("volume/" + id)
	defer unlock()
	v := d.state.getVolume(id)
	if v == nil {
		opCtx, cancel := opContext(ctx)
		defer cancel()
		if err := d.cleanupUnknown(opCtx, id, target); err != nil {
			return nil, err
		}
		_ = os.Remove(target)
		return &csi.NodeUnpublishVolumeResponse{}, nil
	}
	if err := d.unmountAll(target); err != nil {
		return nil, status.Errorf(codes.Internal, "unpublish volume %s: %v", id, err)
	}
	if err := os.Remove(target); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, status.Errorf(codes.Internal, "unpublish volume %s: remove target: %v", id, err)
	}
	if _, ok := v.Published[target]; ok {
		if err := d.state.update(func(st *stateFile) error { delete(st.Volumes[id].Published, target); return nil }); err != nil {
			return nil, status.Errorf(codes.Internal, "unpublish volume %s: %v", id, err)
		}
		d.log.Info("unpublished volume", "volume", id, "target", target)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// NodeGetVolumeStats reports bytes and inodes of a staged or published file system (statfs),
// or the size of a block volume, with the volume's condition.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case path == "":
		return nil, status.Error(codes.InvalidArgument, "volume_path is required")
	}
	path = filepath.Clean(path)
	v := d.state.getVolume(id)
	if v == nil || v.Pending {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", id)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume_path %s: %v", path, err)
	}
	_, published := v.Published[path]
	if !published && (v.Staged == nil || v.Staged.Path != path) {
		return nil, status.Errorf(codes.NotFound, "volume %s is neither staged nor published at %s", id, path)
	}
	cond := &csi.VolumeCondition{Message: "volume is healthy"}
	if m, err := d.mounted(path); err != nil || (!m && (published || v.Mode == modeFilesystem)) {
		cond = &csi.VolumeCondition{Abnormal: true, Message: fmt.Sprintf("nothing is mounted at %s", path)}
	}
	if v.Mode == modeBlock {
		info, err := os.Stat(d.volumePath(id))
		if err != nil {
			return nil, status.Errorf(codes.Internal, "volume %s: %v", id, err)
		}
		return &csi.NodeGetVolumeStatsResponse{
			Usage:           []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: info.Size()}},
			VolumeCondition: cond,
		}, nil
	}
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		return nil, status.Errorf(codes.Internal, "statfs %s: %v", path, err)
	}
	bs := fs.Bsize
	return &csi.NodeGetVolumeStatsResponse{
		Usage: []*csi.VolumeUsage{
			{Unit: csi.VolumeUsage_BYTES, Total: int64(fs.Blocks) * bs, Available: int64(fs.Bavail) * bs,
				Used: int64(fs.Blocks-fs.Bfree) * bs},
			{Unit: csi.VolumeUsage_INODES, Total: int64(fs.Files), Available: int64(fs.Ffree),
				Used: int64(fs.Files - fs.Ffree)},
		},
		VolumeCondition: cond,
	}, nil
}

// NodeExpandVolume makes the loop device see the grown image and grows the mounted ext4
// file system online (resize2fs).
func (d *Driver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	id, path := req.GetVolumeId(), req.GetVolumePath()
	switch {
	case id == "":
		return nil, status.Error(codes.InvalidArgument, "volume_id is required")
	case path == "":
		return nil, status.Error(codes.InvalidArgument, "volume_path is required")
	}
	unlock := d.locks.lock("volume/" + id)
	defer unlock()
	v := d.state.getVolume(id)
	if v == nil || v.Pending {
		return nil, status.Errorf(codes.NotFound, "volume %s not found", id)
	}
	if _, err := os.Stat(path); err != nil {
		return nil, status.Errorf(codes.NotFound, "volume_path %s: %v", path, err)
	}
	if v.Staged == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s is not staged on this node", id)
	}
	if r := req.GetCapacityRange(); r.GetLimitBytes() > 0 && r.GetLimitBytes() < v.Size {
		return nil, status.Errorf(codes.OutOfRange, "volume %s has %s, above capacity_range limit_bytes %d", id, human(v.Size), r.GetLimitBytes())
	}
	opCtx, cancel := opContext(ctx)
	defer cancel()
	dev, err := d.loops.find(opCtx, d.volumePath(id))
	if err != nil || dev == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume %s has no loop device (%v)", id, err)
	}
	if err := refresh(opCtx, dev); err != nil {
		return nil, status.Errorf(codes.Internal, "expand volume %s: %v", id, err)
	}
	block := v.Mode == modeBlock || req.GetVolumeCapability().GetBlock() != nil
	if !block {
		if err := d.growFilesystem(opCtx, v, dev); err != nil {
			return nil, err
		}
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: v.Size}, nil
}

// growFilesystem grows a staged ext4 file system to its image's size: online with resize2fs
// when the process may, else offline (unmount the staging path, resize, mount again), which
// is possible only while nothing is published.
func (d *Driver) growFilesystem(ctx context.Context, v *volume, dev string) error {
	grow, err := needsGrowth(ctx, dev, d.volumePath(v.ID))
	if err != nil {
		return status.Errorf(codes.Internal, "expand volume %s: %v", v.ID, err)
	}
	if !grow {
		return nil
	}
	if d.onlineResize {
		if _, err := mount.NewResizeFs(utilexec.New()).Resize(dev, v.Staged.Path); err != nil {
			return status.Errorf(codes.Internal, "expand file system of volume %s: %v", v.ID, err)
		}
		d.log.Info("expanded file system online", "volume", v.ID, "device", dev, "size", v.Size)
		return nil
	}
	if len(v.Published) > 0 {
		return status.Errorf(codes.FailedPrecondition,
			"expand file system of volume %s: it is %v, and this driver cannot grow a mounted file system (no CAP_SYS_RESOURCE); it grows when the volume is next staged, or by NodeExpandVolume once it is unpublished",
			v.ID, inUse(v))
	}
	if err := d.unmountAll(v.Staged.Path); err != nil {
		return status.Errorf(codes.Internal, "expand volume %s: %v", v.ID, err)
	}
	resizeErr := resizeExt4Offline(ctx, dev)
	if err := d.mounter.Mount(dev, v.Staged.Path, "ext4", v.Staged.Flags); err != nil {
		return status.Errorf(codes.Internal, "expand volume %s: mount %s at %s again: %v (resize: %v)", v.ID, dev, v.Staged.Path, err, resizeErr)
	}
	if resizeErr != nil {
		return status.Errorf(codes.Internal, "expand file system of volume %s: %v", v.ID, resizeErr)
	}
	d.log.Info("expanded file system offline", "volume", v.ID, "device", dev, "size", v.Size)
	return nil
}

// freeze flushes a staged file system and freezes it for a consistent copy of its image; the
// returned func thaws it. A volume that is not mounted needs neither.
func (d *Driver) freeze(ctx context.Context, id string) func() {
	v := d.state.getVolume(id)
	if v == nil || v.Staged == nil || v.Mode != modeFilesystem {
		return func() {}
	}
	path := v.Staged.Path
	if m, err := d.mounted(path); err != nil || !m {
		return func() {}
	}
	if _, err := run(ctx, "fsfreeze", "-f", path); err != nil {
		d.log.Info("freeze failed; syncing instead", "volume", id, "err", err)
		if fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY, 0); err == nil {
			_ = unix.Syncfs(fd)
			_ = unix.Close(fd)
		}
		return func() {}
	}
	return func() {
		// Thaw with a context of its own: a frozen file system must not stay frozen.
		thawCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := run(thawCtx, "fsfreeze", "-u", path); err != nil {
			d.log.Error("thaw failed", "volume", id, "path", path, "err", err)
		}
	}
}
