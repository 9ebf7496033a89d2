package local

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestPage(t *testing.T) {
	ids := []string{"c", "a", "e", "b", "d"}
	tests := []struct {
		token    string
		max      int32
		want     string
		wantNext string
		wantErr  error
	}{
		{"", 0, "a,b,c,d,e", "", nil},
		{"", 2, "a,b", "next:c", nil},
		{"next:c", 2, "c,d", "next:e", nil},
		{"next:e", 2, "e", "", nil},
		{"next:bb", 5, "c,d,e", "", nil}, // the entry the token named is gone: resume after it
		{"next:z", 2, "", "", nil},
		{"garbage", 2, "", "", errBadToken},
		{"next:", 2, "", "", errBadToken},
	}
	for _, tt := range tests {
		got, next, err := page(append([]string(nil), ids...), tt.token, tt.max)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("page(%q, %d) error = %v, want %v", tt.token, tt.max, err, tt.wantErr)
			continue
		}
		if strings.Join(got, ",") != tt.want || next != tt.wantNext {
			t.Errorf("page(%q, %d) = %v, %q; want %s, %q", tt.token, tt.max, got, next, tt.want, tt.wantNext)
		}
	}
	if _, _, err := page(ids, "", -1); err == nil {
		t.Error("negative max_entries accepted")
	}
}

func TestVolumeSize(t *testing.T) {
	tests := []struct {
		req, lim, min int64
		want          int64
		code          codes.Code
	}{
		{0, 0, 0, DefaultVolumeSize, codes.OK},
		{1, 0, 0, mi, codes.OK},
		{64 * mi, 0, 0, 64 * mi, codes.OK},
		{64*mi + 1, 0, 0, 65 * mi, codes.OK},
		{0, 500 * mi, 0, 500 * mi, codes.OK},
		{10 * mi, 10*mi + 10, 0, 10 * mi, codes.OK},
		{10*mi + 1, 10*mi + 4096, 0, 10*mi + 4096, codes.OK},
		{0, 0, 2 << 30, 2 << 30, codes.OK},
		{32 * mi, 0, 64 * mi, 64 * mi, codes.OK},
		{0, 32 * mi, 64 * mi, 0, codes.OutOfRange},
		{20 * mi, 10 * mi, 0, 0, codes.OutOfRange},
		{-1, 0, 0, 0, codes.InvalidArgument},
	}
	for _, tt := range tests {
		got, err := volumeSize(&csi.CapacityRange{RequiredBytes: tt.req, LimitBytes: tt.lim}, tt.min)
		if status.Code(err) != tt.code || got != tt.want {
			t.Errorf("volumeSize(%d, %d, min %d) = %d, %v; want %d, %s", tt.req, tt.lim, tt.min, got, err, tt.want, tt.code)
		}
	}
}

