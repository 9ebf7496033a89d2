package sim

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/kubernetes/pkg/util/parsers"
)

// imageSize is the size every simulated image reports (busybox's, roughly).
const imageSize = 4 << 20

// image is a simulated image: names and an ID derived from them, no layers.
type image struct {
	id          string // sha256:<64 hex>
	repoTags    []string
	repoDigests []string
	pinned      bool
}

// normalize is ref as containerd names it: docker.io/library/busybox:latest for busybox.
func normalize(ref string) (name, repo string, err error) {
	repo, tag, digest, err := parsers.ParseImageName(ref)
	if err != nil {
		return "", "", err
	}
	if digest != "" {
		return repo + "@" + digest, repo, nil
	}
	return repo + ":" + tag, repo, nil
}

func digestOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// newImage is the image a pull of ref gives: its ID and repo digest follow from the name,
// so that every simulated node agrees on them.
func newImage(ref string) (*image, error) {
	name, repo, err := normalize(ref)
	if err != nil {
		return nil, err
	}
	img := &image{id: digestOf("image:" + name)}
	if strings.Contains(name, "@") {
		img.repoDigests = []string{name}
	} else {
		img.repoTags = []string{name}
		img.repoDigests = []string{repo + "@" + digestOf("manifest:"+name)}
	}
	return img, nil
}

// findImage resolves an image ID (with or without sha256:, or a prefix of it), a tag or
// a repo digest to a present image.
func (r *Runtime) findImage(ref string) *image {
	if ref == "" {
		return nil
	}
	if strings.HasPrefix(ref, "sha256:") {
		img, _, _ := lookup(r.images, ref)
		return img
	}
	if len(ref) >= 12 && len(ref) <= 64 && isHex(ref) {
		if img, _, ok := lookup(r.images, "sha256:"+ref); ok {
			return img
		}
	}
	name, _, err := normalize(ref)
	if err != nil {
		return nil
	}
	for _, img := range r.images {
		for _, n := range append(append([]string(nil), img.repoTags...), img.repoDigests...) {
			if n == name {
				return img
			}
		}
	}
	return nil
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if !(s[i] >= '0' && s[i] <= '9' || s[i] >= 'a' && s[i] <= 'f') {
			return false
		}
	}
	return true
}

func (img *image) api() *runtimeapi.Image {
	return &runtimeapi.Image{
		Id:          img.id,
		RepoTags:    append([]string(nil), img.repoTags...),
		RepoDigests: append([]string(nil), img.repoDigests...),
		Size_:       imageSize,
		Uid:         &runtimeapi.Int64Value{Value: 0},
		Spec:        &runtimeapi.ImageSpec{Image: img.id},
		Pinned:      img.pinned,
	}
}

// missing reports whether ref is an image no registry has: by the name convention or by
// Config.MissingImages.
func (r *Runtime) missing(ref, name string) bool {
	if strings.Contains(ref, "doesnotexist") {
		return true
	}
	for _, m := range r.cfg.MissingImages {
		if m == ref {
			return true
		}
		if n, _, err := normalize(m); err == nil && n == name {
			return true
		}
	}
	return false
}

// PullImage makes an image present at once, or fails as containerd does for a repository
// that does not exist.
func (r *Runtime) PullImage(_ context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	ref := req.GetImage().GetImage()
	name, _, err := normalize(ref)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "failed to pull image %q: %v", ref, err)
	}
	if r.missing(ref, name) {
		reason := name + ": not found"
		if strings.HasPrefix(name, "docker.io/") {
			reason = "pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed"
		}
		return nil, status.Errorf(codes.NotFound, "failed to pull and unpack image %q: failed to resolve reference %q: %s", name, name, reason)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	img := r.findImage(ref)
	if img == nil {
		if img, err = newImage(ref); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "failed to pull image %q: %v", ref, err)
		}
		r.images[img.id] = img
	}
	return &runtimeapi.PullImageResponse{ImageRef: img.id}, nil
}

// ImageStatus reports a present image; an absent one is an empty answer, not an error.
func (r *Runtime) ImageStatus(_ context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	img := r.findImage(req.GetImage().GetImage())
	if img == nil {
		return &runtimeapi.ImageStatusResponse{}, nil
	}
	resp := &runtimeapi.ImageStatusResponse{Image: img.api()}
	if req.Verbose {
		info, err := json.Marshal(map[string]any{"id": img.id, "repoTags": img.repoTags, "runtime": RuntimeName})
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode image info: %v", err)
		}
		resp.Info = map[string]string{"info": string(info)}
	}
	return resp, nil
}

// ListImages lists the present images, or the one the filter names.
func (r *Runtime) ListImages(_ context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*runtimeapi.Image
	if ref := req.GetFilter().GetImage().GetImage(); ref != "" {
		if img := r.findImage(ref); img != nil {
			out = append(out, img.api())
		}
		return &runtimeapi.ListImagesResponse{Images: out}, nil
	}
	for _, img := range r.images {
		out = append(out, img.api())
	}
	return &runtimeapi.ListImagesResponse{Images: out}, nil
}

// RemoveImage removes an image; removing an absent one is not an error.
func (r *Runtime) RemoveImage(_ context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if img := r.findImage(req.GetImage().GetImage()); img != nil {
		delete(r.images, img.id)
	}
	return &runtimeapi.RemoveImageResponse{}, nil
}

// ImageFsInfo reports the images' filesystem: the images' sizes added up.
func (r *Runtime) ImageFsInfo(context.Context, *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	r.mu.Lock()
	n := uint64(len(r.images))
	r.mu.Unlock()
	fs := &runtimeapi.FilesystemUsage{
		Timestamp:  r.now().UnixNano(),
		FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: "/var/lib/berth-sim/images"},
		UsedBytes:  &runtimeapi.UInt64Value{Value: n * imageSize},
		InodesUsed: &runtimeapi.UInt64Value{Value: n * 100},
	}
	return &runtimeapi.ImageFsInfoResponse{ImageFilesystems: []*runtimeapi.FilesystemUsage{fs}, ContainerFilesystems: []*runtimeapi.FilesystemUsage{fs}}, nil
}
