package cri

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func sampleReport() *Report {
	r := &Report{
		Suite: "cri", Endpoint: "unix:///run/x.sock", ImageEndpoint: "unix:///run/x.sock", Image: DefaultImage,
		RunID: "abcd1234", Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Duration: 1500 * time.Millisecond,
	}
	r.add(Result{Name: "runtime/version", Status: StatusPass, Duration: 10 * time.Millisecond, Logs: []string{"runtime x 1"}})
	r.add(Result{Name: "container/exit-code", Status: StatusFail, Duration: 500 * time.Millisecond,
		Messages: []string{"expected exit code 3, got 4", "expected reason \"Error\", got \"Completed\""}})
	r.add(Result{Name: "ports/host-port", Status: StatusSkip, Duration: time.Second, Messages: []string{"no host ports <here>"}})
	return r
}

func TestResultLine(t *testing.T) {
	for _, c := range []struct {
		res  Result
		want string
	}{
		{Result{Name: "runtime/version", Status: StatusPass, Duration: 12 * time.Millisecond}, "PASS runtime/version (0.01s)"},
		{Result{Name: "container/exit-code", Status: StatusFail, Messages: []string{"expected exit code 3, got 4"}}, "FAIL container/exit-code: expected exit code 3, got 4"},
		{Result{Name: "a/b", Status: StatusFail, Messages: []string{"one\nline", "two"}}, "FAIL a/b: one line\n    two"},
		{Result{Name: "ports/host-port", Status: StatusSkip, Messages: []string{"cannot"}}, "SKIP ports/host-port: cannot"},
		{Result{Name: "a/b", Status: StatusFail}, "FAIL a/b"},
	} {
		if got := c.res.Line(); got != c.want {
			t.Errorf("Line of %+v: %q, want %q", c.res, got, c.want)
		}
	}
}

func TestReportSummaryAndLookups(t *testing.T) {
	r := sampleReport()
	if got, want := r.Summary(), "1 passed, 1 failed, 1 skipped"; got != want {
		t.Errorf("Summary: %q, want %q", got, want)
	}
	if r.OK() {
		t.Errorf("OK with a failed test")
	}
	if got := r.Names(StatusFail); len(got) != 1 || got[0] != "container/exit-code" {
		t.Errorf("Names(FAIL): %v", got)
	}
	if res, ok := r.Result("ports/host-port"); !ok || res.Status != StatusSkip {
		t.Errorf("Result(ports/host-port): %+v, %v", res, ok)
	}
	if _, ok := r.Result("nope"); ok {
		t.Errorf("Result of an unknown test found")
	}
}

func TestReportJSON(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatalf("JSON report does not parse: %v\n%s", err, buf.String())
	}
	if back.Passed != 1 || back.Failed != 1 || back.Skipped != 1 || len(back.Results) != 3 || back.RunID != "abcd1234" {
		t.Errorf("JSON round trip: %+v", back)
	}
	if res := back.Results[1]; res.Status != StatusFail || len(res.Messages) != 2 || res.Duration != 500*time.Millisecond {
		t.Errorf("failed result after the round trip: %+v", res)
	}
	for _, key := range []string{`"status": "FAIL"`, `"name": "container/exit-code"`, `"passed": 1`} {
		if !strings.Contains(buf.String(), key) {
			t.Errorf("JSON report lacks %s:\n%s", key, buf.String())
		}
	}
}

