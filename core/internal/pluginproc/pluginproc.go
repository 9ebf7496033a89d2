// Package pluginproc is one running process of an out-of-process plugin, as the scheduler
// (core/scheduler/external) and the API server's admission plugins
// (core/apiserver/admissionplugins) run them: started through hashicorp/go-plugin, watched
// for an exit of its own, failed once with the first reason that shows it cannot be
// trusted (its supervisor then kills it and starts another), and its logs and exit status
// carried to slog.
package pluginproc

import (
	"context"
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
)

// Process is one running plugin process. It fails once: the first reason wins.
type Process struct {
	// Client is go-plugin's client of the process; PID its process id (0 if unknown).
	Client *goplugin.Client
	PID    int

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
	watching  atomic.Bool
	killOnce  sync.Once
}

// Config is how to start a plugin process.
type Config struct {
	// Path is the executable; LogName names go-plugin's logger ("scheduler-plugin.cost").
	Path, LogName string
	Handshake     goplugin.HandshakeConfig
	Plugins       goplugin.PluginSet
	StartTimeout  time.Duration
	// Log receives go-plugin's and the plugin's log lines.
	Log *slog.Logger
}

// Start launches the plugin and completes go-plugin's handshake. On error nothing is left
// running.
func Start(cfg Config) (*Process, goplugin.ClientProtocol, error) {
	p := &Process{failed: make(chan struct{}), stopWatch: make(chan struct{}), watchDone: make(chan struct{})}
	hl := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: cfg.LogName, Output: io.Discard, Level: hclog.Debug})
	hl.RegisterSink(&logSink{log: cfg.Log, p: p})
	p.Client = goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  cfg.Handshake,
		Plugins:          cfg.Plugins,
		Cmd:              exec.Command(cfg.Path),
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           hl,
		StartTimeout:     cfg.StartTimeout,
	})
	conn, err := p.Client.Client()
	if err != nil {
		p.Client.Kill()
		return nil, nil, err
	}
	if rc := p.Client.ReattachConfig(); rc != nil {
		p.PID = rc.Pid
	}
	return p, conn, nil
}

// Fail marks the process failed for reason; later reasons are ignored.
func (p *Process) Fail(reason string) {
	p.failOnce.Do(func() {
		p.reason = reason
		close(p.failed)
	})
}

// Failed closes when the process has failed.
func (p *Process) Failed() <-chan struct{} { return p.failed }

// Reason is why the process failed, once Failed has closed.
func (p *Process) Reason() string {
	select {
	case <-p.failed:
		return p.reason
	default:
		return ""
	}
}

// ExitReason describes how the process ended, once it has.
func (p *Process) ExitReason() string {
	if e := p.exitErr.Load(); e != nil && *e != "" {
		return fmt.Sprintf("it exited (%s)", *e)
	}
	return "it exited"
}

// WaitExited waits up to d for the process to be gone (after a broken connection, so that
// the reason names the exit rather than the connection).
func (p *Process) WaitExited(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !p.Client.Exited() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// Watch starts the watcher that fails the process when it exits by itself.
func (p *Process) Watch() {
	p.watching.Store(true)
	go func() {
		defer close(p.watchDone)
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stopWatch:
				return
			case <-t.C:
				if p.Client.Exited() {
					p.Fail(p.ExitReason())
					return
				}
			}
		}
	}()
}

// Kill ends the process at once (SIGKILL: a plugin that hangs would not stop gracefully)
// and lets go-plugin clean up. Later calls do nothing.
func (p *Process) Kill() {
	p.killOnce.Do(func() {
		p.killed.Store(true)
		if p.watching.Load() {
			close(p.stopWatch)
			<-p.watchDone
		}
		if p.PID > 0 && !p.Client.Exited() {
			_ = syscall.Kill(p.PID, syscall.SIGKILL)
		}
		p.Client.Kill()
	})
}

// logSink forwards go-plugin's and the plugin's logs to slog, and catches the exit status
// go-plugin logs when the process ends.
type logSink struct {
	log *slog.Logger
	p   *Process
}

func (s *logSink) Accept(name string, level hclog.Level, msg string, args ...any) {
	if msg == "plugin process exited" {
		for i := 0; i+1 < len(args); i += 2 {
			if k, _ := args[i].(string); k == "error" {
				e := fmt.Sprint(args[i+1])
				s.p.exitErr.Store(&e)
			}
		}
	}
	lvl := slog.LevelDebug
	switch {
	case s.p.killed.Load():
		// The host killed it: its last words are no news.
	case level >= hclog.Error:
		lvl = slog.LevelError
	case level >= hclog.Warn:
		lvl = slog.LevelWarn
	}
	s.log.Log(context.Background(), lvl, msg, append([]any{"logger", name}, args...)...)
}
