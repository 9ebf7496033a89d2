package csi

import (
	"context"
	"fmt"
	"maps"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// impossibleSize is a size no driver can provision (4 EiB).
const impossibleSize = 1 << 62

// maxPages bounds the pages ListVolumes and ListSnapshots tests follow, against a
// driver whose tokens never end.
const maxPages = 10000

func testControllerGetCapabilities(ctx context.Context, t *T) {
	if !t.s.pluginCaps[csipb.PluginCapability_Service_CONTROLLER_SERVICE] {
		t.requirePreflight("GetPluginCapabilities")
		t.Skipf("the driver declares no CONTROLLER_SERVICE")
	}
	resp, err := t.Controller().ControllerGetCapabilities(ctx, &csipb.ControllerGetCapabilitiesRequest{})
	if err != nil {
		t.Fatalf("ControllerGetCapabilities: %v", err)
	}
	for _, c := range resp.GetCapabilities() {
		if c.GetRpc() == nil || c.GetRpc().GetType() == csipb.ControllerServiceCapability_RPC_UNKNOWN {
			t.Errorf("ControllerGetCapabilities lists an unknown capability: %v", c)
		}
		t.Logf("%s", c.GetRpc().GetType())
	}
}

func testCreateMissingName(ctx context.Context, t *T) {
	t.requireCreate()
	req := t.createRequest("", t.s.cfg.Size, rwo())
	resp, err := t.Controller().CreateVolume(ctx, req)
	if err == nil && resp.GetVolume().GetVolumeId() != "" {
		t.deleteLater(resp.GetVolume().GetVolumeId())
	}
	t.wantCode("CreateVolume without a name", err, codes.InvalidArgument)
}

func testCreateMissingCapabilities(ctx context.Context, t *T) {
	t.requireCreate()
	req := t.createRequest(t.name("vol"), t.s.cfg.Size, rwo())
	req.VolumeCapabilities = nil
	resp, err := t.Controller().CreateVolume(ctx, req)
	if err == nil {
		t.deleteLater(resp.GetVolume().GetVolumeId())
	}
	t.wantCode("CreateVolume without volume capabilities", err, codes.InvalidArgument)
}

func testCreateIdempotent(ctx context.Context, t *T) {
	t.requireCreate()
	req := t.createRequest(t.name("vol"), t.s.cfg.Size, rwo())
	first, err := t.createVolume(ctx, req)
	if err != nil {
		t.Fatalf("%v", err)
	}
	second, err := t.createVolume(ctx, req)
	if err != nil {
		t.Fatalf("repeated %v", err)
	}
	if first.GetVolumeId() != second.GetVolumeId() {
		t.Errorf("a repeated CreateVolume %s made a second volume: %s, then %s", req.Name, first.GetVolumeId(), second.GetVolumeId())
	}
	if first.GetCapacityBytes() != second.GetCapacityBytes() {
		t.Errorf("a repeated CreateVolume %s returned capacity %d, the first %d", req.Name, second.GetCapacityBytes(), first.GetCapacityBytes())
	}
	if !maps.Equal(first.GetVolumeContext(), second.GetVolumeContext()) {
		t.Errorf("a repeated CreateVolume %s returned volume context %v, the first %v", req.Name, second.GetVolumeContext(), first.GetVolumeContext())
	}
}

func testCreateSameNameOtherSize(ctx context.Context, t *T) {
	t.requireCreate()
	req := t.createRequest(t.name("vol"), t.s.cfg.Size, rwo())
	vol, err := t.createVolume(ctx, req)
	if err != nil {
		t.Fatalf("%v", err)
	}
	// Larger than what the volume got: no existing volume is compatible with it.
	have := max(vol.GetCapacityBytes(), t.s.cfg.Size)
	req.CapacityRange = &csipb.CapacityRange{RequiredBytes: have + t.s.cfg.Size, LimitBytes: have + t.s.cfg.Size}
	resp, err := t.Controller().CreateVolume(ctx, req)
	if err == nil && resp.GetVolume().GetVolumeId() != vol.GetVolumeId() {
		t.deleteLater(resp.GetVolume().GetVolumeId())
	}
	t.wantCode(fmt.Sprintf("CreateVolume %s again with %d bytes instead of %d", req.Name, have+t.s.cfg.Size, t.s.cfg.Size), err, codes.AlreadyExists)
}

func testCreateCapacityRange(ctx context.Context, t *T) {
	t.requireCreate()
	size := t.s.cfg.Size
	req := t.createRequest(t.name("vol"), size, rwo())
	req.CapacityRange.LimitBytes = 2 * size
	vol, err := t.createVolume(ctx, req)
	if err != nil {
		t.Fatalf("%v", err)
	}
	c := vol.GetCapacityBytes()
	switch {
	case c == 0:
		t.Logf("CreateVolume reports capacity 0 (unknown), which the spec allows")
	case c < size:
		t.Errorf("CreateVolume with required_bytes %d made a volume of %d bytes", size, c)
	case c > 2*size:
		t.Errorf("CreateVolume with limit_bytes %d made a volume of %d bytes", 2*size, c)
	}
}

func testCreateImpossibleSize(ctx context.Context, t *T) {
	t.requireCreate()
	req := t.createRequest(t.name("vol"), impossibleSize, rwo())
	resp, err := t.Controller().CreateVolume(ctx, req)
	if err == nil {
		t.deleteLater(resp.GetVolume().GetVolumeId())
	}
	t.wantCode(fmt.Sprintf("CreateVolume of %d bytes", int64(impossibleSize)), err, codes.ResourceExhausted, codes.OutOfRange)
}

func testCreateTopology(ctx context.Context, t *T) {
	topo := t.topology()
	if topo == nil {
		t.Skipf("the driver declares no VOLUME_ACCESSIBILITY_CONSTRAINTS (or NodeGetInfo has no segment)")
	}
	vol := t.mustCreate(ctx)
	if len(vol.GetAccessibleTopology()) == 0 {
		t.Fatalf("volume %s has no accessible_topology though the driver declares VOLUME_ACCESSIBILITY_CONSTRAINTS", vol.GetVolumeId())
	}
	for _, at := range vol.GetAccessibleTopology() {
		if maps.Equal(at.GetSegments(), topo.GetSegments()) {
			return
		}
	}
	t.Errorf("volume %s is accessible from %v, which leaves out the requisite segment %v", vol.GetVolumeId(), vol.GetAccessibleTopology(), topo.GetSegments())
}

func testDeleteMissingID(ctx context.Context, t *T) {
	t.requireCreate()
	_, err := t.Controller().DeleteVolume(ctx, &csipb.DeleteVolumeRequest{})
	t.wantCode("DeleteVolume without a volume ID", err, codes.InvalidArgument)
}

func testDeleteUnknown(ctx context.Context, t *T) {
	t.requireCreate()
	id := t.name("unknown")
	if _, err := t.Controller().DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id}); err != nil {
		t.Errorf("DeleteVolume of unknown volume %s: %v (the spec wants OK: it is already gone)", id, err)
	}
}

