package harness

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"berth.dev/berth/conformance/internal/report"
)

func TestRunner(t *testing.T) {
	var order []string
	tests := []Test{
		{"a/pass", func(ctx context.Context, t *T) {
			t.Cleanup(func(context.Context) { order = append(order, "first") })
			t.Cleanup(func(context.Context) { order = append(order, "second") })
			t.Logf("hello")
		}},
		{"a/fail", func(ctx context.Context, t *T) {
			t.Errorf("one")
			t.Fatalf("two")
			t.Errorf("never")
		}},
		{"b/skip", func(ctx context.Context, t *T) { t.Skipf("not declared") }},
		{"b/panic", func(ctx context.Context, t *T) { panic("boom") }},
		{"b/timeout", func(ctx context.Context, t *T) { <-ctx.Done() }},
	}
	var out strings.Builder
	res := Runner{Timeout: 200 * time.Millisecond, Output: &out}.Run(context.Background(), tests)
	want := []struct {
		status report.Status
		msgs   []string
	}{
		{report.StatusPass, nil},
		{report.StatusFail, []string{"one", "two"}},
		{report.StatusSkip, []string{"not declared"}},
		{report.StatusFail, []string{"panic: boom"}},
		{report.StatusFail, []string{"timed out after 200ms"}},
	}
	if len(res) != len(want) {
		t.Fatalf("%d results, want %d", len(res), len(want))
	}
	for i, w := range want {
		if res[i].Status != w.status || !slices.Equal(res[i].Messages, w.msgs) {
			t.Errorf("%s: %s %q, want %s %q", res[i].Name, res[i].Status, res[i].Messages, w.status, w.msgs)
		}
	}
	if !slices.Equal(order, []string{"second", "first"}) {
		t.Errorf("cleanups ran %v, want last registered first", order)
	}
	if !slices.Equal(res[0].Logs, []string{"hello"}) {
		t.Errorf("logs %v", res[0].Logs)
	}
	if lines := strings.Count(out.String(), "\n"); lines < len(tests) {
		t.Errorf("output has %d lines for %d tests:\n%s", lines, len(tests), out.String())
	}
	var rep Report
	rep.Add(res...)
	if got := rep.Summary(); got != "1 passed, 3 failed, 1 skipped" {
		t.Errorf("summary %q", got)
	}
}

func TestSelect(t *testing.T) {
	ts := []Test{{Name: "Identity/Probe/ready"}, {Name: "Controller/CreateVolume/idempotent"}, {Name: "Node/NodeGetInfo/valid"}}
	got, err := Select(ts, "^(Identity|Node)/", "Probe")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "Node/NodeGetInfo/valid" {
		t.Errorf("selected %v", got)
	}
	if _, err := Select(ts, "(", ""); err == nil {
		t.Errorf("a bad focus expression was accepted")
	}
}
