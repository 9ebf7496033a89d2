package csi

// Discovery of CSI drivers: every unix socket (or symlink to one) in the plugins
// directory is a driver's endpoint. The directory is watched (fsnotify) and rescanned
// every RescanPeriod; a driver is registered once it answers its Identity and Node
// services, and deregistered when its socket goes away or it stops answering Probe.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/fsnotify/fsnotify"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// rpcTimeout bounds one call to a driver's Identity service or a quick Node call.
const rpcTimeout = 10 * time.Second

// driver is a registered CSI driver.
type driver struct {
	name, socket string
	conn         *grpc.ClientConn
	identity     csipb.IdentityClient
	node         csipb.NodeClient
	nodeID       string
	// topology is the node's segment (NodeGetInfo's accessible_topology), nil without one.
	topology   map[string]string
	maxVolumes int64
	nodeCaps   map[csipb.NodeServiceCapability_RPC_Type]bool
	controller bool
	// accessibility: the driver declared VOLUME_ACCESSIBILITY_CONSTRAINTS.
	accessibility bool
	// publishUnpublish: its controller declared PUBLISH_UNPUBLISH_VOLUME (attach).
	publishUnpublish bool

	// stopSidecar ends the sidecar goroutine of a driver with a controller service, and
	// sidecarDone is closed when it has returned.
	stopSidecar context.CancelFunc
	sidecarDone chan struct{}
}

func (d *driver) has(c csipb.NodeServiceCapability_RPC_Type) bool { return d.nodeCaps[c] }

// probeDriver dials socket and asks the driver who it is and what it can do. The
// connection is closed on error.
func probeDriver(ctx context.Context, socket string) (*driver, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("CSI client for %s: %w", socket, err)
	}
	d := &driver{socket: socket, conn: conn, identity: csipb.NewIdentityClient(conn), node: csipb.NewNodeClient(conn),
		nodeCaps: map[csipb.NodeServiceCapability_RPC_Type]bool{}}
	if err := d.describe(ctx); err != nil {
		conn.Close()
		return nil, err
	}
	return d, nil
}

func (d *driver) describe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	info, err := d.identity.GetPluginInfo(ctx, &csipb.GetPluginInfoRequest{})
	if err != nil {
		return fmt.Errorf("GetPluginInfo of %s: %w", d.socket, err)
	}
	if err := validDriverName(info.GetName()); err != nil {
		return fmt.Errorf("GetPluginInfo of %s: %w", d.socket, err)
	}
	d.name = info.GetName()
	if err := d.probe(ctx); err != nil {
		return err
	}
	caps, err := d.identity.GetPluginCapabilities(ctx, &csipb.GetPluginCapabilitiesRequest{})
	if err != nil {
		return fmt.Errorf("GetPluginCapabilities of %s: %w", d.name, err)
	}
	for _, c := range caps.GetCapabilities() {
		switch c.GetService().GetType() {
		case csipb.PluginCapability_Service_CONTROLLER_SERVICE:
			d.controller = true
		case csipb.PluginCapability_Service_VOLUME_ACCESSIBILITY_CONSTRAINTS:
			d.accessibility = true
		}
	}
	ni, err := d.node.NodeGetInfo(ctx, &csipb.NodeGetInfoRequest{})
	if err != nil {
		return fmt.Errorf("NodeGetInfo of %s: %w", d.name, err)
	}
	if ni.GetNodeId() == "" {
		return fmt.Errorf("NodeGetInfo of %s: empty node_id", d.name)
	}
	d.nodeID, d.maxVolumes = ni.GetNodeId(), ni.GetMaxVolumesPerNode()
	if seg := ni.GetAccessibleTopology().GetSegments(); len(seg) > 0 {
		d.topology = seg
	}
	nc, err := d.node.NodeGetCapabilities(ctx, &csipb.NodeGetCapabilitiesRequest{})
	if err != nil {
		return fmt.Errorf("NodeGetCapabilities of %s: %w", d.name, err)
	}
	for _, c := range nc.GetCapabilities() {
		d.nodeCaps[c.GetRpc().GetType()] = true
	}
	if d.controller {
		cc, err := csipb.NewControllerClient(d.conn).ControllerGetCapabilities(ctx, &csipb.ControllerGetCapabilitiesRequest{})
		if err != nil {
			return fmt.Errorf("ControllerGetCapabilities of %s: %w", d.name, err)
		}
		for _, c := range cc.GetCapabilities() {
			if c.GetRpc().GetType() == csipb.ControllerServiceCapability_RPC_PUBLISH_UNPUBLISH_VOLUME {
				d.publishUnpublish = true
			}
		}
	}
	return nil
}

