// Package external runs out-of-process scheduler plugins (written with the SDK in
// plugins/scheduler) and adapts each to the framework's plugin interfaces, so that a
// profile uses it as it would an in-tree plugin.
//
// Each plugin is a child process launched with hashicorp/go-plugin. The adapter batches
// the framework's per-node calls into one call per pod (Filter in PreFilter, Score in
// PreScore), sends the nodes once and then only their changes, and puts a deadline on every
// call. A plugin that crashes, misses a deadline or answers something malformed is killed
// and restarted with backoff; while it is down, the pods of the profiles that use it are
// Unschedulable with a message naming it, and other profiles are unaffected.
package external

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"berth.dev/berth/core/scheduler/framework"
)

// DefaultTimeout is the deadline of one call to a plugin when the configuration sets none.
const DefaultTimeout = 2 * time.Second

// Backoff between restarts of a failed plugin: it doubles from MinBackoff up to MaxBackoff,
// and starts again from MinBackoff once the plugin has run StableAfter without failing.
const (
	DefaultMinBackoff = 500 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
	StableAfter       = time.Minute
)

// Options tune a Factory; the zero value works.
type Options struct {
	// Log receives the plugins' lifecycle messages and their own logs (slog.Default()).
	Log *slog.Logger
	// MinBackoff and MaxBackoff bound the wait before a restart (DefaultMinBackoff,
	// DefaultMaxBackoff when zero).
	MinBackoff, MaxBackoff time.Duration
	// StartTimeout bounds a plugin's start, handshake and configuration (10 s when zero).
	StartTimeout time.Duration
}

// Factory launches external plugins and owns them: Close stops them all.
type Factory struct {
	o Options

	mu      sync.Mutex
	plugins map[string]*Plugin
	closed  bool
	// nodes and onAvailable are set late (the scheduler exists after its profiles).
	nodes       func() []*framework.NodeInfo
	onAvailable func(plugin string)
}

// NewFactory returns a Factory.
func NewFactory(o Options) *Factory {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = o.MinBackoff
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = 10 * time.Second
	}
	return &Factory{o: o, plugins: map[string]*Plugin{}}
}

// SetNodeLister gives the plugins the scheduler's nodes of the current cycle (its
// snapshot's List). With it, a plugin's Filter runs as one batched call per pod in
// PreFilter, and nodes deleted from the cluster are removed from the plugin's copy;
// without it, Filter is one call per node.
func (f *Factory) SetNodeLister(list func() []*framework.NodeInfo) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.nodes = list
}

// SetOnAvailable sets what runs when a plugin is back after a failure: the scheduler
// should retry the pods that the outage made unschedulable (queue.MoveAllToActiveOrBackoff).
func (f *Factory) SetOnAvailable(fn func(plugin string)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.onAvailable = fn
}

func (f *Factory) nodeLister() func() []*framework.NodeInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.nodes
}

func (f *Factory) notifyAvailable(name string) {
	f.mu.Lock()
	fn := f.onAvailable
	f.mu.Unlock()
	if fn != nil {
		fn(name)
	}
}

// New launches the plugin binary at path (or returns the one already launched under that
// name, so profiles share one process) and returns its adapter. It fails when the binary
// does not start, does not speak the protocol, shares no API version with this berth, is
// named otherwise than name, or refuses args. timeout is the deadline of each call
// (DefaultTimeout when zero).
func (f *Factory) New(name, path string, args []byte, timeout time.Duration) (framework.Plugin, error) {
	p, err := f.Launch(name, path, args, timeout)
	if err != nil {
		return nil, err
	}
	return p, nil
}

// Launch is New with the concrete adapter type, for callers that want its Stats or
// ExtensionPoints.
func (f *Factory) Launch(name, path string, args []byte, timeout time.Duration) (*Plugin, error) {
	if name == "" {
		return nil, errors.New("external scheduler plugin without a name")
	}
	if path == "" {
		return nil, fmt.Errorf("external scheduler plugin %s: no path", name)
	}
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil, fmt.Errorf("external scheduler plugin %s: the plugin factory is closed", name)
	}
	if p, ok := f.plugins[name]; ok {
		f.mu.Unlock()
		if p.path != path {
			return nil, fmt.Errorf("external scheduler plugin %s is already launched from %s, not %s", name, p.path, path)
		}
		return p, nil
	}
	f.mu.Unlock()

	p := newPlugin(f, name, path, args, timeout)
	inst, err := p.launch()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	if other, ok := f.plugins[name]; ok || f.closed {
		f.mu.Unlock()
		inst.Kill()
		if ok {
			return other, nil
		}
		return nil, fmt.Errorf("external scheduler plugin %s: the plugin factory is closed", name)
	}
	// Started before it is published, so that Close never sees it half started.
	p.start(inst)
	f.plugins[name] = p
	f.mu.Unlock()
	return p, nil
}

// Close stops every plugin's supervisor and kills its process.
func (f *Factory) Close() error {
	f.mu.Lock()
	f.closed = true
	ps := make([]*Plugin, 0, len(f.plugins))
	for _, p := range f.plugins {
		ps = append(ps, p)
	}
	f.plugins = map[string]*Plugin{}
	f.mu.Unlock()
	for _, p := range ps {
		p.stop()
	}
	return nil
}
