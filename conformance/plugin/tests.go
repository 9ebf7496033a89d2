package plugin

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/protobuf/proto"

	admissionv1 "berth.dev/berth/specs/admission/v1"
	schedulerv1 "berth.dev/berth/specs/scheduler/v1"
)

// ShutdownGrace is how long a plugin may take to exit once the host closes the
// connection: go-plugin waits 2 s and then kills it.
const ShutdownGrace = 2 * time.Second

var tests = []Test{
	{"handshake/protocol", testHandshake},
	{"info/identity", testIdentity},
	{"info/api-versions", testAPIVersions},
	{"info/declarations", testDeclarations},
	{"info/stable", testInfoStable},
	{"configure/args", testConfigure},
	{"extension-points/declared-answer", testDeclaredPoints},
	{"extension-points/undeclared-refused", testUndeclaredPoints},
	{"hooks/declared-answer", byKind(nil, testAdmissionHooks)},
	{"filter/statuses", testFilterStatuses},
	{"score/range", testScoreRange},
	{"validate/verdict", testValidateVerdict},
	{"mutate/patch", testMutatePatch},
	{"determinism/same-input", byKind(testSchedulerDeterminism, testAdmissionDeterminism)},
	{"empty/no-nodes", byKind(testSchedulerNoNodes, nil)},
	{"empty/pod", byKind(testSchedulerEmptyPod, nil)},
	{"empty/object", byKind(nil, testAdmissionEmpty)},
	{"deadlines/every-call", testDeadlines},
	{"shutdown/clean", testShutdown},
}

// byKind runs sched for a scheduler plugin and adm for an admission plugin; a nil one
// skips the test for that kind.
func byKind(sched, adm func(context.Context, *T)) func(context.Context, *T) {
	return func(ctx context.Context, t *T) {
		t.requirePlugin()
		f := sched
		if t.s.kind == Admission {
			f = adm
		}
		if f == nil {
			t.Skipf("not a check for %s plugins", t.s.kind)
		}
		f(ctx, t)
	}
}

func testHandshake(_ context.Context, t *T) {
	t.requirePlugin()
	hs := SchedulerHandshake
	if t.s.kind == Admission {
		hs = AdmissionHandshake
	}
	if t.s.version != int(hs.ProtocolVersion) {
		t.Errorf("go-plugin negotiated protocol version %d; berth's %s host speaks %d", t.s.version, t.s.kind, hs.ProtocolVersion)
	}
	if t.s.protocol != goplugin.ProtocolGRPC {
		t.Errorf("the plugin speaks go-plugin protocol %q; berth's hosts speak only %q", t.s.protocol, goplugin.ProtocolGRPC)
	}
	t.Logf("a %s plugin, go-plugin protocol version %d over %s", t.s.kind, t.s.version, t.s.protocol)
}

