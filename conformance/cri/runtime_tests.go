package cri

import (
	"context"
	"fmt"
	"slices"

	"github.com/distribution/reference"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// testVersion: Version answers with the CRI version v1 and a runtime name and version,
// which the agent reports as the node's containerRuntimeVersion.
func testVersion(ctx context.Context, t *T) {
	resp, err := t.Runtime().Version(ctx, &runtimeapi.VersionRequest{Version: "v1"})
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if resp.RuntimeApiVersion != "v1" {
		t.Errorf("runtime API version %q, expected v1", resp.RuntimeApiVersion)
	}
	if resp.RuntimeName == "" || resp.RuntimeVersion == "" {
		t.Errorf("runtime name %q and version %q: both are needed", resp.RuntimeName, resp.RuntimeVersion)
	}
	t.Logf("runtime %s %s, CRI %s", resp.RuntimeName, resp.RuntimeVersion, resp.RuntimeApiVersion)
}

// testStatus: Status reports the RuntimeReady and NetworkReady conditions, both true.
func testStatus(ctx context.Context, t *T) {
	resp, err := t.Runtime().Status(ctx, &runtimeapi.StatusRequest{})
	if err != nil {
		t.Fatalf("Status: %v", err)
	}
	if resp.Status == nil {
		t.Fatalf("Status returned no status")
	}
	for _, want := range []string{runtimeapi.RuntimeReady, runtimeapi.NetworkReady} {
		i := slices.IndexFunc(resp.Status.Conditions, func(c *runtimeapi.RuntimeCondition) bool { return c.Type == want })
		switch {
		case i < 0:
			t.Errorf("no %s condition in %v", want, resp.Status.Conditions)
		case !resp.Status.Conditions[i].Status:
			c := resp.Status.Conditions[i]
			t.Errorf("%s is false: %s: %s", want, c.Reason, c.Message)
		}
	}
}

// sameImageName reports whether two references name the same image once normalized
// (busybox:1 and docker.io/library/busybox:1 are one image).
func sameImageName(a, b string) bool {
	if a == b {
		return true
	}
	na, errA := reference.ParseNormalizedNamed(a)
	nb, errB := reference.ParseNormalizedNamed(b)
	if errA != nil || errB != nil {
		return false
	}
	return reference.TagNameOnly(na).String() == reference.TagNameOnly(nb).String()
}

func (t *T) imageStatus(ctx context.Context, ref string) *runtimeapi.Image {
	resp, err := t.Images().ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err != nil {
		t.Fatalf("ImageStatus %s: %v", ref, err)
	}
	return resp.Image
}

// testImagePull: PullImage of the present test image succeeds and returns the ID that
// ImageStatus reports for it. A runtime may go to the registry even for an image it has
// (containerd does, to honour a moved tag): with no registry reachable that pull fails,
// which is skipped with the runtime's error rather than failed, since the image is there.
func testImagePull(ctx context.Context, t *T) {
	img := t.Config().Image
	resp, err := t.Images().PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: img}})
	if err != nil {
		if st := t.imageStatus(ctx, img); st != nil {
			t.Skipf("PullImage of the present image %s went to the registry, which is not reachable: %v", img, err)
		}
		t.Fatalf("PullImage %s: %v (and ImageStatus says the image is not present: the runtime must have it)", img, err)
	}
	if resp.ImageRef == "" {
		t.Fatalf("PullImage %s returned an empty image reference", img)
	}
	st := t.imageStatus(ctx, img)
	if st == nil {
		t.Fatalf("ImageStatus %s after PullImage: no image", img)
	}
	if st.Id != resp.ImageRef && !slices.Contains(st.RepoDigests, resp.ImageRef) {
		t.Errorf("PullImage returned %q, but ImageStatus has ID %q and digests %v", resp.ImageRef, st.Id, st.RepoDigests)
	}
}

// testImageStatus: ImageStatus of the test image tells its ID, its tag and its size.
func testImageStatus(ctx context.Context, t *T) {
	img := t.Config().Image
	st := t.imageStatus(ctx, img)
	if st == nil {
		t.Fatalf("ImageStatus %s: no image (it must be present in the runtime)", img)
	}
	if st.Id == "" {
		t.Errorf("ImageStatus %s: empty image ID", img)
	}
	if !slices.ContainsFunc(st.RepoTags, func(tag string) bool { return sameImageName(tag, img) }) {
		t.Errorf("ImageStatus %s: repo tags %v do not include it", img, st.RepoTags)
	}
	if st.Size_ == 0 {
		t.Errorf("ImageStatus %s: size 0", img)
	}
}

