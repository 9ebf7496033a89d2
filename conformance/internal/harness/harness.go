// Package harness is the part of berth's conformance suites that does not depend on what
// they test: the T a test gets (Errorf, Fatalf, Skipf, Logf, Cleanup, as testing.T), the
// runner that runs a table of named tests one after the other, each under its own
// timeout and selected by --focus/--skip expressions, printing a line per test and the
// closing "N passed, N failed, N skipped", and the report with its JSON and JUnit forms
// (conformance/internal/report).
//
// A suite wraps it: its own T embeds *harness.T and adds the clients of the protocol it
// tests, and its Run turns its tests into harness.Tests.
package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"runtime"
	"slices"
	"sync"
	"time"

	"berth.dev/berth/conformance/internal/report"
)

// Defaults of Runner.
const (
	// DefaultCleanupTimeout bounds the cleanups of one test.
	DefaultCleanupTimeout = time.Minute
	// DefaultHangGrace is how long a test that ran past its timeout gets to return once
	// its context is cancelled before the runner stops waiting for it.
	DefaultHangGrace = 15 * time.Second
)

// T is what a test gets: testing.T's reporting calls. Errorf records a failure and goes
// on; Fatalf and Skipf end the test and must be called from the test's goroutine;
// Cleanup registers what runs after the test, failed or not, last registered first.
// Errorf and Logf may be called from any goroutine.
type T struct {
	name string

	mu       sync.Mutex
	errs     []string
	logs     []string
	skipped  bool
	skipMsg  string
	cleanups []func(ctx context.Context)
	seq      int
}

// NewT returns the T of a test named name, for running a test outside a Runner (the
// suites' own unit tests).
func NewT(name string) *T { return &T{name: name} }

// Name is the test's name.
func (t *T) Name() string { return t.name }

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

// Failed reports whether a failure was recorded.
func (t *T) Failed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.errs) > 0
}

// Seq returns a number unique within the test (1, 2, ...), for names of what it makes.
func (t *T) Seq() int {
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

// Result is the test's outcome so far, as the runner reports it.
func (t *T) Result(d time.Duration) report.Result {
	t.mu.Lock()
	defer t.mu.Unlock()
	res := report.Result{Name: t.name, Duration: d, Logs: append([]string(nil), t.logs...)}
	switch {
	case len(t.errs) > 0:
		res.Status = report.StatusFail
		res.Messages = append([]string(nil), t.errs...)
	case t.skipped:
		res.Status = report.StatusSkip
		res.Messages = []string{t.skipMsg}
	default:
		res.Status = report.StatusPass
	}
	return res
}

// RunCleanups runs the registered cleanups, last first, under a context of their own
// bounded by timeout. A panicking cleanup fails the test and the others still run.
func (t *T) RunCleanups(parent context.Context, timeout time.Duration) {
	t.mu.Lock()
	cleanups := t.cleanups
	t.cleanups = nil
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), timeout)
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

// Test is one named test.
type Test struct {
	// Name is "group/name" (or deeper, "Controller/CreateVolume/idempotent").
	Name string
	// Func runs the test; ctx ends at the test's timeout.
	Func func(ctx context.Context, t *T)
}

// Runner runs tests one after the other.
type Runner struct {
	// Timeout bounds each test; no bound when zero.
	Timeout time.Duration
	// CleanupTimeout bounds each test's cleanups (DefaultCleanupTimeout when zero).
	CleanupTimeout time.Duration
	// HangGrace is how long a timed-out test gets to return (DefaultHangGrace when zero).
	HangGrace time.Duration
	// Output receives a line per test (nothing when nil).
	Output io.Writer
}

// Select returns the tests of ts whose names focus and skip select (see
// report.NewSelection), in their order.
func Select(ts []Test, focus, skip string) ([]Test, error) {
	return SelectBy(ts, func(t Test) string { return t.Name }, focus, skip)
}

// Run runs tests in order, writes a line per test to r.Output and returns the results.
// It stops early, with the results so far, when ctx ends.
func (r Runner) Run(ctx context.Context, tests []Test) []report.Result {
	var results []report.Result
	for _, test := range tests {
		if ctx.Err() != nil {
			break
		}
		res := r.RunTest(ctx, test)
		results = append(results, res)
		if r.Output != nil {
			fmt.Fprintln(r.Output, res.Line())
		}
	}
	return results
}

