package csi

import (
	"context"
	"io"
	"os"
	"regexp"
	"strings"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// minFilesystemBytes is the least that statfs must report for the filesystem of a
// volume of size bytes: a filesystem keeps part of its device for itself, which statfs
// leaves out (ext4's journal, inode tables and reserved groups: about a tenth of 64 MiB,
// a fifth of 32 MiB), so a fifth and 8 MiB are allowed for it.
func minFilesystemBytes(size int64) int64 { return size - size/5 - 8<<20 }

// topologyKey is the spec's form of a topology key: an optional DNS subdomain prefix and
// a slash, then a name of at most 63 characters.
var topologyKey = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[a-zA-Z0-9]([-_.a-zA-Z0-9]{0,61}[a-zA-Z0-9])?$`)

func testNodeGetInfo(ctx context.Context, t *T) {
	resp, err := t.Node().NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if err != nil {
		t.Fatalf("NodeGetInfo: %v", err)
	}
	switch id := resp.GetNodeId(); {
	case id == "":
		t.Errorf("NodeGetInfo returned no node_id")
	case len(id) > 256:
		t.Errorf("node_id has %d bytes, the spec allows 256", len(id))
	}
	if resp.GetMaxVolumesPerNode() < 0 {
		t.Errorf("max_volumes_per_node is negative: %d", resp.GetMaxVolumesPerNode())
	}
	segs := resp.GetAccessibleTopology().GetSegments()
	for k := range segs {
		if !topologyKey.MatchString(k) {
			t.Errorf("topology key %q is not an optional DNS subdomain prefix and a slash followed by a name of at most 63 characters", k)
		}
	}
	if t.s.pluginCaps[csipb.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS] && len(segs) == 0 {
		t.Errorf("the driver declares VOLUME_ACCESSIBILITY_CONSTRAINTS but NodeGetInfo reports no accessible_topology")
	}
	t.Logf("node %s, topology %v, max volumes %d", resp.GetNodeId(), segs, resp.GetMaxVolumesPerNode())
}

func testNodeGetCapabilities(ctx context.Context, t *T) {
	resp, err := t.Node().NodeGetCapabilities(ctx, &csipb.NodeGetCapabilitiesRequest{})
	if err != nil {
		t.Fatalf("NodeGetCapabilities: %v", err)
	}
	for _, c := range resp.GetCapabilities() {
		if c.GetRpc() == nil || c.GetRpc().GetType() == csipb.NodeServiceCapability_RPC_UNKNOWN {
			t.Errorf("NodeGetCapabilities lists an unknown capability: %v", c)
		}
		t.Logf("%s", c.GetRpc().GetType())
	}
}

// requireStage skips the test when the driver has no stage step, after checking that
// NodeStageVolume does not succeed.
func (t *T) requireStage(ctx context.Context) {
	t.requireNode()
	if !t.staged() {
		_, err := t.Node().NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{VolumeId: t.name("unknown"), StagingTargetPath: t.stagingPath(), VolumeCapability: rwo()})
		t.undeclared("STAGE_UNSTAGE_VOLUME", err)
	}
}

func testStageArguments(ctx context.Context, t *T) {
	t.requireStage(ctx)
	vol := t.mustCreate(ctx)
	pc := t.controllerPublish(ctx, vol, rwo(), false)
	path := t.stagingPath()
	req := func(f func(r *csipb.NodeStageVolumeRequest)) *csipb.NodeStageVolumeRequest {
		r := &csipb.NodeStageVolumeRequest{VolumeId: vol.GetVolumeId(), PublishContext: pc, StagingTargetPath: path, VolumeCapability: rwo(), VolumeContext: vol.GetVolumeContext()}
		f(r)
		return r
	}
	for _, c := range []struct {
		what string
		req  *csipb.NodeStageVolumeRequest
	}{
		{"without a volume ID", req(func(r *csipb.NodeStageVolumeRequest) { r.VolumeId = "" })},
		{"without a staging path", req(func(r *csipb.NodeStageVolumeRequest) { r.StagingTargetPath = "" })},
		{"without a capability", req(func(r *csipb.NodeStageVolumeRequest) { r.VolumeCapability = nil })},
	} {
		_, err := t.Node().NodeStageVolume(ctx, c.req)
		if err == nil {
			t.Cleanup(func(ctx context.Context) {
				_, _ = t.Node().NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: path})
			})
		}
		t.wantCode("NodeStageVolume "+c.what, err, codes.InvalidArgument)
	}
	_, err := t.Node().NodeStageVolume(ctx, req(func(r *csipb.NodeStageVolumeRequest) { r.VolumeId = t.name("unknown") }))
	t.wantCode("NodeStageVolume of an unknown volume", err, codes.NotFound)
}

func testStageIdempotent(ctx context.Context, t *T) {
	t.requireStage(ctx)
	vol := t.mustCreate(ctx)
	path := t.stage(ctx, vol, rwo())
	once := mountCount(path)
	if once > 1 {
		t.Errorf("NodeStageVolume left %d mounts at %s", once, path)
	}
	pc := t.controllerPublish(ctx, vol, rwo(), false)
	for i := range 2 {
		if _, err := t.Node().NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{
			VolumeId: vol.GetVolumeId(), PublishContext: pc, StagingTargetPath: path, VolumeCapability: rwo(), VolumeContext: vol.GetVolumeContext(),
		}); err != nil {
			t.Fatalf("repeated NodeStageVolume %s at %s (call %d): %v", vol.GetVolumeId(), path, i+2, err)
		}
		if n := mountCount(path); n != once {
			t.Errorf("after NodeStageVolume call %d there are %d mounts at %s, %d after the first", i+2, n, path, once)
		}
	}
	// The staged volume is usable after the repeats.
	target := t.publish(ctx, vol, path, rwo(), false)
	if err := writeFile(target, "data", []byte("staged twice")); err != nil {
		t.Errorf("write through %s after a repeated NodeStageVolume: %v", target, err)
	}
}

func testUnstage(ctx context.Context, t *T) {
	t.requireStage(ctx)
	vol := t.mustCreate(ctx)
	path := t.stage(ctx, vol, rwo())
	for i := range 2 {
		if _, err := t.Node().NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: path}); err != nil {
			t.Errorf("NodeUnstageVolume %s at %s (call %d): %v", vol.GetVolumeId(), path, i+1, err)
		}
		if n := mountCount(path); n != 0 {
			t.Errorf("after NodeUnstageVolume call %d there are %d mounts at %s", i+1, n, path)
		}
	}
	_, err := t.Node().NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{StagingTargetPath: path})
	t.wantCode("NodeUnstageVolume without a volume ID", err, codes.InvalidArgument)
	_, err = t.Node().NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId()})
	t.wantCode("NodeUnstageVolume without a staging path", err, codes.InvalidArgument)
}

func testPublishArguments(ctx context.Context, t *T) {
	t.requireNode()
	vol := t.mustCreate(ctx)
	staging := t.stage(ctx, vol, rwo())
	target := t.targetPath()
	base := t.publishRequest(ctx, vol, staging, target, rwo(), false)
	t.unpublishLater(vol.GetVolumeId(), target)
	req := func(f func(r *csipb.NodePublishVolumeRequest)) *csipb.NodePublishVolumeRequest {
		r := &csipb.NodePublishVolumeRequest{
			VolumeId: base.VolumeId, PublishContext: base.PublishContext, StagingTargetPath: base.StagingTargetPath,
			TargetPath: base.TargetPath, VolumeCapability: base.VolumeCapability, VolumeContext: base.VolumeContext,
		}
		f(r)
		return r
	}
	for _, c := range []struct {
		what string
		req  *csipb.NodePublishVolumeRequest
		want []codes.Code
	}{
		{"without a volume ID", req(func(r *csipb.NodePublishVolumeRequest) { r.VolumeId = "" }), []codes.Code{codes.InvalidArgument}},
		{"without a target path", req(func(r *csipb.NodePublishVolumeRequest) { r.TargetPath = "" }), []codes.Code{codes.InvalidArgument}},
		{"without a capability", req(func(r *csipb.NodePublishVolumeRequest) { r.VolumeCapability = nil }), []codes.Code{codes.InvalidArgument}},
	} {
		_, err := t.Node().NodePublishVolume(ctx, c.req)
		t.wantCode("NodePublishVolume "+c.what, err, c.want...)
	}
	if t.staged() {
		_, err := t.Node().NodePublishVolume(ctx, req(func(r *csipb.NodePublishVolumeRequest) { r.StagingTargetPath = "" }))
		t.wantCode("NodePublishVolume without a staging path though the driver stages", err, codes.InvalidArgument, codes.FailedPrecondition)
	}
	if n := mountCount(target); n != 0 {
		t.Errorf("rejected NodePublishVolume calls left %d mounts at %s", n, target)
	}
}

func testPublishIdempotent(ctx context.Context, t *T) {
	t.requireNode()
	vol := t.mustCreate(ctx)
	staging := t.stage(ctx, vol, rwo())
	target := t.publish(ctx, vol, staging, rwo(), false)
	if n := mountCount(target); n != 1 {
		t.Errorf("NodePublishVolume left %d mounts at %s, want 1", n, target)
	}
	req := t.publishRequest(ctx, vol, staging, target, rwo(), false)
	for i := range 2 {
		if _, err := t.Node().NodePublishVolume(ctx, req); err != nil {
			t.Fatalf("repeated NodePublishVolume %s at %s (call %d): %v", vol.GetVolumeId(), target, i+2, err)
		}
		if n := mountCount(target); n != 1 {
			t.Errorf("after NodePublishVolume call %d there are %d mounts at %s, want 1", i+2, n, target)
		}
	}
	if err := writeFile(target, "data", []byte("published thrice")); err != nil {
		t.Errorf("write through %s: %v", target, err)
	}
}

func testPublishReadOnly(ctx context.Context, t *T) {
	t.requireNode()
	vol := t.mustCreate(ctx)
	staging := t.stage(ctx, vol, rwo())
	target := t.publish(ctx, vol, staging, rwo(), true)
	err := writeFile(target, "data", []byte("must not be written"))
	switch {
	case err == nil:
		t.Errorf("writing through read-only publication %s succeeded", target)
	case !isEROFS(err):
		t.Errorf("writing through read-only publication %s: %v, want EROFS (read-only file system)", target, err)
	}
}

// multiWriter is the capability for two publications of one volume on one node: the
// explicit SINGLE_NODE_MULTI_WRITER when the driver knows it, else SINGLE_NODE_WRITER,
// which Kubernetes publishes to every pod of a node that uses a ReadWriteOnce claim.
func (t *T) multiWriter() *csipb.VolumeCapability {
	if t.hasNode(csipb.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER) && t.hasCtrl(csipb.ControllerServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER) {
		return mountCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER)
	}
	return rwo()
}

// createWith creates a volume of the run's size with capability vc, deleted after the test.
func (t *T) createWith(ctx context.Context, vc *csipb.VolumeCapability) *csipb.Volume {
	t.requireCreate()
	vol, err := t.createVolume(ctx, t.createRequest(t.name("vol"), t.s.cfg.Size, vc))
	if err != nil {
		t.Fatalf("%v", err)
	}
	return vol
}

func testPublishShared(ctx context.Context, t *T) {
	t.requireNode()
	vc := t.multiWriter()
	vol := t.createWith(ctx, vc)
	staging := t.stage(ctx, vol, vc)
	a := t.publish(ctx, vol, staging, vc, false)
	b := t.publish(ctx, vol, staging, vc, false)
	data := []byte("written through the first publication, run " + t.s.cfg.RunID)
	if err := writeFile(a, "data", data); err != nil {
		t.Fatalf("write through %s: %v", a, err)
	}
	t.checkFile(b, "data", data, "read through the second publication "+b)
	if err := writeFile(b, "back", data); err != nil {
		t.Fatalf("write through %s: %v", b, err)
	}
	t.checkFile(a, "back", data, "read through the first publication "+a)
}

func testUnpublish(ctx context.Context, t *T) {
	t.requireNode()
	vol := t.mustCreate(ctx)
	staging := t.stage(ctx, vol, rwo())
	target := t.publish(ctx, vol, staging, rwo(), false)
	for i := range 2 {
		if _, err := t.Node().NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), TargetPath: target}); err != nil {
			t.Errorf("NodeUnpublishVolume %s at %s (call %d): %v", vol.GetVolumeId(), target, i+1, err)
		}
		if n := mountCount(target); n != 0 {
			t.Errorf("after NodeUnpublishVolume call %d there are %d mounts at %s", i+1, n, target)
		}
	}
	_, err := t.Node().NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{TargetPath: target})
	t.wantCode("NodeUnpublishVolume without a volume ID", err, codes.InvalidArgument)
	_, err = t.Node().NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: vol.GetVolumeId()})
	t.wantCode("NodeUnpublishVolume without a target path", err, codes.InvalidArgument)
}

func testVolumeStats(ctx context.Context, t *T) {
	t.requireNode()
	if !t.hasNode(csipb.NodeServiceCapability_RPC_GET_VOLUME_STATS) {
		_, err := t.Node().NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: t.name("unknown"), VolumePath: t.s.cfg.TargetDir})
		t.undeclared("GET_VOLUME_STATS", err)
	}
	vol := t.mustCreate(ctx)
	staging, target := t.stageAndPublish(ctx, vol)
	resp, err := t.Node().NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId(), VolumePath: target, StagingTargetPath: staging})
	if err != nil {
		t.Fatalf("NodeGetVolumeStats %s at %s: %v", vol.GetVolumeId(), target, err)
	}
	var bytes *csipb.VolumeUsage
	for _, u := range resp.GetUsage() {
		if u.GetUnit() == csipb.VolumeUsage_BYTES {
			bytes = u
		}
		if u.GetAvailable() < 0 || u.GetUsed() < 0 || u.GetTotal() < 0 {
			t.Errorf("negative %s usage: %v", u.GetUnit(), u)
		}
		if u.GetTotal() > 0 && (u.GetUsed() > u.GetTotal() || u.GetAvailable() > u.GetTotal()) {
			t.Errorf("%s usage used %d or available %d exceed total %d", u.GetUnit(), u.GetUsed(), u.GetAvailable(), u.GetTotal())
		}
	}
	size := max(vol.GetCapacityBytes(), t.s.cfg.Size)
	switch {
	case bytes == nil:
		t.Errorf("NodeGetVolumeStats reports no usage in BYTES")
	case bytes.GetTotal() < minFilesystemBytes(size):
		t.Errorf("NodeGetVolumeStats reports %d bytes in total for a volume of %d", bytes.GetTotal(), size)
	default:
		t.Logf("total %d, used %d, available %d bytes for a volume of %d", bytes.GetTotal(), bytes.GetUsed(), bytes.GetAvailable(), size)
	}
	_, err = t.Node().NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumePath: target})
	t.wantCode("NodeGetVolumeStats without a volume ID", err, codes.InvalidArgument)
	_, err = t.Node().NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId()})
	t.wantCode("NodeGetVolumeStats without a volume path", err, codes.InvalidArgument)
	wrong := t.targetPath()
	_, err = t.Node().NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: vol.GetVolumeId(), VolumePath: wrong})
	t.wantCode("NodeGetVolumeStats at a path where the volume is not published", err, codes.NotFound, codes.InvalidArgument)
	_, err = t.Node().NodeGetVolumeStats(ctx, &csipb.NodeGetVolumeStatsRequest{VolumeId: t.name("unknown"), VolumePath: target})
	t.wantCode("NodeGetVolumeStats of an unknown volume", err, codes.NotFound)
}

func testNodeExpand(ctx context.Context, t *T) {
	t.requireNode()
	ctrlExpand := t.hasCtrl(csipb.ControllerServiceCapability_RPC_EXPAND_VOLUME)
	nodeExpand := t.hasNode(csipb.NodeServiceCapability_RPC_EXPAND_VOLUME)
	if !ctrlExpand && !nodeExpand {
		_, err := t.Node().NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: t.name("unknown"), VolumePath: t.s.cfg.TargetDir})
		t.undeclared("EXPAND_VOLUME (controller or node)", err)
	}
	vol := t.mustCreate(ctx)
	size := 2 * t.s.cfg.Size
	online := t.s.expansion[csipb.PluginCapability_VolumeExpansion_ONLINE] || !ctrlExpand
	required := nodeExpand
	if ctrlExpand && !online {
		// An offline-only driver grows volumes that are not in use, before they are.
		required = t.expand(ctx, vol, size, rwo()).GetNodeExpansionRequired()
	}
	staging, target := t.stageAndPublish(ctx, vol)
	before, err := statfsTotal(target)
	if err != nil {
		t.Fatalf("%v", err)
	}
	if ctrlExpand && online {
		required = t.expand(ctx, vol, size, rwo()).GetNodeExpansionRequired()
	}
	if required {
		for i := range 2 {
			resp, err := t.Node().NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{
				VolumeId: vol.GetVolumeId(), VolumePath: target, StagingTargetPath: staging,
				CapacityRange: &csipb.CapacityRange{RequiredBytes: size}, VolumeCapability: rwo(),
			})
			if err != nil {
				t.Fatalf("NodeExpandVolume %s at %s to %d bytes (call %d): %v", vol.GetVolumeId(), target, size, i+1, err)
			}
			if c := resp.GetCapacityBytes(); c != 0 && c < size {
				t.Errorf("NodeExpandVolume %s to %d bytes reports capacity %d", vol.GetVolumeId(), size, c)
			}
		}
		_, err := t.Node().NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumePath: target, CapacityRange: &csipb.CapacityRange{RequiredBytes: size}})
		t.wantCode("NodeExpandVolume without a volume ID", err, codes.InvalidArgument)
		_, err = t.Node().NodeExpandVolume(ctx, &csipb.NodeExpandVolumeRequest{VolumeId: vol.GetVolumeId(), CapacityRange: &csipb.CapacityRange{RequiredBytes: size}})
		t.wantCode("NodeExpandVolume without a volume path", err, codes.InvalidArgument)
	}
	after, err := statfsTotal(target)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Logf("statfs of %s: %d bytes before, %d after growing the volume to %d (node expansion %v)", target, before, after, size, required)
	// For volumes over 14 MiB the least a filesystem of twice the size has is more than
	// the old size (a volume grown offline already has its new size when it is first
	// published, so only an online expansion is compared with before).
	if after < minFilesystemBytes(size) || (online && ctrlExpand && after <= before) {
		t.Errorf("the filesystem at %s has %d bytes after the volume grew to %d (it had %d before)", target, after, size, before)
	}
}

func testPublishBlock(ctx context.Context, t *T) {
	t.requireNode()
	t.requireCreate()
	resp, err := t.Controller().CreateVolume(ctx, t.createRequest(t.name("block"), t.s.cfg.Size, blockCap()))
	if err != nil {
		if c := status.Code(err); c == codes.InvalidArgument || c == codes.Unimplemented {
			t.Skipf("the driver does not make raw block volumes: CreateVolume: %v", err)
		}
		t.Fatalf("CreateVolume of a raw block volume: %v", err)
	}
	vol := resp.GetVolume()
	t.deleteLater(vol.GetVolumeId())
	staging := t.stage(ctx, vol, blockCap())
	target := t.publish(ctx, vol, staging, blockCap(), false)
	st, err := os.Stat(target)
	if err != nil {
		t.Fatalf("the published block volume: %v", err)
	}
	if st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
		t.Fatalf("%s is not a block device: mode %s", target, st.Mode())
	}
	if n := mountCount(target); n != 1 {
		t.Errorf("the block publication left %d mounts at %s, want 1", n, target)
	}
	if _, err := t.Node().NodePublishVolume(ctx, t.publishRequest(ctx, vol, staging, target, blockCap(), false)); err != nil {
		t.Errorf("repeated NodePublishVolume of block volume %s: %v", vol.GetVolumeId(), err)
	} else if n := mountCount(target); n != 1 {
		t.Errorf("after a repeated block NodePublishVolume there are %d mounts at %s, want 1", n, target)
	}
	f, err := os.OpenFile(target, os.O_RDWR, 0)
	if err != nil {
		t.Fatalf("open block device %s: %v", target, err)
	}
	defer f.Close()
	end, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		t.Fatalf("size of block device %s: %v", target, err)
	}
	if end < t.s.cfg.Size {
		t.Errorf("block device %s has %d bytes, want at least %d", target, end, t.s.cfg.Size)
	}
	data := []byte(strings.Repeat("berth", 100))
	if _, err := f.WriteAt(data, 4096); err != nil {
		t.Fatalf("write to block device %s: %v", target, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("sync block device %s: %v", target, err)
	}
	got := make([]byte, len(data))
	if _, err := f.ReadAt(got, 4096); err != nil || string(got) != string(data) {
		t.Errorf("read back from block device %s: %v (%d bytes match: %v)", target, err, len(got), string(got) == string(data))
	}
}

func testPublishSingleWriter(ctx context.Context, t *T) {
	t.requireNode()
	if !t.hasNode(csipb.NodeServiceCapability_RPC_SINGLE_NODE_MULTI_WRITER) {
		t.Skipf("the node service declares no SINGLE_NODE_MULTI_WRITER, so it need not tell single from multi writers")
	}
	vc := mountCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER)
	vol := t.createWith(ctx, vc)
	staging := t.stage(ctx, vol, vc)
	t.publish(ctx, vol, staging, vc, false)
	second := t.targetPath()
	req := t.publishRequest(ctx, vol, staging, second, vc, false)
	_, err := t.Node().NodePublishVolume(ctx, req)
	if err == nil {
		t.unpublishLater(vol.GetVolumeId(), second)
	}
	// Kubernetes' ReadWriteOncePod: one publication, whatever else the node runs.
	t.wantCode("a second NodePublishVolume of a SINGLE_NODE_SINGLE_WRITER volume at another target", err, codes.FailedPrecondition)
}
