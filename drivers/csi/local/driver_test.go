package local

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
)

// TestDriverLifecycle drives the whole life of filesystem volumes through a real gRPC client:
// create, stage, publish, read-only publish, expansion, snapshot and restore, a driver
// restart, and the way back until the pool is whole again.
func TestDriverLifecycle(t *testing.T) {
	needRoot(t)
	dir := testDir(t)
	ctx := context.Background()
	c := startDriver(t, dir, Config{})
	pool := capacity(t, c)

	vol := createVolume(t, c, "pvc-life", 64*mi, rwo)
	if vol.GetCapacityBytes() != 64*mi || vol.GetVolumeId() != "pvc-life" {
		t.Fatalf("volume = %v, want pvc-life of 64Mi", vol)
	}
	if seg := vol.GetAccessibleTopology()[0].GetSegments(); seg[TopologyKey] != "node-a" {
		t.Fatalf("topology = %v", seg)
	}
	again := createVolume(t, c, "pvc-life", 64*mi, rwo)
	if again.GetVolumeId() != vol.GetVolumeId() {
		t.Fatalf("repeated CreateVolume gave %s", again.GetVolumeId())
	}
	if got := capacity(t, c); got != pool-64*mi {
		t.Fatalf("capacity after create = %d, want %d", got, pool-64*mi)
	}

	id := vol.GetVolumeId()
	staging := filepath.Join(dir, "staging", "globalmount")
	target := filepath.Join(dir, "pods", "a", "mount")
	roTarget := filepath.Join(dir, "pods", "b", "mount")
	stage(t, c, id, staging, rwo)
	stage(t, c, id, staging, rwo) // idempotent
	if err := publish(c, id, staging, target, rwo, false); err != nil {
		t.Fatal(err)
	}
	if err := publish(c, id, staging, target, rwo, false); err != nil {
		t.Fatalf("repeated publish: %v", err)
	}
	if n := countMounts(t, target); n != 1 {
		t.Fatalf("%d mounts at target after two publishes, want 1", n)
	}
	if err := os.WriteFile(filepath.Join(target, "hello.txt"), []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id})
	wantCode(t, err, codes.FailedPrecondition, "DeleteVolume of a published volume")

	if err := publish(c, id, staging, roTarget, rwo, true); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(roTarget, "hello.txt")); err != nil || string(data) != "hello" {
		t.Fatalf("read through read-only target: %q, %v", data, err)
	}
	err = os.WriteFile(filepath.Join(roTarget, "x"), nil, 0o644)
	if !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write to read-only target: %v, want EROFS", err)
	}
	err = publish(c, id, staging, roTarget, rwo, false)
	wantCode(t, err, codes.AlreadyExists, "publish read-write where read-only is published")

	// Snapshot at 64Mi, restore into a bigger volume later.
	snap, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-life", SourceVolumeId: id})
	if err != nil {
		t.Fatal(err)
	}
	if !snap.GetSnapshot().GetReadyToUse() || snap.GetSnapshot().GetSizeBytes() != 64*mi {
		t.Fatalf("snapshot = %v", snap.GetSnapshot())
	}
	_, err = c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-life", SourceVolumeId: "other"})
	wantCode(t, err, codes.AlreadyExists, "snapshot name reused for another volume")

	// Expand online to 128Mi.
	statBefore := statfs(t, target)
	exp, err := c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
		VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 128 * mi}})
	if err != nil {
		t.Fatal(err)
	}
	if exp.GetCapacityBytes() != 128*mi || !exp.GetNodeExpansionRequired() {
		t.Fatalf("ControllerExpandVolume = %v", exp)
	}
	_, err = c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{
		VolumeId: id, CapacityRange: &csi.CapacityRange{RequiredBytes: 32 * mi}})
	wantCode(t, err, codes.OutOfRange, "shrinking")
	expandReq := &csi.NodeExpandVolumeRequest{VolumeId: id, VolumePath: target,
		CapacityRange: &csi.CapacityRange{RequiredBytes: 128 * mi}}
	if !canResizeOnline() {
		// Without CAP_SYS_RESOURCE ext4 grows only unmounted: refused while published,
		// done (unmount, resize2fs, mount) once the publications are gone.
		t.Log("no CAP_SYS_RESOURCE: testing offline file system expansion")
		_, err = c.NodeExpandVolume(ctx, expandReq)
		wantCode(t, err, codes.FailedPrecondition, "offline NodeExpandVolume of a published volume")
		unpublish(t, c, id, target)
		unpublish(t, c, id, roTarget)
		expandReq.VolumePath = staging
	}
	nexp, err := c.NodeExpandVolume(ctx, expandReq)
	if err != nil {
		t.Fatal(err)
	}
	if !canResizeOnline() {
		if err := publish(c, id, staging, target, rwo, false); err != nil {
			t.Fatal(err)
		}
		if err := publish(c, id, staging, roTarget, rwo, true); err != nil {
			t.Fatal(err)
		}
	}
	if nexp.GetCapacityBytes() != 128*mi {
		t.Fatalf("NodeExpandVolume capacity = %d", nexp.GetCapacityBytes())
	}
	if after := statfs(t, target); after < statBefore+50*mi {
		t.Fatalf("file system did not grow: %d -> %d bytes", statBefore, after)
	}
	stats, err := c.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	if err != nil {
		t.Fatal(err)
	}
	if len(stats.GetUsage()) != 2 || stats.GetUsage()[0].GetTotal() < 100*mi || stats.GetUsage()[1].GetTotal() == 0 ||
		stats.GetVolumeCondition().GetAbnormal() {
		t.Fatalf("stats = %v", stats)
	}

	// Restore the 64Mi snapshot into a 96Mi volume: the file is there, the file system grown.
	restored, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{
		Name: "pvc-restored", CapacityRange: &csi.CapacityRange{RequiredBytes: 96 * mi},
		VolumeCapabilities: []*csi.VolumeCapability{rwo},
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{
			Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshot().GetSnapshotId()}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	rid := restored.GetVolume().GetVolumeId()
	rStaging := filepath.Join(dir, "staging2", "globalmount")
	rTarget := filepath.Join(dir, "pods", "c", "mount")
	stage(t, c, rid, rStaging, rwo)
	if err := publish(c, rid, rStaging, rTarget, rwo, false); err != nil {
		t.Fatal(err)
	}
	if data, err := os.ReadFile(filepath.Join(rTarget, "hello.txt")); err != nil || string(data) != "hello" {
		t.Fatalf("restored volume: hello.txt = %q, %v", data, err)
	}
	if size := statfs(t, rTarget); size < 80*mi {
		t.Fatalf("restored file system has %d bytes, want about 96Mi", size)
	}

	// Restart: the new driver finds volumes and mounts and leaves them alone.
	dev := loopOf(t, filepath.Join(dir, "state", "volumes", id+".img"))
	c.stop()
	c = startDriver(t, dir, Config{})
	list, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(list.GetEntries()) != 2 {
		t.Fatalf("ListVolumes after restart: %v, %v", list, err)
	}
	if data, err := os.ReadFile(filepath.Join(target, "hello.txt")); err != nil || string(data) != "hello" {
		t.Fatalf("after restart: hello.txt = %q, %v", data, err)
	}
	stage(t, c, id, staging, rwo)
	if err := publish(c, id, staging, target, rwo, false); err != nil {
		t.Fatalf("publish after restart: %v", err)
	}
	if n := countMounts(t, target); n != 1 {
		t.Fatalf("%d mounts at target after restart and publish, want 1", n)
	}
	if now := loopOf(t, filepath.Join(dir, "state", "volumes", id+".img")); now != dev {
		t.Fatalf("loop device changed across restart: %s -> %s", dev, now)
	}

	// And back: unpublish, unstage, delete; the pool is whole again and no loop device is left.
	for _, p := range []struct{ id, target string }{{id, target}, {id, roTarget}, {rid, rTarget}} {
		unpublish(t, c, p.id, p.target)
		unpublish(t, c, p.id, p.target) // idempotent
		if _, err := os.Stat(p.target); !os.IsNotExist(err) {
			t.Fatalf("target %s still exists after unpublish: %v", p.target, err)
		}
	}
	unstage(t, c, id, staging)
	unstage(t, c, id, staging)
	unstage(t, c, rid, rStaging)
	for _, v := range []string{id, rid} {
		if dev := loopOf(t, filepath.Join(dir, "state", "volumes", v+".img")); dev != "" {
			t.Fatalf("volume %s still attached to %s after unstage", v, dev)
		}
		for range 2 {
			if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v}); err != nil {
				t.Fatalf("DeleteVolume %s: %v", v, err)
			}
		}
	}
	if _, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshot().GetSnapshotId()}); err != nil {
		t.Fatal(err)
	}
	if got := capacity(t, c); got != pool {
		t.Fatalf("capacity at the end = %d, want the whole pool %d", got, pool)
	}
	if m := mountsUnder(t, dir); len(m) != 0 {
		t.Fatalf("mounts left: %v", m)
	}
}