func TestHuman(t *testing.T) {
	for n, want := range map[int64]string{100: "100", 1 << 30: "1Gi", 64 * mi: "64Mi", 3 << 29: "1.5Gi", 2048: "2Ki"} {
		if got := human(n); got != want {
			t.Errorf("human(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestIDFor(t *testing.T) {
	if got := idFor("vol-", "pvc-0b5e0c1e-8c1a-4f4e-9d55-0a4c9f3f6a11"); got != "pvc-0b5e0c1e-8c1a-4f4e-9d55-0a4c9f3f6a11" {
		t.Errorf("pvc name became id %q", got)
	}
	for _, name := range []string{"a/b", "../x", strings.Repeat("x", 200), "with space"} {
		if id := idFor("vol-", name); !safeID.MatchString(id) || !strings.HasPrefix(id, "vol-") {
			t.Errorf("idFor(%q) = %q, not a safe hashed id", name, id)
		}
	}
}

// TestController exercises the controller service with block volumes, which need neither
// root nor loop devices: capacity accounting, idempotency, topology, paging, snapshots and
// the state surviving a restart.
func TestController(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	c := startDriver(t, dir, Config{Capacity: 256 * mi})

	info, err := c.GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.GetName() != DriverName || info.GetVendorVersion() == "" {
		t.Fatalf("GetPluginInfo = %v, %v", info, err)
	}
	ccaps, err := c.ControllerGetCapabilities(ctx, &csi.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for _, cp := range ccaps.GetCapabilities() {
		if cp.GetRpc().GetType() == csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME {
			t.Error("PUBLISH_UNPUBLISH_VOLUME declared without --controller-publish")
		}
	}
	_, err = c.ControllerPublishVolume(ctx, &csi.ControllerPublishVolumeRequest{VolumeId: "x", NodeId: "node-a", VolumeCapability: blockCap()})
	wantCode(t, err, codes.Unimplemented, "ControllerPublishVolume without --controller-publish")

	// Argument checks name the field.
	_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{VolumeCapabilities: []*csi.VolumeCapability{blockCap()}})
	wantCode(t, err, codes.InvalidArgument, "CreateVolume without name")
	if !strings.Contains(err.Error(), "name") {
		t.Errorf("error %v does not name the field", err)
	}
	_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v"})
	wantCode(t, err, codes.InvalidArgument, "CreateVolume without capabilities")
	xfs := &csi.VolumeCapability{AccessType: &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{FsType: "xfs"}},
		AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csi.VolumeCapability{xfs}})
	wantCode(t, err, codes.InvalidArgument, "CreateVolume with xfs")
	if !strings.Contains(err.Error(), "xfs") {
		t.Errorf("error %v does not name the fsType", err)
	}
	_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csi.VolumeCapability{rwo},
		Parameters: map[string]string{"csi.storage.k8s.io/fstype": "btrfs"}})
	wantCode(t, err, codes.InvalidArgument, "CreateVolume with fsType parameter btrfs")

	// Topology: another node's segment is refused, ours is fine.
	_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "v", VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{TopologyKey: "node-b"}}}}})
	wantCode(t, err, codes.ResourceExhausted, "CreateVolume for another node")
	resp, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "vol-1", VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
		CapacityRange:             &csi.CapacityRange{RequiredBytes: 64 * mi},
		AccessibilityRequirements: &csi.TopologyRequirement{Requisite: []*csi.Topology{{Segments: map[string]string{TopologyKey: "node-b"}}, {Segments: map[string]string{TopologyKey: "node-a"}}}}})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetVolume().GetVolumeId()
	info2, err := os.Stat(filepath.Join(dir, "state", "volumes", id+".img"))
	if err != nil || info2.Size() != 64*mi {
		t.Fatalf("image: %v, %v", info2, err)
	}

	// Idempotency by name; a conflicting repeat is AlreadyExists.
	createVolume(t, c, "vol-1", 64*mi, blockCap())
	_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "vol-1", VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 128 * mi}})
	wantCode(t, err, codes.AlreadyExists, "CreateVolume of vol-1 with another size")

	// Capacity: pool minus volumes; other nodes see none; too big is ResourceExhausted.
	if got := capacity(t, c); got != 192*mi {
		t.Fatalf("capacity = %d, want 192Mi", got)
	}
	other, err := c.GetCapacity(ctx, &csi.GetCapacityRequest{AccessibleTopology: &csi.Topology{Segments: map[string]string{TopologyKey: "node-b"}}})
	if err != nil || other.GetAvailableCapacity() != 0 {
		t.Fatalf("capacity of node-b = %v, %v", other, err)
	}
	_, err = c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "huge", VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 200 * mi}})
	wantCode(t, err, codes.ResourceExhausted, "CreateVolume beyond the pool")
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "200Mi") || !strings.Contains(msg, "192Mi") {
		t.Errorf("ResourceExhausted message %q names neither requested nor available bytes", msg)
	}

	// Snapshots count against the pool, are idempotent, listable and filterable.
	createVolume(t, c, "vol-2", 16*mi, blockCap())
	for range 2 {
		if _, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-2", SourceVolumeId: "vol-2"}); err != nil {
		t.Fatal(err)
	}
	_, err = c.CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-3", SourceVolumeId: "nope"})
	wantCode(t, err, codes.NotFound, "CreateSnapshot of an unknown volume")
	if got := capacity(t, c); got != 256*mi-64*mi-16*mi-64*mi-16*mi {
		t.Fatalf("capacity with snapshots = %d", got)
	}
	snaps, err := c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SourceVolumeId: id})
	if err != nil || len(snaps.GetEntries()) != 1 || snaps.GetEntries()[0].GetSnapshot().GetSnapshotId() != "snap-1" {
		t.Fatalf("ListSnapshots by source = %v, %v", snaps, err)
	}
	snaps, err = c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{MaxEntries: 1})
	if err != nil || len(snaps.GetEntries()) != 1 || snaps.GetNextToken() == "" {
		t.Fatalf("ListSnapshots page = %v, %v", snaps, err)
	}
	snaps, err = c.ListSnapshots(ctx, &csi.ListSnapshotsRequest{SnapshotId: "snap-2"})
	if err != nil || len(snaps.GetEntries()) != 1 {
		t.Fatalf("ListSnapshots by id = %v, %v", snaps, err)
	}

	// Clone and restore of block volumes copy the bytes.
	if err := os.WriteFile(filepath.Join(dir, "state", "volumes", "vol-2.img"), append(make([]byte, 8*mi), []byte("tail")...), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(filepath.Join(dir, "state", "volumes", "vol-2.img"), 16*mi); err != nil {
		t.Fatal(err)
	}
	clone, err := c.CreateVolume(ctx, &csi.CreateVolumeRequest{Name: "vol-clone", VolumeCapabilities: []*csi.VolumeCapability{blockCap()},
		CapacityRange: &csi.CapacityRange{RequiredBytes: 16 * mi},
		VolumeContentSource: &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{
			Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: "vol-2"}}}})
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "state", "volumes", clone.GetVolume().GetVolumeId()+".img"))
	if err != nil || len(data) != int(16*mi) || string(data[8*mi:8*mi+4]) != "tail" {
		t.Fatalf("clone image: %d bytes, %v", len(data), err)
	}

	// Paging over volumes, and a bad token.
	page1, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2})
	if err != nil || len(page1.GetEntries()) != 2 || page1.GetNextToken() == "" {
		t.Fatalf("ListVolumes page 1 = %v, %v", page1, err)
	}
	page2, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{MaxEntries: 2, StartingToken: page1.GetNextToken()})
	if err != nil || len(page2.GetEntries()) != 1 || page2.GetNextToken() != "" {
		t.Fatalf("ListVolumes page 2 = %v, %v", page2, err)
	}
	_, err = c.ListVolumes(ctx, &csi.ListVolumesRequest{StartingToken: "bogus"})
	wantCode(t, err, codes.Aborted, "ListVolumes with a bad token")

	// Expansion of a block volume needs no node step; shrinking is refused.
	exp, err := c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "vol-2", CapacityRange: &csi.CapacityRange{RequiredBytes: 32 * mi}})
	if err != nil || exp.GetCapacityBytes() != 32*mi || exp.GetNodeExpansionRequired() {
		t.Fatalf("ControllerExpandVolume = %v, %v", exp, err)
	}
	_, err = c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "vol-2", CapacityRange: &csi.CapacityRange{RequiredBytes: 16 * mi}})
	wantCode(t, err, codes.OutOfRange, "shrinking")
	_, err = c.ControllerExpandVolume(ctx, &csi.ControllerExpandVolumeRequest{VolumeId: "nope", CapacityRange: &csi.CapacityRange{RequiredBytes: 16 * mi}})
	wantCode(t, err, codes.NotFound, "expanding an unknown volume")

	// A restarted driver has the same state.
	before, _ := c.ListVolumes(ctx, &csi.ListVolumesRequest{})
	capBefore := capacity(t, c)
	c.stop()
	c = startDriver(t, dir, Config{Capacity: 256 * mi})
	after, err := c.ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil || len(after.GetEntries()) != len(before.GetEntries()) || capacity(t, c) != capBefore {
		t.Fatalf("after restart: %d volumes (want %d), %v", len(after.GetEntries()), len(before.GetEntries()), err)
	}

	// Deleting everything gives the pool back; deleting twice is fine.
	for _, v := range []string{id, "vol-2", "vol-clone"} {
		for range 2 {
			if _, err := c.DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, s := range []string{"snap-1", "snap-2", "snap-1"} {
		if _, err := c.DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: s}); err != nil {
			t.Fatal(err)
		}
	}
	if got := capacity(t, c); got != 256*mi {
		t.Fatalf("capacity at the end = %d, want 256Mi", got)
	}
	left, _ := filepath.Glob(filepath.Join(dir, "state", "*", "*"))
	if len(left) != 0 {
		t.Fatalf("files left: %v", left)
	}
}