func testDeleteTwice(ctx context.Context, t *T) {
	vol := t.mustCreate(ctx)
	for i := range 2 {
		if _, err := t.Controller().DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
			t.Fatalf("DeleteVolume %s (call %d): %v", vol.GetVolumeId(), i+1, err)
		}
	}
	if t.hasCtrl(csipb.ControllerServiceCapability_RPC_LIST_VOLUMES) {
		ids, err := t.listAllVolumes(ctx, 0)
		if err != nil {
			t.Fatalf("%v", err)
		}
		if ids[vol.GetVolumeId()] > 0 {
			t.Errorf("ListVolumes still lists deleted volume %s", vol.GetVolumeId())
		}
	}
}

func testValidateVolumeCapabilities(ctx context.Context, t *T) {
	vol := t.mustCreate(ctx)
	resp, err := t.Controller().ValidateVolumeCapabilities(ctx, &csipb.ValidateVolumeCapabilitiesRequest{
		VolumeId: vol.GetVolumeId(), VolumeCapabilities: []*csipb.VolumeCapability{rwo()},
		VolumeContext: vol.GetVolumeContext(), Parameters: t.s.cfg.Parameters,
	})
	if err != nil {
		t.Fatalf("ValidateVolumeCapabilities %s: %v", vol.GetVolumeId(), err)
	}
	if resp.GetConfirmed() == nil {
		t.Errorf("ValidateVolumeCapabilities %s does not confirm the capability the volume was created with (%s)", vol.GetVolumeId(), resp.GetMessage())
	} else if len(resp.GetConfirmed().GetVolumeCapabilities()) == 0 {
		t.Errorf("ValidateVolumeCapabilities %s confirms no capability", vol.GetVolumeId())
	}
	_, err = t.Controller().ValidateVolumeCapabilities(ctx, &csipb.ValidateVolumeCapabilitiesRequest{VolumeCapabilities: []*csipb.VolumeCapability{rwo()}})
	t.wantCode("ValidateVolumeCapabilities without a volume ID", err, codes.InvalidArgument)
	_, err = t.Controller().ValidateVolumeCapabilities(ctx, &csipb.ValidateVolumeCapabilitiesRequest{VolumeId: vol.GetVolumeId()})
	t.wantCode("ValidateVolumeCapabilities without capabilities", err, codes.InvalidArgument)
	_, err = t.Controller().ValidateVolumeCapabilities(ctx, &csipb.ValidateVolumeCapabilitiesRequest{VolumeId: t.name("unknown"), VolumeCapabilities: []*csipb.VolumeCapability{rwo()}})
	t.wantCode("ValidateVolumeCapabilities of an unknown volume", err, codes.NotFound)
}

