package admissionplugins

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"berth.dev/berth/plugins/admission"
)

// Backoff between restarts of a failed plugin: it doubles from MinBackoff up to MaxBackoff,
// and starts again from MinBackoff once the plugin has run StableAfter without failing.
const (
	DefaultMinBackoff = 500 * time.Millisecond
	DefaultMaxBackoff = 30 * time.Second
	StableAfter       = time.Minute
)

// Options tune a Host; the zero value works.
type Options struct {
	// Log receives the plugins' lifecycle messages, their own logs and the warnings of
	// requests admitted under failurePolicy Ignore (slog.Default()).
	Log *slog.Logger
	// MinBackoff and MaxBackoff bound the wait before a restart (DefaultMinBackoff,
	// DefaultMaxBackoff when zero).
	MinBackoff, MaxBackoff time.Duration
	// StartTimeout bounds a plugin's start, handshake and configuration (10 s when zero).
	StartTimeout time.Duration
}

// Host runs the plugins of one configuration and calls them; Close stops them.
type Host struct {
	plugins []*plugin
	log     *slog.Logger
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// plugin is one configured plugin and its supervised process.
type plugin struct {
	cfg  *PluginConfig
	args []byte
	o    Options
	log  *slog.Logger

	mu       sync.RWMutex
	cur      *instance // nil while down
	down     string    // why it is down
	info     admission.Info
	restarts atomic.Int64
}

// Start launches every plugin of cfg (in order) and supervises them until Close. It fails,
// having stopped what it started, when a plugin does not start, does not speak the
// protocol, shares no API version with this berth, answers to another name or refuses its
// args: the API server must not serve without the policy it was given.
func Start(cfg *Configuration, o Options) (*Host, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = DefaultMinBackoff
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	o.MaxBackoff = max(o.MaxBackoff, o.MinBackoff)
	if o.StartTimeout <= 0 {
		o.StartTimeout = 10 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &Host{log: o.Log, cancel: cancel}
	for _, pc := range cfg.Plugins {
		args, err := pc.ArgsJSON()
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("%s:%d: admission plugin %s: args: %w", pc.File, pc.Line, pc.Name, err)
		}
		p := &plugin{cfg: pc, args: args, o: o, log: o.Log.With("admissionPlugin", pc.Name)}
		in, err := p.launch()
		if err != nil {
			h.Close()
			return nil, err
		}
		p.setUp(in)
		h.plugins = append(h.plugins, p)
		h.wg.Add(1)
		go func() {
			defer h.wg.Done()
			p.supervise(ctx, in)
		}()
	}
	return h, nil
}

// Close stops every plugin's supervisor and kills its process.
func (h *Host) Close() {
	if h == nil {
		return
	}
	h.cancel()
	h.wg.Wait()
}

func (p *plugin) setUp(in *instance) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur, p.down, p.info = in, "", in.info
}

func (p *plugin) setDown(reason string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur, p.down = nil, reason
}

// current returns the serving instance, or why there is none.
func (p *plugin) current() (*instance, string) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.cur, p.down
}

// Stats are a plugin's state, for tests and metrics.
type Stats struct {
	// Up reports whether a process is serving; Pid is its id (0 while down).
	Up  bool
	Pid int
	// DownReason says why the plugin is down.
	DownReason string
	// Restarts counts the processes started after a failure.
	Restarts int64
	Info     admission.Info
}

// Stats returns the state of the plugin named name (false when there is none).
func (h *Host) Stats(name string) (Stats, bool) {
	for _, p := range h.plugins {
		if p.cfg.Name == name {
			p.mu.RLock()
			defer p.mu.RUnlock()
			s := Stats{Up: p.cur != nil, DownReason: p.down, Restarts: p.restarts.Load(), Info: p.info}
			if p.cur != nil {
				s.Pid = p.cur.PID
			}
			return s, true
		}
	}
	return Stats{}, false
}

// Attributes are what the API server tells the host of one create or update.
type Attributes struct {
	// Request is what the plugins are sent; its Object is replaced by each mutation.
	admission.Request
	// NamespaceLabels returns the labels of the request's namespace; it is called only
	// when a matching plugin has a namespaceSelector (nil: no labels).
	NamespaceLabels func(ctx context.Context) (map[string]string, error)
}

// Interested reports whether any plugin's rules match an operation on a resource, so
// that the API server encodes objects only for requests some plugin judges.
func (h *Host) Interested(op admission.Operation, gvr schema.GroupVersionResource) bool {
	if h == nil {
		return false
	}
	for _, p := range h.plugins {
		if p.matchesRules(op, gvr) {
			return true
		}
	}
	return false
}

func (p *plugin) matchesRules(op admission.Operation, gvr schema.GroupVersionResource) bool {
	for _, r := range p.cfg.Rules {
		if r.Matches(op, gvr.Group, gvr.Resource) {
			return true
		}
	}
	return false
}

// matches reports whether the plugin judges the request: a rule and its namespace
// selector match. nsLabels caches the namespace's labels across plugins.
func (p *plugin) matches(ctx context.Context, a *Attributes, nsLabels *labels.Set) (bool, error) {
	if !p.matchesRules(a.Operation, a.Resource) {
		return false, nil
	}
	if p.cfg.NamespaceSelector == nil || p.cfg.NamespaceSelector.Empty() || a.Namespace == "" {
		return true, nil
	}
	if *nsLabels == nil {
		set := labels.Set{}
		if a.NamespaceLabels != nil {
			l, err := a.NamespaceLabels(ctx)
			if err != nil {
				return false, apierrors.NewInternalError(fmt.Errorf("admission plugin %q: read the labels of namespace %s: %w", p.cfg.Name, a.Namespace, err))
			}
			set = labels.Set(l)
		}
		*nsLabels = set
	}
	return p.cfg.NamespaceSelector.Matches(*nsLabels), nil
}