// probe asks the driver whether it is ready; an explicit ready=false is not.
func (d *driver) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, rpcTimeout)
	defer cancel()
	r, err := d.identity.Probe(ctx, &csipb.ProbeRequest{})
	if err != nil {
		return fmt.Errorf("Probe of %s: %w", d.socket, err)
	}
	if r.GetReady() != nil && !r.GetReady().GetValue() {
		return fmt.Errorf("Probe of %s: not ready", d.socket)
	}
	return nil
}

// listSockets is the unix sockets in dir, following symlinks.
func listSockets(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read CSI plugins dir: %w", err)
	}
	var out []string
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		fi, err := os.Stat(p)
		if err == nil && fi.Mode().Type() == fs.ModeSocket {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out, nil
}

// registry is the registered drivers, by name.
type registry struct {
	mu      sync.RWMutex
	drivers map[string]*driver
}

func (r *registry) get(name string) (*driver, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	d, ok := r.drivers[name]
	return d, ok
}

func (r *registry) list() []*driver {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*driver, 0, len(r.drivers))
	for _, d := range r.drivers {
		out = append(out, d)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}

// watchPlugins registers and deregisters drivers as their sockets come and go, until ctx
// ends; then it deregisters none (the node keeps its CSINode entries across restarts)
// but stops their sidecars and closes their connections.
func (m *Manager) watchPlugins(ctx context.Context) error {
	if err := os.MkdirAll(m.cfg.PluginsDir, 0o750); err != nil {
		return fmt.Errorf("create CSI plugins dir: %w", err)
	}
	defer m.closeDrivers()
	events := make(<-chan fsnotify.Event)
	watcher, err := fsnotify.NewWatcher()
	if err == nil {
		if err = watcher.Add(m.cfg.PluginsDir); err == nil {
			events = watcher.Events
		}
		defer watcher.Close()
	}
	if err != nil {
		// Rescans still find the drivers, only later.
		m.log.Warn("cannot watch the CSI plugins dir; rescanning it periodically only", "dir", m.cfg.PluginsDir, "err", err)
	}
	tick := time.NewTicker(m.cfg.RescanPeriod)
	defer tick.Stop()
	// retry is armed when a socket did not answer yet: a driver often creates its socket
	// a moment before it serves on it.
	var retry <-chan time.Time
	first := true
	for {
		failed := m.scan(ctx, first)
		first = false
		retry = nil
		if failed {
			retry = time.After(time.Second)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-events:
		case <-tick.C:
		case <-retry:
		}
	}
}

// scan registers new sockets' drivers and deregisters those whose socket is gone or
// that fail Probe. It reports whether a socket could not be registered. The first scan
// after start also drops from the CSINode the drivers that did not come back.
func (m *Manager) scan(ctx context.Context, first bool) bool {
	sockets, err := listSockets(m.cfg.PluginsDir)
	if err != nil {
		m.log.Error("scan CSI plugins", "err", err)
		return false
	}
	present := map[string]bool{}
	for _, s := range sockets {
		present[s] = true
	}
	bySocket := map[string]*driver{}
	for _, d := range m.drivers.list() {
		if !present[d.socket] {
			m.deregister(ctx, d, "its socket is gone")
			continue
		}
		if err := d.probe(ctx); err != nil {
			m.deregister(ctx, d, err.Error())
			continue
		}
		bySocket[d.socket] = d
		if !m.nodeInfoDone(d.name) {
			m.publishNodeInfo(ctx, d)
		}
	}
	failed := false
	for _, s := range sockets {
		if bySocket[s] != nil || ctx.Err() != nil {
			continue
		}
		d, err := probeDriver(ctx, s)
		if err != nil {
			if !m.noted(s, err) {
				m.log.Info("CSI socket not answering (yet)", "socket", s, "err", err)
			}
			failed = true
			continue
		}
		if other, ok := m.drivers.get(d.name); ok {
			if !m.noted(s, errDuplicate) {
				m.log.Warn("two sockets serve one CSI driver; the first registered is used", "driver", d.name, "socket", s, "registered", other.socket)
			}
			d.conn.Close()
			continue
		}
		m.register(ctx, d)
	}
	if first && ctx.Err() == nil {
		m.dropStaleDrivers(ctx)
	}
	return failed
}