// listAllVolumes follows ListVolumes' pages of max entries and counts each volume ID.
func (t *T) listAllVolumes(ctx context.Context, max int32) (map[string]int, error) {
	ids := map[string]int{}
	token := ""
	for range maxPages {
		resp, err := t.Controller().ListVolumes(ctx, &csipb.ListVolumesRequest{MaxEntries: max, StartingToken: token})
		if err != nil {
			return ids, fmt.Errorf("ListVolumes (max_entries %d, starting_token %q): %w", max, token, err)
		}
		if max > 0 && len(resp.GetEntries()) > int(max) {
			return ids, fmt.Errorf("ListVolumes with max_entries %d returned %d entries", max, len(resp.GetEntries()))
		}
		for _, e := range resp.GetEntries() {
			ids[e.GetVolume().GetVolumeId()]++
		}
		if token = resp.GetNextToken(); token == "" {
			return ids, nil
		}
	}
	return ids, fmt.Errorf("ListVolumes' pages did not end after %d pages", maxPages)
}

func testListVolumesPaging(ctx context.Context, t *T) {
	t.requireCreate()
	if !t.hasCtrl(csipb.ControllerServiceCapability_RPC_LIST_VOLUMES) {
		_, err := t.Controller().ListVolumes(ctx, &csipb.ListVolumesRequest{})
		t.undeclared("LIST_VOLUMES", err)
	}
	var mine []string
	for range 3 {
		mine = append(mine, t.mustCreate(ctx).GetVolumeId())
	}
	for _, max := range []int32{1, 0} {
		ids, err := t.listAllVolumes(ctx, max)
		if err != nil {
			t.Fatalf("%v", err)
		}
		for id, n := range ids {
			if n > 1 {
				t.Errorf("ListVolumes with max_entries %d listed %s %d times", max, id, n)
			}
		}
		for _, id := range mine {
			if ids[id] == 0 {
				t.Errorf("ListVolumes with max_entries %d did not list volume %s", max, id)
			}
		}
	}
}

func testListVolumesBadToken(ctx context.Context, t *T) {
	t.requireCreate()
	if !t.hasCtrl(csipb.ControllerServiceCapability_RPC_LIST_VOLUMES) {
		_, err := t.Controller().ListVolumes(ctx, &csipb.ListVolumesRequest{})
		t.undeclared("LIST_VOLUMES", err)
	}
	_, err := t.Controller().ListVolumes(ctx, &csipb.ListVolumesRequest{StartingToken: "csict-no-such-token-" + t.s.cfg.RunID})
	t.wantCode("ListVolumes with a starting_token it never gave", err, codes.Aborted)
}

// capacity is GetCapacity for the suite's volumes (capability, parameters, topology).
func (t *T) capacity(ctx context.Context) int64 {
	resp, err := t.Controller().GetCapacity(ctx, &csipb.GetCapacityRequest{
		VolumeCapabilities: []*csipb.VolumeCapability{rwo()}, Parameters: t.s.cfg.Parameters, AccessibleTopology: t.topology(),
	})
	if err != nil {
		t.Fatalf("GetCapacity: %v", err)
	}
	return resp.GetAvailableCapacity()
}

