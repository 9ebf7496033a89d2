package csi

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"berth.dev/berth/conformance/internal/harness"
)

// T is what a test gets: the harness's reporting calls (Errorf, Fatalf, Skipf, Logf,
// Cleanup), the driver's clients, what it declared, and helpers that make volumes,
// stage and publish them and undo it all after the test.
type T struct {
	*harness.T
	s *suite
	// published holds the publish contexts of the volumes this test published to the
	// node with ControllerPublishVolume, so that it publishes each once and unpublishes
	// it after everything staged on it is unstaged.
	published map[string]map[string]string
}

// Config is the run's configuration, defaults filled in.
func (t *T) Config() Config { return t.s.cfg }

// Identity, Controller and Node are the driver's services.
func (t *T) Identity() csipb.IdentityClient     { return t.s.identity }
func (t *T) Controller() csipb.ControllerClient { return t.s.ctrl }
func (t *T) Node() csipb.NodeClient             { return t.s.node }

// hasCtrl reports whether the driver has a controller service declaring c.
func (t *T) hasCtrl(c csipb.ControllerServiceCapability_RPC_Type) bool { return t.s.ctrlCaps[c] }

// hasNode reports whether the node service declares c.
func (t *T) hasNode(c csipb.NodeServiceCapability_RPC_Type) bool { return t.s.nodeCaps[c] }

// staged reports whether the driver wants NodeStageVolume before NodePublishVolume.
func (t *T) staged() bool { return t.hasNode(csipb.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME) }

// requirePreflight fails the test when the named preflight call failed.
func (t *T) requirePreflight(call string) {
	if err := t.s.preflightErrs[call]; err != nil {
		t.Fatalf("%s failed: %v", call, err)
	}
}

// requireCreate skips the test when the driver cannot create volumes, which it needs.
func (t *T) requireCreate() {
	t.requirePreflight("ControllerGetCapabilities")
	if !t.hasCtrl(csipb.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME) {
		t.Skipf("the driver declares no CREATE_DELETE_VOLUME: this test needs volumes")
	}
}

// requireNode skips the test when it cannot mount (not root) and fails it when the node
// service did not answer its capabilities.
func (t *T) requireNode() {
	t.requirePreflight("NodeGetCapabilities")
	if os.Geteuid() != 0 {
		t.Skipf("the node tests check the driver's mounts and write through them: run the suite as root")
	}
}

// name returns a name for a volume or snapshot unique to this run and test.
func (t *T) name(what string) string {
	slug := strings.NewReplacer("/", "-", "_", "-").Replace(strings.ToLower(t.Name()))
	return fmt.Sprintf("%s%s-%s-%s%d", NamePrefix, t.s.cfg.RunID, slug, what, t.Seq())
}

// mountCap is a filesystem volume capability with access mode mode.
func mountCap(mode csipb.VolumeCapability_AccessMode_Mode) *csipb.VolumeCapability {
	return &csipb.VolumeCapability{
		AccessType: &csipb.VolumeCapability_Mount{Mount: &csipb.VolumeCapability_MountVolume{}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: mode},
	}
}

// blockCap is a raw block volume capability, single node writer.
func blockCap() *csipb.VolumeCapability {
	return &csipb.VolumeCapability{
		AccessType: &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}},
		AccessMode: &csipb.VolumeCapability_AccessMode{Mode: csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER},
	}
}

// rwo is what Kubernetes asks for a ReadWriteOnce filesystem volume.
func rwo() *csipb.VolumeCapability {
	return mountCap(csipb.VolumeCapability_AccessMode_SINGLE_NODE_WRITER)
}

