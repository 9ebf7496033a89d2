// Package report is what berth's conformance suites share about their output: a test's
// result and its one-line form, the run's report with its closing "N passed, N failed,
// N skipped" line, the JSON and JUnit XML forms of that report, and the --focus/--skip
// selection of tests. The runner itself is conformance/internal/harness; each suite keeps the properties it
// records (endpoint, plugin dir ...); the shape of what users read is the same for all.
package report

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// Status is a test's outcome.
type Status string

// The outcomes of a test.
const (
	StatusPass Status = "PASS"
	StatusFail Status = "FAIL"
	StatusSkip Status = "SKIP"
)

// Result is one test's outcome.
type Result struct {
	Name   string `json:"name"`
	Status Status `json:"status"`
	// Duration is how long the test and its cleanups took.
	Duration time.Duration `json:"duration"`
	// Messages are the failures of a failed test, in order, or the reason of a skip.
	Messages []string `json:"messages,omitempty"`
	// Logs are the lines the test logged on the way.
	Logs []string `json:"logs,omitempty"`
}

// Line is the result as the one line the CLI prints: "PASS add/result (0.01s)",
// "FAIL del/twice: why", "SKIP name: reason". A failed test's further messages follow on
// indented lines.
func (r Result) Line() string {
	switch r.Status {
	case StatusPass:
		return fmt.Sprintf("PASS %s (%.2fs)", r.Name, r.Duration.Seconds())
	default:
		if len(r.Messages) == 0 {
			return fmt.Sprintf("%s %s", r.Status, r.Name)
		}
		line := fmt.Sprintf("%s %s: %s", r.Status, r.Name, OneLine(r.Messages[0]))
		for _, m := range r.Messages[1:] {
			line += "\n    " + OneLine(m)
		}
		return line
	}
}

// OneLine keeps a message on one line of the listing.
func OneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// Counts are a run's totals by outcome.
type Counts struct {
	Passed  int `json:"passed"`
	Failed  int `json:"failed"`
	Skipped int `json:"skipped"`
}

// Add counts one result.
func (c *Counts) Add(s Status) {
	switch s {
	case StatusPass:
		c.Passed++
	case StatusFail:
		c.Failed++
	case StatusSkip:
		c.Skipped++
	}
}

// Summary is the closing line: "N passed, N failed, N skipped".
func (c Counts) Summary() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped", c.Passed, c.Failed, c.Skipped)
}

// Find returns the result of the test named name.
func Find(results []Result, name string) (Result, bool) {
	for _, res := range results {
		if res.Name == name {
			return res, true
		}
	}
	return Result{}, false
}

// Names returns the names of the results with status s, in run order.
func Names(results []Result, s Status) []string {
	var names []string
	for _, res := range results {
		if res.Status == s {
			names = append(names, res.Name)
		}
	}
	return names
}

// WriteJSON writes v (a suite's report) as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("encode JSON report: %w", err)
	}
	return nil
}

// Property is a name and value a JUnit report records about the run.
type Property struct {
	Name, Value string
}

// JUnit is what a JUnit XML report holds: one test suite named Suite.
type JUnit struct {
	Suite      string
	Started    time.Time
	Duration   time.Duration
	Properties []Property
	Results    []Result
}

// The JUnit XML schema as Jenkins, GitLab and GitHub's test reporters read it.
type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Time     string       `xml:"time,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name       string          `xml:"name,attr"`
	Tests      int             `xml:"tests,attr"`
	Failures   int             `xml:"failures,attr"`
	Skipped    int             `xml:"skipped,attr"`
	Time       string          `xml:"time,attr"`
	Timestamp  string          `xml:"timestamp,attr"`
	Properties []junitProperty `xml:"properties>property,omitempty"`
	Cases      []junitCase     `xml:"testcase"`
}

type junitProperty struct {
	Name  string `xml:"name,attr"`
	Value string `xml:"value,attr"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	Classname string        `xml:"classname,attr"`
	Time      string        `xml:"time,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
	SystemOut string        `xml:"system-out,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr,omitempty"`
	Text    string `xml:",chardata"`
}

func seconds(d time.Duration) string { return fmt.Sprintf("%.3f", d.Seconds()) }

// Write writes j as JUnit XML: one testsuite, a testcase per result whose classname is
// "<suite>/<group>" (the part of the test's name before the first slash).
func (j JUnit) Write(w io.Writer) error {
	var c Counts
	for _, res := range j.Results {
		c.Add(res.Status)
	}
	suite := junitSuite{
		Name: j.Suite, Tests: len(j.Results), Failures: c.Failed, Skipped: c.Skipped,
		Time: seconds(j.Duration), Timestamp: j.Started.UTC().Format(time.RFC3339),
	}
	for _, p := range j.Properties {
		suite.Properties = append(suite.Properties, junitProperty(p))
	}
	for _, res := range j.Results {
		group, _, _ := strings.Cut(res.Name, "/")
		tc := junitCase{Name: res.Name, Classname: j.Suite + "/" + group, Time: seconds(res.Duration)}
		switch res.Status {
		case StatusFail:
			tc.Failure = &junitMessage{Message: firstOr(res.Messages, "failed"), Type: "failure", Text: strings.Join(res.Messages, "\n")}
		case StatusSkip:
			tc.Skipped = &junitMessage{Message: firstOr(res.Messages, "skipped")}
		}
		tc.SystemOut = strings.Join(res.Logs, "\n")
		suite.Cases = append(suite.Cases, tc)
	}
	doc := junitSuites{
		Name: j.Suite, Tests: suite.Tests, Failures: suite.Failures, Skipped: suite.Skipped,
		Time: suite.Time, Suites: []junitSuite{suite},
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return fmt.Errorf("write JUnit report: %w", err)
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return fmt.Errorf("encode JUnit report: %w", err)
	}
	if _, err := io.WriteString(w, "\n"); err != nil {
		return fmt.Errorf("write JUnit report: %w", err)
	}
	return nil
}

func firstOr(msgs []string, def string) string {
	if len(msgs) == 0 {
		return def
	}
	return msgs[0]
}

// WriteFile writes a report to path with write, through a temporary file so that a
// reader never sees half a report.
func WriteFile(path string, write func(io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".report-*")
	if err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	if err := write(tmp); err != nil {
		tmp.Close()
		return fmt.Errorf("write report %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	return nil
}

// Selection decides which tests run.
type Selection struct {
	focus, skip *regexp.Regexp
}

// NewSelection compiles the focus and skip expressions; empty ones select everything and
// skip nothing.
func NewSelection(focus, skip string) (Selection, error) {
	var s Selection
	var err error
	if focus != "" {
		if s.focus, err = regexp.Compile(focus); err != nil {
			return Selection{}, fmt.Errorf("focus expression %q: %w", focus, err)
		}
	}
	if skip != "" {
		if s.skip, err = regexp.Compile(skip); err != nil {
			return Selection{}, fmt.Errorf("skip expression %q: %w", skip, err)
		}
	}
	return s, nil
}

// Selected reports whether the test named name runs.
func (s Selection) Selected(name string) bool {
	if s.focus != nil && !s.focus.MatchString(name) {
		return false
	}
	return s.skip == nil || !s.skip.MatchString(name)
}
