package sidecar

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// fakeDriver is a CSI controller service kept in memory, served on a real unix socket, so
// that the sidecars are tested through gRPC as they talk to a real driver.
//
// Its limits: it stores no data and checks little (no capability validation, no
// capacity pool: exhausted makes every CreateVolume fail with ResourceExhausted); the
// volume id is the request's name; a volume whose id starts with "nodefs-" asks for node
// expansion after ControllerExpandVolume. The real driver is tested against the sidecars in
// TestLocalDriverProvisionDelete.
type fakeDriver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer

	mu          sync.Mutex
	exhausted   bool
	volumes     map[string]*csi.Volume
	created     []*csi.CreateVolumeRequest
	deleted     []string
	expanded    []*csi.ControllerExpandVolumeRequest
	published   map[string]string // volume id -> node id
	unpublished []string
}

func newFakeDriver() *fakeDriver {
	return &fakeDriver{volumes: map[string]*csi.Volume{}, published: map[string]string{}}
}

// serve starts the fake on a socket of its own and returns a connection to it; both are
// stopped when the test ends.
func (f *fakeDriver) serve(t *testing.T) *grpc.ClientConn {
	t.Helper()
	// A short path: unix socket paths are limited to 108 bytes, t.TempDir's can be longer.
	dir, err := os.MkdirTemp("", "sidecar-csi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "csi.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	csi.RegisterIdentityServer(srv, f)
	csi.RegisterControllerServer(srv, f)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		srv.Stop()
		<-done
	})
	return conn
}

func (f *fakeDriver) setExhausted(v bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exhausted = v
}

func (f *fakeDriver) GetPluginInfo(context.Context, *csi.GetPluginInfoRequest) (*csi.GetPluginInfoResponse, error) {
	return &csi.GetPluginInfoResponse{Name: testDriver, VendorVersion: "test"}, nil
}

func (f *fakeDriver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, c := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
		csi.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: c}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

func (f *fakeDriver) CreateVolume(_ context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.created = append(f.created, req)
	if f.exhausted {
		return nil, status.Errorf(codes.ResourceExhausted, "requested %d bytes, 0 bytes (0 B) available", req.GetCapacityRange().GetRequiredBytes())
	}
	if v, ok := f.volumes[req.GetName()]; ok {
		return &csi.CreateVolumeResponse{Volume: v}, nil
	}
	const mi = 1 << 20
	size := (req.GetCapacityRange().GetRequiredBytes() + mi - 1) / mi * mi
	v := &csi.Volume{VolumeId: req.GetName(), CapacityBytes: size, VolumeContext: map[string]string{"fake": "yes"}}
	if r := req.GetAccessibilityRequirements(); r != nil && len(r.GetRequisite()) > 0 {
		v.AccessibleTopology = []*csi.Topology{r.GetRequisite()[0]}
	}
	f.volumes[req.GetName()] = v
	return &csi.CreateVolumeResponse{Volume: v}, nil
}

func (f *fakeDriver) DeleteVolume(_ context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.volumes, req.GetVolumeId())
	f.deleted = append(f.deleted, req.GetVolumeId())
	return &csi.DeleteVolumeResponse{}, nil
}

func (f *fakeDriver) ControllerExpandVolume(_ context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.expanded = append(f.expanded, req)
	nodeExpansion := len(req.GetVolumeId()) > 7 && req.GetVolumeId()[:7] == "nodefs-"
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: req.GetCapacityRange().GetRequiredBytes(), NodeExpansionRequired: nodeExpansion}, nil
}

func (f *fakeDriver) ControllerPublishVolume(_ context.Context, req *csi.ControllerPublishVolumeRequest) (*csi.ControllerPublishVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if req.GetNodeId() == "" || req.GetVolumeCapability() == nil {
		return nil, status.Error(codes.InvalidArgument, "node id and capability are required")
	}
	f.published[req.GetVolumeId()] = req.GetNodeId()
	return &csi.ControllerPublishVolumeResponse{PublishContext: map[string]string{"devicePath": "/dev/fake/" + req.GetVolumeId()}}, nil
}

func (f *fakeDriver) ControllerUnpublishVolume(_ context.Context, req *csi.ControllerUnpublishVolumeRequest) (*csi.ControllerUnpublishVolumeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.published[req.GetVolumeId()] != req.GetNodeId() {
		return nil, status.Error(codes.NotFound, fmt.Sprintf("volume %s is not published to %s", req.GetVolumeId(), req.GetNodeId()))
	}
	delete(f.published, req.GetVolumeId())
	f.unpublished = append(f.unpublished, req.GetVolumeId())
	return &csi.ControllerUnpublishVolumeResponse{}, nil
}