// TestStateFile checks the state's on-disk form and that a half-made volume found at start
// is removed.
func TestStateFile(t *testing.T) {
	dir := t.TempDir()
	s, err := loadStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.update(func(st *stateFile) error {
		st.Volumes["a"] = &volume{ID: "a", Name: "a", Size: 2 * mi, Mode: modeBlock}
		st.Volumes["half"] = &volume{ID: "half", Name: "half", Size: 3 * mi, Mode: modeBlock, Pending: true}
		st.Snapshots["s"] = &snapshot{ID: "s", Name: "s", SourceVolume: "a", Size: 2 * mi}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "state.json.tmp")); !os.IsNotExist(err) {
		t.Errorf("temporary state file left: %v", err)
	}
	var raw map[string]any
	data, _ := os.ReadFile(filepath.Join(dir, "state.json"))
	if err := json.Unmarshal(data, &raw); err != nil || raw["version"] != float64(stateVersion) {
		t.Fatalf("state.json = %s, %v", data, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "volumes"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "volumes", "half.img"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := New(context.Background(), Config{NodeID: "n", StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if d.state.getVolume("half") != nil {
		t.Error("half-made volume survived the restart")
	}
	if _, err := os.Stat(filepath.Join(dir, "volumes", "half.img")); !os.IsNotExist(err) {
		t.Errorf("half-made image survived: %v", err)
	}
	if d.available() != DefaultCapacity-4*mi {
		t.Errorf("available = %d, want pool minus volume a and snapshot s", d.available())
	}
}

// Concurrent changes are all on disk when their update calls return, though saves are
// shared among them (group commit).
func TestStoreGroupCommitKeepsEveryChange(t *testing.T) {
	dir := t.TempDir()
	s, err := loadStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	const n = 64
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("v%02d", i)
			errs <- s.update(func(st *stateFile) error {
				st.Volumes[id] = &volume{ID: id, Name: id}
				return nil
			})
			// Once update returned, a fresh load must see this change.
			again, err := loadStore(dir)
			if err != nil {
				errs <- err
				return
			}
			if again.getVolume(id) == nil {
				errs <- fmt.Errorf("volume %s not on disk after its update returned", id)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	final, err := loadStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := len(final.st.Volumes); got != n {
		t.Errorf("%d volumes on disk, want %d", got, n)
	}
}