func statfs(t *testing.T, path string) int64 {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs(path, &fs); err != nil {
		t.Fatal(err)
	}
	return int64(fs.Blocks) * fs.Bsize
}

// TestBlockVolumeWithControllerPublish publishes a raw block volume through
// ControllerPublishVolume's device: data written through the target reads back.
func TestBlockVolumeWithControllerPublish(t *testing.T) {
	needRoot(t)
	dir := testDir(t)
	ctx := context.Background()
	c := startDriver(t, dir, Config{ControllerPublish: true})
	id := createVolume(t, c, "pvc-block", 16*mi, blockCap()).GetVolumeId()

	_, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: filepath.Join(dir, "stg"), VolumeCapability: blockCap()})
	wantCode(t, err, codes.InvalidArgument, "NodeStageVolume without publish_context")
	_, err = c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-b", VolumeCapability: blockCap()})
	wantCode(t, err, codes.NotFound, "ControllerPublishVolume to another node")
	pub, err := c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: id, NodeId: "node-a", VolumeCapability: blockCap()})
	if err != nil {
		t.Fatal(err)
	}
	devPath := pub.GetPublishContext()["devicePath"]
	if devPath == "" {
		t.Fatalf("publish_context = %v", pub.GetPublishContext())
	}
	staging := filepath.Join(dir, "stg")
	if _, err := c.NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging,
		VolumeCapability: blockCap(), PublishContext: pub.GetPublishContext()}); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(dir, "pods", "a", "dev")
	if err := publish(c, id, staging, target, blockCap(), false); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("raw block data")
	if _, err := f.WriteAt(msg, 4096); err != nil {
		t.Fatal(err)
	}
	_ = f.Sync()
	_ = f.Close()
	got := make([]byte, len(msg))
	img, err := os.Open(filepath.Join(dir, "state", "volumes", id+".img"))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = img.ReadAt(got, 4096)
	_ = img.Close()
	if string(got) != string(msg) {
		t.Fatalf("image holds %q, want %q", got, msg)
	}
	stats, err := c.NodeGetVolumeStats(ctx, &csi.NodeGetVolumeStatsRequest{VolumeId: id, VolumePath: target})
	if err != nil || stats.GetUsage()[0].GetTotal() != 16*mi {
		t.Fatalf("block stats = %v, %v", stats, err)
	}
	unpublish(t, c, id, target)
	unstage(t, c, id, staging)
	if loopOf(t, filepath.Join(dir, "state", "volumes", id+".img")) == "" {
		t.Fatal("NodeUnstageVolume detached the device that ControllerPublishVolume attached")
	}
	for range 2 {
		if _, err := c.ControllerUnpublishVolume(ctx, &csi.ControllerUnpublishVolumeRequest{VolumeId: id, NodeId: "node-a"}); err != nil {
			t.Fatal(err)
		}
	}
	if dev := loopOf(t, filepath.Join(dir, "state", "volumes", id+".img")); dev != "" {
		t.Fatalf("still attached to %s after ControllerUnpublishVolume", dev)
	}
	if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Fatal(err)
	}
}
