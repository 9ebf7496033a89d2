package cri

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// T is what a test gets: the runtime's clients, the run's configuration and the
// testing.T-like reporting calls. Errorf records a failure and goes on, Fatalf and
// Skipf end the test (they must be called from the test's goroutine), and Cleanup
// registers what runs after the test, failed or not, last registered first.
type T struct {
	suite *suite
	name  string
	ctx   context.Context

	mu       sync.Mutex
	errs     []string
	logs     []string
	skipped  bool
	skipMsg  string
	cleanups []func(ctx context.Context)
	seq      int
}

// Name is the test's name.
func (t *T) Name() string { return t.name }

// Runtime is the runtime service client.
func (t *T) Runtime() runtimeapi.RuntimeServiceClient { return t.suite.runtime }

// Images is the image service client.
func (t *T) Images() runtimeapi.ImageServiceClient { return t.suite.images }

// Config is the run's configuration, defaults filled in.
func (t *T) Config() Config { return t.suite.cfg }

// Errorf records a failure; the test goes on.
func (t *T) Errorf(format string, args ...any) {
	t.fail(fmt.Sprintf(format, args...))
}

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

// TempDir makes a directory that is removed after the test.
func (t *T) TempDir() string {
	dir, err := tempDir("berth-cri-conformance-")
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func(context.Context) {
		if err := os.RemoveAll(dir); err != nil {
			t.Logf("cleanup: %v", err)
		}
	})
	return dir
}

// next returns a number unique within the test, for object names.
func (t *T) next() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.seq++
	return t.seq
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

// runCleanups runs the registered cleanups, last first; a failing cleanup fails the test,
// since it leaves something behind in the runtime.
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

// labelValue turns a test name into a label value ("runtime/version" -> "runtime-version").
func labelValue(name string) string {
	return strings.NewReplacer("/", "-", "_", "-").Replace(name)
}
