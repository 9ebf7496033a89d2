// Package sim is berth's simulated container runtime: a CRI (k8s.io/cri-api v1) runtime
// and image service whose containers run without processes. It interprets the small
// command contract that berth's CRI conformance suite uses (sleep, echo, cat, env, exit,
// httpd and `sh -c` scripts of them, see README.md) on timers, writes the containers' logs
// in the CRI format, hands out pod IPs from a CIDR and serves exec, attach and
// port-forward through the kubelet's streaming library. It exists so that hundreds of
// nodes can run in one process for scheduler, controller and scale work, and so that the
// conformance suite has a runtime it can break on purpose (Config.Defect).
//
// All state is in memory: a restarted simulator has no sandboxes, containers or pulled
// images.
package sim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// RuntimeName and RuntimeVersion are what Version reports; the agent shows them as the
// node's containerRuntimeVersion (berth-sim://0.1.0).
const (
	RuntimeName    = "berth-sim"
	RuntimeVersion = "0.1.0"
	// criAPIVersion is the CRI version the simulator speaks.
	criAPIVersion = "v1"
)

// Defect is a deliberate deviation from the CRI contract, for the conformance suite's
// self-test: the suite must fail on each.
type Defect string

// The defects the simulator can be told to have.
const (
	DefectNone Defect = ""
	// DefectWrongExitCode reports exit codes one higher than the real ones.
	DefectWrongExitCode Defect = "wrong-exit-code"
	// DefectNeverStops lets StopContainer return OK while the container keeps running.
	DefectNeverStops Defect = "never-stops"
	// DefectSandboxSurvivesRemoval lets RemovePodSandbox return OK while the sandbox
	// stays listed.
	DefectSandboxSurvivesRemoval Defect = "sandbox-survives-removal"
	// DefectNotIdempotent makes stopping or removing something already stopped or gone
	// an error.
	DefectNotIdempotent Defect = "not-idempotent"
)

// Defects lists the defects Config.Defect accepts, for flags and error messages.
var Defects = []Defect{DefectWrongExitCode, DefectNeverStops, DefectSandboxSurvivesRemoval, DefectNotIdempotent}

// DefaultImages are present without a pull: berth's busybox and pause images, as the
// agent imports them into containerd.
var DefaultImages = []string{"berth.local/busybox:1.35", "berth.local/pause:3.10"}

// Config is what a simulated runtime needs; the zero value works.
type Config struct {
	// PodCIDR is the range pod IPs come from (10.244.0.0/24 when empty). The network
	// and the first address (the bridge's, as host-local leaves it) are never handed out.
	PodCIDR string
	// Images are present from the start (DefaultImages when nil).
	Images []string
	// MissingImages cannot be pulled, as if the registry did not have them; so can't any
	// image whose name contains "doesnotexist".
	MissingImages []string
	// StreamAddr is the host:port of the exec/attach/port-forward server
	// (127.0.0.1:0 when empty). It starts on the first Exec, Attach or PortForward.
	StreamAddr string
	// Defect is a deliberate CRI violation (DefectNone by default).
	Defect Defect
	// Log receives the simulator's log (nothing when nil).
	Log *slog.Logger
}

// Runtime is one simulated runtime: the CRI runtime and image services of one node.
type Runtime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer

	cfg    Config
	log    *slog.Logger
	ipPool *ipPool
	now    func() time.Time

	mu         sync.Mutex
	closed     bool
	sandboxes  map[string]*sandbox
	containers map[string]*container
	// names are the reserved sandbox and container names, as containerd reserves them,
	// so that a second create of the same pod attempt fails.
	names  map[string]string
	images map[string]*image // by ID
	stream *streamServer
}

