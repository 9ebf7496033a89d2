package local

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
)

// TestDefects checks that each deliberate defect visibly breaks what the correct driver gets
// right (the correct behaviour is checked in TestDriverLifecycle and TestController*).
func TestDefects(t *testing.T) {
	ctx := context.Background()
	t.Run("wrong-capacity", func(t *testing.T) {
		dir := t.TempDir()
		c := startDriver(t, dir, Config{Defect: DefectWrongCapacity})
		pool := capacity(t, c)
		vol := createVolume(t, c, "pvc-wrong", 16*mi, blockCap())
		if vol.GetCapacityBytes() >= 16*mi {
			t.Errorf("CreateVolume reported %d bytes; the defect should report less than required", vol.GetCapacityBytes())
		}
		if got := capacity(t, c); got != pool {
			t.Errorf("GetCapacity = %d after a 16Mi volume; the defect should still report the whole pool %d", got, pool)
		}
	})
	t.Run("second-publish-fails", func(t *testing.T) {
		needRoot(t)
		dir := testDir(t)
		c := startDriver(t, dir, Config{Defect: DefectSecondPublishFails})
		id := createVolume(t, c, "pvc-second", 16*mi, rwo).GetVolumeId()
		staging, target := filepath.Join(dir, "stg"), filepath.Join(dir, "tgt")
		stage(t, c, id, staging, rwo)
		if err := publish(c, id, staging, target, rwo, false); err != nil {
			t.Fatal(err)
		}
		if err := publish(c, id, staging, target, rwo, false); err == nil {
			t.Error("repeated NodePublishVolume succeeded; the defect should make it fail")
		}
		unpublish(t, c, id, target)
		unstage(t, c, id, staging)
	})
	t.Run("delete-published", func(t *testing.T) {
		needRoot(t)
		dir := testDir(t)
		c := startDriver(t, dir, Config{Defect: DefectDeletePublished})
		id := createVolume(t, c, "pvc-deleted", 16*mi, rwo).GetVolumeId()
		staging, target := filepath.Join(dir, "stg"), filepath.Join(dir, "tgt")
		stage(t, c, id, staging, rwo)
		if err := publish(c, id, staging, target, rwo, false); err != nil {
			t.Fatal(err)
		}
		if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Errorf("DeleteVolume of a published volume: %v; the defect should let it through", err)
		}
		list, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{})
		if err != nil || len(list.GetEntries()) != 0 {
			t.Errorf("ListVolumes after the delete = %v, %v", list, err)
		}
		// The node calls still clean up the mounts of the vanished volume.
		unpublish(t, c, id, target)
		unstage(t, c, id, staging)
		if m := mountsUnder(t, dir); len(m) != 0 {
			t.Errorf("mounts left: %v", m)
		}
	})
	t.Run("ignore-readonly", func(t *testing.T) {
		needRoot(t)
		dir := testDir(t)
		c := startDriver(t, dir, Config{Defect: DefectIgnoreReadonly})
		id := createVolume(t, c, "pvc-ro", 16*mi, rwo).GetVolumeId()
		staging, target := filepath.Join(dir, "stg"), filepath.Join(dir, "tgt")
		stage(t, c, id, staging, rwo)
		if err := publish(c, id, staging, target, rwo, true); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(target, "x"), []byte("x"), 0o644); err != nil {
			t.Errorf("write to a readonly publication: %v; the defect should mount it read-write", err)
		}
		unpublish(t, c, id, target)
		unstage(t, c, id, staging)
	})
	t.Run("unknown", func(t *testing.T) {
		_, err := New(ctx, Config{NodeID: "n", StateDir: t.TempDir(), Defect: "no-such-defect"})
		if err == nil {
			t.Error("New accepted an unknown defect")
		}
	})
}