// testImageStatusMissing: ImageStatus of an image the runtime does not have answers
// with no image and no error, which is how the kubelet learns it must pull.
func testImageStatusMissing(ctx context.Context, t *T) {
	missing := fmt.Sprintf("berth.local/conformance-missing:%s", t.Config().RunID)
	resp, err := t.Images().ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: missing}})
	if err != nil {
		t.Fatalf("ImageStatus of missing image %s: expected no error, got %v", missing, err)
	}
	if resp.Image != nil {
		t.Errorf("ImageStatus of missing image %s: expected a nil image, got %v", missing, resp.Image)
	}
}

// testImageList: ListImages includes the test image.
func testImageList(ctx context.Context, t *T) {
	img := t.Config().Image
	st := t.imageStatus(ctx, img)
	if st == nil {
		t.Fatalf("ImageStatus %s: no image", img)
	}
	all, err := t.Images().ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		t.Fatalf("ListImages: %v", err)
	}
	i := slices.IndexFunc(all.Images, func(i *runtimeapi.Image) bool { return i.Id == st.Id })
	if i < 0 {
		t.Fatalf("ListImages: the test image %s (%s) is not among %d images", img, st.Id, len(all.Images))
	}
	if !slices.ContainsFunc(all.Images[i].RepoTags, func(tag string) bool { return sameImageName(tag, img) }) {
		t.Errorf("ListImages: the test image %s is listed with tags %v", img, all.Images[i].RepoTags)
	}
}

// testImageListFilter: ListImages filtered by an image name lists that image alone.
func testImageListFilter(ctx context.Context, t *T) {
	img := t.Config().Image
	st := t.imageStatus(ctx, img)
	if st == nil {
		t.Fatalf("ImageStatus %s: no image", img)
	}
	filtered, err := t.Images().ListImages(ctx, &runtimeapi.ListImagesRequest{Filter: &runtimeapi.ImageFilter{Image: &runtimeapi.ImageSpec{Image: img}}})
	if err != nil {
		t.Fatalf("ListImages filtered by %s: %v", img, err)
	}
	if len(filtered.Images) != 1 || filtered.Images[0].Id != st.Id {
		var ids []string
		for _, i := range filtered.Images {
			ids = append(ids, i.Id)
		}
		t.Errorf("ListImages filtered by %s: expected %s alone, got %d images %v", img, st.Id, len(ids), ids)
	}
}

// testImageRemove: RemoveImage removes an image, after which ImageStatus and ListImages
// no longer have it. It runs only with a removable image distinct from the test image:
// runtimes remove an image by ID with all its tags, so removing a second tag of the
// test image would remove the test image too.
func testImageRemove(ctx context.Context, t *T) {
	cfg := t.Config()
	if cfg.RemovableImage == "" {
		t.Skipf("no removable image configured (--removable-image): the suite never removes the test image, and no registry is reachable to pull another")
	}
	before := t.imageStatus(ctx, cfg.RemovableImage)
	if before == nil {
		t.Skipf("removable image %s is not present in the runtime (a previous run may have removed it)", cfg.RemovableImage)
	}
	test := t.imageStatus(ctx, cfg.Image)
	if test != nil && test.Id == before.Id {
		t.Fatalf("removable image %s has the test image's ID %s: removing it would remove %s", cfg.RemovableImage, before.Id, cfg.Image)
	}
	if _, err := t.Images().RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: cfg.RemovableImage}}); err != nil {
		t.Fatalf("RemoveImage %s: %v", cfg.RemovableImage, err)
	}
	if st := t.imageStatus(ctx, cfg.RemovableImage); st != nil {
		t.Errorf("ImageStatus %s after RemoveImage: still there (%s)", cfg.RemovableImage, st.Id)
	}
	all, err := t.Images().ListImages(ctx, &runtimeapi.ListImagesRequest{})
	if err != nil {
		t.Fatalf("ListImages: %v", err)
	}
	if slices.ContainsFunc(all.Images, func(i *runtimeapi.Image) bool { return i.Id == before.Id }) {
		t.Errorf("ListImages after RemoveImage %s: image %s is still listed", cfg.RemovableImage, before.Id)
	}
	if st := t.imageStatus(ctx, cfg.Image); st == nil {
		t.Errorf("RemoveImage %s removed the test image %s too", cfg.RemovableImage, cfg.Image)
	}
}

// testImageRemoveMissing: RemoveImage of an image that is not there succeeds (the CRI
// requires RemoveImage to be idempotent).
func testImageRemoveMissing(ctx context.Context, t *T) {
	missing := fmt.Sprintf("berth.local/conformance-missing:%s", t.Config().RunID)
	if _, err := t.Images().RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: missing}}); err != nil {
		t.Errorf("RemoveImage of missing image %s: expected success (RemoveImage is idempotent), got %v", missing, err)
	}
}