func (t *T) requireCapacity(ctx context.Context) {
	t.requireCreate()
	if !t.hasCtrl(csipb.ControllerServiceCapability_RPC_GET_CAPACITY) {
		_, err := t.Controller().GetCapacity(ctx, &csipb.GetCapacityRequest{})
		t.undeclared("GET_CAPACITY", err)
	}
}

func testGetCapacityAccounting(ctx context.Context, t *T) {
	t.requireCapacity(ctx)
	before := t.capacity(ctx)
	if before < t.s.cfg.Size {
		t.Skipf("GetCapacity reports %d bytes, less than one volume of %d", before, t.s.cfg.Size)
	}
	vol := t.mustCreate(ctx)
	size := max(vol.GetCapacityBytes(), t.s.cfg.Size)
	during := t.capacity(ctx)
	if before-during < size {
		t.Errorf("GetCapacity went from %d to %d bytes after creating volume %s of %d bytes: it must drop by at least the volume's size", before, during, vol.GetVolumeId(), size)
	}
	if _, err := t.Controller().DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()}); err != nil {
		t.Fatalf("DeleteVolume %s: %v", vol.GetVolumeId(), err)
	}
	if after := t.capacity(ctx); after != before {
		t.Errorf("GetCapacity is %d bytes after deleting volume %s, %d before creating it", after, vol.GetVolumeId(), before)
	}
}

func testGetCapacityBeyondAvailable(ctx context.Context, t *T) {
	t.requireCapacity(ctx)
	avail := t.capacity(ctx)
	if avail == 0 {
		t.Skipf("GetCapacity reports 0 bytes (unknown or full)")
	}
	req := t.createRequest(t.name("vol"), avail+t.s.cfg.Size, rwo())
	resp, err := t.Controller().CreateVolume(ctx, req)
	if err == nil {
		t.deleteLater(resp.GetVolume().GetVolumeId())
	}
	t.wantCode(fmt.Sprintf("CreateVolume of %d bytes when GetCapacity reports %d available", avail+t.s.cfg.Size, avail), err, codes.ResourceExhausted, codes.OutOfRange)
}

// requireExpand skips the test when the controller cannot expand volumes.
func (t *T) requireExpand(ctx context.Context) {
	t.requireCreate()
	if !t.hasCtrl(csipb.ControllerServiceCapability_RPC_EXPAND_VOLUME) {
		_, err := t.Controller().ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: t.name("unknown"), CapacityRange: &csipb.CapacityRange{RequiredBytes: t.s.cfg.Size}})
		t.undeclared("EXPAND_VOLUME", err)
	}
}

// expand grows vol to size with ControllerExpandVolume.
func (t *T) expand(ctx context.Context, vol *csipb.Volume, size int64, vc *csipb.VolumeCapability) *csipb.ControllerExpandVolumeResponse {
	resp, err := t.Controller().ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{
		VolumeId: vol.GetVolumeId(), CapacityRange: &csipb.CapacityRange{RequiredBytes: size}, VolumeCapability: vc,
	})
	if err != nil {
		t.Fatalf("ControllerExpandVolume %s to %d bytes: %v", vol.GetVolumeId(), size, err)
	}
	if resp.GetCapacityBytes() < size {
		t.Errorf("ControllerExpandVolume %s to %d bytes reports capacity %d", vol.GetVolumeId(), size, resp.GetCapacityBytes())
	}
	if resp.GetNodeExpansionRequired() && !t.hasNode(csipb.NodeServiceCapability_RPC_EXPAND_VOLUME) {
		t.Errorf("ControllerExpandVolume %s says node expansion is required but the node service declares no EXPAND_VOLUME", vol.GetVolumeId())
	}
	return resp
}

