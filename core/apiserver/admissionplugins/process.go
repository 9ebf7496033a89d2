package admissionplugins

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"

	"berth.dev/berth/plugins/admission"
)

// instance is one running process of a plugin. It fails once: the first reason wins, the
// supervisor kills it and starts another.
type instance struct {
	client *goplugin.Client
	rpc    *admission.Client
	info   admission.Info
	pid    int

	failOnce sync.Once
	failed   chan struct{}
	reason   string
	// exitErr is the process' exit status as go-plugin logged it ("exit status 3").
	exitErr atomic.Pointer[string]
	// killed is set when the host kills the process, whose exit is then no news.
	killed atomic.Bool
	// stopWatch ends the exit watcher; watchDone closes when it has ended.
	stopWatch chan struct{}
	watchDone chan struct{}
}

func newInstance() *instance {
	return &instance{failed: make(chan struct{}), stopWatch: make(chan struct{}), watchDone: make(chan struct{})}
}

// fail marks the instance failed for reason; later reasons are ignored.
func (in *instance) fail(reason string) {
	in.failOnce.Do(func() {
		in.reason = reason
		close(in.failed)
	})
}

// exitReason describes how the process ended, once it has.
func (in *instance) exitReason() string {
	if e := in.exitErr.Load(); e != nil && *e != "" {
		return fmt.Sprintf("it exited (%s)", *e)
	}
	return "it exited"
}

// waitExited waits up to d for the process to be gone (after a broken connection, so that
// the reason names the exit rather than the connection).
func (in *instance) waitExited(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !in.client.Exited() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// kill ends the process at once (SIGKILL: a plugin that hangs would not stop gracefully)
// and lets go-plugin clean up. The watcher must have been started.
func (in *instance) kill() {
	in.killed.Store(true)
	close(in.stopWatch)
	<-in.watchDone
	if in.pid > 0 && !in.client.Exited() {
		_ = syscall.Kill(in.pid, syscall.SIGKILL)
	}
	in.client.Kill()
}

// watch fails the instance when its process exits by itself.
func (in *instance) watch() {
	defer close(in.watchDone)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-in.stopWatch:
			return
		case <-t.C:
			if in.client.Exited() {
				in.fail(in.exitReason())
				return
			}
		}
	}
}

// logSink forwards go-plugin's and the plugin's logs to slog, and catches the exit status
// go-plugin logs when the process ends.
type logSink struct {
	log *slog.Logger
	in  *instance
}

func (s *logSink) Accept(name string, level hclog.Level, msg string, args ...any) {
	if msg == "plugin process exited" {
		for i := 0; i+1 < len(args); i += 2 {
			if k, _ := args[i].(string); k == "error" {
				e := fmt.Sprint(args[i+1])
				s.in.exitErr.Store(&e)
			}
		}
	}
	lvl := slog.LevelDebug
	switch {
	case s.in.killed.Load():
	case level >= hclog.Error:
		lvl = slog.LevelError
	case level >= hclog.Warn:
		lvl = slog.LevelWarn
	}
	s.log.Log(context.Background(), lvl, msg, append([]any{"logger", name}, args...)...)
}

// errRefused is a plugin this berth cannot use (no shared API version, another name,
// refused args): restarting the same binary will not help, so it waits MaxBackoff.
type errRefused struct{ err error }

func (e errRefused) Error() string { return e.err.Error() }
func (e errRefused) Unwrap() error { return e.err }

// launch starts one process of the plugin and brings it to the point of serving calls:
// handshake, PluginInfo, API version negotiation, Configure.
func (p *plugin) launch() (*instance, error) {
	in := newInstance()
	hl := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: "admission-plugin." + p.cfg.Name, Output: io.Discard, Level: hclog.Debug})
	hl.RegisterSink(&logSink{log: p.log, in: in})
	in.client = goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  admission.Handshake,
		Plugins:          admission.PluginSet(nil),
		Cmd:              exec.Command(p.cfg.Path),
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           hl,
		StartTimeout:     p.o.StartTimeout,
	})
	fail := func(err error) (*instance, error) {
		in.client.Kill()
		return nil, err
	}
	conn, err := in.client.Client()
	if err != nil {
		return fail(fmt.Errorf("start admission plugin %s (%s): %w", p.cfg.Name, p.cfg.Path, err))
	}
	if rc := in.client.ReattachConfig(); rc != nil {
		in.pid = rc.Pid
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
	go in.watch()
	p.log.Info("admission plugin started", "version", info.Version, "api", version, "pid", in.pid, "mutating", info.Mutating, "validating", info.Validating)
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
			in.kill()
			return
		case <-in.failed:
		}
		in.kill()
		p.setDown(in.reason)
		p.log.Warn("admission plugin failed; restarting", "reason", in.reason, "backoff", backoff)
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