func TestReportJUnit(t *testing.T) {
	var buf bytes.Buffer
	if err := sampleReport().WriteJUnit(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), xml.Header) {
		t.Errorf("no XML header:\n%s", buf.String())
	}
	var doc struct {
		Tests    int `xml:"tests,attr"`
		Failures int `xml:"failures,attr"`
		Skipped  int `xml:"skipped,attr"`
		Suites   []struct {
			Name       string `xml:"name,attr"`
			Tests      int    `xml:"tests,attr"`
			Properties []struct {
				Name  string `xml:"name,attr"`
				Value string `xml:"value,attr"`
			} `xml:"properties>property"`
			Cases []struct {
				Name      string `xml:"name,attr"`
				Classname string `xml:"classname,attr"`
				Time      string `xml:"time,attr"`
				Failure   *struct {
					Message string `xml:"message,attr"`
					Text    string `xml:",chardata"`
				} `xml:"failure"`
				Skipped *struct {
					Message string `xml:"message,attr"`
				} `xml:"skipped"`
				SystemOut string `xml:"system-out"`
			} `xml:"testcase"`
		} `xml:"testsuite"`
	}
	if err := xml.Unmarshal(buf.Bytes(), &doc); err != nil {
		t.Fatalf("JUnit report does not parse: %v\n%s", err, buf.String())
	}
	if doc.Tests != 3 || doc.Failures != 1 || doc.Skipped != 1 || len(doc.Suites) != 1 || doc.Suites[0].Name != "cri" || len(doc.Suites[0].Cases) != 3 {
		t.Fatalf("JUnit counts: %+v", doc)
	}
	if len(doc.Suites[0].Properties) == 0 || doc.Suites[0].Properties[0].Value != "unix:///run/x.sock" {
		t.Errorf("JUnit properties: %+v", doc.Suites[0].Properties)
	}
	cases := doc.Suites[0].Cases
	if c := cases[0]; c.Name != "runtime/version" || c.Classname != "cri/runtime" || c.Time != "0.010" || c.Failure != nil || c.Skipped != nil || c.SystemOut != "runtime x 1" {
		t.Errorf("passed case: %+v", c)
	}
	if c := cases[1]; c.Failure == nil || c.Failure.Message != "expected exit code 3, got 4" || !strings.Contains(c.Failure.Text, "got \"Completed\"") {
		t.Errorf("failed case: %+v", c)
	}
	if c := cases[2]; c.Skipped == nil || c.Skipped.Message != "no host ports <here>" {
		t.Errorf("skipped case: %+v", c)
	}
}

func TestReportWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "report.json")
	if err := sampleReport().WriteFile(path, (*Report).WriteJSON); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil || !json.Valid(data) {
		t.Fatalf("report file: %v\n%s", err, data)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("temporary files left: %v", entries)
	}
	if err := sampleReport().WriteFile(filepath.Join(dir, "missing", "r.xml"), (*Report).WriteJUnit); err == nil {
		t.Errorf("writing into a missing directory succeeded")
	}
}

func TestSelection(t *testing.T) {
	names := []string{"runtime/version", "runtime/status", "image/pull", "streaming/exec", "streaming/attach", "exec/sync-stdout"}
	var ts []Test
	for _, n := range names {
		ts = append(ts, Test{Name: n})
	}
	for _, c := range []struct {
		focus, skip string
		want        []string
	}{
		{"", "", names},
		{"^runtime/", "", []string{"runtime/version", "runtime/status"}},
		{"exec", "", []string{"streaming/exec", "exec/sync-stdout"}},
		{"^streaming/", "attach", []string{"streaming/exec"}},
		{"", "^(runtime|image)/", []string{"streaming/exec", "streaming/attach", "exec/sync-stdout"}},
		{"nothing-matches", "", nil},
		{"", ".", nil},
	} {
		sel, err := NewSelection(c.focus, c.skip)
		if err != nil {
			t.Fatalf("NewSelection(%q, %q): %v", c.focus, c.skip, err)
		}
		var got []string
		for _, tt := range sel.Filter(ts) {
			got = append(got, tt.Name)
		}
		if strings.Join(got, ",") != strings.Join(c.want, ",") {
			t.Errorf("focus %q skip %q: %v, want %v", c.focus, c.skip, got, c.want)
		}
	}
	for _, bad := range [][2]string{{"(", ""}, {"", "[z-a]"}} {
		if _, err := NewSelection(bad[0], bad[1]); err == nil {
			t.Errorf("NewSelection(%q, %q) accepted a bad expression", bad[0], bad[1])
		}
	}
}

// TestSuiteNames: every test has a unique "group/name" name, and the groups are the ones
// the documentation lists.
func TestSuiteNames(t *testing.T) {
	groups := map[string]bool{"runtime": true, "image": true, "sandbox": true, "container": true, "idempotence": true,
		"exec": true, "streaming": true, "logs": true, "ports": true, "env": true, "mounts": true, "resources": true, "stats": true}
	seen := map[string]bool{}
	for _, tt := range Tests() {
		group, name, ok := strings.Cut(tt.Name, "/")
		if !ok || name == "" || !groups[group] || tt.Func == nil {
			t.Errorf("test %q: not group/name of a known group, or no func", tt.Name)
		}
		if seen[tt.Name] {
			t.Errorf("test %q twice", tt.Name)
		}
		seen[tt.Name] = true
	}
}

