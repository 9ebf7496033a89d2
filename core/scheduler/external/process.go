package external

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"berth.dev/berth/core/internal/pluginproc"
	"berth.dev/berth/plugins/scheduler"
)

// instance is one running process of a plugin (its failure, exit and log handling in
// core/internal/pluginproc), with the SDK's client and what the plugin said it is.
type instance struct {
	*pluginproc.Process
	rpc  *scheduler.Client
	info scheduler.Info
	// signature is info.PodSignature's paths, split at the dots (see SignPod).
	signature [][]string
}

// errRefused is a plugin this berth cannot use (no shared API version, another name,
// refused args): restarting the same binary will not help, so it waits MaxBackoff.
type errRefused struct{ err error }

func (e errRefused) Error() string { return e.err.Error() }
func (e errRefused) Unwrap() error { return e.err }

// launch starts one process of the plugin and brings it to the point of serving calls:
// handshake, PluginInfo, API version negotiation, Configure.
func (p *Plugin) launch() (*instance, error) {
	proc, conn, err := pluginproc.Start(pluginproc.Config{
		Path: p.path, LogName: "scheduler-plugin." + p.name, Log: p.log,
		Handshake: scheduler.Handshake, Plugins: scheduler.PluginSet(nil), StartTimeout: p.f.o.StartTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("start scheduler plugin %s (%s): %w", p.name, p.path, err)
	}
	in := &instance{Process: proc}
	fail := func(err error) (*instance, error) {
		in.Kill()
		return nil, err
	}
	raw, err := conn.Dispense(scheduler.PluginName)
	if err != nil {
		return fail(fmt.Errorf("start scheduler plugin %s (%s): %w", p.name, p.path, err))
	}
	rpc, ok := raw.(*scheduler.Client)
	if !ok {
		return fail(fmt.Errorf("start scheduler plugin %s: go-plugin dispensed %T, want *scheduler.Client", p.name, raw))
	}
	in.rpc = rpc
	ctx, cancel := context.WithTimeout(context.Background(), p.f.o.StartTimeout)
	defer cancel()
	info, err := rpc.Info(ctx)
	if err != nil {
		return fail(fmt.Errorf("ask scheduler plugin %s (%s) who it is: %w", p.name, p.path, err))
	}
	if info.Name != p.name {
		return fail(errRefused{fmt.Errorf("the binary %s is scheduler plugin %q, but the configuration names it %q", p.path, info.Name, p.name)})
	}
	version, err := scheduler.NegotiateAPIVersion(info.Name, info.APIVersions, scheduler.APIVersions)
	if err != nil {
		return fail(errRefused{err})
	}
	if err := checkSignature(info); err != nil {
		return fail(errRefused{fmt.Errorf("scheduler plugin %s (%s): %w", p.name, p.path, err)})
	}
	if err := rpc.Configure(ctx, version, p.args); err != nil {
		return fail(errRefused{fmt.Errorf("scheduler plugin %s refused its configuration: %w", p.name, err)})
	}
	in.info = info
	in.signature = splitPaths(info.PodSignature)
	in.Watch()
	p.log.Info("scheduler plugin started", "plugin", p.name, "version", info.Version, "api", version, "pid", in.PID, "extensionPoints", pointNames(info.ExtensionPoints), "podSignature", signatureString(info.PodSignature))
	return in, nil
}

// checkSignature refuses a pod signature with a path SignPod could not follow (the SDK
// refuses to serve one, but a plugin may speak the protocol without it).
func checkSignature(info scheduler.Info) error {
	if err := info.PodSignature.Validate(); err != nil {
		return fmt.Errorf("its PluginInfo declares a malformed pod signature: %w", err)
	}
	return nil
}

// splitPaths splits each of the signature's paths at its dots.
func splitPaths(sig *scheduler.PodSignature) [][]string {
	if sig == nil {
		return nil
	}
	out := make([][]string, len(sig.Fields))
	for i, f := range sig.Fields {
		out[i] = strings.Split(f, ".")
	}
	return out
}

// signatureString describes a pod signature for the logs.
func signatureString(sig *scheduler.PodSignature) string {
	switch {
	case sig == nil:
		return "none (never batched)"
	case len(sig.Fields) == 0:
		return "base"
	}
	return "base+" + strings.Join(sig.Fields, ",")
}

func pointNames(pts []scheduler.ExtensionPoint) []string {
	out := make([]string, len(pts))
	for i, pt := range pts {
		out[i] = scheduler.PointName(pt)
	}
	return out
}

// start runs the supervisor over the first instance.
func (p *Plugin) start(first *instance) {
	p.setUp(first)
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	go func() {
		defer close(p.done)
		p.supervise(ctx, first)
	}()
}

// stop ends the supervisor and kills the process.
func (p *Plugin) stop() {
	if p.cancel != nil {
		p.cancel()
		<-p.done
	}
}

// supervise keeps the plugin running: when an instance fails it is killed, the plugin is
// marked down with the reason, and a new instance is launched after the backoff.
func (p *Plugin) supervise(ctx context.Context, in *instance) {
	backoff := p.f.o.MinBackoff
	for {
		started := time.Now()
		select {
		case <-ctx.Done():
			p.setDown("the scheduler is stopping")
			in.Kill()
			return
		case <-in.Failed():
		}
		in.Kill()
		p.setDown(in.Reason())
		p.log.Warn("scheduler plugin failed; restarting", "plugin", p.name, "reason", in.Reason(), "backoff", backoff)
		if time.Since(started) > StableAfter {
			backoff = p.f.o.MinBackoff
		}
		for {
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, p.f.o.MaxBackoff)
			next, err := p.launch()
			if err == nil {
				in = next
				break
			}
			var refused errRefused
			if errors.As(err, &refused) {
				backoff = p.f.o.MaxBackoff
			}
			p.setDown(err.Error())
			p.log.Error("restart scheduler plugin", "plugin", p.name, "err", err, "backoff", backoff)
		}
		p.setUp(in)
		p.restarts.Add(1)
		p.log.Info("scheduler plugin is back", "plugin", p.name)
		p.f.notifyAvailable(p.name)
	}
}

// sleep waits d or until ctx ends; false when ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