// Mutate calls, in order, the mutating plugins that match a, each on the previous one's
// result, and returns the mutated object as JSON (nil when no plugin changed it). A
// denial is a Forbidden error, a failure under failurePolicy Fail an InternalError.
func (h *Host) Mutate(ctx context.Context, a *Attributes) ([]byte, error) {
	if h == nil {
		return nil, nil
	}
	var nsLabels labels.Set
	var changed []byte
	for _, p := range h.plugins {
		if !p.infoSays(true) {
			continue
		}
		ok, err := p.matches(ctx, a, &nsLabels)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		var res admission.MutateResult
		err = p.call(ctx, "Mutate", func(ctx context.Context, c *admission.Client) error {
			var err error
			res, err = c.Mutate(ctx, &a.Request)
			return err
		})
		if err != nil {
			if ferr := h.failed(p, a, err); ferr != nil {
				return nil, ferr
			}
			continue
		}
		if !res.Allowed {
			return nil, denied(p.cfg.Name, a, res.Message)
		}
		if res.Object != nil {
			a.Object = res.Object
			changed = res.Object
		}
	}
	return changed, nil
}

// Validate calls the validating plugins that match a; the first denial is a Forbidden
// error, a failure under failurePolicy Fail an InternalError.
func (h *Host) Validate(ctx context.Context, a *Attributes) error {
	if h == nil {
		return nil
	}
	var nsLabels labels.Set
	for _, p := range h.plugins {
		if !p.infoSays(false) {
			continue
		}
		ok, err := p.matches(ctx, a, &nsLabels)
		if err != nil {
			return err
		}
		if !ok {
			continue
		}
		var v admission.Verdict
		err = p.call(ctx, "Validate", func(ctx context.Context, c *admission.Client) error {
			var err error
			v, err = c.Validate(ctx, &a.Request)
			return err
		})
		if err != nil {
			if ferr := h.failed(p, a, err); ferr != nil {
				return ferr
			}
			continue
		}
		if !v.Allowed {
			return denied(p.cfg.Name, a, v.Message)
		}
	}
	return nil
}

// infoSays reports whether the plugin announced mutating (or validating) at its last
// start; a plugin that is down keeps what it announced then.
func (p *plugin) infoSays(mutating bool) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if mutating {
		return p.info.Mutating
	}
	return p.info.Validating
}

// pluginFailure is a call that got no answer, and why.
type pluginFailure struct{ reason string }

func (e *pluginFailure) Error() string { return e.reason }

// call runs one RPC on the serving process under the plugin's deadline. When the answer
// shows the process cannot be trusted (a missed deadline, a malformed answer, a broken
// connection) the process is failed, which gets it killed and restarted.
func (p *plugin) call(ctx context.Context, name string, fn func(context.Context, *admission.Client) error) error {
	in, down := p.current()
	if in == nil {
		return &pluginFailure{reason: fmt.Sprintf("it is down (%s); restarting", down)}
	}
	cctx, cancel := context.WithTimeout(ctx, p.cfg.Timeout)
	defer cancel()
	err := fn(cctx, in.rpc)
	if err == nil {
		return nil
	}
	var pe *admission.ProtocolError
	switch {
	case errors.As(err, &pe):
		reason := fmt.Sprintf("it answered %s with garbage (%s); restarting", name, pe.Msg)
		in.Fail(reason)
		return &pluginFailure{reason: reason}
	case ctx.Err() != nil:
		return &pluginFailure{reason: fmt.Sprintf("the request ended before it answered %s: %v", name, ctx.Err())}
	case status.Code(err) == codes.DeadlineExceeded:
		reason := fmt.Sprintf("it did not answer %s within %s; restarting", name, p.cfg.Timeout)
		in.Fail(reason)
		return &pluginFailure{reason: reason}
	case status.Code(err) == codes.Unavailable:
		reason := "its connection broke (" + status.Convert(errors.Unwrap(err)).Message() + ")"
		if in.WaitExited(500 * time.Millisecond) {
			reason = in.ExitReason()
		}
		in.Fail(reason)
		return &pluginFailure{reason: reason + "; restarting"}
	}
	// The plugin answered with an error of its own: it is alive, but could not decide.
	return &pluginFailure{reason: fmt.Sprintf("it failed: %s", status.Convert(errors.Unwrap(err)).Message())}
}

// failed applies the plugin's failurePolicy to a call that got no answer: nil admits the
// request (Ignore), an error refuses it (Fail).
func (h *Host) failed(p *plugin, a *Attributes, err error) error {
	if p.cfg.FailurePolicy == Ignore {
		p.log.Warn("admission plugin failed; admitting the request (failurePolicy Ignore)", "reason", err.Error(),
			"operation", a.Operation, "resource", a.Resource.Resource, "namespace", a.Namespace, "name", a.Name)
		return nil
	}
	return apierrors.NewInternalError(fmt.Errorf("failed calling admission plugin %q: %v", p.cfg.Name, err))
}

// denied is a plugin's denial as the user sees it, worded as Kubernetes words a webhook's
// ("admission webhook %q denied the request: %s") inside a Forbidden error.
func denied(name string, a *Attributes, msg string) error {
	why := fmt.Sprintf("admission plugin %q denied the request", name)
	if msg == "" {
		why += " without explanation"
	} else {
		why += ": " + msg
	}
	return apierrors.NewForbidden(schema.GroupResource{Group: a.Resource.Group, Resource: a.Resource.Resource}, a.Name, errors.New(why))
}
