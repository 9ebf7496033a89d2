package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The API benchmark's targets on a 2-core machine (issue 2, item 9).
const (
	targetCreatesPerSec = 1500
	targetLatencyP99    = 50 * time.Millisecond
	targetWatchLagP99   = 100 * time.Millisecond
	targetRSSBytes      = 150 * mb
)

// mb is a megabyte as figures are printed: 10^6 bytes.
const mb = 1000 * 1000

// machineInfo describes where a run happened, so its figures can be compared.
type machineInfo struct {
	CPUs        int    `json:"cpus"`
	CPUModel    string `json:"cpuModel"`
	MemoryBytes int64  `json:"memoryBytes"`
	Kernel      string `json:"kernel"`
	// LoadAvg is /proc/loadavg's 1, 5 and 15 minute figures before the run: anything else
	// busy on the machine shows here, and in the figures.
	LoadAvg string `json:"loadAvg"`
}

func readMachineInfo() machineInfo {
	m := machineInfo{CPUs: runtime.NumCPU(), CPUModel: "unknown"}
	if v, ok := procField("/proc/cpuinfo", "model name"); ok {
		m.CPUModel = v
	}
	if v, ok := procField("/proc/meminfo", "MemTotal"); ok {
		m.MemoryBytes, _ = parseKB(v)
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	if data, err := os.ReadFile("/proc/loadavg"); err == nil {
		if f := strings.Fields(string(data)); len(f) >= 3 {
			m.LoadAvg = strings.Join(f[:3], " ")
		}
	}
	return m
}

// procField returns the value of the first "key: value" line of a /proc file.
func procField(path, key string) (string, bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v), true
		}
	}
	return "", false
}

// parseKB parses a /proc value such as "123456 kB" into bytes.
func parseKB(v string) (int64, error) {
	n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(v, "kB")), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %q: %w", v, err)
	}
	return n * 1024, nil
}

// procMemory is a process's resident memory in bytes: now (VmRSS), its peak (VmHWM), and
// now split into anonymous memory (the Go heap, stacks) and file-backed pages (the
// binary's text, etcd's memory-mapped database).
type procMemory struct{ rss, hwm, anon, file int64 }

func readProcMemory(pid int) (procMemory, error) {
	path := fmt.Sprintf("/proc/%d/status", pid)
	var m procMemory
	for _, f := range []struct {
		key string
		dst *int64
	}{{"VmRSS", &m.rss}, {"VmHWM", &m.hwm}, {"RssAnon", &m.anon}, {"RssFile", &m.file}} {
		v, ok := procField(path, f.key)
		if !ok {
			return m, fmt.Errorf("read %s of the server from %s: not found", f.key, path)
		}
		n, err := parseKB(v)
		if err != nil {
			return m, fmt.Errorf("read %s of the server from %s: %w", f.key, path, err)
		}
		*f.dst = n
	}
	return m, nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's CPU times: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// readProcCPU returns the user plus system CPU time a process has used.
func readProcCPU(pid int) (time.Duration, error) {
	path := fmt.Sprintf("/proc/%d/stat", pid)
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read server CPU time: %w", err)
	}
	// The command name, field 2, may hold spaces; fields after its ")" start at field 3.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return 0, fmt.Errorf("read server CPU time: %s has an unexpected format", path)
	}
	fields := strings.Fields(string(data[i+1:]))
	if len(fields) < 13 {
		return 0, fmt.Errorf("read server CPU time: %s has an unexpected format", path)
	}
	var ticks int64
	for _, f := range fields[11:13] { // utime and stime, fields 14 and 15
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("read server CPU time from %s: %w", path, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// quantiles summarises a set of durations.
type quantiles struct {
	P50 time.Duration `json:"p50"`
	P90 time.Duration `json:"p90"`
	P99 time.Duration `json:"p99"`
	Max time.Duration `json:"max"`
}

// quantilesOf returns nearest-rank percentiles of ds (which it sorts).
func quantilesOf(ds []time.Duration) quantiles {
	if len(ds) == 0 {
		return quantiles{}
	}
	slices.Sort(ds)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(ds))+0.999999) - 1
		return ds[max(0, min(i, len(ds)-1))]
	}
	return quantiles{P50: rank(0.50), P90: rank(0.90), P99: rank(0.99), Max: ds[len(ds)-1]}
}

// target is one figure measured against berth's goal for it.
type target struct {
	Name   string `json:"name"`
	Goal   string `json:"goal"`
	Actual string `json:"actual"`
	Met    bool   `json:"met"`
}

