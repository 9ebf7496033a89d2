// Package csi is berth's conformance suite for CSI drivers: it drives a driver through its
// socket (the CSI spec v1.9.0 gRPC services: Identity, Controller, Node) as a container
// orchestrator does and checks what berth's agent and sidecars rely on: the plugin's
// identity and capabilities, CreateVolume and DeleteVolume with their argument checks,
// idempotence and capacity accounting, ListVolumes paging, GetCapacity, expansion,
// snapshots and restores, ControllerPublish, and on the node stage, publish, unpublish
// and unstage: their argument checks, idempotence (one mount however often a call is
// repeated, as /proc/self/mountinfo shows), read-only publications, data shared between
// publications, volume stats, node expansion and raw block volumes. Lifecycle tests
// delete published volumes and race calls on one volume.
//
// It has the shape of berth's other suites (conformance/internal/harness): a table of
// named tests ("Controller/CreateVolume/idempotent"), each a func(ctx, *T), run one
// after the other. A test of an optional capability the driver does not declare checks
// that the RPC does not succeed and is then skipped with the reason. Every volume,
// snapshot, stage and publication a test makes is undone after it, failed or not.
//
// The suite must run on the driver's node (it reads and writes the mounts the driver
// makes) and, for the node tests, as root. It imports only the CSI spec, never a driver.
package csi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"berth.dev/berth/conformance/internal/harness"
	"berth.dev/berth/conformance/internal/report"
)

const (
	// DefaultSize is the size of the volumes the suite creates (64 MiB).
	DefaultSize = 64 << 20
	// DefaultTimeout bounds each test.
	DefaultTimeout = 2 * time.Minute
	// NamePrefix starts the name of every volume and snapshot the suite creates
	// ("csict-<run>-..."), so that an operator finds what a run left behind.
	NamePrefix = "csict-"

	// preflightTimeout bounds the first calls that learn the driver's capabilities.
	preflightTimeout = 30 * time.Second
	// cleanupTimeout bounds the undoing of one test's volumes and mounts.
	cleanupTimeout = 2 * time.Minute
)

// Config is one run of the suite.
type Config struct {
	// Endpoint is the driver's socket, unix:///path/to/csi.sock (a bare path works too).
	Endpoint string
	// StagingDir and TargetDir hold the staging and target paths the suite gives the
	// driver, one subdirectory per use; directories of a temporary directory that the run
	// removes when empty.
	StagingDir, TargetDir string
	// Parameters are CreateVolume's parameters (a storage class's parameters).
	Parameters map[string]string
	// Size is the size of the volumes the suite creates (DefaultSize when zero); expansion
	// tests grow volumes to twice this.
	Size int64
	// Timeout bounds each test (DefaultTimeout when zero).
	Timeout time.Duration
	// Focus and Skip are regular expressions on test names: a test runs when it matches
	// Focus (or Focus is empty) and does not match Skip (or Skip is empty).
	Focus, Skip string
	// Output receives a line per test and the closing summary (nothing when nil).
	Output io.Writer
	// RunID names the run's volumes and snapshots; random when empty.
	RunID string
}

// Test is one named test of the suite.
type Test struct {
	// Name is "Service/RPC/what", e.g. "Controller/CreateVolume/idempotent".
	Name string
	// Func runs the test; ctx ends at the test's timeout.
	Func func(ctx context.Context, t *T)
}

// Tests returns the suite's tests in the order they run.
func Tests() []Test { return append([]Test(nil), tests...) }

// Report is a run's outcome; Properties has the endpoint, the driver's name and
// version and its capabilities.
type Report = harness.Report

// The outcomes of a test.
const (
	StatusPass = report.StatusPass
	StatusFail = report.StatusFail
	StatusSkip = report.StatusSkip
)

// Select returns the tests of ts that focus and skip select, in their order.
func Select(ts []Test, focus, skip string) ([]Test, error) {
	return harness.SelectBy(ts, func(t Test) string { return t.Name }, focus, skip)
}

