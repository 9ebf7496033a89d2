// Package cni is berth's conformance suite for CNI plugins: given a directory of plugin
// executables and a network configuration (a .conf with one plugin or a .conflist with a
// chain), it runs the plugins as a container runtime does, through their binaries and
// the CNI protocol (github.com/containernetworking/cni's libcni), inside network
// namespaces it creates itself, and checks them against the CNI specification: VERSION,
// the schema of ADD's result, the interfaces, addresses and routes that result claims
// being really there, CHECK, DEL (complete and idempotent), GC and STATUS (spec 1.1.0),
// IPAM that hands out no address twice and takes back what DEL releases, and errors in
// the spec's format for bad input.
//
// It has the shape of berth's other suites (conformance/internal/harness): a table of
// named tests, each a func(ctx, *T), run one after the other; every namespace a test makes is named after the run and removed
// at the end of the test (with a DEL of whatever it added), and a final sweep removes
// whatever a test left. It must run as root on the host whose network the plugins
// change; it never sends traffic anywhere.
package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"

	"berth.dev/berth/conformance/internal/harness"
	"berth.dev/berth/conformance/internal/report"
)

const (
	// DefaultTimeout bounds each test; ipam/* makes a hundred attachments.
	DefaultTimeout = 3 * time.Minute
	// DefaultIfName is the interface the plugins create in each namespace.
	DefaultIfName = "eth0"
	// DefaultIPAMAttachments is how many attachments ipam/unique makes at once.
	DefaultIPAMAttachments = 100
	// NamespacePrefix starts the name of every network namespace the suite makes
	// (/var/run/netns/cnict-<run>-<n>), so that a sweep or an operator finds them.
	NamespacePrefix = "cnict-"

	// cleanupTimeout bounds the removal of one test's attachments and namespaces.
	cleanupTimeout = 2 * time.Minute
)

// Config is one run of the suite.
type Config struct {
	// BinDir holds the plugin executables (CNI_PATH).
	BinDir string
	// ConfFile is the network configuration: a .conflist, or a .conf with a single
	// plugin (anything with a "plugins" array is taken as a list).
	ConfFile string
	// IfName is the interface created in each namespace (DefaultIfName when empty).
	IfName string
	// IPAMAttachments is how many namespaces ipam/unique and ipam/release attach at
	// once (DefaultIPAMAttachments when zero). ipam/release attaches that many twice,
	// detaching in between, so it notices a leak when the pool holds fewer than twice
	// as many addresses.
	IPAMAttachments int
	// Timeout bounds each test (DefaultTimeout when zero).
	Timeout time.Duration
	// Focus and Skip are regular expressions on test names: a test runs when it matches
	// Focus (or Focus is empty) and does not match Skip (or Skip is empty).
	Focus, Skip string
	// Output receives a line per test and the closing summary (nothing when nil).
	Output io.Writer
	// RunID names the run's namespaces and container IDs; random when empty.
	RunID string
}

// Test is one named test of the suite.
type Test struct {
	// Name is "group/name", e.g. "add/result".
	Name string
	// Func runs the test; ctx ends at the test's timeout.
	Func func(ctx context.Context, t *T)
}

// Tests returns the suite's tests in the order they run.
func Tests() []Test {
	return append([]Test(nil), tests...)
}

// tests is the suite, from the simplest verbs to the ones that build on them, so that
// the first failure of a broken plugin is the most telling one.
var tests = []Test{
	{"version/supported", testVersionSupported},

	{"add/result", testAddResult},
	{"add/interfaces", testAddInterfaces},
	{"add/addresses", testAddAddresses},
	{"add/routes", testAddRoutes},

	{"check/after-add", testCheckAfterAdd},
	{"check/removed-interface", testCheckRemovedInterface},
	{"check/removed-address", testCheckRemovedAddress},

	{"del/removes", testDelRemoves},
	{"del/twice", testDelTwice},
	{"del/without-add", testDelWithoutAdd},

	{"gc/valid-attachments", testGCValidAttachments},
	{"status/ready", testStatusReady},

	{"ipam/unique", testIPAMUnique},
	{"ipam/release", testIPAMRelease},

	{"errors/missing-containerid", testErrorMissingContainerID},
	{"errors/bad-config", testErrorBadConfig},
	{"errors/unknown-version", testErrorUnknownVersion},
}

// Result is one test's outcome, Status its kind (the shapes all of berth's suites share).
type (
	Result = report.Result
	Status = report.Status
)