func evaluateTargets(r *apiBenchResult) []target {
	return []target{
		{"creates/s", fmt.Sprintf("≥ %d", targetCreatesPerSec), fmt.Sprintf("%.0f", r.CreatesPerSec), r.CreatesPerSec >= targetCreatesPerSec},
		{"create latency p99", "≤ " + ms(targetLatencyP99), ms(r.Latency.P99), r.Latency.P99 <= targetLatencyP99},
		{"watch lag p99", "≤ " + ms(targetWatchLagP99), ms(r.WatchLag.P99), r.WatchLag.P99 <= targetWatchLagP99},
		{"server RSS after", "≤ " + megabytes(targetRSSBytes), megabytes(r.ServerRSSAfter), r.ServerRSSAfter <= targetRSSBytes},
	}
}

func passMiss(met bool) string {
	if met {
		return "PASS"
	}
	return "MISS"
}

func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 1, 64) + " ms"
}

func megabytes(b int64) string {
	return strconv.FormatFloat(float64(b)/mb, 'f', 1, 64) + " MB"
}

// writeAPIBenchText prints one figure per line, "label: value", a target's verdict at
// the end of its line, and the verdicts again as a summary.
func writeAPIBenchText(w io.Writer, r *apiBenchResult) {
	verdict := map[string]string{}
	for _, t := range r.Targets {
		verdict[t.Name] = fmt.Sprintf("target %s  %s", t.Goal, passMiss(t.Met))
	}
	line := func(label, value, targetName string) {
		if v := verdict[targetName]; v != "" {
			fmt.Fprintf(w, "%-22s %-22s %s\n", label+":", value, v)
			return
		}
		fmt.Fprintf(w, "%-22s %s\n", label+":", value)
	}
	m := r.Machine
	line("machine", fmt.Sprintf("%d CPUs, %s, %.1f GiB memory, Linux %s", m.CPUs, m.CPUModel, float64(m.MemoryBytes)/(1<<30), m.Kernel), "")
	line("load average", m.LoadAvg+" (1, 5, 15 min, before the run)", "")
	line("go version", r.GoVersion, "")
	line("berth version", fmt.Sprintf("%s (server reports %s)", r.BerthVersion, r.ServerVersion), "")
	controllers := "controllers off (the API server alone)"
	if r.Controllers {
		controllers = "controllers on (they mirror every ConfigMap)"
	}
	line("run", fmt.Sprintf("%d ConfigMap creates from %d workers, embedded etcd, %s", r.Creates, r.Workers, controllers), "")
	line("elapsed", fmt.Sprintf("%.2f s", r.Elapsed.Seconds()), "")
	line("creates/s", fmt.Sprintf("%.0f", r.CreatesPerSec), "creates/s")
	line("create latency p50", ms(r.Latency.P50), "")
	line("create latency p90", ms(r.Latency.P90), "")
	line("create latency p99", ms(r.Latency.P99), "create latency p99")
	line("create latency max", ms(r.Latency.Max), "")
	line("watch lag p50", ms(r.WatchLag.P50), "")
	line("watch lag p99", ms(r.WatchLag.P99), "watch lag p99")
	line("watch lag max", ms(r.WatchLag.Max), "")
	line("watch events early", fmt.Sprintf("%d (ADDED before the create returned; lag counted as 0)", r.EarlyEvents), "")
	line("server RSS idle", megabytes(r.ServerRSSIdle), "")
	line("server RSS after", megabytes(r.ServerRSSAfter), "server RSS after")
	line("server RSS split", fmt.Sprintf("%s anonymous (heap, stacks), %s file-backed (binary, etcd db mmap)", megabytes(r.ServerRSSAnon), megabytes(r.ServerRSSFile)), "")
	line("server RSS peak", megabytes(r.ServerRSSPeak)+" (VmHWM)", "")
	line("server CPU", fmt.Sprintf("%.2f s (%.0f µs per create, etcd included)", r.ServerCPU.Seconds(), float64(r.ServerCPU.Microseconds())/float64(r.Creates)), "")
	line("client CPU", fmt.Sprintf("%.2f s (this process: workers and watch)", r.ClientCPU.Seconds()), "")
	line("etcd data dir", fmt.Sprintf("%s on disk: WAL %s (preallocated 64 MB segments), bbolt db %s", megabytes(r.EtcdDirBytes), megabytes(r.EtcdWALBytes), megabytes(r.EtcdDBBytes)), "")
	met := 0
	for _, t := range r.Targets {
		if t.Met {
			met++
		}
	}
	line("targets", fmt.Sprintf("%d of %d met", met, len(r.Targets)), "")
}
