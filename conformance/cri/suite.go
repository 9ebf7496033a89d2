// Package cri is berth's conformance suite for container runtimes: it drives a runtime
// through its CRI socket (k8s.io/cri-api v1, gRPC) exactly as berth's node agent does and
// checks what the agent relies on: the runtime and image services, the lifecycle of pod
// sandboxes and containers, idempotent stop and remove, exec (synchronous and streamed),
// attach, port forwarding, log files, host ports, env, mounts, resources and stats.
//
// It is shaped like containerd's snapshot test suite: a table of named tests, each a
// func(ctx, *T), run one after the other against one endpoint by
// conformance/internal/harness, the runner of berth's other suites. Containers run only
// the busybox commands of the command contract (docs/conformance-cri.md), so that the same
// suite passes on a real runtime with berth's busybox image and on berth's simulated
// runtime, which interprets those commands without processes.
//
// The suite talks to the runtime over its socket only and assumes the runtime runs on
// this host: the host directories it mounts into containers and the log directories it
// gives sandboxes are made here. Everything it creates carries the label RunLabel with
// the run's ID and is removed at the end of each test and, as a last sweep, at the end of
// the run, whether tests failed or not.
package cri

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"berth.dev/berth/conformance/internal/harness"
	"berth.dev/berth/conformance/internal/report"
)

const (
	// DefaultImage is the image containers run: berth's busybox, which the runtime must
	// already have (no registry is reachable from berth's machines).
	DefaultImage = "berth.local/busybox:1.35"
	// DefaultTimeout bounds each test.
	DefaultTimeout = 2 * time.Minute
	// RunLabel labels every sandbox the suite makes with the run's ID, so that a sweep
	// (or an operator, with crictl pods --label) finds whatever a run left behind.
	RunLabel = "conformance.berth.dev/run"
	// TestLabel names the test that made a sandbox.
	TestLabel = "conformance.berth.dev/test"
	// Namespace is the metadata namespace of the suite's sandboxes.
	Namespace = "berth-conformance"

	// cleanupTimeout bounds the removal of one test's objects.
	cleanupTimeout = 60 * time.Second
	// preflightTimeout bounds the first contact with the endpoints.
	preflightTimeout = 10 * time.Second
	// maxMessageSize matches the kubelet's limit for CRI responses.
	maxMessageSize = 16 << 20
)

// Config is one run of the suite.
type Config struct {
	// Endpoint is the runtime service, unix:///path/to/socket (a bare path works too).
	Endpoint string
	// ImageEndpoint is the image service; the runtime endpoint when empty.
	ImageEndpoint string
	// Image is what containers run (DefaultImage when empty). It must be present in the
	// runtime; the suite pulls it, which must succeed for a present image, and never
	// removes it.
	Image string
	// RemovableImage, when set, is a second present image, with an image ID other than
	// Image's, that image/remove may remove. A runtime removes an image by ID, with every
	// tag it has, so it must not share Image's ID. Without it image/remove is skipped.
	RemovableImage string
	// RuntimeHandler is the runtime handler (RuntimeClass) of the sandboxes; the default
	// handler when empty.
	RuntimeHandler string
	// Timeout bounds each test (DefaultTimeout when zero).
	Timeout time.Duration
	// Focus and Skip are regular expressions on test names: a test runs when it matches
	// Focus (or Focus is empty) and does not match Skip (or Skip is empty).
	Focus, Skip string
	// Output receives a line per test and the closing summary (nothing when nil).
	Output io.Writer
	// RunID names the run in labels and metadata; random when empty.
	RunID string
}

// Test is one named test of the suite.
type Test struct {
	// Name is "group/name", e.g. "runtime/version".
	Name string
	// Func runs the test; ctx ends at the test's timeout.
	Func func(ctx context.Context, t *T)
}

// Tests returns the suite's tests in the order they run.
func Tests() []Test {
	return append([]Test(nil), tests...)
}

