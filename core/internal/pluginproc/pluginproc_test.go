package pluginproc

import (
	"io"
	"log/slog"
	"strings"
	"testing"
)

// A process fails once: the first reason is kept, and Reason is empty until then.
func TestFailKeepsTheFirstReason(t *testing.T) {
	p := &Process{failed: make(chan struct{}), stopWatch: make(chan struct{}), watchDone: make(chan struct{})}
	if r := p.Reason(); r != "" {
		t.Fatalf("Reason before failing = %q, want empty", r)
	}
	p.Fail("it did not answer Score within 1s")
	p.Fail("it exited")
	select {
	case <-p.Failed():
	default:
		t.Fatal("Failed did not close")
	}
	if r := p.Reason(); r != "it did not answer Score within 1s" {
		t.Errorf("Reason = %q, want the first one", r)
	}
}

// Start names what it could not start.
func TestStartRefusesANonPlugin(t *testing.T) {
	_, _, err := Start(Config{Path: "/bin/true", LogName: "test", Log: discardLog(), StartTimeout: 2e9})
	if err == nil || !strings.Contains(err.Error(), "plugin") {
		t.Fatalf("Start(/bin/true) err = %v, want a handshake failure", err)
	}
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
