package cri

import (
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"path/filepath"
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

// Line is the result as the one line the CLI prints: "PASS runtime/version (0.01s)",
// "FAIL container/exit-code: expected exit code 3, got 4", "SKIP name: reason". A failed
// test's further messages follow on indented lines.
func (r Result) Line() string {
	switch r.Status {
	case StatusPass:
		return fmt.Sprintf("PASS %s (%.2fs)", r.Name, r.Duration.Seconds())
	default:
		if len(r.Messages) == 0 {
			return fmt.Sprintf("%s %s", r.Status, r.Name)
		}
		line := fmt.Sprintf("%s %s: %s", r.Status, r.Name, oneLine(r.Messages[0]))
		for _, m := range r.Messages[1:] {
			line += "\n    " + oneLine(m)
		}
		return line
	}
}

// oneLine keeps a message on one line of the listing.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// Report is a run's outcome.
type Report struct {
	Suite         string        `json:"suite"`
	Endpoint      string        `json:"endpoint"`
	ImageEndpoint string        `json:"imageEndpoint"`
	Image         string        `json:"image"`
	RunID         string        `json:"runID"`
	Started       time.Time     `json:"started"`
	Duration      time.Duration `json:"duration"`
	Passed        int           `json:"passed"`
	Failed        int           `json:"failed"`
	Skipped       int           `json:"skipped"`
	// Leftovers says what the final sweep found and removed; empty when every test
	// cleaned up after itself.
	Leftovers string   `json:"leftovers,omitempty"`
	Results   []Result `json:"results"`
}

func (r *Report) add(res Result) {
	r.Results = append(r.Results, res)
	switch res.Status {
	case StatusPass:
		r.Passed++
	case StatusFail:
		r.Failed++
	case StatusSkip:
		r.Skipped++
	}
}

// OK reports whether no test failed.
func (r *Report) OK() bool { return r.Failed == 0 }

// Summary is the closing line: "N passed, N failed, N skipped".
func (r *Report) Summary() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped", r.Passed, r.Failed, r.Skipped)
}

// Result returns the result of the test named name.
func (r *Report) Result(name string) (Result, bool) {
	for _, res := range r.Results {
		if res.Name == name {
			return res, true
		}
	}
	return Result{}, false
}

// Names returns the names of the tests with status s, in run order.
func (r *Report) Names(s Status) []string {
	var names []string
	for _, res := range r.Results {
		if res.Status == s {
			names = append(names, res.Name)
		}
	}
	return names
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encode JSON report: %w", err)
	}
	return nil
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

// WriteJUnit writes the report as JUnit XML: one testsuite, a testcase per test whose
// classname is "cri/<group>".
func (r *Report) WriteJUnit(w io.Writer) error {
	suite := junitSuite{
		Name: r.Suite, Tests: len(r.Results), Failures: r.Failed, Skipped: r.Skipped,
		Time: seconds(r.Duration), Timestamp: r.Started.UTC().Format(time.RFC3339),
		Properties: []junitProperty{
			{Name: "endpoint", Value: r.Endpoint}, {Name: "imageEndpoint", Value: r.ImageEndpoint},
			{Name: "image", Value: r.Image}, {Name: "runID", Value: r.RunID},
		},
	}
	for _, res := range r.Results {
		group, _, _ := strings.Cut(res.Name, "/")
		c := junitCase{Name: res.Name, Classname: r.Suite + "/" + group, Time: seconds(res.Duration)}
		switch res.Status {
		case StatusFail:
			c.Failure = &junitMessage{Message: firstOr(res.Messages, "failed"), Type: "failure", Text: strings.Join(res.Messages, "\n")}
		case StatusSkip:
			c.Skipped = &junitMessage{Message: firstOr(res.Messages, "skipped")}
		}
		c.SystemOut = strings.Join(res.Logs, "\n")
		suite.Cases = append(suite.Cases, c)
	}
	doc := junitSuites{
		Name: r.Suite, Tests: suite.Tests, Failures: suite.Failures, Skipped: suite.Skipped,
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

// WriteFile writes the report to path with write (WriteJSON or WriteJUnit), through a
// temporary file so that a reader never sees half a report.
func (r *Report) WriteFile(path string, write func(*Report, io.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".report-*")
	if err != nil {
		return fmt.Errorf("write report %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	if err := write(r, tmp); err != nil {
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