// tests is the suite. Groups run from the simplest services to the ones that build on
// them, so that the first failure in a broken runtime is the most telling one.
var tests = []Test{
	{"runtime/version", testVersion},
	{"runtime/status", testStatus},

	{"image/pull", testImagePull},
	{"image/status", testImageStatus},
	{"image/status-missing", testImageStatusMissing},
	{"image/list", testImageList},
	{"image/list-filter", testImageListFilter},
	{"image/remove", testImageRemove},
	{"image/remove-missing", testImageRemoveMissing},

	{"sandbox/run", testSandboxRun},
	{"sandbox/list", testSandboxList},
	{"sandbox/hostname", testSandboxHostname},
	{"sandbox/stop", testSandboxStop},
	{"sandbox/remove", testSandboxRemove},

	{"container/create", testContainerCreate},
	{"container/start", testContainerStart},
	{"container/list", testContainerList},
	{"container/exit-zero", testContainerExitZero},
	{"container/exit-code", testContainerExitCode},
	{"container/stop-timeout", testContainerStopTimeout},
	{"container/remove", testContainerRemove},

	{"idempotence/stop-sandbox-twice", testStopSandboxTwice},
	{"idempotence/remove-sandbox-twice", testRemoveSandboxTwice},
	{"idempotence/stop-removed-sandbox", testStopRemovedSandbox},
	{"idempotence/stop-container-twice", testStopContainerTwice},
	{"idempotence/remove-container-twice", testRemoveContainerTwice},
	{"idempotence/stop-removed-container", testStopRemovedContainer},

	{"exec/sync-stdout", testExecSyncStdout},
	{"exec/sync-stderr", testExecSyncStderr},
	{"exec/sync-exit-code", testExecSyncExitCode},
	{"exec/sync-timeout", testExecSyncTimeout},

	{"streaming/exec", testStreamingExec},
	{"streaming/attach", testStreamingAttach},
	{"streaming/port-forward", testStreamingPortForward},

	{"logs/file", testLogsFile},
	{"logs/reopen", testLogsReopen},

	{"ports/mapping", testPortsMapping},
	{"ports/host-port", testPortsHostPort},

	{"env/variables", testEnv},

	{"mounts/read-only", testMountReadOnly},
	{"mounts/read-write", testMountReadWrite},
	{"mounts/read-only-refuses-writes", testMountRefusesWrites},

	{"resources/update", testResourcesUpdate},

	{"stats/container", testStatsContainer},
	{"stats/list", testStatsList},
}

// Selection decides which tests run.
type Selection struct{ sel report.Selection }

// NewSelection compiles the focus and skip expressions; empty ones select everything and
// skip nothing.
func NewSelection(focus, skip string) (Selection, error) {
	s, err := report.NewSelection(focus, skip)
	return Selection{s}, err
}

// Selected reports whether the test named name runs.
func (s Selection) Selected(name string) bool { return s.sel.Selected(name) }

// Filter returns the tests of ts that s selects, in their order.
func (s Selection) Filter(ts []Test) []Test {
	var out []Test
	for _, t := range ts {
		if s.Selected(t.Name) {
			out = append(out, t)
		}
	}
	return out
}

func (c *Config) defaults() error {
	if c.Endpoint == "" {
		return errors.New("a runtime endpoint is needed (unix:///path/to/socket)")
	}
	if c.ImageEndpoint == "" {
		c.ImageEndpoint = c.Endpoint
	}
	if c.Image == "" {
		c.Image = DefaultImage
	}
	if c.RemovableImage != "" && c.RemovableImage == c.Image {
		return fmt.Errorf("the removable image %q is the test image: the suite never removes the test image", c.Image)
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Output == nil {
		c.Output = io.Discard
	}
	if c.RunID == "" {
		id, err := harness.RunID(4)
		if err != nil {
			return err
		}
		c.RunID = id
	}
	return nil
}

// dial opens a gRPC client connection to a CRI endpoint. grpc-go resolves unix:// targets
// itself; a bare path is taken as a unix socket.
func dial(endpoint string) (*grpc.ClientConn, error) {
	target := endpoint
	if strings.HasPrefix(target, "/") {
		target = "unix://" + target
	}
	if !strings.HasPrefix(target, "unix://") {
		return nil, fmt.Errorf("endpoint %q: only unix:// endpoints are supported", endpoint)
	}
	conn, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageSize), grpc.MaxCallSendMsgSize(maxMessageSize)))
	if err != nil {
		return nil, fmt.Errorf("connect to CRI endpoint %s: %w", endpoint, err)
	}
	return conn, nil
}