func (c *Config) defaults() error {
	if c.Endpoint == "" {
		return errors.New("the driver's endpoint is needed (--endpoint unix:///path/to/csi.sock)")
	}
	if c.Size <= 0 {
		c.Size = DefaultSize
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Output == nil {
		c.Output = io.Discard
	}
	if c.RunID == "" {
		id, err := harness.RunID(3)
		if err != nil {
			return err
		}
		c.RunID = id
	}
	return nil
}

// target turns an endpoint into a gRPC target: a bare path is a unix socket.
func target(endpoint string) string {
	if strings.HasPrefix(endpoint, "/") {
		return "unix://" + endpoint
	}
	return endpoint
}

// Run runs the selected tests against the driver at cfg.Endpoint, writes a line per test
// and the summary to cfg.Output and returns the report. Failing tests are in the report,
// not in the error, which says that the run itself could not happen (a bad expression,
// a driver that does not answer GetPluginInfo, directories that cannot be made).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	selected, err := Select(tests, cfg.Focus, cfg.Skip)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient(target(cfg.Endpoint), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("connect to CSI driver at %s: %w", cfg.Endpoint, err)
	}
	defer conn.Close()
	s := &suite{
		cfg:      cfg,
		identity: csipb.NewIdentityClient(conn),
		ctrl:     csipb.NewControllerClient(conn),
		node:     csipb.NewNodeClient(conn),
	}
	var tmp string
	if cfg.StagingDir == "" || cfg.TargetDir == "" {
		if tmp, err = os.MkdirTemp("", "berth-csi-conformance-"); err != nil {
			return nil, fmt.Errorf("make the suite's directory: %w", err)
		}
		// Only what is empty goes: a publication a driver failed to undo stays visible
		// rather than being removed under its mount.
		defer removeEmptyTree(tmp)
		if s.cfg.StagingDir == "" {
			s.cfg.StagingDir = tmp + "/staging"
		}
		if s.cfg.TargetDir == "" {
			s.cfg.TargetDir = tmp + "/target"
		}
	}
	for _, d := range []string{s.cfg.StagingDir, s.cfg.TargetDir} {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return nil, fmt.Errorf("make the suite's directory: %w", err)
		}
	}
	if err := s.preflight(ctx); err != nil {
		return nil, err
	}
	rep := &Report{Suite: "csi", RunID: cfg.RunID, Started: time.Now(), Properties: s.properties()}
	var hts []harness.Test
	for _, test := range selected {
		fn := test.Func
		hts = append(hts, harness.Test{Name: test.Name, Func: func(ctx context.Context, ht *harness.T) {
			fn(ctx, &T{T: ht, s: s})
		}})
	}
	runner := harness.Runner{Timeout: cfg.Timeout, CleanupTimeout: cleanupTimeout, Output: cfg.Output}
	rep.Add(runner.Run(ctx, hts)...)
	if msg := s.leftoverSummary(); msg != "" {
		rep.Leftovers = msg
		fmt.Fprintln(cfg.Output, "WARN "+msg)
	}
	rep.Duration = time.Since(rep.Started)
	fmt.Fprintln(cfg.Output, rep.Summary())
	if ctx.Err() != nil {
		return rep, fmt.Errorf("run interrupted: %w", ctx.Err())
	}
	return rep, nil
}

// suite is what the tests of one run share: the clients and what the driver declared.
type suite struct {
	cfg      Config
	identity csipb.IdentityClient
	ctrl     csipb.ControllerClient
	node     csipb.NodeClient

	info       *csipb.GetPluginInfoResponse
	pluginCaps map[csipb.PluginCapability_Service_Type]bool
	expansion  map[csipb.PluginCapability_VolumeExpansion_Type]bool
	ctrlCaps   map[csipb.ControllerServiceCapability_RPC_Type]bool
	nodeCaps   map[csipb.NodeServiceCapability_RPC_Type]bool
	nodeInfo   *csipb.NodeGetInfoResponse
	// preflightErrs are the capability calls that failed; the tests that need their
	// answers fail with them.
	preflightErrs map[string]error

	mu        sync.Mutex
	leftovers []string
}

