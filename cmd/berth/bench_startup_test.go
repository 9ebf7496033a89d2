package main

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestBenchStartupSmoke runs `berth bench startup` with 3 replicas on a real containerd
// and checks that every figure is printed and that nothing is left behind: the temp dirs,
// the bridge and the containerd. It does not judge the figures.
func TestBenchStartupSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server, containerd, an agent and real containers")
	}
	if err := checkStartupHost(); err != nil {
		t.Skip(err)
	}
	bin := buildBerth(t)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "bench", "startup", "--replicas", "3", "--floor-runs", "2")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench startup: %v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	sec, mbs := `[0-9]+\.[0-9]{3} s`, `[0-9]+\.[0-9] MB`
	want := map[string]string{
		"machine":                 `[0-9]+ CPUs, `,
		"floor":                   `2 CRI pods one at a time`,
		"floor p50":               sec,
		"floor p99":               sec,
		"deployment":              `3 replicas of busybox sleep 3600`,
		"pod start-up p50":        sec + ` +target ≤ 1\.3 × floor p50 = ` + sec + `  (PASS|MISS)`,
		"pod start-up p99":        sec + ` +target ≤ 2\.000 s  (PASS|MISS)`,
		"pod start-up max":        sec,
		"  seen to bound":         `p50 ` + sec + `, p99 ` + sec,
		"  bound to Ready":        `p50 ` + sec + `, p99 ` + sec,
		"all pods Ready":          sec,
		"time per pod":            sec + ` \(all Ready / replicas; the floor, one at a time: ` + sec + `\)`,
		"agent CPU":               `[0-9]+\.[0-9]{2} s`,
		"agent RSS at last Ready": mbs,
		"agent RSS":               mbs + ` \(3 pods running, 5s later\) +target ≤ 60\.0 MB  (PASS|MISS)`,
		"agent RSS split":         mbs + ` anonymous .*, ` + mbs + ` file-backed`,
		"agent RSS peak":          mbs + ` \(VmHWM\)`,
	}
	for label, value := range want {
		re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(label+":") + ` +` + value)
		if !re.MatchString(out) {
			t.Errorf("no line %q matching %q in the output:\n%s", label+":", value, out)
		}
	}
	logs := stderr.String()
	if !strings.Contains(logs, "pods gone in") {
		t.Errorf("the pods were not removed through the API:\n%s", logs)
	}
	// Nothing is left: the dirs named on stderr, the bridge, the containerd.
	for _, re := range []string{`--data-dir (\S+)`, `node dir (\S+)`} {
		m := regexp.MustCompile(re).FindStringSubmatch(logs)
		if m == nil {
			t.Errorf("stderr does not name a dir (%s):\n%s", re, logs)
			continue
		}
		if _, err := os.Stat(m[1]); !os.IsNotExist(err) {
			t.Errorf("%s still exists after the run (err %v)", m[1], err)
		}
	}
	if m := regexp.MustCompile(`bridge (\S+)`).FindStringSubmatch(logs); m == nil {
		t.Errorf("stderr does not name the bridge:\n%s", logs)
	} else if out, err := exec.Command("ip", "link", "show", m[1]).CombinedOutput(); err == nil {
		t.Errorf("bridge %s still exists after the run:\n%s", m[1], out)
	}
	if m := regexp.MustCompile(`node dir (\S+)`).FindStringSubmatch(logs); m != nil {
		if out, err := exec.Command("pgrep", "-f", m[1]).Output(); err == nil {
			t.Errorf("processes of the run are still running: %s", out)
		}
	}
}

func TestWriteStartupResultTargets(t *testing.T) {
	base := startupResult{
		floor:     quantiles{P50: 300 * time.Millisecond},
		startup:   quantiles{P50: 390 * time.Millisecond, P99: 2 * time.Second},
		rssSettle: 60 * mb,
	}
	cases := []struct {
		name   string
		change func(*startupResult)
		missed string // the figure whose target is missed, "" for none
	}{
		{"all at the limit", func(*startupResult) {}, ""},
		{"p50", func(r *startupResult) { r.startup.P50 += time.Millisecond }, "pod start-up p50"},
		{"p99", func(r *startupResult) { r.startup.P99 += time.Millisecond }, "pod start-up p99"},
		{"rss", func(r *startupResult) { r.rssSettle++ }, "agent RSS"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := base
			c.change(&r)
			var buf bytes.Buffer
			writeStartupResult(&buf, machineInfo{}, startupBenchOptions{replicas: 50, floorRuns: 10}, &r)
			for _, line := range strings.Split(buf.String(), "\n") {
				label, _, _ := strings.Cut(line, ":")
				switch {
				case strings.HasSuffix(line, "MISS") && label != c.missed:
					t.Errorf("unexpected MISS: %s", line)
				case strings.HasSuffix(line, "PASS") && label == c.missed:
					t.Errorf("expected MISS: %s", line)
				}
			}
			if c.missed != "" && !strings.Contains(buf.String(), "MISS") {
				t.Errorf("no MISS in:\n%s", buf.String())
			}
		})
	}
}