// TestRunTestOutcomes: Errorf, Fatalf, Skipf, a panic and a timeout give the outcomes
// testing.T would, and cleanups run in every case, last registered first.
func TestRunTestOutcomes(t *testing.T) {
	s := &suite{cfg: Config{Timeout: 200 * time.Millisecond, RunID: "test"}}
	for _, c := range []struct {
		name     string
		fn       func(ctx context.Context, t *T)
		status   Status
		messages []string
	}{
		{"pass", func(context.Context, *T) {}, StatusPass, nil},
		{"errorf goes on", func(_ context.Context, t *T) {
			t.Errorf("first")
			t.Errorf("second")
		}, StatusFail, []string{"first", "second"}},
		{"fatalf stops", func(_ context.Context, t *T) {
			t.Fatalf("stop here")
			t.Errorf("not reached")
		}, StatusFail, []string{"stop here"}},
		{"skipf stops", func(_ context.Context, t *T) {
			t.Skipf("no %s", "way")
			t.Errorf("not reached")
		}, StatusSkip, []string{"no way"}},
		{"a failure before a skip fails", func(_ context.Context, t *T) {
			t.Errorf("broken")
			t.Skipf("then skipped")
		}, StatusFail, []string{"broken"}},
		{"panic", func(context.Context, *T) { panic("a bug in a test") }, StatusFail, []string{"panic: a bug in a test"}},
		{"timeout", func(ctx context.Context, _ *T) { <-ctx.Done() }, StatusFail, []string{"timed out after 200ms"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var order []int
			res := s.runner().RunTest(context.Background(), s.harnessTest(Test{Name: "x/" + c.name, Func: func(ctx context.Context, tt *T) {
				tt.Cleanup(func(context.Context) { order = append(order, 1) })
				tt.Cleanup(func(context.Context) { order = append(order, 2) })
				c.fn(ctx, tt)
			}}))
			if res.Status != c.status || strings.Join(res.Messages, "|") != strings.Join(c.messages, "|") {
				t.Errorf("status %s, messages %q; want %s, %q", res.Status, res.Messages, c.status, c.messages)
			}
			if len(order) != 2 || order[0] != 2 || order[1] != 1 {
				t.Errorf("cleanups ran %v, want [2 1]", order)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{Endpoint: "unix:///x.sock"}
	if err := c.defaults(); err != nil {
		t.Fatal(err)
	}
	if c.ImageEndpoint != c.Endpoint || c.Image != DefaultImage || c.Timeout != DefaultTimeout || len(c.RunID) != 8 || c.Output == nil {
		t.Errorf("defaults: %+v", c)
	}
	for _, bad := range []Config{{}, {Endpoint: "unix:///x.sock", Image: "a:1", RemovableImage: "a:1"}} {
		if err := bad.defaults(); err == nil {
			t.Errorf("defaults of %+v: no error", bad)
		}
	}
	if _, err := dial("tcp://127.0.0.1:1"); err == nil {
		t.Errorf("dial of a tcp endpoint: no error")
	}
}

func TestParseLog(t *testing.T) {
	lines, err := parseLog("2026-01-02T03:04:05.123456789Z stdout F hello world\n2026-01-02T03:04:05.2Z stderr P part\n2026-01-02T03:04:05.3Z stdout F \n")
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 3 || !hasLogLine(lines, "stdout", "hello world") || hasLogLine(lines, "stderr", "part") || !lines[1].Partial || lines[2].Content != "" {
		t.Errorf("parsed %+v", lines)
	}
	for _, bad := range []string{"hello\n", "notatime stdout F x\n", "2026-01-02T03:04:05Z stdin F x\n", "2026-01-02T03:04:05Z stdout X x\n"} {
		if _, err := parseLog(bad); err == nil {
			t.Errorf("parseLog(%q): no error", bad)
		}
	}
}

// TestRunWithoutRuntime: an endpoint nothing listens on is one error, not a run of failures.
func TestRunWithoutRuntime(t *testing.T) {
	var out bytes.Buffer
	report, err := Run(context.Background(), Config{Endpoint: "unix://" + filepath.Join(t.TempDir(), "none.sock"), Output: &out})
	if err == nil || report != nil || !strings.Contains(err.Error(), "nothing answers") {
		t.Errorf("Run against no runtime: %v, %v", report, err)
	}
	if out.Len() != 0 {
		t.Errorf("Run against no runtime printed %q", out.String())
	}
	if _, err := Run(context.Background(), Config{Endpoint: "unix:///x.sock", Focus: "("}); err == nil {
		t.Errorf("Run with a bad focus expression: no error")
	}
}
