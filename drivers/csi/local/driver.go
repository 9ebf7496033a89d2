// Package local is berth's own CSI driver, local.csi.berth.dev: volumes are sparse image
// files in a state directory on one node, attached as loop devices and formatted ext4 (or
// handed out raw as block devices). It serves the CSI Identity, Controller and Node
// services on one unix socket, keeps its state in DIR/state.json so that a restart neither
// loses volumes nor disturbs mounts, and has deliberate defects for testing berth's CSI
// conformance suite. The binary is cmd/berth-csi-local; docs/csi-driver.md describes it.
package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	mount "k8s.io/mount-utils"
)

// Names every user of the driver shares.
const (
	// DriverName is the CSI plugin name.
	DriverName = "local.csi.berth.dev"
	// TopologyKey is the topology segment key; its value is the node id.
	TopologyKey = "topology.local.csi.berth.dev/node"
	// DefaultVolumeSize is the size of a volume whose request names none.
	DefaultVolumeSize int64 = 1 << 30
	// DefaultCapacity is the pool size when --capacity is not given.
	DefaultCapacity int64 = 100 << 30
	// sizeAlign is what volume sizes are rounded up to.
	sizeAlign int64 = 1 << 20
)

// Defect is a deliberate violation of the CSI spec, for testing the conformance suite.
type Defect string

// The defects the driver can be started with.
const (
	// DefectWrongCapacity makes GetCapacity ignore allocations and CreateVolume report half
	// the size it was asked for.
	DefectWrongCapacity Defect = "wrong-capacity"
	// DefectSecondPublishFails makes a repeated identical NodePublishVolume fail.
	DefectSecondPublishFails Defect = "second-publish-fails"
	// DefectDeletePublished makes DeleteVolume remove a volume that is still staged or published.
	DefectDeletePublished Defect = "delete-published"
	// DefectIgnoreReadonly makes NodePublishVolume mount readonly=true publications read-write.
	DefectIgnoreReadonly Defect = "ignore-readonly"
)

// Defects lists every defect, for flag help and validation.
var Defects = []Defect{DefectWrongCapacity, DefectSecondPublishFails, DefectDeletePublished, DefectIgnoreReadonly}

// Config configures a driver.
type Config struct {
	// NodeID is this node's id, and the value of its topology segment.
	NodeID string
	// StateDir holds state.json, volumes/ and snapshots/.
	StateDir string
	// Capacity is the pool size in bytes (0 = DefaultCapacity).
	Capacity int64
	// Defect, when set, breaks the driver on purpose.
	Defect Defect
	// ControllerPublish makes the driver declare PUBLISH_UNPUBLISH_VOLUME: ControllerPublish
	// attaches the loop device and NodeStage requires its publish_context.
	ControllerPublish bool
	// MaxVolumesPerNode is reported by NodeGetInfo (0 = no limit).
	MaxVolumesPerNode int64
	// Version is reported by GetPluginInfo ("" = "dev").
	Version string
	// Log receives the driver's log; nil discards it.
	Log *slog.Logger
}

// Driver implements the CSI Identity, Controller and Node services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	cfg     Config
	log     *slog.Logger
	state   *store
	locks   *keyedMutex
	loops   *loops
	mounter mount.Interface
	// onlineResize is whether mounted file systems can grow (CAP_SYS_RESOURCE); without it
	// the driver declares OFFLINE expansion and grows file systems while unpublished.
	onlineResize bool
}

// New checks the configuration, creates the state directory, loads the state and
// reconciles it with the loop devices that are attached now. It touches no mount.
func New(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.NodeID == "" {
		return nil, errors.New("node id is required")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("state dir is required")
	}
	if cfg.Capacity < 0 {
		return nil, fmt.Errorf("capacity %d is negative", cfg.Capacity)
	}
	if cfg.Capacity == 0 {
		cfg.Capacity = DefaultCapacity
	}
	if cfg.Defect != "" && !validDefect(cfg.Defect) {
		return nil, fmt.Errorf("unknown defect %q (known: %s)", cfg.Defect, defectList())
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	dir, err := filepath.Abs(cfg.StateDir)
	if err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	for _, sub := range []string{"volumes", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("create state dir: %w", err)
		}
	}
	// losetup -j prints the resolved path; resolve ours too so both compare.
	if dir, err = filepath.EvalSymlinks(dir); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	cfg.StateDir = dir
	st, err := loadStore(dir)
	if err != nil {
		return nil, err
	}
	d := &Driver{
		cfg:     cfg,
		log:     cfg.Log,
		state:   st,
		locks:   newKeyedMutex(),
		loops:   &loops{},
		mounter: mount.New(""),

		onlineResize: canResizeOnline(),
	}
	if !d.onlineResize {
		d.log.Warn("no CAP_SYS_RESOURCE: ext4 file systems can grow only while not published (expansion OFFLINE)")
	}
	if err := d.reconcile(ctx); err != nil {
		return nil, err
	}
	return d, nil
}

func validDefect(d Defect) bool {
	for _, k := range Defects {
		if k == d {
			return true
		}
	}
	return false
}

