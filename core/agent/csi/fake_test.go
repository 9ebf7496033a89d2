package csi

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// FakeDriver is a CSI driver for tests: the Identity and Node services (and
// ControllerGetCapabilities when Controller is set) on a unix socket. It records every
// call and makes target paths as a driver would: a directory for a mount volume, an empty
// file for a block one. Its limits: it mounts nothing and formats nothing (a staged or
// published volume is only that directory or file, so nothing is "mounted" in the eyes
// of the manager); the stats are fixed numbers; it keeps no state across calls beyond the
// call log, so it accepts any order of calls; errors are injected per method name (Fail).
// It is exported for the integration test in package csi_test.
type FakeDriver struct {
	csipb.UnimplementedIdentityServer
	csipb.UnimplementedNodeServer
	csipb.UnimplementedControllerServer

	Name, NodeID string
	Topology     map[string]string
	// Stage, Stats and Expand declare the Node capabilities; Controller the controller
	// service, with PUBLISH_UNPUBLISH_VOLUME when PublishUnpublish.
	Stage, Stats, Expand, Controller, PublishUnpublish bool

	mu    sync.Mutex
	calls []FakeCall
	fail  map[string]error
	srv   *grpc.Server
}

// FakeCall is one call the fake driver answered.
type FakeCall struct {
	Method string
	Req    any
}

// StartFakeDriver serves d on socket until the test ends (or Stop).
func StartFakeDriver(t *testing.T, socket string, d *FakeDriver) *FakeDriver {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(socket), 0o750); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(socket)
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatalf("listen on %s: %v", socket, err)
	}
	d.srv = grpc.NewServer()
	csipb.RegisterIdentityServer(d.srv, d)
	csipb.RegisterNodeServer(d.srv, d)
	if d.Controller {
		csipb.RegisterControllerServer(d.srv, d)
	}
	go func() { _ = d.srv.Serve(ln) }()
	t.Cleanup(d.Stop)
	return d
}

// Stop stops serving (the socket file goes with the listener).
func (d *FakeDriver) Stop() { d.srv.Stop() }

// Fail makes method fail with err (nil: succeed again).
func (d *FakeDriver) Fail(method string, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail == nil {
		d.fail = map[string]error{}
	}
	d.fail[method] = err
}

// Calls is the requests of method answered so far.
func (d *FakeDriver) Calls(method string) []any {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []any
	for _, c := range d.calls {
		if c.Method == method {
			out = append(out, c.Req)
		}
	}
	return out
}

func (d *FakeDriver) record(method string, req any) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls = append(d.calls, FakeCall{method, req})
	return d.fail[method]
}

func (d *FakeDriver) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	return &csipb.GetPluginInfoResponse{Name: d.Name, VendorVersion: "test"}, nil
}

func (d *FakeDriver) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	if err := d.record("Probe", nil); err != nil {
		return nil, err
	}
	return &csipb.ProbeResponse{Ready: wrapperspb.Bool(true)}, nil
}

func (d *FakeDriver) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	var caps []*csipb.PluginCapability
	add := func(t csipb.PluginCapability_Service_Type) {
		caps = append(caps, &csipb.PluginCapability{Type: &csipb.PluginCapability_Service_{Service: &csipb.PluginCapability_Service{Type: t}}})
	}
	if d.Controller {
		add(csipb.PluginCapability_Service_CONTROLLER_SERVICE)
	}
	if len(d.Topology) > 0 {
		add(csipb.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS)
	}
	return &csipb.GetPluginCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *FakeDriver) ControllerGetCapabilities(context.Context, *csipb.ControllerGetCapabilitiesRequest) (*csipb.ControllerGetCapabilitiesResponse, error) {
	var caps []*csipb.ControllerServiceCapability
	if d.PublishUnpublish {
		caps = append(caps, &csipb.ControllerServiceCapability{Type: &csipb.ControllerServiceCapability_Rpc{
			Rpc: &csipb.ControllerServiceCapability_RPC{Type: csipb.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME}}})
	}
	return &csipb.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *FakeDriver) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	r := &csipb.NodeGetInfoResponse{NodeId: d.NodeID, MaxVolumesPerNode: 10}
	if len(d.Topology) > 0 {
		r.AccessibleTopology = &csipb.Topology{Segments: d.Topology}
	}
	return r, nil
}

func (d *FakeDriver) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	var caps []*csipb.NodeServiceCapability
	add := func(t csipb.NodeServiceCapability_RPC_Type) {
		caps = append(caps, &csipb.NodeServiceCapability{Type: &csipb.NodeServiceCapability_Rpc{Rpc: &csipb.NodeServiceCapability_RPC{Type: t}}})
	}
	if d.Stage {
		add(csipb.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME)
	}
	if d.Stats {
		add(csipb.NodeServiceCapability_RPC_GET_VOLUME_STATS)
	}
	if d.Expand {
		add(csipb.NodeServiceCapability_RPC_EXPAND_VOLUME)
	}
	return &csipb.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (d *FakeDriver) NodeStageVolume(_ context.Context, req *csipb.NodeStageVolumeRequest) (*csipb.NodeStageVolumeResponse, error) {
	if err := d.record("NodeStageVolume", req); err != nil {
		return nil, err
	}
	return &csipb.NodeStageVolumeResponse{}, nil
}

func (d *FakeDriver) NodeUnstageVolume(_ context.Context, req *csipb.NodeUnstageVolumeRequest) (*csipb.NodeUnstageVolumeResponse, error) {
	if err := d.record("NodeUnstageVolume", req); err != nil {
		return nil, err
	}
	return &csipb.NodeUnstageVolumeResponse{}, nil
}

func (d *FakeDriver) NodePublishVolume(_ context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	if err := d.record("NodePublishVolume", req); err != nil {
		return nil, err
	}
	var err error
	if req.GetVolumeCapability().GetBlock() != nil {
		err = os.WriteFile(req.TargetPath, nil, 0o600)
	} else {
		err = os.MkdirAll(req.TargetPath, 0o750)
	}
	if err != nil {
		return nil, err
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

func (d *FakeDriver) NodeUnpublishVolume(_ context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	if err := d.record("NodeUnpublishVolume", req); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(req.TargetPath); err != nil {
		return nil, err
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

func (d *FakeDriver) NodeGetVolumeStats(_ context.Context, req *csipb.NodeGetVolumeStatsRequest) (*csipb.NodeGetVolumeStatsResponse, error) {
	if err := d.record("NodeGetVolumeStats", req); err != nil {
		return nil, err
	}
	return &csipb.NodeGetVolumeStatsResponse{Usage: []*csipb.VolumeUsage{
		{Unit: csipb.VolumeUsage_BYTES, Total: 1000, Used: 300, Available: 700},
		{Unit: csipb.VolumeUsage_INODES, Total: 100, Used: 10, Available: 90},
	}}, nil
}

func (d *FakeDriver) NodeExpandVolume(_ context.Context, req *csipb.NodeExpandVolumeRequest) (*csipb.NodeExpandVolumeResponse, error) {
	if err := d.record("NodeExpandVolume", req); err != nil {
		return nil, err
	}
	return &csipb.NodeExpandVolumeResponse{CapacityBytes: req.GetCapacityRange().GetRequiredBytes()}, nil
}