func testExpandGrows(ctx context.Context, t *T) {
	t.requireExpand(ctx)
	vol := t.mustCreate(ctx)
	accounting := t.hasCtrl(csipb.ControllerServiceCapability_RPC_GET_CAPACITY)
	var before int64
	if accounting {
		before = t.capacity(ctx)
	}
	resp := t.expand(ctx, vol, 2*t.s.cfg.Size, rwo())
	t.Logf("capacity %d, node_expansion_required %v", resp.GetCapacityBytes(), resp.GetNodeExpansionRequired())
	if accounting {
		// The pool must know the volume grew, or it hands the same bytes out twice.
		grown := resp.GetCapacityBytes() - max(vol.GetCapacityBytes(), t.s.cfg.Size)
		if after := t.capacity(ctx); before-after < grown {
			t.Errorf("GetCapacity went from %d to %d bytes when volume %s grew by %d", before, after, vol.GetVolumeId(), grown)
		}
	}
}

func testExpandIdempotent(ctx context.Context, t *T) {
	t.requireExpand(ctx)
	vol := t.mustCreate(ctx)
	first := t.expand(ctx, vol, 2*t.s.cfg.Size, rwo())
	second := t.expand(ctx, vol, 2*t.s.cfg.Size, rwo())
	if first.GetCapacityBytes() != second.GetCapacityBytes() {
		t.Errorf("a repeated ControllerExpandVolume %s reports capacity %d, the first %d", vol.GetVolumeId(), second.GetCapacityBytes(), first.GetCapacityBytes())
	}
	if first.GetNodeExpansionRequired() != second.GetNodeExpansionRequired() {
		t.Errorf("a repeated ControllerExpandVolume %s reports node_expansion_required %v, the first %v", vol.GetVolumeId(), second.GetNodeExpansionRequired(), first.GetNodeExpansionRequired())
	}
}

func testExpandArguments(ctx context.Context, t *T) {
	t.requireExpand(ctx)
	vol := t.mustCreate(ctx)
	_, err := t.Controller().ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{CapacityRange: &csipb.CapacityRange{RequiredBytes: 2 * t.s.cfg.Size}})
	t.wantCode("ControllerExpandVolume without a volume ID", err, codes.InvalidArgument)
	_, err = t.Controller().ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: vol.GetVolumeId()})
	t.wantCode("ControllerExpandVolume without a capacity range", err, codes.InvalidArgument)
	_, err = t.Controller().ControllerExpandVolume(ctx, &csipb.ControllerExpandVolumeRequest{VolumeId: t.name("unknown"), CapacityRange: &csipb.CapacityRange{RequiredBytes: 2 * t.s.cfg.Size}})
	t.wantCode("ControllerExpandVolume of an unknown volume", err, codes.NotFound)
}

// requireSnapshots skips the test when the driver cannot snapshot.
func (t *T) requireSnapshots(ctx context.Context) {
	t.requireCreate()
	if !t.hasCtrl(csipb.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT) {
		_, err := t.Controller().CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: t.name("snap"), SourceVolumeId: t.name("unknown")})
		t.undeclared("CREATE_DELETE_SNAPSHOT", err)
	}
}

// snapshot snapshots vol under name, deletes the snapshot after the test and waits
// until it is ready to use.
func (t *T) snapshot(ctx context.Context, vol *csipb.Volume, name string) *csipb.Snapshot {
	resp, err := t.Controller().CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: name, SourceVolumeId: vol.GetVolumeId(), Parameters: nil})
	if err != nil {
		t.Fatalf("CreateSnapshot %s of %s: %v", name, vol.GetVolumeId(), err)
	}
	snap := resp.GetSnapshot()
	if snap.GetSnapshotId() == "" {
		t.Fatalf("CreateSnapshot %s returned no snapshot ID", name)
	}
	t.deleteSnapshotLater(snap.GetSnapshotId())
	if snap.GetSourceVolumeId() != vol.GetVolumeId() {
		t.Errorf("snapshot %s has source volume %q, want %s", snap.GetSnapshotId(), snap.GetSourceVolumeId(), vol.GetVolumeId())
	}
	if snap.GetCreationTime() == nil {
		t.Errorf("snapshot %s has no creation_time (the spec requires it)", snap.GetSnapshotId())
	}
	for !snap.GetReadyToUse() {
		// A CO waits with repeated CreateSnapshot calls, which must be idempotent.
		select {
		case <-ctx.Done():
			t.Fatalf("snapshot %s was not ready to use before the test's timeout", snap.GetSnapshotId())
		case <-time.After(time.Second):
		}
		if resp, err = t.Controller().CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: name, SourceVolumeId: vol.GetVolumeId()}); err != nil {
			t.Fatalf("repeated CreateSnapshot %s: %v", name, err)
		}
		snap = resp.GetSnapshot()
	}
	return snap
}