// New makes a runtime from cfg.
func New(cfg Config) (*Runtime, error) {
	if cfg.PodCIDR == "" {
		cfg.PodCIDR = "10.244.0.0/24"
	}
	pool, err := newIPPool(cfg.PodCIDR)
	if err != nil {
		return nil, fmt.Errorf("sim: pod CIDR: %w", err)
	}
	if err := cfg.Defect.validate(); err != nil {
		return nil, err
	}
	if cfg.Images == nil {
		cfg.Images = DefaultImages
	}
	if cfg.StreamAddr == "" {
		cfg.StreamAddr = "127.0.0.1:0"
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Runtime{
		cfg:        cfg,
		log:        log,
		ipPool:     pool,
		now:        time.Now,
		sandboxes:  map[string]*sandbox{},
		containers: map[string]*container{},
		names:      map[string]string{},
		images:     map[string]*image{},
	}
	for _, ref := range cfg.Images {
		img, err := newImage(ref)
		if err != nil {
			return nil, fmt.Errorf("sim: preloaded image: %w", err)
		}
		img.pinned = strings.Contains(ref, "pause")
		r.images[img.id] = img
	}
	return r, nil
}

func (d Defect) validate() error {
	if d == DefectNone {
		return nil
	}
	for _, known := range Defects {
		if d == known {
			return nil
		}
	}
	names := make([]string, len(Defects))
	for i, k := range Defects {
		names[i] = string(k)
	}
	return fmt.Errorf("sim: unknown defect %q (known: %s)", d, strings.Join(names, ", "))
}

// Register adds the runtime and image services to s.
func (r *Runtime) Register(s *grpc.Server) {
	runtimeapi.RegisterRuntimeServiceServer(s, r)
	runtimeapi.RegisterImageServiceServer(s, r)
}

// Close stops the containers' timers and the streaming server. The runtime answers no
// more calls usefully afterwards.
func (r *Runtime) Close() error {
	r.mu.Lock()
	r.closed = true
	for _, c := range r.containers {
		c.stopTimer()
	}
	stream := r.stream
	r.stream = nil
	r.mu.Unlock()
	if stream != nil {
		return stream.close()
	}
	return nil
}

// Serve runs a runtime of cfg on the unix socket socketPath until ctx ends. A stale socket
// file (nothing answers on it) is removed first; a socket something still listens on is an
// error.
func Serve(ctx context.Context, socketPath string, cfg Config) error {
	r, err := New(cfg)
	if err != nil {
		return err
	}
	defer r.Close()
	if err := removeStaleSocket(socketPath); err != nil {
		return err
	}
	lis, err := net.Listen("unix", socketPath)
	if err != nil {
		return fmt.Errorf("sim: listen on %s: %w", socketPath, err)
	}
	defer os.Remove(socketPath)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(16<<20), grpc.MaxSendMsgSize(16<<20))
	r.Register(srv)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	r.log.Info("simulated CRI runtime serving", "socket", socketPath, "podCIDR", r.cfg.PodCIDR, "defect", string(r.cfg.Defect))
	select {
	case err := <-served:
		return fmt.Errorf("sim: serve %s: %w", socketPath, err)
	case <-ctx.Done():
	}
	// StopContainer calls may wait out a grace period: give the calls a moment, then cut.
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(2 * time.Second):
		srv.Stop()
		<-stopped
	}
	<-served
	return nil
}

// removeStaleSocket removes socketPath when it is a socket nobody answers on.
func removeStaleSocket(socketPath string) error {
	st, err := os.Lstat(socketPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sim: socket %s: %w", socketPath, err)
	}
	if st.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("sim: %s exists and is not a socket", socketPath)
	}
	if conn, err := net.DialTimeout("unix", socketPath, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("sim: something already listens on %s", socketPath)
	}
	if err := os.Remove(socketPath); err != nil {
		return fmt.Errorf("sim: remove stale socket %s: %w", socketPath, err)
	}
	return nil
}

// Version reports the runtime's name and version.
func (r *Runtime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{
		Version:           "0.1.0",
		RuntimeName:       RuntimeName,
		RuntimeVersion:    RuntimeVersion,
		RuntimeApiVersion: criAPIVersion,
	}, nil
}