func defectList() string {
	names := make([]string, len(Defects))
	for i, d := range Defects {
		names[i] = string(d)
	}
	return strings.Join(names, ", ")
}

func (d *Driver) volumePath(id string) string {
	return filepath.Join(d.cfg.StateDir, "volumes", id+".img")
}

func (d *Driver) snapshotPath(id string) string {
	return filepath.Join(d.cfg.StateDir, "snapshots", id+".img")
}

// reconcile brings the state in line with the machine after a restart: half-made volumes
// are removed, and the loop device recorded for each staged or attached volume is replaced
// by the one the image is attached to now (none after a reboot: then NodeStage attaches
// again). Mounts are left as they are: pods keep using them.
func (d *Driver) reconcile(ctx context.Context) error {
	var pending []string
	var attached []string
	d.state.view(func(st *stateFile) {
		for id, v := range st.Volumes {
			if v.Pending {
				pending = append(pending, id)
			} else if v.Staged != nil || v.Attached != nil {
				attached = append(attached, id)
			}
		}
	})
	devices := map[string]string{}
	for _, id := range attached {
		dev, err := d.loops.find(ctx, d.volumePath(id))
		if err != nil {
			return fmt.Errorf("reconcile volume %s: %w", id, err)
		}
		devices[id] = dev
	}
	for _, id := range pending {
		_ = os.Remove(d.volumePath(id))
		_ = os.Remove(d.volumePath(id) + ".tmp")
		d.log.Info("removed half-made volume", "volume", id)
	}
	return d.state.update(func(st *stateFile) error {
		for _, id := range pending {
			delete(st.Volumes, id)
		}
		for id, dev := range devices {
			v := st.Volumes[id]
			if v.Staged != nil && v.Staged.Device != dev {
				d.log.Info("staged volume's loop device changed", "volume", id, "recorded", v.Staged.Device, "now", dev)
				v.Staged.Device = dev
			}
			if v.Attached != nil && v.Attached.Device != dev {
				v.Attached.Device = dev
			}
		}
		return nil
	})
}

// Register adds the driver's three services to a gRPC server.
func (d *Driver) Register(s *grpc.Server) {
	csi.RegisterIdentityServer(s, d)
	csi.RegisterControllerServer(s, d)
	csi.RegisterNodeServer(s, d)
}

// Serve runs a driver on endpoint (unix:///path.sock or a plain path) until ctx ends. A
// stale socket file is replaced; the socket is removed on return.
func Serve(ctx context.Context, endpoint string, cfg Config) error {
	path, err := socketPath(endpoint)
	if err != nil {
		return err
	}
	d, err := New(ctx, cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", path, err)
	}
	defer os.Remove(path)
	srv := grpc.NewServer(grpc.UnaryInterceptor(d.logCalls))
	d.Register(srv)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		<-ctx.Done()
		// Give running calls (a mkfs, a copy) a moment, then cut them off.
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			srv.Stop()
		}
	}()
	d.log.Info("serving CSI", "driver", DriverName, "endpoint", path, "node", d.cfg.NodeID,
		"stateDir", d.cfg.StateDir, "capacity", d.cfg.Capacity, "defect", string(d.cfg.Defect),
		"controllerPublish", d.cfg.ControllerPublish)
	err = srv.Serve(lis)
	wg.Wait()
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("serve CSI on %s: %w", path, err)
	}
	return nil
}

// socketPath turns a CSI endpoint into a socket path.
func socketPath(endpoint string) (string, error) {
	switch {
	case strings.HasPrefix(endpoint, "unix://"):
		endpoint = strings.TrimPrefix(endpoint, "unix://")
	case strings.HasPrefix(endpoint, "unix:"):
		endpoint = strings.TrimPrefix(endpoint, "unix:")
	case strings.Contains(endpoint, "://"):
		return "", fmt.Errorf("endpoint %q: only unix sockets are served", endpoint)
	}
	if endpoint == "" {
		return "", errors.New("endpoint is required")
	}
	return endpoint, nil
}

// logCalls logs every call at debug level and every failure at info level.
func (d *Driver) logCalls(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	if err != nil {
		d.log.Info("CSI call failed", "method", info.FullMethod, "took", time.Since(start), "err", err)
	} else {
		d.log.Debug("CSI call", "method", info.FullMethod, "took", time.Since(start))
	}
	return resp, err
}

// opContext is the context of the work a call starts: a client that gives up must not
// kill a mkfs or a copy half way, so it outlives the call, bounded by a timeout.
func opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
}

// keyedMutex serialises the calls on one volume (or name) while others run in parallel.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	mu   sync.Mutex
	refs int
}

func newKeyedMutex() *keyedMutex {
	return &keyedMutex{locks: map[string]*keyLock{}}
}

// lock takes the lock of key and returns its unlock.
func (k *keyedMutex) lock(key string) func() {
	k.mu.Lock()
	l, ok := k.locks[key]
	if !ok {
		l = &keyLock{}
		k.locks[key] = l
	}
	l.refs++
	k.mu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		k.mu.Lock()
		l.refs--
		if l.refs == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
}