// semver is a version like 1.2.3, v1.2.3-rc.1 or 0.1.0+build.
var semver = regexp.MustCompile(`^v?(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// pluginName is a name a configuration file can spell: lower case, digits, '-' and '.'.
var pluginName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

// info returns what the plugin said of itself: name, version, API versions.
func (t *T) info() (name, version string, apis []string) {
	t.requirePlugin()
	if t.s.kind == Scheduler {
		return t.s.sched.GetName(), t.s.sched.GetVersion(), t.s.sched.GetApiVersions()
	}
	return t.s.adm.GetName(), t.s.adm.GetVersion(), t.s.adm.GetApiVersions()
}

func testIdentity(_ context.Context, t *T) {
	name, version, _ := t.info()
	if !pluginName.MatchString(name) {
		t.Errorf("PluginInfo name %q: want a name a configuration file can use (lower case letters, digits, '-' and '.')", name)
	}
	if !semver.MatchString(version) {
		t.Errorf("PluginInfo version %q: want a semantic version (1.2.3, v0.1.0-rc.1)", version)
	}
}

func testAPIVersions(_ context.Context, t *T) {
	_, _, apis := t.info()
	if len(apis) == 0 {
		t.Fatalf("PluginInfo names no API version: no host can use the plugin")
	}
	for _, v := range apis {
		n, err := strconv.Atoi(strings.TrimPrefix(v, "v"))
		if !strings.HasPrefix(v, "v") || err != nil || n < 1 {
			t.Errorf("PluginInfo API version %q: want v1, v2 ...", v)
		}
	}
	if !slices.Contains(apis, APIVersion) {
		t.Errorf("PluginInfo API versions %v do not include %s, the version this berth speaks", apis, APIVersion)
	}
}

func testDeclarations(_ context.Context, t *T) {
	t.requirePlugin()
	if t.s.kind == Admission {
		if !t.s.adm.GetMutating() && !t.s.adm.GetValidating() {
			t.Errorf("PluginInfo declares neither mutating nor validating: the host never calls the plugin")
		}
		return
	}
	pts := t.s.sched.GetExtensionPoints()
	if len(pts) == 0 {
		t.Errorf("PluginInfo declares no extension point: the host never calls the plugin")
	}
	seen := map[schedulerv1.ExtensionPoint]bool{}
	for _, pt := range pts {
		switch {
		case !slices.Contains(allPoints, pt):
			t.Errorf("PluginInfo declares extension point %s, which the protocol does not have", pt)
		case seen[pt]:
			t.Errorf("PluginInfo declares %s twice", pointName(pt))
		}
		seen[pt] = true
	}
	if seen[schedulerv1.ExtensionPoint_EXTENSION_POINT_NORMALIZE_SCORE] && !seen[schedulerv1.ExtensionPoint_EXTENSION_POINT_SCORE] {
		t.Errorf("PluginInfo declares normalizeScore without score: it would only normalize its own scores")
	}
	sig := t.s.sched.GetPodSignature()
	if sig == nil {
		t.Logf("PluginInfo declares no pod signature: the host never reuses its answers across pods")
		return
	}
	for _, f := range sig.GetPodFields() {
		if !podField.MatchString(f) {
			t.Errorf("PluginInfo pod signature field %q: want a dotted path into the pod's metadata or spec (spec.runtimeClassName: segments of letters, digits and '_', starting with metadata. or spec.); a host refuses the plugin", f)
		}
	}
	t.Logf("PluginInfo declares a pod signature: the base signature and %v", sig.GetPodFields())
}

// podField is a path a pod signature may name (the SDK's scheduler.ValidatePodField).
var podField = regexp.MustCompile(`^(metadata|spec)(\.[a-zA-Z0-9_]+)+$`)

func testInfoStable(ctx context.Context, t *T) {
	sess := t.start(ctx, nil)
	for i := 0; i < 2; i++ {
		var got, want proto.Message
		err := t.call(ctx, "PluginInfo", func(ctx context.Context) (err error) {
			if sess.kind == Scheduler {
				want = t.s.sched
				got, err = sess.sched.PluginInfo(ctx, &schedulerv1.PluginInfoRequest{HostApiVersions: []string{APIVersion}})
			} else {
				want = t.s.adm
				got, err = sess.adm.PluginInfo(ctx, &admissionv1.PluginInfoRequest{HostApiVersions: []string{APIVersion}})
			}
			return err
		})
		if err != nil {
			t.Fatalf("PluginInfo: %v", err)
		}
		if !proto.Equal(got, want) {
			t.Errorf("PluginInfo answered %v, and earlier %v", got, want)
		}
	}
}

func testConfigure(ctx context.Context, t *T) {
	// start configures the plugin with the run's args as a host does, and fails on a
	// refusal.
	t.start(ctx, sampleNodes())
	if len(t.Config().Args) == 0 {
		t.Logf("Configure with no args accepted")
	} else {
		t.Logf("Configure with args %s accepted", t.Config().Args)
	}
}

func testDeadlines(ctx context.Context, t *T) {
	t.requirePlugin()
	// Make every call once more, so that the check holds when the test runs alone.
	if t.s.kind == Scheduler {
		nodes := sampleNodes()
		sess := t.start(ctx, nodes)
		cy := t.cycle("conformance-deadlines", samplePod(t.Config().RunID))
		for _, pt := range t.s.sched.GetExtensionPoints() {
			_, _ = t.callPoint(ctx, sess, pt, cy, nodeNames(nodes))
		}
	} else {
		sess := t.start(ctx, nil)
		for _, s := range t.samples() {
			if t.s.adm.GetValidating() {
				_, _ = t.validate(ctx, sess, s.req)
			}
			if t.s.adm.GetMutating() {
				_, _ = t.mutate(ctx, sess, s.req)
			}
		}
	}
	if slow := t.s.slowCalls(); len(slow) > 0 {
		t.Errorf("%d calls did not answer within the %s deadline (a host kills and restarts such a plugin): %s",
			len(slow), t.Config().Deadline, strings.Join(slow, ", "))
	}
}

func testShutdown(ctx context.Context, t *T) {
	t.requirePlugin()
	sess := t.start(ctx, nil)
	children := childrenOf(sess.pid)
	start := time.Now()
	sess.kill()
	took := time.Since(start)
	if sess.logs.forcedKill() {
		t.Errorf("the plugin did not exit within %s of the host closing the connection, and was killed", ShutdownGrace)
	} else {
		t.Logf("exited %s after the host closed the connection", took.Round(time.Millisecond))
	}
	if sess.pid == 0 {
		return
	}
	if err := waitGone(ctx, sess.pid, ShutdownGrace); err != nil {
		t.Errorf("the plugin's process: %v", err)
	}
	for _, c := range children {
		if err := waitGone(ctx, c, ShutdownGrace); err != nil {
			t.Errorf("a child of the plugin outlived it (an orphan): %v", err)
		}
	}
}

// childrenOf lists the processes whose parent is pid (none where /proc is not).
func childrenOf(pid int) []int {
	if pid == 0 {
		return nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if ppid, ok := parentOf(p); ok && ppid == pid {
			out = append(out, p)
		}
	}
	return out
}

// parentOf reads a process's parent from /proc/PID/stat.
func parentOf(pid int) (int, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	// The command name, in parentheses, may hold spaces: the fields follow its last ')'.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	return ppid, err == nil
}

// waitGone waits up to grace for process pid to be gone (zombies count as gone: only
// their parent can reap them).
func waitGone(ctx context.Context, pid int, grace time.Duration) error {
	deadline := time.Now().Add(grace)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return nil
		}
		if i := strings.LastIndexByte(string(b), ')'); i >= 0 {
			if f := strings.Fields(string(b[i+1:])); len(f) > 0 && f[0] == "Z" {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("process %d still runs %s after the host closed the connection", pid, grace)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("process %d: %w", pid, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}
