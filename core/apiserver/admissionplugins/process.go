package admissionplugins

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"berth.dev/berth/core/internal/pluginproc"
	"berth.dev/berth/plugins/admission"
)

// instance is one running process of a plugin (its failure, exit and log handling in
// core/internal/pluginproc), with the SDK's client and what the plugin said it is.
type instance struct {
	*pluginproc.Process
	rpc  *admission.Client
	info admission.Info
}

// errRefused is a plugin this berth cannot use (no shared API version, another name,
// refused args): restarting the same binary will not help, so it waits MaxBackoff.
type errRefused struct{ err error }

func (e errRefused) Error() string { return e.err.Error() }
func (e errRefused) Unwrap() error { return e.err }

// launch starts one process of the plugin and brings it to the point of serving calls:
// handshake, PluginInfo, API version negotiation, Configure.
func (p *plugin) launch() (*instance, error) {
	proc, conn, err := pluginproc.Start(pluginproc.Config{
		Path: p.cfg.Path, LogName: "admission-plugin." + p.cfg.Name, Log: p.log,
		Handshake: admission.Handshake, Plugins: admission.PluginSet(nil), StartTimeout: p.o.StartTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("start admission plugin %s (%s): %w", p.cfg.Name, p.cfg.Path, err)
	}
	in := &instance{Process: proc}
	fail := func(err error) (*instance, error) {
		in.Kill()
		return nil, err
	}
	raw, err := conn.Dispense(admission.PluginName)
	if err != nil {
		return fail(fmt.Errorf("start admission plugin %s (%s): %w", p.cfg.Name, p.cfg.Path, err))
	}
	rpc, ok := raw.(*admission.Client)
	if !ok {
		return fail(fmt.Errorf("start admission plugin %s: go-plugin dispensed %T, want *admission.Client", p.cfg.Name, raw))
	}
	in.rpc = rpc
	ctx, cancel := context.WithTimeout(context.Background(), p.o.StartTimeout)
	defer cancel()
	info, err := rpc.Info(ctx)
	if err != nil {
		return fail(fmt.Errorf("ask admission plugin %s (%s) who it is: %w", p.cfg.Name, p.cfg.Path, err))
	}
	if info.Name != p.cfg.Name {
		return fail(errRefused{fmt.Errorf("the binary %s is admission plugin %q, but %s:%d names it %q", p.cfg.Path, info.Name, p.cfg.File, p.cfg.Line, p.cfg.Name)})
	}
	version, err := admission.NegotiateAPIVersion(info.Name, info.APIVersions, admission.APIVersions)
	if err != nil {
		return fail(errRefused{err})
	}
	if err := rpc.Configure(ctx, version, p.args); err != nil {
		return fail(errRefused{fmt.Errorf("admission plugin %s refused its args (%s:%d): %w", p.cfg.Name, p.cfg.File, p.cfg.Line, err)})
	}
	in.info = info
	in.Watch()
	p.log.Info("admission plugin started", "version", info.Version, "api", version, "pid", in.PID, "mutating", info.Mutating, "validating", info.Validating)
	return in, nil
}

// supervise keeps the plugin running until ctx ends: when an instance fails it is killed,
// the plugin is marked down with the reason, and a new instance is launched after the
// backoff.
func (p *plugin) supervise(ctx context.Context, in *instance) {
	backoff := p.o.MinBackoff
	for {
		started := time.Now()
		select {
		case <-ctx.Done():
			p.setDown("the API server is stopping")
			in.Kill()
			return
		case <-in.Failed():
		}
		in.Kill()
		p.setDown(in.Reason())
		p.log.Warn("admission plugin failed; restarting", "reason", in.Reason(), "backoff", backoff)
		if time.Since(started) > StableAfter {
			backoff = p.o.MinBackoff
		}
		for {
			if !sleep(ctx, backoff) {
				return
			}
			backoff = min(backoff*2, p.o.MaxBackoff)
			next, err := p.launch()
			if err == nil {
				in = next
				break
			}
			var refused errRefused
			if errors.As(err, &refused) {
				backoff = p.o.MaxBackoff
			}
			// go-plugin's start errors run to many lines of hints; users see the first.
			reason, _, _ := strings.Cut(err.Error(), "\n")
			p.setDown(strings.TrimSpace(reason))
			p.log.Error("restart admission plugin", "err", err, "backoff", backoff)
		}
		p.setUp(in)
		p.restarts.Add(1)
		p.log.Info("admission plugin is back")
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