// RunTest runs one test in a goroutine of its own, so that Fatalf and Skipf can end it
// with runtime.Goexit as testing.T does, then runs its cleanups.
func (r Runner) RunTest(parent context.Context, test Test) report.Result {
	start := time.Now()
	ctx, cancel := parent, context.CancelFunc(func() {})
	if r.Timeout > 0 {
		ctx, cancel = context.WithTimeout(parent, r.Timeout)
	}
	defer cancel()
	grace := r.HangGrace
	if grace <= 0 {
		grace = DefaultHangGrace
	}
	cleanupTimeout := r.CleanupTimeout
	if cleanupTimeout <= 0 {
		cleanupTimeout = DefaultCleanupTimeout
	}
	t := NewT(test.Name)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() {
			// A bug in a test must not take the whole run (or berth's CLI) down.
			if p := recover(); p != nil {
				t.fail(fmt.Sprintf("panic: %v", p))
			}
		}()
		test.Func(ctx, t)
	}()
	hung := false
	select {
	case <-done:
	case <-ctx.Done():
		select {
		case <-done:
		case <-time.After(grace):
			// The calls of a test run under ctx, so this means one ignored its
			// cancellation; the goroutine ends when that call does.
			hung = true
		}
	}
	t.mu.Lock()
	skipped := t.skipped
	t.mu.Unlock()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) && !skipped && parent.Err() == nil {
		t.fail(fmt.Sprintf("timed out after %s", r.Timeout))
	}
	if hung {
		t.fail("the test did not return within " + grace.String() + " of its timeout")
	}
	// Even behind a hung test: what it made must not outlive the run.
	t.RunCleanups(parent, cleanupTimeout)
	return t.Result(time.Since(start))
}

// Report is a run's outcome, the shape every suite's JSON report has: the suite's
// name, its properties (endpoint, driver ...), the counts and a result per test.
type Report struct {
	Suite      string            `json:"suite"`
	Properties map[string]string `json:"properties,omitempty"`
	RunID      string            `json:"runID"`
	Started    time.Time         `json:"started"`
	Duration   time.Duration     `json:"duration"`
	report.Counts
	// Leftovers says what the run found left behind by its tests; empty when every
	// test cleaned up after itself.
	Leftovers string          `json:"leftovers,omitempty"`
	Results   []report.Result `json:"results"`
}

// Add records one result.
func (r *Report) Add(res ...report.Result) {
	for _, x := range res {
		r.Results = append(r.Results, x)
		r.Counts.Add(x.Status)
	}
}

// OK reports whether no test failed.
func (r *Report) OK() bool { return r.Failed == 0 }

// Result returns the result of the test named name.
func (r *Report) Result(name string) (report.Result, bool) { return report.Find(r.Results, name) }

// Names returns the names of the tests with status s, in run order.
func (r *Report) Names(s report.Status) []string { return report.Names(r.Results, s) }

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error { return report.WriteJSON(w, r) }

// WriteJUnit writes the report as JUnit XML, a testcase per test whose classname is
// "<suite>/<group>", with the properties sorted by name.
func (r *Report) WriteJUnit(w io.Writer) error {
	j := report.JUnit{Suite: r.Suite, Started: r.Started, Duration: r.Duration, Results: r.Results}
	for _, k := range slices.Sorted(maps.Keys(r.Properties)) {
		j.Properties = append(j.Properties, report.Property{Name: k, Value: r.Properties[k]})
	}
	j.Properties = append(j.Properties, report.Property{Name: "runID", Value: r.RunID})
	return j.Write(w)
}

// WriteFile writes the report to path with write ((*Report).WriteJSON or WriteJUnit),
// through a temporary file so that a reader never sees half a report.
func (r *Report) WriteFile(path string, write func(*Report, io.Writer) error) error {
	return report.WriteFile(path, func(w io.Writer) error { return write(r, w) })
}

// SelectBy returns the elements of ts whose names focus and skip select (see
// report.NewSelection), in their order: Select for a suite's own test type.
func SelectBy[E any](ts []E, name func(E) string, focus, skip string) ([]E, error) {
	sel, err := report.NewSelection(focus, skip)
	if err != nil {
		return nil, err
	}
	var out []E
	for _, t := range ts {
		if sel.Selected(name(t)) {
			out = append(out, t)
		}
	}
	return out, nil
}

// RunID returns a random hex name of n bytes for a run's objects (sandboxes, volumes,
// namespaces), so that runs side by side never touch each other's.
func RunID(n int) (string, error) {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("run ID: %w", err)
	}
	return hex.EncodeToString(b), nil
}