var errDuplicate = errors.New("duplicate driver")

// noted remembers the last error of a socket, so a socket that keeps failing the same way
// is logged once.
func (m *Manager) noted(socket string, err error) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.socketErrs == nil {
		m.socketErrs = map[string]string{}
	}
	seen := m.socketErrs[socket] == err.Error()
	m.socketErrs[socket] = err.Error()
	return seen
}

func (m *Manager) register(ctx context.Context, d *driver) {
	m.drivers.mu.Lock()
	if m.drivers.drivers == nil {
		m.drivers.drivers = map[string]*driver{}
	}
	m.drivers.drivers[d.name] = d
	m.drivers.mu.Unlock()
	m.mu.Lock()
	delete(m.socketErrs, d.socket)
	m.mu.Unlock()
	m.log.Info("CSI driver registered", "driver", d.name, "socket", d.socket, "nodeID", d.nodeID,
		"topology", d.topology, "controller", d.controller, "stage", d.has(csipb.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME))
	m.publishNodeInfo(ctx, d)
	m.ensureCSIDriver(ctx, d)
	if d.controller {
		m.startSidecar(ctx, d)
	}
	// Pods waiting for this driver may go on now.
	if m.cfg.DriverRegistered != nil {
		m.cfg.DriverRegistered(d.name)
	}
}

func (m *Manager) deregister(ctx context.Context, d *driver, why string) {
	m.drivers.mu.Lock()
	if m.drivers.drivers[d.name] == d {
		delete(m.drivers.drivers, d.name)
	}
	m.drivers.mu.Unlock()
	m.log.Info("CSI driver deregistered", "driver", d.name, "socket", d.socket, "why", why)
	d.close()
	m.mu.Lock()
	delete(m.nodeInfoOK, d.name)
	m.mu.Unlock()
	if err := m.removeNodeInfo(ctx, d.name); err != nil && ctx.Err() == nil {
		m.log.Error("remove CSI driver from the node", "driver", d.name, "err", err)
	}
}

// close stops the driver's sidecar, waits for it, and closes the connection.
func (d *driver) close() {
	if d.stopSidecar != nil {
		d.stopSidecar()
		<-d.sidecarDone
	}
	d.conn.Close()
}

func (m *Manager) closeDrivers() {
	m.drivers.mu.Lock()
	ds := m.drivers.drivers
	m.drivers.drivers = nil
	m.drivers.mu.Unlock()
	for _, d := range ds {
		d.close()
	}
}

// startSidecar runs the driver's controller sidecars (provisioner, deleter, resizer,
// attacher) until the driver is deregistered or the agent stops.
func (m *Manager) startSidecar(ctx context.Context, d *driver) {
	if runSidecar == nil {
		m.log.Warn("CSI driver has a controller service but this agent has no sidecar to drive it", "driver", d.name)
		return
	}
	sctx, cancel := context.WithCancel(ctx)
	d.stopSidecar, d.sidecarDone = cancel, make(chan struct{})
	cfg := SidecarConfig{
		Client: m.cfg.Kube, Conn: d.conn, DriverName: d.name, NodeName: m.cfg.NodeName,
		Topology: d.topology, NodeScoped: d.accessibility, Logger: m.log.With("sidecar", d.name),
	}
	go func() {
		defer close(d.sidecarDone)
		if err := runSidecar(sctx, cfg); err != nil && sctx.Err() == nil {
			m.log.Error("CSI sidecar stopped", "driver", d.name, "err", err)
		}
	}()
}
