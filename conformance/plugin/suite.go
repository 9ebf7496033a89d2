// Package plugin is berth's conformance suite for out-of-process plugins: it launches a
// plugin binary as berth's scheduler and API server do (hashicorp/go-plugin over gRPC,
// with the handshake of plugins/scheduler and plugins/admission), learns which kind it is
// from the service that answers PluginInfo (specs/scheduler/v1 or specs/admission/v1),
// and checks the contract the SDK promises the hosts: the handshake and its protocol
// version; PluginInfo's name, version and API versions; that the declared extension
// points (or hooks) answer and the others are refused; that every call answers within
// the per-call deadline; scores within [0, 100]; the same answers to the same input;
// empty inputs answered without a crash; verdicts and valid patches from admission
// plugins; and a clean exit when the host closes the connection.
//
// It has the shape of berth's other suites (conformance/internal/harness): a table of
// named tests, each a func(ctx, *T), run one after the other; each test runs against a
// process of its own, killed after it. It imports only the protocols, never the SDK, so
// that it checks what a plugin says on the wire, whatever it was built with.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"berth.dev/berth/conformance/internal/harness"
	"berth.dev/berth/conformance/internal/report"
	admissionv1 "berth.dev/berth/specs/admission/v1"
	schedulerv1 "berth.dev/berth/specs/scheduler/v1"
)

// Defaults of Config.
const (
	// DefaultDeadline bounds each call, as the hosts' per-plugin timeout does (theirs is
	// 2 s by default; the suite is stricter so that a plugin has room on a loaded host).
	DefaultDeadline = time.Second
	// DefaultTimeout bounds each test.
	DefaultTimeout = 30 * time.Second
	// DefaultStartTimeout bounds the launch of a process, up to the end of its handshake.
	DefaultStartTimeout = 10 * time.Second
)

// The go-plugin handshakes of berth's hosts. They repeat plugins/scheduler.Handshake and
// plugins/admission.Handshake (the suite does not import the SDK; a test keeps them
// equal): a plugin answers only a host that sets its magic cookie, so the suite sets
// both and learns the kind from the service that answers.
var (
	SchedulerHandshake = goplugin.HandshakeConfig{
		ProtocolVersion:  1,
		MagicCookieKey:   "BERTH_SCHEDULER_PLUGIN",
		MagicCookieValue: "c6a3bf0e-berth-scheduler-plugin",
	}
	AdmissionHandshake = goplugin.HandshakeConfig{
		ProtocolVersion:  1,
		MagicCookieKey:   "BERTH_ADMISSION_PLUGIN",
		MagicCookieValue: "5d0e7a91-berth-admission-plugin",
	}
)

// APIVersion is the version of both protocols the suite speaks, and so checks.
const APIVersion = "v1"

// Kind is the kind of plugin, after the service that answered PluginInfo.
type Kind string

// The kinds of plugin.
const (
	Scheduler Kind = "scheduler"
	Admission Kind = "admission"
)

// Config is one run of the suite.
type Config struct {
	// Path is the plugin's executable.
	Path string
	// Args are the plugin's arguments as JSON, passed to Configure as a host passes its
	// configuration file's args (none when empty).
	Args []byte
	// Deadline bounds each call (DefaultDeadline when zero).
	Deadline time.Duration
	// Timeout bounds each test (DefaultTimeout when zero).
	Timeout time.Duration
	// StartTimeout bounds the start of each process (DefaultStartTimeout when zero).
	StartTimeout time.Duration
	// Focus and Skip are regular expressions on test names: a test runs when it matches
	// Focus (or Focus is empty) and does not match Skip (or Skip is empty).
	Focus, Skip string
	// Output receives a line per test and the closing summary (nothing when nil).
	Output io.Writer
	// RunID names the run's pods and requests; random when empty.
	RunID string
}

// Test is one named test of the suite.
type Test struct {
	// Name is "group/what", e.g. "score/range".
	Name string
	// Func runs the test; ctx ends at the test's timeout.
	Func func(ctx context.Context, t *T)
}

// Tests returns the suite's tests in the order they run.
func Tests() []Test { return append([]Test(nil), tests...) }

// Report is a run's outcome; Properties has the path, the plugin's kind, name, version,
// API versions and extension points.
type Report = harness.Report

// The outcomes of a test.
const (
	StatusPass = report.StatusPass
	StatusFail = report.StatusFail
	StatusSkip = report.StatusSkip
)