// The outcomes of a test.
const (
	StatusPass = report.StatusPass
	StatusFail = report.StatusFail
	StatusSkip = report.StatusSkip
)

// Report is a run's outcome.
type Report struct {
	Suite    string        `json:"suite"`
	BinDir   string        `json:"binDir"`
	ConfFile string        `json:"confFile"`
	Network  string        `json:"network"`
	Version  string        `json:"cniVersion"`
	Plugins  []string      `json:"plugins"`
	RunID    string        `json:"runID"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration"`
	report.Counts
	// Leftovers says what the final sweep found and removed; empty when every test
	// cleaned up after itself.
	Leftovers string          `json:"leftovers,omitempty"`
	Results   []report.Result `json:"results"`
}

func (r *Report) add(res report.Result) {
	r.Results = append(r.Results, res)
	r.Counts.Add(res.Status)
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
// "cni/<group>".
func (r *Report) WriteJUnit(w io.Writer) error {
	return report.JUnit{
		Suite: r.Suite, Started: r.Started, Duration: r.Duration, Results: r.Results,
		Properties: []report.Property{
			{Name: "binDir", Value: r.BinDir}, {Name: "confFile", Value: r.ConfFile},
			{Name: "network", Value: r.Network}, {Name: "cniVersion", Value: r.Version},
			{Name: "plugins", Value: strings.Join(r.Plugins, ",")}, {Name: "runID", Value: r.RunID},
		},
	}.Write(w)
}

// WriteFile writes the report to path with write ((*Report).WriteJSON or WriteJUnit).
func (r *Report) WriteFile(path string, write func(*Report, io.Writer) error) error {
	return report.WriteFile(path, func(w io.Writer) error { return write(r, w) })
}

// Selection decides which tests run.
type Selection struct{ sel report.Selection }

// NewSelection compiles the focus and skip expressions.
func NewSelection(focus, skip string) (Selection, error) {
	s, err := report.NewSelection(focus, skip)
	return Selection{s}, err
}

// Filter returns the tests of ts that s selects, in their order.
func (s Selection) Filter(ts []Test) []Test {
	var out []Test
	for _, t := range ts {
		if s.sel.Selected(t.Name) {
			out = append(out, t)
		}
	}
	return out
}

func (c *Config) defaults() error {
	if c.BinDir == "" {
		return errors.New("a plugin directory is needed (--bin-dir)")
	}
	if c.ConfFile == "" {
		return errors.New("a network configuration file is needed (--conf)")
	}
	if st, err := os.Stat(c.BinDir); err != nil || !st.IsDir() {
		return fmt.Errorf("plugin directory %s: not a directory (%v)", c.BinDir, err)
	}
	if c.IfName == "" {
		c.IfName = DefaultIfName
	}
	if c.IPAMAttachments <= 0 {
		c.IPAMAttachments = DefaultIPAMAttachments
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.Output == nil {
		c.Output = io.Discard
	}
	if c.RunID == "" {
		id, err := harness.RunID(3)
		if err != nil {
			return err
		}
		c.RunID = id
	}
	return nil
}

// LoadConf reads a network configuration file, a list or a single plugin, as a list.
func LoadConf(path string) (*libcni.NetworkConfigList, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("network configuration: %w", err)
	}
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(data, &probe); err != nil {
		return nil, fmt.Errorf("network configuration %s: %w", path, err)
	}
	if _, ok := probe["plugins"]; !ok {
		// A single plugin's configuration is the list of that one plugin, with the
		// name and version at the list's level, as a runtime loads it.
		list := map[string]any{"cniVersion": probe["cniVersion"], "name": probe["name"], "plugins": []any{probe}}
		if data, err = json.Marshal(list); err != nil {
			return nil, fmt.Errorf("network configuration %s: %w", path, err)
		}
	}
	list, err := libcni.NetworkConfFromBytes(data)
	if err != nil {
		return nil, fmt.Errorf("network configuration %s: %w", path, err)
	}
	return list, nil
}

// Run runs the selected tests against the plugins of cfg, writes a line per test and the
// summary to cfg.Output and returns the report. Failing tests are in the report, not in
// the error, which says that the run itself could not happen (a bad expression, a
// configuration that cannot be read, a plugin that is not in the directory).
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	sel, err := NewSelection(cfg.Focus, cfg.Skip)
	if err != nil {
		return nil, err
	}
	list, err := LoadConf(cfg.ConfFile)
	if err != nil {
		return nil, err
	}
	if len(list.Plugins) == 0 {
		return nil, fmt.Errorf("network configuration %s has no plugins", cfg.ConfFile)
	}
	var plugins []string
	for _, p := range list.Plugins {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, p.Network.Type)); err != nil {
			return nil, fmt.Errorf("plugin %q of %s is not in %s: %w", p.Network.Type, cfg.ConfFile, cfg.BinDir, err)
		}
		plugins = append(plugins, p.Network.Type)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the CNI suite makes network namespaces and links: it must run as root")
	}
	cacheDir, err := os.MkdirTemp("", "berth-cni-conformance-")
	if err != nil {
		return nil, fmt.Errorf("libcni cache dir: %w", err)
	}
	defer os.RemoveAll(cacheDir)
	s := &suite{cfg: cfg, list: list, cacheDir: cacheDir}
	s.cni = libcni.NewCNIConfigWithCacheDir([]string{cfg.BinDir}, cacheDir, nil)
	rep := &Report{
		Suite: "cni", BinDir: cfg.BinDir, ConfFile: cfg.ConfFile, Network: list.Name, Version: list.CNIVersion,
		Plugins: plugins, RunID: cfg.RunID, Started: time.Now(),
	}
	var hts []harness.Test
	for _, test := range sel.Filter(tests) {
		hts = append(hts, s.harnessTest(test))
	}
	for _, res := range s.runner().Run(ctx, hts) {
		rep.add(res)
	}
	if msg := s.sweep(ctx); msg != "" {
		rep.Leftovers = msg
		fmt.Fprintln(cfg.Output, "WARN "+msg)
	}
	rep.Duration = time.Since(rep.Started)
	fmt.Fprintln(cfg.Output, rep.Summary())
	if ctx.Err() != nil {
		return rep, fmt.Errorf("run interrupted: %w", ctx.Err())
	}
	return rep, nil
}