func (t *T) deleteSnapshotLater(id string) {
	t.Cleanup(func(ctx context.Context) {
		if _, err := t.Controller().DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: id}); err != nil {
			t.Errorf("cleanup: DeleteSnapshot %s: %v", id, err)
			t.s.leftover("snapshot %s", id)
		}
	})
}

func testSnapshotCreate(ctx context.Context, t *T) {
	t.requireSnapshots(ctx)
	vol := t.mustCreate(ctx)
	snap := t.snapshot(ctx, vol, t.name("snap"))
	if s := snap.GetSizeBytes(); s != 0 && s > max(vol.GetCapacityBytes(), t.s.cfg.Size) {
		t.Errorf("snapshot %s of a %d-byte volume has size %d", snap.GetSnapshotId(), vol.GetCapacityBytes(), s)
	}
}

func testSnapshotIdempotent(ctx context.Context, t *T) {
	t.requireSnapshots(ctx)
	vol := t.mustCreate(ctx)
	name := t.name("snap")
	first := t.snapshot(ctx, vol, name)
	second := t.snapshot(ctx, vol, name)
	if first.GetSnapshotId() != second.GetSnapshotId() {
		t.Errorf("a repeated CreateSnapshot %s made a second snapshot: %s, then %s", name, first.GetSnapshotId(), second.GetSnapshotId())
	}
	other := t.mustCreate(ctx)
	resp, err := t.Controller().CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: name, SourceVolumeId: other.GetVolumeId()})
	if err == nil && resp.GetSnapshot().GetSnapshotId() != first.GetSnapshotId() {
		t.deleteSnapshotLater(resp.GetSnapshot().GetSnapshotId())
	}
	t.wantCode(fmt.Sprintf("CreateSnapshot %s of another volume", name), err, codes.AlreadyExists)
}

func testSnapshotArguments(ctx context.Context, t *T) {
	t.requireSnapshots(ctx)
	vol := t.mustCreate(ctx)
	resp, err := t.Controller().CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{SourceVolumeId: vol.GetVolumeId()})
	if err == nil {
		t.deleteSnapshotLater(resp.GetSnapshot().GetSnapshotId())
	}
	t.wantCode("CreateSnapshot without a name", err, codes.InvalidArgument)
	resp, err = t.Controller().CreateSnapshot(ctx, &csipb.CreateSnapshotRequest{Name: t.name("snap")})
	if err == nil {
		t.deleteSnapshotLater(resp.GetSnapshot().GetSnapshotId())
	}
	t.wantCode("CreateSnapshot without a source volume", err, codes.InvalidArgument)
	_, err = t.Controller().DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{})
	t.wantCode("DeleteSnapshot without a snapshot ID", err, codes.InvalidArgument)
}

func testSnapshotDelete(ctx context.Context, t *T) {
	t.requireSnapshots(ctx)
	vol := t.mustCreate(ctx)
	snap := t.snapshot(ctx, vol, t.name("snap"))
	for i := range 2 {
		if _, err := t.Controller().DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: snap.GetSnapshotId()}); err != nil {
			t.Errorf("DeleteSnapshot %s (call %d): %v", snap.GetSnapshotId(), i+1, err)
		}
	}
	if _, err := t.Controller().DeleteSnapshot(ctx, &csipb.DeleteSnapshotRequest{SnapshotId: t.name("unknown")}); err != nil {
		t.Errorf("DeleteSnapshot of an unknown snapshot: %v (the spec wants OK)", err)
	}
	if t.hasCtrl(csipb.ControllerServiceCapability_RPC_LIST_SNAPSHOTS) {
		resp, err := t.Controller().ListSnapshots(ctx, &csipb.ListSnapshotsRequest{SnapshotId: snap.GetSnapshotId()})
		if err != nil {
			t.Fatalf("ListSnapshots %s: %v", snap.GetSnapshotId(), err)
		}
		if len(resp.GetEntries()) != 0 {
			t.Errorf("ListSnapshots still lists deleted snapshot %s", snap.GetSnapshotId())
		}
	}
}

