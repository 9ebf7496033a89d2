package external

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"

	"berth.dev/berth/plugins/scheduler"
)

// instance is one running process of a plugin. It fails once: the first reason wins, the
// supervisor kills it and starts another.
type instance struct {
	client *goplugin.Client
	rpc    *scheduler.Client
	info   scheduler.Info
	pid    int

	failOnce sync.Once
	failed   chan struct{}
	reason   string
	// exitErr is the process' exit status as go-plugin saw it ("signal: killed").
	exitErr atomic.Pointer[string]
	// stopWatch ends the exit watcher.
	stopWatch chan struct{}
	watchDone chan struct{}
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
	for {
		if in.client.Exited() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill ends the process at once (SIGKILL: a plugin that hangs would not stop gracefully)
// and lets go-plugin clean up.
func (in *instance) kill() {
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
func (p *Plugin) launch() (*instance, error) {
	in := &instance{failed: make(chan struct{}), stopWatch: make(chan struct{}), watchDone: make(chan struct{})}
	hl := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: "scheduler-plugin." + p.name, Output: io.Discard, Level: hclog.Debug})
	hl.RegisterSink(&logSink{log: p.log, in: in})
	in.client = goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  scheduler.Handshake,
		Plugins:          scheduler.PluginSet(nil),
		Cmd:              exec.Command(p.path),
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           hl,
		StartTimeout:     p.f.o.StartTimeout,
	})
	fail := func(err error) (*instance, error) {
		in.client.Kill()
		return nil, err
	}
	conn, err := in.client.Client()
	if err != nil {
		return fail(fmt.Errorf("start scheduler plugin %s (%s): %w", p.name, p.path, err))
	}
	if rc := in.client.ReattachConfig(); rc != nil {
		in.pid = rc.Pid
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
	if err := rpc.Configure(ctx, version, p.args); err != nil {
		return fail(errRefused{fmt.Errorf("scheduler plugin %s refused its configuration: %w", p.name, err)})
	}
	in.info = info
	go in.watch()
	p.log.Info("scheduler plugin started", "plugin", p.name, "version", info.Version, "api", version, "pid", in.pid, "extensionPoints", pointNames(info.ExtensionPoints))
	return in, nil
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
			in.kill()
			return
		case <-in.failed:
		}
		in.kill()
		p.setDown(in.reason)
		p.log.Warn("scheduler plugin failed; restarting", "plugin", p.name, "reason", in.reason, "backoff", backoff)
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
