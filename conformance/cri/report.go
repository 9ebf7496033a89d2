package cri

import (
	"io"
	"time"

	"berth.dev/berth/conformance/internal/report"
)

// Status is a test's outcome (the same for all of berth's conformance suites).
type Status = report.Status

// The outcomes of a test.
const (
	StatusPass = report.StatusPass
	StatusFail = report.StatusFail
	StatusSkip = report.StatusSkip
)

// Result is one test's outcome; its Line is what the CLI prints: "PASS runtime/version
// (0.01s)", "FAIL container/exit-code: expected exit code 3, got 4", "SKIP name: reason".
type Result = report.Result

// Report is a run's outcome.
type Report struct {
	Suite         string        `json:"suite"`
	Endpoint      string        `json:"endpoint"`
	ImageEndpoint string        `json:"imageEndpoint"`
	Image         string        `json:"image"`
	RunID         string        `json:"runID"`
	Started       time.Time     `json:"started"`
	Duration      time.Duration `json:"duration"`
	report.Counts
	// Leftovers says what the final sweep found and removed; empty when every test
	// cleaned up after itself.
	Leftovers string   `json:"leftovers,omitempty"`
	Results   []Result `json:"results"`
}

func (r *Report) add(res Result) {
	r.Results = append(r.Results, res)
	r.Counts.Add(res.Status)
}

// OK reports whether no test failed.
func (r *Report) OK() bool { return r.Failed == 0 }

// Result returns the result of the test named name.
func (r *Report) Result(name string) (Result, bool) { return report.Find(r.Results, name) }

// Names returns the names of the tests with status s, in run order.
func (r *Report) Names(s Status) []string { return report.Names(r.Results, s) }

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error { return report.WriteJSON(w, r) }

// WriteJUnit writes the report as JUnit XML: one testsuite, a testcase per test whose
// classname is "cri/<group>".
func (r *Report) WriteJUnit(w io.Writer) error {
	return report.JUnit{
		Suite: r.Suite, Started: r.Started, Duration: r.Duration, Results: r.Results,
		Properties: []report.Property{
			{Name: "endpoint", Value: r.Endpoint}, {Name: "imageEndpoint", Value: r.ImageEndpoint},
			{Name: "image", Value: r.Image}, {Name: "runID", Value: r.RunID},
		},
	}.Write(w)
}

// WriteFile writes the report to path with write (WriteJSON or WriteJUnit), through a
// temporary file so that a reader never sees half a report.
func (r *Report) WriteFile(path string, write func(*Report, io.Writer) error) error {
	return report.WriteFile(path, func(w io.Writer) error { return write(r, w) })
}