func testSnapshotList(ctx context.Context, t *T) {
	t.requireSnapshots(ctx)
	if !t.hasCtrl(csipb.ControllerServiceCapability_RPC_LIST_SNAPSHOTS) {
		_, err := t.Controller().ListSnapshots(ctx, &csipb.ListSnapshotsRequest{})
		t.undeclared("LIST_SNAPSHOTS", err)
	}
	vol := t.mustCreate(ctx)
	a := t.snapshot(ctx, vol, t.name("snap"))
	b := t.snapshot(ctx, vol, t.name("snap"))
	byID, err := t.Controller().ListSnapshots(ctx, &csipb.ListSnapshotsRequest{SnapshotId: a.GetSnapshotId()})
	if err != nil {
		t.Fatalf("ListSnapshots by snapshot ID: %v", err)
	}
	if n := len(byID.GetEntries()); n != 1 || byID.GetEntries()[0].GetSnapshot().GetSnapshotId() != a.GetSnapshotId() {
		t.Errorf("ListSnapshots by snapshot ID %s returned %d entries: %v", a.GetSnapshotId(), n, byID.GetEntries())
	}
	seen := map[string]int{}
	token := ""
	for page := 0; ; page++ {
		if page == maxPages {
			t.Fatalf("ListSnapshots' pages did not end after %d pages", maxPages)
		}
		resp, err := t.Controller().ListSnapshots(ctx, &csipb.ListSnapshotsRequest{SourceVolumeId: vol.GetVolumeId(), MaxEntries: 1, StartingToken: token})
		if err != nil {
			t.Fatalf("ListSnapshots of source volume %s (starting_token %q): %v", vol.GetVolumeId(), token, err)
		}
		if len(resp.GetEntries()) > 1 {
			t.Errorf("ListSnapshots with max_entries 1 returned %d entries", len(resp.GetEntries()))
		}
		for _, e := range resp.GetEntries() {
			seen[e.GetSnapshot().GetSnapshotId()]++
			if src := e.GetSnapshot().GetSourceVolumeId(); src != vol.GetVolumeId() {
				t.Errorf("ListSnapshots of source volume %s lists snapshot %s of %s", vol.GetVolumeId(), e.GetSnapshot().GetSnapshotId(), src)
			}
		}
		if token = resp.GetNextToken(); token == "" {
			break
		}
	}
	for _, id := range []string{a.GetSnapshotId(), b.GetSnapshotId()} {
		if seen[id] != 1 {
			t.Errorf("paging ListSnapshots of source volume %s listed snapshot %s %d times, want once", vol.GetVolumeId(), id, seen[id])
		}
	}
	unknown, err := t.Controller().ListSnapshots(ctx, &csipb.ListSnapshotsRequest{SnapshotId: t.name("unknown")})
	if err != nil {
		t.Errorf("ListSnapshots of an unknown snapshot ID: %v (the spec wants an empty list)", err)
	} else if len(unknown.GetEntries()) != 0 {
		t.Errorf("ListSnapshots of an unknown snapshot ID lists %v", unknown.GetEntries())
	}
}

func testSnapshotRestore(ctx context.Context, t *T) {
	t.requireSnapshots(ctx)
	t.requireNode()
	vol := t.mustCreate(ctx)
	data := []byte("snapshot content of run " + t.s.cfg.RunID)
	func() {
		// The first publication is undone before the snapshot, as a CO quiesces.
		staging := t.stage(ctx, vol, rwo())
		target := t.publish(ctx, vol, staging, rwo(), false)
		if err := writeFile(target, "data", data); err != nil {
			t.Fatalf("write through publication %s: %v", target, err)
		}
		t.unpublishNow(ctx, vol.GetVolumeId(), target)
		if staging != "" {
			t.unstageNow(ctx, vol.GetVolumeId(), staging)
		}
	}()
	snap := t.snapshot(ctx, vol, t.name("snap"))
	req := t.createRequest(t.name("restored"), t.s.cfg.Size, rwo())
	req.VolumeContentSource = &csipb.VolumeContentSource{Type: &csipb.VolumeContentSource_Snapshot{Snapshot: &csipb.VolumeContentSource_SnapshotSource{SnapshotId: snap.GetSnapshotId()}}}
	restored, err := t.createVolume(ctx, req)
	if err != nil {
		t.Fatalf("restore snapshot %s: %v", snap.GetSnapshotId(), err)
	}
	if src := restored.GetContentSource().GetSnapshot().GetSnapshotId(); src != snap.GetSnapshotId() {
		t.Errorf("restored volume %s has content source %q, want snapshot %s", restored.GetVolumeId(), src, snap.GetSnapshotId())
	}
	_, target := t.stageAndPublish(ctx, restored)
	t.checkFile(target, "data", data, "read the snapshot's file through the restored volume "+restored.GetVolumeId())
}