// createRequest is a CreateVolume request as a provisioner makes it: the run's
// parameters and, for a driver with topology, this node's segment as requisite and
// preferred, so that the volume is reachable from the node the suite runs on.
func (t *T) createRequest(name string, size int64, vc *csipb.VolumeCapability) *csipb.CreateVolumeRequest {
	req := &csipb.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csipb.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csipb.VolumeCapability{vc},
		Parameters:         t.s.cfg.Parameters,
	}
	if topo := t.topology(); topo != nil {
		req.AccessibilityRequirements = &csipb.TopologyRequirement{Requisite: []*csipb.Topology{topo}, Preferred: []*csipb.Topology{topo}}
	}
	return req
}

// topology is this node's segment when the driver declares topology constraints.
func (t *T) topology() *csipb.Topology {
	if !t.s.pluginCaps[csipb.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS] {
		return nil
	}
	if segs := t.s.nodeInfo.GetAccessibleTopology().GetSegments(); len(segs) > 0 {
		return &csipb.Topology{Segments: segs}
	}
	return nil
}

// createVolume creates a volume with req and deletes it after the test.
func (t *T) createVolume(ctx context.Context, req *csipb.CreateVolumeRequest) (*csipb.Volume, error) {
	resp, err := t.Controller().CreateVolume(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("CreateVolume %s: %w", req.GetName(), err)
	}
	vol := resp.GetVolume()
	if vol.GetVolumeId() == "" {
		return nil, fmt.Errorf("CreateVolume %s returned no volume ID", req.GetName())
	}
	t.deleteLater(vol.GetVolumeId())
	return vol, nil
}

// deleteLater deletes volume id after the test.
func (t *T) deleteLater(id string) {
	t.Cleanup(func(ctx context.Context) {
		if _, err := t.Controller().DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Errorf("cleanup: DeleteVolume %s: %v", id, err)
			t.s.leftover("volume %s", id)
		}
	})
}

// mustCreate creates a filesystem volume of the run's size, deleted after the test.
func (t *T) mustCreate(ctx context.Context) *csipb.Volume {
	t.requireCreate()
	vol, err := t.createVolume(ctx, t.createRequest(t.name("vol"), t.s.cfg.Size, rwo()))
	if err != nil {
		t.Fatalf("%v", err)
	}
	return vol
}

// stagingPath makes a staging directory (the CO makes it, as the spec says), removed
// after the test.
func (t *T) stagingPath() string {
	dir := filepath.Join(t.s.cfg.StagingDir, fmt.Sprintf("%s-%d", t.s.cfg.RunID, t.Seq()))
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatalf("make staging path: %v", err)
	}
	t.Cleanup(func(context.Context) { t.removePath(dir) })
	return dir
}

// targetPath returns a target path whose parent exists and which does not (the driver
// makes the target, as the kubelet leaves it to the driver), removed after the test.
func (t *T) targetPath() string {
	parent := filepath.Join(t.s.cfg.TargetDir, fmt.Sprintf("%s-%d", t.s.cfg.RunID, t.Seq()))
	if err := os.MkdirAll(parent, 0o750); err != nil {
		t.Fatalf("make target path's parent: %v", err)
	}
	t.Cleanup(func(context.Context) { t.removePath(parent) })
	return filepath.Join(parent, "mount")
}

// removePath removes what the test made under path once the driver has undone its
// mounts; whatever is still mounted there is unmounted (lazily) so that the host is
// left clean, and reported.
func (t *T) removePath(path string) {
	for _, m := range mountsUnder(path) {
		t.Errorf("cleanup: %s is still mounted after the driver undid its publications", m)
		t.s.leftover("mount %s", m)
		if err := unix.Unmount(m, unix.MNT_DETACH); err != nil {
			t.Logf("cleanup: unmount %s: %v", m, err)
		}
	}
	if err := os.RemoveAll(path); err != nil {
		t.Logf("cleanup: %v", err)
	}
}