// suite is the state shared by the tests of one run.
type suite struct {
	cfg      Config
	list     *libcni.NetworkConfigList
	cni      *libcni.CNIConfig
	cacheDir string
	seq      int // namespaces made so far; the tests run one at a time
}

// runner runs the tests one after the other, each under cfg.Timeout. A cleanup that
// cannot remove what its test made only logs: the sweep tries again and reports
// leftovers, and a plugin's failing DEL is what del/* judge, not every test.
func (s *suite) runner() harness.Runner {
	return harness.Runner{Timeout: s.cfg.Timeout, CleanupTimeout: cleanupTimeout, Output: s.cfg.Output}
}

// harnessTest is test as the runner runs it, with a T of the suite's.
func (s *suite) harnessTest(test Test) harness.Test {
	return harness.Test{Name: test.Name, Func: func(ctx context.Context, ht *harness.T) {
		test.Func(ctx, &T{T: ht, suite: s})
	}}
}

// sweep removes the namespaces of this run that are left (a cleanup that failed, a test
// that hung), after a DEL of the attachment each may hold, and tells what it found.
func (s *suite) sweep(parent context.Context) string {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), cleanupTimeout)
	defer cancel()
	prefix := s.nsPrefix()
	entries, err := os.ReadDir(netnsDir)
	if err != nil {
		if os.IsNotExist(err) {
			return ""
		}
		return fmt.Sprintf("cleanup: list %s: %v", netnsDir, err)
	}
	var left, problems []string
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), prefix) {
			continue
		}
		left = append(left, e.Name())
		rt := &libcni.RuntimeConf{ContainerID: e.Name(), NetNS: filepath.Join(netnsDir, e.Name()), IfName: s.cfg.IfName}
		if err := s.cni.DelNetworkList(ctx, s.list, rt); err != nil {
			problems = append(problems, fmt.Sprintf("DEL %s: %v", e.Name(), err))
		}
		if err := deleteNetNS(e.Name()); err != nil {
			problems = append(problems, err.Error())
		}
	}
	if len(left) == 0 {
		return ""
	}
	msg := fmt.Sprintf("cleanup: %d namespaces of run %s were left after their tests", len(left), s.cfg.RunID)
	if len(problems) > 0 {
		msg += "; removing them failed: " + strings.Join(problems, "; ")
	}
	return msg
}

// nsPrefix starts the names of this run's namespaces, which are also the container IDs.
func (s *suite) nsPrefix() string { return NamespacePrefix + s.cfg.RunID + "-" }
