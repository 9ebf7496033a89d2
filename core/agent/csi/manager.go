// Package csi is the node agent's side of the Container Storage Interface, the kubelet's
// CSI volume plugin and plugin manager in one: it discovers CSI drivers by their sockets
// in the agent's plugins directory, publishes them on the node (CSINode, topology labels,
// the nodeid annotation, a CSIDriver object when missing), runs the controller sidecars
// of drivers that have a controller service, and sets up pods' persistentVolumeClaim,
// ephemeral and inline csi volumes: NodeStageVolume once per volume per node (reference
// counted across pods), NodePublishVolume per pod, and the reverse when pods go. It also
// collects volume stats (NodeGetVolumeStats) for the agent's /stats/summary and finishes
// file system expansions on the node (NodeExpandVolume).
//
// Pod volumes are set up and torn down in the pods' workers of the agent (SetUp,
// TearDownPod), so that a failing volume holds up only its own pod; what was staged and
// published is recorded on disk (state.go), so a restarted agent reuses or cleans it up.
package csi

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	statsapi "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"berth.dev/berth/core/kubeclient"
)

// Config is what the manager needs from the agent.
type Config struct {
	Kube     kubeclient.Interface
	NodeName string
	// DataDir is the agent's data dir: pods' volumes go under DataDir/pods, staging paths
	// and the records of volumes under DataDir/plugins.
	DataDir string
	// PluginsDir is where drivers' sockets are found (DataDir/plugins_registry when empty).
	PluginsDir string
	// Recorder records events (FileSystemResizeSuccessful); nil records none.
	Recorder record.EventRecorder
	Log      *slog.Logger
	// RescanPeriod is how often the plugins dir is listed and drivers probed (10 s when
	// zero), StatsPeriod how often volume stats are collected (60 s), ExpandPeriod how
	// often published volumes are checked for a pending file system resize (10 s).
	RescanPeriod, StatsPeriod, ExpandPeriod time.Duration
	// DriverRegistered, when set, is called after a driver is registered (the agent
	// wakes pods waiting for it).
	DriverRegistered func(name string)
}

// Manager is the node's CSI state. Make it with New; Run it.
type Manager struct {
	cfg     Config
	log     *slog.Logger
	drivers registry
	start   time.Time

	// nodeMu serialises writes of the Node's CSI annotation and the CSINode.
	nodeMu sync.Mutex

	mu         sync.Mutex
	socketErrs map[string]string
	nodeInfoOK map[string]bool
	// vols is every volume staged or published on the node (or being so), by unique
	// name; volLocks serialises the work on one volume (stage, publish, unpublish,
	// unstage) across pods' workers.
	vols     map[corev1.UniqueVolumeName]*volumeState
	volLocks map[corev1.UniqueVolumeName]*sync.Mutex
	// inflight counts set-ups in progress, which count as in use before any record.
	inflight map[corev1.UniqueVolumeName]int
	// stats are the last NodeGetVolumeStats answers, by publication key.
	stats map[string]statsapi.VolumeStats
}

// New makes the manager and reads what earlier runs staged and published.
func New(cfg Config) (*Manager, error) {
	if cfg.Kube == nil || cfg.NodeName == "" || cfg.DataDir == "" {
		return nil, fmt.Errorf("csi: incomplete config (API client, node name and data dir are needed)")
	}
	if cfg.PluginsDir == "" {
		cfg.PluginsDir = filepath.Join(cfg.DataDir, "plugins_registry")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.RescanPeriod <= 0 {
		cfg.RescanPeriod = 10 * time.Second
	}
	if cfg.StatsPeriod <= 0 {
		cfg.StatsPeriod = 60 * time.Second
	}
	if cfg.ExpandPeriod <= 0 {
		cfg.ExpandPeriod = 10 * time.Second
	}
	vols, errs := loadState(cfg.DataDir)
	for _, err := range errs {
		cfg.Log.Error("unreadable CSI volume record; skipped", "err", err)
	}
	return &Manager{
		cfg: cfg, log: cfg.Log, start: time.Now(),
		vols: vols, volLocks: map[corev1.UniqueVolumeName]*sync.Mutex{},
		inflight: map[corev1.UniqueVolumeName]int{}, stats: map[string]statsapi.VolumeStats{},
	}, nil
}

// Run discovers drivers and keeps volume stats, expansions and orphaned stagings in
// hand until ctx ends.
func (m *Manager) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		m.maintain(ctx)
	}()
	err := m.watchPlugins(ctx)
	wg.Wait()
	return err
}

// maintain collects stats, finishes file system expansions and unstages volumes no pod
// uses, each on its own period.
func (m *Manager) maintain(ctx context.Context) {
	stats := time.NewTicker(m.cfg.StatsPeriod)
	defer stats.Stop()
	expand := time.NewTicker(m.cfg.ExpandPeriod)
	defer expand.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-stats.C:
			m.collectStats(ctx)
		case <-expand.C:
			m.expandVolumes(ctx)
			m.unstageUnused(ctx)
		}
	}
}

// VolumesInUse is the unique names of the volumes staged or published on the node, or
// being set up, for node.status.volumesInUse, sorted.
func (m *Manager) VolumesInUse() []corev1.UniqueVolumeName {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []corev1.UniqueVolumeName
	for name := range m.vols {
		out = append(out, name)
	}
	for name, n := range m.inflight {
		if _, ok := m.vols[name]; !ok && n > 0 {
			out = append(out, name)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// PodUIDs is the pods that have CSI volumes published (or being published) on the
// node, for the agent's sweep of pods that are gone.
func (m *Manager) PodUIDs() []types.UID {
	m.mu.Lock()
	defer m.mu.Unlock()
	seen := map[types.UID]bool{}
	var out []types.UID
	for _, vs := range m.vols {
		for _, p := range vs.pubs {
			if !seen[p.PodUID] {
				seen[p.PodUID] = true
				out = append(out, p.PodUID)
			}
		}
	}
	return out
}

// Registered tells whether driver name is registered now.
func (m *Manager) Registered(name string) bool {
	_, ok := m.drivers.get(name)
	return ok
}

// lockVolume takes the lock of one volume; the caller unlocks it.
func (m *Manager) lockVolume(name corev1.UniqueVolumeName) *sync.Mutex {
	m.mu.Lock()
	l, ok := m.volLocks[name]
	if !ok {
		l = &sync.Mutex{}
		m.volLocks[name] = l
	}
	m.mu.Unlock()
	l.Lock()
	return l
}