// stage stages vol at a new staging path with capability vc when the driver has a
// stage step (and returns "" otherwise), unstaging it after the test.
func (t *T) stage(ctx context.Context, vol *csipb.Volume, vc *csipb.VolumeCapability) string {
	if !t.staged() {
		return ""
	}
	path := t.stagingPath()
	_, err := t.Node().NodeStageVolume(ctx, &csipb.NodeStageVolumeRequest{
		VolumeId: vol.GetVolumeId(), PublishContext: t.controllerPublish(ctx, vol, vc, false),
		StagingTargetPath: path, VolumeCapability: vc, VolumeContext: vol.GetVolumeContext(),
	})
	t.Cleanup(func(ctx context.Context) {
		if _, err := t.Node().NodeUnstageVolume(ctx, &csipb.NodeUnstageVolumeRequest{VolumeId: vol.GetVolumeId(), StagingTargetPath: path}); err != nil {
			t.Errorf("cleanup: NodeUnstageVolume %s at %s: %v", vol.GetVolumeId(), path, err)
		}
	})
	if err != nil {
		t.Fatalf("NodeStageVolume %s at %s: %v", vol.GetVolumeId(), path, err)
	}
	return path
}

// controllerPublish publishes vol to this node when the driver declares
// PUBLISH_UNPUBLISH_VOLUME (unpublishing it after the test) and returns the publish
// context NodeStage and NodePublish need.
func (t *T) controllerPublish(ctx context.Context, vol *csipb.Volume, vc *csipb.VolumeCapability, readonly bool) map[string]string {
	if !t.hasCtrl(csipb.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME) {
		return nil
	}
	if pc, ok := t.published[vol.GetVolumeId()]; ok {
		return pc
	}
	nodeID := t.s.nodeInfo.GetNodeId()
	resp, err := t.Controller().ControllerPublishVolume(ctx, &csipb.ControllerPublishVolumeRequest{
		VolumeId: vol.GetVolumeId(), NodeId: nodeID, VolumeCapability: vc, Readonly: readonly, VolumeContext: vol.GetVolumeContext(),
	})
	t.Cleanup(func(ctx context.Context) {
		if _, err := t.Controller().ControllerUnpublishVolume(ctx, &csipb.ControllerUnpublishVolumeRequest{VolumeId: vol.GetVolumeId(), NodeId: nodeID}); err != nil {
			t.Errorf("cleanup: ControllerUnpublishVolume %s from %s: %v", vol.GetVolumeId(), nodeID, err)
		}
	})
	if err != nil {
		t.Fatalf("ControllerPublishVolume %s to node %s: %v", vol.GetVolumeId(), nodeID, err)
	}
	if t.published == nil {
		t.published = map[string]map[string]string{}
	}
	t.published[vol.GetVolumeId()] = resp.GetPublishContext()
	return resp.GetPublishContext()
}

// publishRequest is the NodePublishVolume request for vol at target.
func (t *T) publishRequest(ctx context.Context, vol *csipb.Volume, staging, target string, vc *csipb.VolumeCapability, readonly bool) *csipb.NodePublishVolumeRequest {
	req := &csipb.NodePublishVolumeRequest{
		VolumeId: vol.GetVolumeId(), StagingTargetPath: staging, TargetPath: target,
		VolumeCapability: vc, Readonly: readonly, VolumeContext: vol.GetVolumeContext(),
	}
	if !t.staged() {
		// Without a stage step the controller publication belongs to the publish.
		req.PublishContext = t.controllerPublish(ctx, vol, vc, readonly)
	}
	return req
}

// publish publishes vol (staged at staging) at a new target path, unpublishing it
// after the test, and returns the target path.
func (t *T) publish(ctx context.Context, vol *csipb.Volume, staging string, vc *csipb.VolumeCapability, readonly bool) string {
	target := t.targetPath()
	req := t.publishRequest(ctx, vol, staging, target, vc, readonly)
	t.unpublishLater(vol.GetVolumeId(), target)
	if _, err := t.Node().NodePublishVolume(ctx, req); err != nil {
		t.Fatalf("NodePublishVolume %s at %s: %v", vol.GetVolumeId(), target, err)
	}
	return target
}

