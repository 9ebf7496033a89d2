package cni

import (
	"context"
	"fmt"
	"runtime"
	"sync"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

// T is what a test gets: the run's configuration, the network, and the testing.T-like
// reporting calls. Errorf records a failure and goes on, Fatalf and Skipf end the test
// (they must be called from the test's goroutine), and Cleanup registers what runs
// after the test, failed or not, last registered first.
type T struct {
	suite *suite
	name  string

	mu       sync.Mutex
	errs     []string
	logs     []string
	skipped  bool
	skipMsg  string
	cleanups []func(ctx context.Context)
}

// Name is the test's name.
func (t *T) Name() string { return t.name }

// Config is the run's configuration, defaults filled in.
func (t *T) Config() Config { return t.suite.cfg }

// Network is the network configuration under test, as a list.
func (t *T) Network() *libcni.NetworkConfigList { return t.suite.list }

// Errorf records a failure; the test goes on.
func (t *T) Errorf(format string, args ...any) { t.fail(fmt.Sprintf(format, args...)) }

// Fatalf records a failure and ends the test.
func (t *T) Fatalf(format string, args ...any) {
	t.fail(fmt.Sprintf(format, args...))
	runtime.Goexit()
}

// Skipf marks the test skipped with a reason and ends it. Failures recorded before
// still fail it.
func (t *T) Skipf(format string, args ...any) {
	t.mu.Lock()
	t.skipped = true
	t.skipMsg = fmt.Sprintf(format, args...)
	t.mu.Unlock()
	runtime.Goexit()
}

// Logf records a line that the reports keep with the test's result.
func (t *T) Logf(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.logs = append(t.logs, fmt.Sprintf(format, args...))
}

// Cleanup registers f to run after the test with a context of its own, so that it runs
// even when the test ran out of time.
func (t *T) Cleanup(f func(ctx context.Context)) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.cleanups = append(t.cleanups, f)
}

func (t *T) fail(msg string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.errs = append(t.errs, msg)
}

func (t *T) failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.errs) > 0
}

func (t *T) messages() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.errs) > 0 {
		return append([]string(nil), t.errs...)
	}
	if t.skipped {
		return []string{t.skipMsg}
	}
	return nil
}

func (t *T) logLines() []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]string(nil), t.logs...)
}

// runCleanups runs the registered cleanups, last first. A cleanup that cannot remove
// what the test made only logs: the final sweep tries again and reports leftovers, and
// a plugin's failing DEL is what del/* tests judge, not every test.
func (t *T) runCleanups(parent context.Context) {
	t.mu.Lock()
	cleanups := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), cleanupTimeout)
	defer cancel()
	for i := len(cleanups) - 1; i >= 0; i-- {
		func() {
			defer func() {
				if r := recover(); r != nil {
					t.fail(fmt.Sprintf("cleanup: panic: %v", r))
				}
			}()
			cleanups[i](ctx)
		}()
	}
}

// Attachment is one container's attachment to the network: a namespace of the suite's
// and, once added, the result ADD returned.
type Attachment struct {
	// ID is the container ID, also the namespace's name.
	ID string
	// NetNS is the namespace's path (/var/run/netns/ID).
	NetNS string
	// IfName is the interface in the namespace.
	IfName string
	// Result is ADD's result, nil before ADD.
	Result types.Result

	added, deleted bool
}

// runtimeConf is what libcni passes the plugins for a.
func (a *Attachment) runtimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: a.ID, NetNS: a.NetNS, IfName: a.IfName}
}

// NewAttachment makes a namespace, removed after the test with a DEL of whatever was
// added to it.
func (t *T) NewAttachment() *Attachment {
	s := t.suite
	s.seq++
	id := fmt.Sprintf("%s%d", s.nsPrefix(), s.seq)
	path, err := newNetNS(id)
	if err != nil {
		t.Fatalf("%v", err)
	}
	a := &Attachment{ID: id, NetNS: path, IfName: s.cfg.IfName}
	t.Cleanup(func(ctx context.Context) {
		if a.added && !a.deleted {
			if err := s.cni.DelNetworkList(ctx, s.list, a.runtimeConf()); err != nil {
				t.Logf("cleanup: DEL %s: %v", a.ID, err)
			}
		}
		if err := deleteNetNS(id); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	return a
}

// Add runs ADD for a and keeps the result.
func (t *T) Add(ctx context.Context, a *Attachment) (types.Result, error) {
	res, err := t.suite.cni.AddNetworkList(ctx, t.suite.list, a.runtimeConf())
	// A failed ADD may have left something: the cleanup's DEL is what the runtime
	// would do.
	a.added = true
	if err != nil {
		return nil, fmt.Errorf("ADD %s: %w", a.ID, err)
	}
	a.Result = res
	return res, nil
}

// MustAdd runs ADD for a new attachment and ends the test when it fails.
func (t *T) MustAdd(ctx context.Context) *Attachment {
	a := t.NewAttachment()
	if _, err := t.Add(ctx, a); err != nil {
		t.Fatalf("%v", err)
	}
	return a
}

// Check runs CHECK for a (with ADD's cached result as prevResult, as libcni does).
func (t *T) Check(ctx context.Context, a *Attachment) error {
	if err := t.suite.cni.CheckNetworkList(ctx, t.suite.list, a.runtimeConf()); err != nil {
		return fmt.Errorf("CHECK %s: %w", a.ID, err)
	}
	return nil
}

// Del runs DEL for a.
func (t *T) Del(ctx context.Context, a *Attachment) error {
	err := t.suite.cni.DelNetworkList(ctx, t.suite.list, a.runtimeConf())
	if err != nil {
		return fmt.Errorf("DEL %s: %w", a.ID, err)
	}
	a.deleted = true
	return nil
}