// preflight learns the driver's name and capabilities. Only an unreachable driver
// stops the run; a capability call that fails is reported by the tests of that call.
func (s *suite) preflight(parent context.Context) error {
	ctx, cancel := context.WithTimeout(parent, preflightTimeout)
	defer cancel()
	info, err := s.identity.GetPluginInfo(ctx, &csipb.GetPluginInfoRequest{})
	if err != nil {
		return fmt.Errorf("GetPluginInfo of the CSI driver at %s: %w", s.cfg.Endpoint, err)
	}
	s.info = info
	s.preflightErrs = map[string]error{}
	s.pluginCaps = map[csipb.PluginCapability_Service_Type]bool{}
	s.expansion = map[csipb.PluginCapability_VolumeExpansion_Type]bool{}
	s.ctrlCaps = map[csipb.ControllerServiceCapability_RPC_Type]bool{}
	s.nodeCaps = map[csipb.NodeServiceCapability_RPC_Type]bool{}
	if pc, err := s.identity.GetPluginCapabilities(ctx, &csipb.GetPluginCapabilitiesRequest{}); err != nil {
		s.preflightErrs["GetPluginCapabilities"] = err
	} else {
		for _, c := range pc.GetCapabilities() {
			if svc := c.GetService(); svc != nil {
				s.pluginCaps[svc.GetType()] = true
			}
			if ve := c.GetVolumeExpansion(); ve != nil {
				s.expansion[ve.GetType()] = true
			}
		}
	}
	if s.pluginCaps[csipb.PluginCapability_Service_CONTROLLER_SERVICE] {
		if cc, err := s.ctrl.ControllerGetCapabilities(ctx, &csipb.ControllerGetCapabilitiesRequest{}); err != nil {
			s.preflightErrs["ControllerGetCapabilities"] = err
		} else {
			for _, c := range cc.GetCapabilities() {
				s.ctrlCaps[c.GetRpc().GetType()] = true
			}
		}
	}
	if nc, err := s.node.NodeGetCapabilities(ctx, &csipb.NodeGetCapabilitiesRequest{}); err != nil {
		s.preflightErrs["NodeGetCapabilities"] = err
	} else {
		for _, c := range nc.GetCapabilities() {
			s.nodeCaps[c.GetRpc().GetType()] = true
		}
	}
	if ni, err := s.node.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{}); err != nil {
		s.preflightErrs["NodeGetInfo"] = err
	} else {
		s.nodeInfo = ni
	}
	return nil
}

// properties are what the report records about the driver.
func (s *suite) properties() map[string]string {
	p := map[string]string{
		"endpoint":      s.cfg.Endpoint,
		"driver":        s.info.GetName(),
		"vendorVersion": s.info.GetVendorVersion(),
		"size":          fmt.Sprint(s.cfg.Size),
	}
	var caps []string
	for c := range s.pluginCaps {
		caps = append(caps, c.String())
	}
	for c := range s.ctrlCaps {
		caps = append(caps, "controller:"+c.String())
	}
	for c := range s.nodeCaps {
		caps = append(caps, "node:"+c.String())
	}
	p["capabilities"] = strings.Join(sortedStrings(caps), ",")
	if id := s.nodeInfo.GetNodeId(); id != "" {
		p["nodeID"] = id
	}
	return p
}

// leftover records something a test could not undo.
func (s *suite) leftover(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.leftovers = append(s.leftovers, fmt.Sprintf(format, args...))
}

func (s *suite) leftoverSummary() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.leftovers) == 0 {
		return ""
	}
	return fmt.Sprintf("cleanup: run %s left %d things behind: %s", s.cfg.RunID, len(s.leftovers), strings.Join(s.leftovers, "; "))
}