// unpublishLater unpublishes volume id from target after the test.
func (t *T) unpublishLater(id, target string) {
	t.Cleanup(func(ctx context.Context) {
		if _, err := t.Node().NodeUnpublishVolume(ctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target}); err != nil {
			t.Errorf("cleanup: NodeUnpublishVolume %s at %s: %v", id, target, err)
		}
	})
}

// stageAndPublish makes vol usable at a new target path read-write.
func (t *T) stageAndPublish(ctx context.Context, vol *csipb.Volume) (staging, target string) {
	staging = t.stage(ctx, vol, rwo())
	return staging, t.publish(ctx, vol, staging, rwo(), false)
}

// wantCode fails the test unless err is a gRPC status with one of the codes.
func (t *T) wantCode(call string, err error, want ...codes.Code) {
	if err == nil {
		t.Errorf("%s succeeded, want %s", call, codeList(want))
		return
	}
	if got := status.Code(err); !slices.Contains(want, got) {
		t.Errorf("%s: got %v, want %s", call, err, codeList(want))
	}
}

func codeList(cs []codes.Code) string {
	var s []string
	for _, c := range cs {
		s = append(s, c.String())
	}
	return strings.Join(s, " or ")
}

// undeclared is the check of an optional RPC the driver does not declare: the call must
// not succeed (Unimplemented is the spec's answer); the test is then skipped.
func (t *T) undeclared(capability string, err error) {
	if err == nil {
		t.Fatalf("the driver does not declare %s, yet the RPC succeeded", capability)
	}
	if status.Code(err) != codes.Unimplemented {
		t.Logf("the driver does not declare %s; the RPC answered %v (the spec's answer is Unimplemented)", capability, err)
	}
	t.Skipf("the driver does not declare %s (the RPC answered %s)", capability, status.Code(err))
}

// writeFile writes data to name under dir and syncs it, so that it is on the volume.
func writeFile(dir, name string, data []byte) error {
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// checkFile fails the test unless dir/name holds data.
func (t *T) checkFile(dir, name string, data []byte, how string) {
	got, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Errorf("%s: %v", how, err)
		return
	}
	if string(got) != string(data) {
		t.Errorf("%s: read %q, want %q", how, got, data)
	}
}

// mountCount is the number of mounts at path in /proc/self/mountinfo.
func mountCount(path string) int {
	n := 0
	for _, m := range mountPoints() {
		if m == path {
			n++
		}
	}
	return n
}

// mountsUnder returns the mount points at or below path, deepest first.
func mountsUnder(path string) []string {
	var out []string
	for _, m := range mountPoints() {
		if m == path || strings.HasPrefix(m, path+"/") {
			out = append(out, m)
		}
	}
	slices.Reverse(out)
	return out
}

// mountPoints lists the mount points of /proc/self/mountinfo in order (the fifth
// field, with its octal escapes undone).
func mountPoints() []string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		out = append(out, unescapeMountinfo(f[4]))
	}
	return out
}

// unescapeMountinfo undoes the kernel's \NNN escapes of space, tab, newline and
// backslash in mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// isEROFS reports whether err is the read-only filesystem error.
func isEROFS(err error) bool { return errors.Is(err, unix.EROFS) }

// statfsTotal is the size of the filesystem at path as statfs reports it.
func statfsTotal(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("statfs %s: %w", path, err)
	}
	return int64(st.Blocks) * st.Bsize, nil
}

func sortedStrings(s []string) []string { slices.Sort(s); return s }

// removeEmptyTree removes dir and its subdirectories as far as they are empty.
func removeEmptyTree(dir string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return
	}
	for _, e := range entries {
		if e.IsDir() {
			removeEmptyTree(filepath.Join(dir, e.Name()))
		}
	}
	os.Remove(dir) // fails, as meant, when something is left
}
