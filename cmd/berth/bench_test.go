package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// buildBerth builds this command into a temp dir: the bench starts its server as a child
// process, so it needs a real binary, not the test binary.
func buildBerth(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "berth")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestBenchAPIPrintsEveryFigure runs a small bench end to end and checks that every
// figure line is there with a value. It does not judge the figures: speed is the bench's
// business, not a test's.
func TestBenchAPIPrintsEveryFigure(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server with embedded etcd")
	}
	bin := buildBerth(t)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "bench", "api", "--creates", "200", "--workers", "4")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench api: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	num := `[0-9]+(\.[0-9]+)?`
	want := map[string]string{
		"machine":            `[0-9]+ CPUs, .+, ` + num + ` GiB memory`,
		"load average":       num + ` ` + num + ` ` + num,
		"go version":         `go[0-9]`,
		"berth version":      `\S+ \(server reports v1\.`,
		"run":                `200 ConfigMap creates from 4 workers`,
		"elapsed":            num + ` s`,
		"creates/s":          `[0-9]+ +target ≥ 1500  (PASS|MISS)`,
		"create latency p50": num + ` ms`,
		"create latency p90": num + ` ms`,
		"create latency p99": num + ` ms +target ≤ 50\.0 ms  (PASS|MISS)`,
		"create latency max": num + ` ms`,
		"watch lag p50":      num + ` ms`,
		"watch lag p99":      num + ` ms +target ≤ 100\.0 ms  (PASS|MISS)`,
		"watch lag max":      num + ` ms`,
		"watch events early": `[0-9]+ `,
		"server RSS idle":    num + ` MB`,
		"server RSS after":   num + ` MB +target ≤ 150\.0 MB  (PASS|MISS)`,
		"server RSS split":   num + ` MB anonymous .*, ` + num + ` MB file-backed`,
		"server RSS peak":    num + ` MB`,
		"server CPU":         num + ` s`,
		"client CPU":         num + ` s`,
		"etcd data dir":      num + ` MB on disk: WAL ` + num + ` MB .*, bbolt db ` + num + ` MB`,
		"targets":            `[0-4] of 4 met`,
	}
	for label, value := range want {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(label+":") + ` +` + value)
		if !re.MatchString(out) {
			t.Errorf("no line %q matching %q in the output:\n%s", label+":", value, out)
		}
	}
	// The temp data dir is gone (no --keep-dir).
	if m := regexp.MustCompile(`--data-dir (\S+)`).FindStringSubmatch(stderr.String()); m == nil {
		t.Errorf("stderr does not name the data dir:\n%s", stderr.String())
	} else if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
		t.Errorf("data dir %s still exists after the run (err %v)", m[1], err)
	}
}

// TestBenchAPIFailsWhenServerDoesNotStart checks that a failed run is an error, with the
// server's log, and not a report.
func TestBenchAPIFailsWhenServerDoesNotStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the berth binary")
	}
	bin := buildBerth(t)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "bench", "api", "--creates", "10", "--server-binary", "/bin/false")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil {
		t.Fatalf("bench api with a server that exits at once succeeded:\n%s", stdout.String())
	}
	if !strings.Contains(stderr.String(), "the server exited before it was ready") {
		t.Errorf("stderr does not say the server exited:\n%s", stderr.String())
	}
	if stdout.Len() != 0 {
		t.Errorf("a failed run printed figures:\n%s", stdout.String())
	}
}

func TestQuantilesOf(t *testing.T) {
	ms := func(n int) time.Duration { return time.Duration(n) * time.Millisecond }
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = ms(100 - i) // 100 ms down to 1 ms: quantilesOf must sort
	}
	cases := []struct {
		name string
		in   []time.Duration
		want quantiles
	}{
		{"empty", nil, quantiles{}},
		{"one", []time.Duration{ms(7)}, quantiles{ms(7), ms(7), ms(7), ms(7)}},
		{"two", []time.Duration{ms(2), ms(1)}, quantiles{ms(1), ms(2), ms(2), ms(2)}},
		{"hundred", hundred, quantiles{P50: ms(50), P90: ms(90), P99: ms(99), Max: ms(100)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := quantilesOf(c.in); got != c.want {
				t.Errorf("quantilesOf = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestEvaluateTargets(t *testing.T) {
	pass := apiBenchResult{
		CreatesPerSec:  1500,
		Latency:        quantiles{P99: 50 * time.Millisecond},
		WatchLag:       quantiles{P99: 100 * time.Millisecond},
		ServerRSSAfter: 150 * mb,
	}
	cases := []struct {
		name   string
		change func(*apiBenchResult)
		missed string // the one target that must be missed, "" for none
	}{
		{"all at the limit", func(*apiBenchResult) {}, ""},
		{"slow", func(r *apiBenchResult) { r.CreatesPerSec = 1499.9 }, "creates/s"},
		{"latency", func(r *apiBenchResult) { r.Latency.P99 += time.Microsecond }, "create latency p99"},
		{"watch lag", func(r *apiBenchResult) { r.WatchLag.P99 += time.Microsecond }, "watch lag p99"},
		{"memory", func(r *apiBenchResult) { r.ServerRSSAfter++ }, "server RSS after"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := pass
			c.change(&r)
			for _, tg := range evaluateTargets(&r) {
				if want := tg.Name != c.missed; tg.Met != want {
					t.Errorf("%s (%s, goal %s): met = %v, want %v", tg.Name, tg.Actual, tg.Goal, tg.Met, want)
				}
			}
		})
	}
}

func TestAPIBenchJSON(t *testing.T) {
	r := &apiBenchResult{Creates: 3, CreatesPerSec: 2000, Latency: quantiles{P99: time.Millisecond}}
	r.Targets = evaluateTargets(r)
	var buf bytes.Buffer
	if err := writeAPIBenchJSON(&buf, r); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(buf.Bytes(), &back); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, buf.String())
	}
	for _, k := range []string{"machine", "createsPerSecond", "createLatencyNs", "watchLagNs", "serverRSSAfterBytes", "targets"} {
		if _, ok := back[k]; !ok {
			t.Errorf("JSON has no %q:\n%s", k, buf.String())
		}
	}
	if got := back["createLatencyNs"].(map[string]any)["p99"]; got != float64(time.Millisecond) {
		t.Errorf("createLatencyNs.p99 = %v, want %d", got, time.Millisecond)
	}
}