// Run runs the selected tests against cfg.Endpoint, writes a line per test and the
// summary to cfg.Output and returns the report. Failing tests are in the report, not in
// the error, which says that the run itself could not happen (a bad expression, an
// endpoint that is not a unix socket).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	sel, err := NewSelection(cfg.Focus, cfg.Skip)
	if err != nil {
		return nil, err
	}
	rconn, err := dial(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	defer rconn.Close()
	iconn := rconn
	if cfg.ImageEndpoint != cfg.Endpoint {
		if iconn, err = dial(cfg.ImageEndpoint); err != nil {
			return nil, err
		}
		defer iconn.Close()
	}
	s := &suite{
		cfg:     cfg,
		runtime: runtimeapi.NewRuntimeServiceClient(rconn),
		images:  runtimeapi.NewImageServiceClient(iconn),
	}
	if err := s.preflight(ctx); err != nil {
		return nil, err
	}
	report := &Report{
		Suite: "cri", Endpoint: cfg.Endpoint, ImageEndpoint: cfg.ImageEndpoint, Image: cfg.Image,
		RunID: cfg.RunID, Started: time.Now(),
	}
	var hts []harness.Test
	for _, test := range sel.Filter(tests) {
		hts = append(hts, s.harnessTest(test))
	}
	for _, res := range s.runner().Run(ctx, hts) {
		report.add(res)
	}
	if msg := s.sweep(ctx); msg != "" {
		report.Leftovers = msg
		fmt.Fprintln(cfg.Output, "WARN "+msg)
	}
	report.Duration = time.Since(report.Started)
	fmt.Fprintln(cfg.Output, report.Summary())
	if ctx.Err() != nil {
		return report, fmt.Errorf("run interrupted: %w", ctx.Err())
	}
	return report, nil
}

// suite is the state shared by the tests of one run.
type suite struct {
	cfg     Config
	runtime runtimeapi.RuntimeServiceClient
	images  runtimeapi.ImageServiceClient
}

// runner runs the tests one after the other, each under cfg.Timeout; a cleanup that
// fails fails its test, since it leaves something behind in the runtime.
func (s *suite) runner() harness.Runner {
	return harness.Runner{Timeout: s.cfg.Timeout, CleanupTimeout: cleanupTimeout, Output: s.cfg.Output}
}

// harnessTest is test as the runner runs it, with a T of the suite's.
func (s *suite) harnessTest(test Test) harness.Test {
	return harness.Test{Name: test.Name, Func: func(ctx context.Context, ht *harness.T) {
		test.Func(ctx, &T{T: ht, suite: s})
	}}
}

// preflight makes sure something answers at the endpoints before the tests run, so that
// a wrong path is one clear error rather than a failure of every test.
func (s *suite) preflight(parent context.Context) error {
	for _, endpoint := range []string{s.cfg.Endpoint, s.cfg.ImageEndpoint} {
		path := strings.TrimPrefix(endpoint, "unix://")
		conn, err := net.DialTimeout("unix", path, preflightTimeout)
		if err != nil {
			return fmt.Errorf("nothing answers at %s: %w", endpoint, err)
		}
		conn.Close()
	}
	ctx, cancel := context.WithTimeout(parent, preflightTimeout)
	defer cancel()
	if _, err := s.runtime.Version(ctx, &runtimeapi.VersionRequest{Version: "v1"}); err != nil {
		return fmt.Errorf("the runtime service at %s does not answer Version: %w", s.cfg.Endpoint, err)
	}
	if _, err := s.images.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{}); err != nil && status.Code(err) != codes.Unimplemented {
		return fmt.Errorf("the image service at %s does not answer ImageFsInfo: %w", s.cfg.ImageEndpoint, err)
	}
	return nil
}

// sweep removes whatever sandboxes of this run are left (a test's cleanup that failed,
// a test that hung) and tells what it found, "" when nothing.
func (s *suite) sweep(parent context.Context) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), cleanupTimeout)
	defer cancel()
	resp, err := s.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{
		Filter: &runtimeapi.PodSandboxFilter{LabelSelector: map[string]string{RunLabel: s.cfg.RunID}},
	})
	if err != nil {
		return fmt.Sprintf("cleanup: list the run's sandboxes: %v", err)
	}
	if len(resp.Items) == 0 {
		return ""
	}
	var problems []string
	for _, sb := range resp.Items {
		if err := removeSandbox(ctx, s.runtime, sb.Id); err != nil {
			problems = append(problems, err.Error())
		}
	}
	msg := fmt.Sprintf("cleanup: %d sandboxes of run %s were left after their tests", len(resp.Items), s.cfg.RunID)
	if len(problems) > 0 {
		msg += "; removing them failed: " + strings.Join(problems, "; ")
	}
	return msg
}

// removeSandbox stops and removes a sandbox, forgiving a sandbox that is already gone.
func removeSandbox(ctx context.Context, rt runtimeapi.RuntimeServiceClient, id string) error {
	if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil && !isNotFound(err) {
		return fmt.Errorf("stop sandbox %s: %w", id, err)
	}
	if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil && !isNotFound(err) {
		return fmt.Errorf("remove sandbox %s: %w", id, err)
	}
	return nil
}

// tempDir makes a directory for a test's files; the caller removes it.
func tempDir(pattern string) (string, error) {
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		return "", fmt.Errorf("temporary directory: %w", err)
	}
	return dir, nil
}
