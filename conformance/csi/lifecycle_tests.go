package csi

import (
	"context"
	"sync"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// concurrency is how many identical calls the concurrency tests race.
const concurrency = 8

func testPersistence(ctx context.Context, t *T) {
	t.requireNode()
	vol := t.mustCreate(ctx)
	data := []byte("kept across unstage and stage, run " + t.s.cfg.RunID)
	staging, target := t.stageAndPublish(ctx, vol)
	if err := writeFile(target, "data", data); err != nil {
		t.Fatalf("write through %s: %v", target, err)
	}
	t.unpublishNow(ctx, vol.GetVolumeId(), target)
	if staging != "" {
		t.unstageNow(ctx, vol.GetVolumeId(), staging)
	}
	_, target = t.stageAndPublish(ctx, vol)
	t.checkFile(target, "data", data, "read back after unpublish, unstage, stage and publish")
}

func testDeletePublished(ctx context.Context, t *T) {
	t.requireNode()
	vol := t.mustCreate(ctx)
	staging, target := t.stageAndPublish(ctx, vol)
	data := []byte("in use while deleted, run " + t.s.cfg.RunID)
	if err := writeFile(target, "data", data); err != nil {
		t.Fatalf("write through %s: %v", target, err)
	}
	_, err := t.Controller().DeleteVolume(ctx, &csipb.DeleteVolumeRequest{VolumeId: vol.GetVolumeId()})
	switch status.Code(err) {
	case codes.FailedPrecondition:
		t.Logf("DeleteVolume of a published volume: %v", err)
		return
	case codes.OK:
		t.Logf("DeleteVolume of published volume %s succeeded: the volume must live on until it is unpublished", vol.GetVolumeId())
	default:
		t.Errorf("DeleteVolume of published volume %s: %v (want FailedPrecondition, or OK with the volume kept until unpublished)", vol.GetVolumeId(), err)
	}
	// The publication must still be the volume: its data readable, writes going through.
	t.checkFile(target, "data", data, "read through the publication after DeleteVolume")
	if err := writeFile(target, "after", data); err != nil {
		t.Errorf("write through the publication after DeleteVolume: %v", err)
	}
	// And the node must still know it: a second publication shows the same data.
	second := t.targetPath()
	t.unpublishLater(vol.GetVolumeId(), second)
	if _, err := t.Node().NodePublishVolume(ctx, t.publishRequest(ctx, vol, staging, second, rwo(), false)); err != nil {
		t.Fatalf("NodePublishVolume of volume %s after DeleteVolume: %v (the publications of a deleted volume must stay usable until they are undone)", vol.GetVolumeId(), err)
	}
	t.checkFile(second, "after", data, "read through a new publication after DeleteVolume")
}

func testConcurrentPublish(ctx context.Context, t *T) {
	t.requireNode()
	vol := t.mustCreate(ctx)
	staging := t.stage(ctx, vol, rwo())
	target := t.targetPath()
	req := t.publishRequest(ctx, vol, staging, target, rwo(), false)
	t.unpublishLater(vol.GetVolumeId(), target)
	errs := make([]error, concurrency)
	var wg sync.WaitGroup
	for i := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = t.Node().NodePublishVolume(ctx, req)
		}()
	}
	wg.Wait()
	ok := 0
	for i, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.Aborted:
			// The spec's answer to a call while another on the same volume runs.
		default:
			t.Errorf("concurrent NodePublishVolume %d of %d: %v (want OK or Aborted)", i+1, concurrency, err)
		}
	}
	if ok == 0 {
		t.Logf("no concurrent NodePublishVolume succeeded; publishing once more")
	}
	if _, err := t.Node().NodePublishVolume(ctx, req); err != nil {
		t.Errorf("NodePublishVolume after %d concurrent ones: %v", concurrency, err)
	}
	if n := mountCount(target); n != 1 {
		t.Errorf("%d concurrent NodePublishVolume calls left %d mounts at %s, want 1", concurrency, n, target)
	}
	if err := writeFile(target, "data", []byte("raced")); err != nil {
		t.Errorf("write through %s: %v", target, err)
	}
}

func testConcurrentCreate(ctx context.Context, t *T) {
	t.requireCreate()
	accounting := t.hasCtrl(csipb.ControllerServiceCapability_RPC_GET_CAPACITY)
	var before int64
	if accounting {
		before = t.capacity(ctx)
	}
	req := t.createRequest(t.name("vol"), t.s.cfg.Size, rwo())
	vols := make([]*csipb.Volume, concurrency)
	errs := make([]error, concurrency)
	var wg sync.WaitGroup
	for i := range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := t.Controller().CreateVolume(ctx, req)
			vols[i], errs[i] = resp.GetVolume(), err
		}()
	}
	wg.Wait()
	ids := map[string]bool{}
	for i, err := range errs {
		switch status.Code(err) {
		case codes.OK:
			ids[vols[i].GetVolumeId()] = true
		case codes.Aborted:
		default:
			t.Errorf("concurrent CreateVolume %s, call %d of %d: %v (want OK or Aborted)", req.Name, i+1, concurrency, err)
		}
	}
	for id := range ids {
		t.deleteLater(id)
	}
	vol, err := t.createVolume(ctx, req)
	if err != nil {
		t.Fatalf("CreateVolume after %d concurrent ones: %v", concurrency, err)
	}
	ids[vol.GetVolumeId()] = true
	if len(ids) != 1 {
		t.Errorf("%d concurrent CreateVolume calls with name %s made %d volumes: %v", concurrency, req.Name, len(ids), ids)
	}
	if accounting {
		size := max(vol.GetCapacityBytes(), t.s.cfg.Size)
		if used := before - t.capacity(ctx); used >= 2*size {
			t.Errorf("%d concurrent CreateVolume calls with one name took %d bytes of capacity, more than one volume of %d", concurrency, used, size)
		}
	}
}