// Status reports the runtime and its network ready: the simulator has nothing that can
// fail.
func (r *Runtime) Status(_ context.Context, req *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	resp := &runtimeapi.StatusResponse{
		Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
			{Type: runtimeapi.RuntimeReady, Status: true},
			{Type: runtimeapi.NetworkReady, Status: true},
		}},
		RuntimeHandlers: []*runtimeapi.RuntimeHandler{{
			Name:     "",
			Features: &runtimeapi.RuntimeHandlerFeatures{RecursiveReadOnlyMounts: false, UserNamespaces: false},
		}},
	}
	if req.Verbose {
		info, err := json.Marshal(map[string]string{"podCIDR": r.cfg.PodCIDR, "defect": string(r.cfg.Defect)})
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode runtime info: %v", err)
		}
		resp.Info = map[string]string{"config": string(info)}
	}
	return resp, nil
}

// UpdateRuntimeConfig accepts the kubelet's pod CIDR; the simulator keeps its own.
func (r *Runtime) UpdateRuntimeConfig(context.Context, *runtimeapi.UpdateRuntimeConfigRequest) (*runtimeapi.UpdateRuntimeConfigResponse, error) {
	return &runtimeapi.UpdateRuntimeConfigResponse{}, nil
}

// RuntimeConfig reports the cgroupfs driver, as containerd 1.6 configured by berth does.
func (r *Runtime) RuntimeConfig(context.Context, *runtimeapi.RuntimeConfigRequest) (*runtimeapi.RuntimeConfigResponse, error) {
	return &runtimeapi.RuntimeConfigResponse{Linux: &runtimeapi.LinuxRuntimeConfiguration{CgroupDriver: runtimeapi.CgroupDriver_CGROUPFS}}, nil
}

// ListMetricDescriptors reports no metrics: the simulator has no cgroups to read.
func (r *Runtime) ListMetricDescriptors(context.Context, *runtimeapi.ListMetricDescriptorsRequest) (*runtimeapi.ListMetricDescriptorsResponse, error) {
	return &runtimeapi.ListMetricDescriptorsResponse{}, nil
}

// ListPodSandboxMetrics reports no metrics, as ListMetricDescriptors describes none.
func (r *Runtime) ListPodSandboxMetrics(context.Context, *runtimeapi.ListPodSandboxMetricsRequest) (*runtimeapi.ListPodSandboxMetricsResponse, error) {
	return &runtimeapi.ListPodSandboxMetricsResponse{}, nil
}

// newID is a containerd-style ID: 64 hex digits.
func newID() string {
	var b [32]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on Linux
	return hex.EncodeToString(b[:])
}

func notFound(kind, id string) error {
	return status.Errorf(codes.NotFound, "an error occurred when try to find %s %q: not found", kind, id)
}

// idempotentOK is the answer to stopping or removing something already stopped or gone:
// nothing, unless the runtime is told to be not idempotent.
func (r *Runtime) idempotentOK(what, id string) error {
	if r.cfg.Defect == DefectNotIdempotent {
		return status.Errorf(codes.NotFound, "%s %q: already stopped or removed", what, id)
	}
	return nil
}

// lookup finds an object by its ID or a unique prefix of it, as containerd's truncated IDs.
func lookup[T any](m map[string]T, id string) (T, string, bool) {
	if v, ok := m[id]; ok {
		return v, id, true
	}
	var zero T
	if len(id) < 4 {
		return zero, "", false
	}
	var found T
	var foundID string
	for k, v := range m {
		if strings.HasPrefix(k, id) {
			if foundID != "" {
				return zero, "", false // ambiguous
			}
			found, foundID = v, k
		}
	}
	return found, foundID, foundID != ""
}

// matchLabels reports whether labels has every key and value of selector.
func matchLabels(labels, selector map[string]string) bool {
	for k, v := range selector {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

func copyMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