// unpublishNow unpublishes volume id from target within the test.
func (t *T) unpublishNow(ctx context.Context, id, target string) {
	if _, err := t.Node().NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
		t.Fatalf("NodeUnpublishVolume %s at %s: %v", id, target, err)
	}
}

// unstageNow unstages volume id from staging within the test.
func (t *T) unstageNow(ctx context.Context, id, staging string) {
	if _, err := t.Node().NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging}); err != nil {
		t.Fatalf("NodeUnstageVolume %s at %s: %v", id, staging, err)
	}
}

func testControllerPublish(ctx context.Context, t *T) {
	t.requireCreate()
	nodeID := t.s.nodeInfo.GetNodeId()
	if !t.hasCtrl(csipb.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME) {
		_, err := t.Controller().ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: t.name("unknown"), NodeId: nodeID, VolumeCapability: rwo()})
		t.undeclared("PUBLISH_UNPUBLISH_VOLUME", err)
	}
	t.requirePreflight("NodeGetInfo")
	vol := t.mustCreate(ctx)
	first := t.controllerPublish(ctx, vol, rwo(), false)
	resp, err := t.Controller().ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{VolumeId: vol.GetVolumeId(), NodeId: nodeID, VolumeCapability: rwo()})
	if err != nil {
		t.Fatalf("repeated ControllerPublishVolume %s to node %s: %v", vol.GetVolumeId(), nodeID, err)
	}
	if second := resp.GetPublishContext(); !maps.Equal(first, second) {
		t.Errorf("a repeated ControllerPublishVolume %s returned publish context %v, the first %v", vol.GetVolumeId(), second, first)
	}
	for _, c := range []struct {
		what string
		req  *csipb.ControllerPublishVolumeRequest
		want codes.Code
	}{
		{"without a volume ID", &csipb.ControllerPublishVolumeRequest{NodeId: nodeID, VolumeCapability: rwo()}, codes.InvalidArgument},
		{"without a node ID", &csipb.ControllerPublishVolumeRequest{VolumeId: vol.GetVolumeId(), VolumeCapability: rwo()}, codes.InvalidArgument},
		{"without a capability", &csipb.ControllerPublishVolumeRequest{VolumeId: vol.GetVolumeId(), NodeId: nodeID}, codes.InvalidArgument},
		{"of an unknown volume", &csipb.ControllerPublishVolumeRequest{VolumeId: t.name("unknown"), NodeId: nodeID, VolumeCapability: rwo()}, codes.NotFound},
		{"to an unknown node", &csipb.ControllerPublishVolumeRequest{VolumeId: vol.GetVolumeId(), NodeId: t.name("node"), VolumeCapability: rwo()}, codes.NotFound},
	} {
		_, err := t.Controller().ControllerPublishVolume(ctx, c.req)
		if err == nil {
			req := c.req
			t.Cleanup(func(ctx context.Context) {
				_, _ = t.Controller().ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: req.VolumeId, NodeId: req.NodeId})
			})
		}
		t.wantCode("ControllerPublishVolume "+c.what, err, c.want)
	}
	for i := range 2 {
		if _, err := t.Controller().ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), NodeId: nodeID}); err != nil {
			t.Errorf("ControllerUnpublishVolume %s (call %d): %v", vol.GetVolumeId(), i+1, err)
		}
	}
	_, err = t.Controller().ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{NodeId: nodeID})
	t.wantCode("ControllerUnpublishVolume without a volume ID", err, codes.InvalidArgument)
	if _, err := t.Controller().ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: t.name("unknown"), NodeId: nodeID}); err != nil && status.Code(err) != codes.NotFound {
		t.Errorf("ControllerUnpublishVolume of an unknown volume: %v (the spec wants OK or NotFound)", err)
	}
}