// Select returns the tests of ts that focus and skip select, in their order.
func Select(ts []Test, focus, skip string) ([]Test, error) {
	return harness.SelectBy(ts, func(t Test) string { return t.Name }, focus, skip)
}

func (c *Config) defaults() error {
	if c.Path == "" {
		return errors.New("the plugin's executable is needed (--path bin/berth-scheduler-cost)")
	}
	if c.Deadline <= 0 {
		c.Deadline = DefaultDeadline
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.StartTimeout <= 0 {
		c.StartTimeout = DefaultStartTimeout
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

// Run runs the selected tests against the plugin at cfg.Path, writes a line per test and
// the summary to cfg.Output and returns the report. Failing tests are in the report, not
// in the error, which says that the run itself could not happen (a bad expression, a
// path that is not an executable). A plugin that fails its handshake fails
// "handshake/protocol", and the tests that need a running plugin fail with it.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	selected, err := Select(tests, cfg.Focus, cfg.Skip)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Stat(cfg.Path); err != nil {
		return nil, fmt.Errorf("plugin executable: %w", err)
	} else if fi.IsDir() || fi.Mode()&0o111 == 0 {
		return nil, fmt.Errorf("plugin executable %s is not an executable file", cfg.Path)
	}
	s := &suite{cfg: cfg}
	s.preflight(ctx)
	rep := &Report{Suite: "plugin", RunID: cfg.RunID, Started: time.Now(), Properties: s.properties()}
	var hts []harness.Test
	for _, test := range selected {
		fn := test.Func
		hts = append(hts, harness.Test{Name: test.Name, Func: func(ctx context.Context, ht *harness.T) {
			fn(ctx, &T{T: ht, s: s})
		}})
	}
	runner := harness.Runner{Timeout: cfg.Timeout, Output: cfg.Output}
	rep.Add(runner.Run(ctx, hts)...)
	rep.Duration = time.Since(rep.Started)
	fmt.Fprintln(cfg.Output, rep.Summary())
	if ctx.Err() != nil {
		return rep, fmt.Errorf("run interrupted: %w", ctx.Err())
	}
	return rep, nil
}

// suite is what the tests of one run share: the configuration, what a first process of
// the plugin said of itself, and the calls that missed their deadline.
type suite struct {
	cfg Config

	// launchErr is why the first process could not be started and asked who it is.
	launchErr error
	kind      Kind
	version   int
	protocol  goplugin.Protocol
	sched     *schedulerv1.PluginInfoResponse
	adm       *admissionv1.PluginInfoResponse

	mu   sync.Mutex
	slow []string
}

// preflight starts a first process to learn the plugin's kind and what it declares.
func (s *suite) preflight(ctx context.Context) {
	sess, err := s.launch(ctx)
	if err != nil {
		s.launchErr = err
		return
	}
	defer sess.kill()
	s.kind, s.version, s.protocol = sess.kind, sess.version, sess.protocol
	s.sched, s.adm = sess.schedInfo, sess.admInfo
}

// properties are what the report records about the plugin.
func (s *suite) properties() map[string]string {
	p := map[string]string{"path": s.cfg.Path, "deadline": s.cfg.Deadline.String()}
	switch {
	case s.sched != nil:
		p["kind"], p["name"], p["version"] = string(Scheduler), s.sched.GetName(), s.sched.GetVersion()
		p["apiVersions"] = strings.Join(s.sched.GetApiVersions(), ",")
		var pts []string
		for _, pt := range s.sched.GetExtensionPoints() {
			pts = append(pts, pointName(pt))
		}
		p["extensionPoints"] = strings.Join(pts, ",")
	case s.adm != nil:
		p["kind"], p["name"], p["version"] = string(Admission), s.adm.GetName(), s.adm.GetVersion()
		p["apiVersions"] = strings.Join(s.adm.GetApiVersions(), ",")
		p["mutating"], p["validating"] = fmt.Sprint(s.adm.GetMutating()), fmt.Sprint(s.adm.GetValidating())
	}
	return p
}

// missed records a call that did not answer within the deadline.
func (s *suite) missed(what string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.slow = append(s.slow, what)
}

func (s *suite) slowCalls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.slow)
}

// grpcConn is the plugin kind of go-plugin's plugin set on the suite's side: it hands out
// the bare connection, on which the suite makes the protocols' clients itself.
type grpcConn struct {
	goplugin.NetRPCUnsupportedPlugin
}

func (grpcConn) GRPCServer(*goplugin.GRPCBroker, *grpc.Server) error {
	return errors.New("the conformance suite is a host, not a plugin")
}

func (grpcConn) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return conn, nil
}

