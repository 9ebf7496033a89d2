// Package conformance runs berth's conformance suites against the drivers they are meant
// for: the CRI suite against a real containerd of its own and against berth's simulated
// runtime, with and without its deliberate defects.
package conformance

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"berth.dev/berth/conformance/cri"
	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/core/hosttest"
)

// removableImageRef is a second busybox image, with an image ID of its own, that the
// suite's image/remove test may remove.
const removableImageRef = "berth.local/conformance-removable:1"

// startContainerd starts containerd on dir (its own pod CIDR and bridge) with berth's
// images and the removable image imported. hosttest.StartContainerd's cleanup leaves
// nothing behind; before it, the test fails when the suite left a sandbox of its own.
func startContainerd(t *testing.T, dir string, logs io.Writer) *hosttest.Containerd {
	t.Helper()
	removable, err := removableImage()
	if err != nil {
		t.Fatal(err)
	}
	removableFile := filepath.Join(dir, "removable.tar")
	if err := images.WriteTarball(removableFile, removableImageRef, removable); err != nil {
		t.Fatal(err)
	}
	cidr := hosttest.FreePodCIDR(t)
	bridge := fmt.Sprintf("berthcc%d", os.Getpid()%100000)
	rt := hosttest.StartContainerd(t, dir, containerd.Config{PodCIDR: cidr, Bridge: bridge, Output: logs}, removableFile)
	t.Cleanup(func() { checkSuiteSandboxes(t, rt.Runtime) })
	t.Logf("containerd at %s, pod CIDR %s, bridge %s", rt.Endpoint, cidr, bridge)
	return rt
}

// removableImage is berth's busybox with one more env entry, so that its config, and so
// its image ID, differ from the test image's.
func removableImage() (v1.Image, error) {
	img, err := images.Busybox(images.DefaultBusyboxPath)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("removable image config: %w", err)
	}
	cfg = cfg.DeepCopy()
	cfg.Config.Env = append(cfg.Config.Env, "BERTH_CONFORMANCE=removable")
	out, err := mutate.ConfigFile(img, cfg)
	if err != nil {
		return nil, fmt.Errorf("removable image: %w", err)
	}
	return out, nil
}

// checkSuiteSandboxes fails the test when the suite left a sandbox of its own (one with
// its run label) behind; hosttest's cleanup removes them afterwards.
func checkSuiteSandboxes(t *testing.T, rt runtimeapi.RuntimeServiceClient) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		t.Errorf("cleanup: list sandboxes: %v", err)
		return
	}
	for _, sb := range resp.Items {
		if _, ok := sb.Labels[cri.RunLabel]; ok {
			t.Errorf("the suite left sandbox %s (%s) behind", sb.Id, sb.Metadata.GetName())
		}
	}
}

// logWriter sends what the suite prints, line by line, to the test's log.
type logWriter struct {
	t   *testing.T
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *logWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	for {
		line, err := w.buf.ReadString('\n')
		if err != nil {
			w.buf.WriteString(line)
			return len(p), nil
		}
		w.t.Log(strings.TrimSuffix(line, "\n"))
	}
}

// checkReport fails the test for every failed test of report that is not in expected
// (name -> why), for every expected failure that passed, and for a skip without a reason.
func checkReport(t *testing.T, report *cri.Report, expected map[string]string) {
	t.Helper()
	for _, res := range report.Results {
		why, known := expected[res.Name]
		switch res.Status {
		case cri.StatusFail:
			if !known {
				t.Errorf("%s failed: %s", res.Name, strings.Join(res.Messages, "; "))
			}
		case cri.StatusSkip:
			if len(res.Messages) == 0 || strings.TrimSpace(res.Messages[0]) == "" {
				t.Errorf("%s skipped without a reason", res.Name)
			}
		case cri.StatusPass:
			if known {
				t.Errorf("%s passed, but it is expected to fail (%s): update the expectations and docs/conformance-cri.md", res.Name, why)
			}
		}
	}
	if report.Leftovers != "" {
		t.Errorf("%s", report.Leftovers)
	}
}

// lockedBuffer collects a daemon's output, which its goroutines write while the test reads.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