// logSink keeps what go-plugin logs of a process: its stderr lines (for the test's log
// when it fails) and whether Kill had to force it.
type logSink struct {
	mu     sync.Mutex
	lines  []string
	forced bool
}

func (l *logSink) Accept(_ string, _ hclog.Level, msg string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if msg == "plugin failed to exit gracefully" {
		l.forced = true
	}
	line := msg
	for i := 0; i+1 < len(args); i += 2 {
		line += fmt.Sprintf(" %v=%v", args[i], args[i+1])
	}
	if len(l.lines) == 50 {
		l.lines = l.lines[1:]
	}
	l.lines = append(l.lines, line)
}

func (l *logSink) forcedKill() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.forced
}

func (l *logSink) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// session is one process of the plugin, past its handshake and PluginInfo.
type session struct {
	client   *goplugin.Client
	logs     *logSink
	pid      int
	kind     Kind
	version  int
	protocol goplugin.Protocol

	sched     schedulerv1.SchedulerClient
	adm       admissionv1.AdmissionClient
	schedInfo *schedulerv1.PluginInfoResponse
	admInfo   *admissionv1.PluginInfoResponse
}

// kill ends the process (gracefully if it lets itself be).
func (s *session) kill() { s.client.Kill() }

// launch starts a process of the plugin with both hosts' magic cookies, completes
// go-plugin's handshake and asks the plugin who it is on each protocol in turn.
func (s *suite) launch(ctx context.Context) (*session, error) {
	logs := &logSink{}
	hl := hclog.NewInterceptLogger(&hclog.LoggerOptions{Name: "plugin", Output: io.Discard, Level: hclog.Debug})
	hl.RegisterSink(logs)
	cmd := exec.Command(s.cfg.Path)
	// go-plugin adds the environment and the scheduler's cookie to this.
	cmd.Env = []string{AdmissionHandshake.MagicCookieKey + "=" + AdmissionHandshake.MagicCookieValue}
	client := goplugin.NewClient(&goplugin.ClientConfig{
		HandshakeConfig:  SchedulerHandshake,
		Plugins:          goplugin.PluginSet{"scheduler": grpcConn{}, "admission": grpcConn{}},
		Cmd:              cmd,
		AllowedProtocols: []goplugin.Protocol{goplugin.ProtocolGRPC},
		Logger:           hl,
		StartTimeout:     s.cfg.StartTimeout,
	})
	sess := &session{client: client, logs: logs}
	fail := func(err error) (*session, error) {
		client.Kill()
		if tail := logs.tail(); tail != "" {
			err = fmt.Errorf("%w\nplugin's log:\n%s", err, tail)
		}
		return nil, err
	}
	rpc, err := client.Client()
	if err != nil {
		return fail(fmt.Errorf("start %s and complete go-plugin's handshake: %w", s.cfg.Path, err))
	}
	sess.version, sess.protocol = client.NegotiatedVersion(), client.Protocol()
	if rc := client.ReattachConfig(); rc != nil {
		sess.pid = rc.Pid
	}
	raw, err := rpc.Dispense("scheduler")
	if err != nil {
		return fail(fmt.Errorf("open the gRPC connection to %s: %w", s.cfg.Path, err))
	}
	conn, ok := raw.(*grpc.ClientConn)
	if !ok {
		return fail(fmt.Errorf("go-plugin dispensed %T, want a gRPC connection", raw))
	}
	sess.sched, sess.adm = schedulerv1.NewSchedulerClient(conn), admissionv1.NewAdmissionClient(conn)
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Deadline)
	si, serr := sess.sched.PluginInfo(cctx, &schedulerv1.PluginInfoRequest{HostApiVersions: []string{APIVersion}})
	cancel()
	if serr == nil {
		sess.kind, sess.schedInfo = Scheduler, si
		return sess, nil
	}
	cctx, cancel = context.WithTimeout(ctx, s.cfg.Deadline)
	ai, aerr := sess.adm.PluginInfo(cctx, &admissionv1.PluginInfoRequest{HostApiVersions: []string{APIVersion}})
	cancel()
	if aerr == nil {
		sess.kind, sess.admInfo = Admission, ai
		return sess, nil
	}
	if status.Code(serr) != codes.Unimplemented {
		return fail(fmt.Errorf("scheduler PluginInfo: %w (admission PluginInfo: %v)", serr, aerr))
	}
	return fail(fmt.Errorf("neither berth.scheduler.v1.Scheduler nor berth.admission.v1.Admission answers PluginInfo: %v; %v", serr, aerr))
}
