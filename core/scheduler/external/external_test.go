package external

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"berth.dev/berth/core/scheduler/framework"
	"berth.dev/berth/plugins/scheduler"
)

// The harness runs the real plugin binaries (the cost example and testdata/faulty) over a
// real go-plugin connection, through the adapter the scheduler uses, as Nomad's testutils
// do for its drivers.

var binDir string

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "berth-external-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	for name, pkg := range map[string]string{
		"berth-scheduler-cost": "berth.dev/berth/cmd/berth-scheduler-cost",
		"faulty":               "berth.dev/berth/core/scheduler/external/testdata/faulty",
	} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg).CombinedOutput()
		if err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	return m.Run()
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func newFactory(t *testing.T) *Factory { return newFactoryBackoff(t, 50*time.Millisecond) }

func newFactoryBackoff(t *testing.T, backoff time.Duration) *Factory {
	f := NewFactory(Options{Log: testLog(t), MinBackoff: backoff, MaxBackoff: 4 * backoff})
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// nodeInfos returns n nodes; node i costs 1000+i when labelled (every node but multiples of
// 7), except node 1, which costs 1 and so alone gets the top score.
func nodeInfos(n int) []*framework.NodeInfo {
	out := make([]*framework.NodeInfo, n)
	for i := range out {
		node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{
			Name: fmt.Sprintf("node-%05d", i), UID: types.UID("uid-" + strconv.Itoa(i)), ResourceVersion: "1",
			Labels: map[string]string{"kubernetes.io/hostname": fmt.Sprintf("node-%05d", i)},
		}}
		if i%7 != 0 {
			node.Labels["example.berth.dev/cost"] = strconv.Itoa(1000 + i)
		}
		if i == 1 {
			node.Labels["example.berth.dev/cost"] = "1"
		}
		ni := framework.NewNodeInfo()
		ni.SetNode(node)
		out[i] = ni
	}
	return out
}

func testPod(name string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: name, UID: types.UID("pod-" + name)},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "berth.local/busybox:1.35"}}}}
}

// sortPlugin and bindPlugin complete a profile, which the framework requires.
type sortPlugin struct{}

func (sortPlugin) Name() string                            { return "Sort" }
func (sortPlugin) Less(a, b *framework.QueuedPodInfo) bool { return a.Timestamp.Before(b.Timestamp) }
func (bindPlugin) Name() string                            { return "Bind" }
func (bindPlugin) Bind(context.Context, *framework.CycleState, *corev1.Pod, string) *framework.Status {
	return nil
}

type bindPlugin struct{}

func newFramework(t *testing.T, p *Plugin) *framework.Framework {
	t.Helper()
	prof := framework.ProfileFromPlugins("test", []framework.Plugin{sortPlugin{}, p, bindPlugin{}}, map[string]int64{p.Name(): 5})
	// Score every node, not Kubernetes' sample: the tests count what the plugin sees.
	prof.PercentageOfNodesToScore = 100
	fw, err := framework.New(prof, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fw
}

// schedule runs one pod's scheduling cycle (PreFilter, Filter, PreScore, Score) and returns
// the chosen node.
func schedule(ctx context.Context, fw *framework.Framework, pod *corev1.Pod, nodes []*framework.NodeInfo) (string, error) {
	r, err := fw.SchedulePod(ctx, framework.NewCycleState(), pod, nodes)
	return r.SuggestedHost, err
}

func launchCost(t *testing.T, f *Factory) *Plugin {
	t.Helper()
	p, err := f.Launch("cost", filepath.Join(binDir, "berth-scheduler-cost"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestInfoAndExtensionPoints(t *testing.T) {
	f := newFactory(t)
	p := launchCost(t, f)
	info := p.Info()
	if info.Name != "cost" || info.Version == "" || strings.Join(info.APIVersions, ",") != "v1" {
		t.Errorf("info = %+v, want cost, a version, API v1", info)
	}
	if got := strings.Join(p.ExtensionPoints(), ","); got != "preFilter,preScore,score" {
		t.Errorf("ExtensionPoints = %s, want preFilter,preScore,score", got)
	}
	// A second profile naming the plugin shares its process.
	again, err := f.New("cost", filepath.Join(binDir, "berth-scheduler-cost"), nil, 0)
	if err != nil || again != framework.Plugin(p) {
		t.Errorf("second New = %v, %v; want the same plugin", again, err)
	}
	if _, err := f.New("cheap", filepath.Join(binDir, "berth-scheduler-cost"), nil, 0); err == nil ||
		!strings.Contains(err.Error(), `is scheduler plugin "cost", but the configuration names it "cheap"`) {
		t.Errorf("misnamed plugin: err = %v", err)
	}
	if _, err := f.New("cost2", filepath.Join(binDir, "missing"), nil, 0); err == nil {
		t.Error("a missing binary started")
	}
}

func TestAPIVersionMismatchIsRefused(t *testing.T) {
	t.Setenv("FAULTY_ARGS", `{"name":"faulty","apiVersions":["v2"]}`)
	f := newFactory(t)
	_, err := f.New("faulty", filepath.Join(binDir, "faulty"), nil, 0)
	if err == nil || err.Error() != "plugin faulty speaks scheduler API v2; this berth speaks v1" {
		t.Fatalf("err = %v, want the refusal naming both versions", err)
	}
	t.Setenv("FAULTY_ARGS", `{"name":"faulty","apiVersions":["v1","v2"]}`)
	p, err := f.Launch("faulty", filepath.Join(binDir, "faulty"), nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Info().APIVersions; len(got) != 2 {
		t.Errorf("API versions = %v", got)
	}
}

func TestScoreBatchAndNodeDelta(t *testing.T) {
	f := newFactory(t)
	nodes := nodeInfos(5000)
	var current atomic.Pointer[[]*framework.NodeInfo]
	current.Store(&nodes)
	f.SetNodeLister(func() []*framework.NodeInfo { return *current.Load() })
	p := launchCost(t, f)
	fw := newFramework(t, p)
	ctx := context.Background()

	// The cheapest node is node-00001 (node-00000 is unlabelled).
	before := p.Stats()
	host, err := schedule(ctx, fw, testPod("p0"), nodes)
	if err != nil {
		t.Fatal(err)
	}
	if host != "node-00001" {
		t.Errorf("host = %s, want node-00001, the cheapest", host)
	}
	st := p.Stats()
	if sent := st.NodesSent - before.NodesSent; sent != 5000 {
		t.Errorf("first pod sent %d nodes, want all 5000", sent)
	}
	// One sync, one Score that normalizes too: the 5000 nodes never cost a call each.
	if calls := st.Calls - before.Calls; calls != 2 {
		t.Errorf("first pod made %d calls, want 2 (SyncNodes, Score with NormalizeScore)", calls)
	}

	// The per-pod cost of scoring 5000 nodes (log only: timings are not asserted).
	const pods = 20
	start := time.Now()
	for i := range pods {
		if _, err := schedule(ctx, fw, testPod(fmt.Sprintf("q%d", i)), nodes); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("scheduling cycle over 5000 nodes with the cost plugin: %v per pod (framework, sync check, Score, NormalizeScore)", time.Since(start)/pods)
	start = time.Now()
	for i := range pods {
		if st := p.PreScore(ctx, framework.NewCycleState(), testPod(fmt.Sprintf("r%d", i)), nodes); st != nil {
			t.Fatal(st)
		}
	}
	t.Logf("batched Score + NormalizeScore of 5000 nodes by the cost plugin: %v per pod", time.Since(start)/pods)
	if sent := p.Stats().NodesSent - st.NodesSent; sent != 0 {
		t.Errorf("unchanged nodes were sent again: %d", sent)
	}

	// Change 3 nodes (node-00001 becomes the dearest, node-00002 the cheapest), delete 2,
	// add 1: only the 4 new or changed nodes travel.
	changed := append([]*framework.NodeInfo(nil), nodes...)
	for i, cost := range map[int]string{1: "9000", 2: "0", 20: "3000"} {
		n := changed[i].Node().DeepCopy()
		n.Labels["example.berth.dev/cost"] = cost
		n.ResourceVersion = "2"
		ni := framework.NewNodeInfo()
		ni.SetNode(n)
		changed[i] = ni
	}
	changed = append(changed[:100], changed[102:]...)
	extra := nodeInfos(5001)[5000]
	changed = append(changed, extra)
	current.Store(&changed)
	st = p.Stats()
	host, err = schedule(ctx, fw, testPod("p1"), changed)
	if err != nil {
		t.Fatal(err)
	}
	if host != "node-00002" {
		t.Errorf("host = %s, want node-00002 after its cost fell to 0", host)
	}
	after := p.Stats()
	if sent := after.NodesSent - st.NodesSent; sent != 4 {
		t.Errorf("delta sent %d nodes, want 4 (3 changed, 1 added)", sent)
	}
	if calls := after.SyncCalls - st.SyncCalls; calls != 1 {
		t.Errorf("delta took %d SyncNodes calls, want 1", calls)
	}
	if n := len(p.sync.have); n != 4999 {
		t.Errorf("host believes the plugin has %d nodes, want 4999 (2 removed)", n)
	}
}

// waitFor polls cond for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCrashRestartsPlugin(t *testing.T) {
	// A backoff long enough to look at the plugin while it is down.
	f := newFactoryBackoff(t, time.Second)
	nodes := nodeInfos(50)
	f.SetNodeLister(func() []*framework.NodeInfo { return nodes })
	var back atomic.Int32
	f.SetOnAvailable(func(name string) {
		if name == "cost" {
			back.Add(1)
		}
	})
	p := launchCost(t, f)
	fw := newFramework(t, p)
	ctx := context.Background()
	if _, err := schedule(ctx, fw, testPod("a"), nodes); err != nil {
		t.Fatal(err)
	}
	pid := p.Stats().Pid
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the plugin to be seen down", func() bool { return !p.Stats().Up })

	// While it is down, its pods are unschedulable, with a message naming it and why.
	want := "scheduler plugin cost is unavailable: it exited (signal: killed); restarting"
	_, st := p.PreFilter(ctx, framework.NewCycleState(), testPod("b"))
	if st.Code() != framework.UnschedulableAndUnresolvable || st.Message() != want {
		t.Errorf("status while down = %v, want UnschedulableAndUnresolvable: %s", st, want)
	}
	_, err := schedule(ctx, fw, testPod("b"), nodes)
	if err == nil || err.Error() != "0/50 nodes are available: "+want+"." {
		t.Errorf("scheduling while down: %v", err)
	}
	// A profile without the plugin schedules as before.
	other, err := framework.New(framework.Profile{Name: "other", QueueSort: sortPlugin{}, Bind: []framework.BindPlugin{bindPlugin{}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if host, err := schedule(ctx, other, testPod("o"), nodes); err != nil || host == "" {
		t.Errorf("another profile while the plugin is down: %q, %v", host, err)
	}
	if p.Stats().Up {
		t.Fatal("the plugin came back before the checks while down were done: raise the backoff")
	}
	waitFor(t, "the plugin to be back", func() bool { s := p.Stats(); return s.Up && s.Pid != pid })
	waitFor(t, "OnAvailable", func() bool { return back.Load() == 1 })
	before := p.Stats().NodesSent
	host, err := schedule(ctx, fw, testPod("c"), nodes)
	if err != nil || host != "node-00001" {
		t.Fatalf("after the restart: host %q, err %v", host, err)
	}
	if sent := p.Stats().NodesSent - before; sent != 50 {
		t.Errorf("the new process got %d nodes, want all 50", sent)
	}
	if r := p.Stats().Restarts; r != 1 {
		t.Errorf("restarts = %d, want 1", r)
	}
}

// launchFaulty starts testdata/faulty under name with a control file, as a Filter and
// Score plugin with a short deadline.
func launchFaulty(t *testing.T, f *Factory) (*Plugin, string) {
	t.Helper()
	control := filepath.Join(t.TempDir(), "control")
	b, _ := json.Marshal(map[string]any{"name": "faulty", "control": control})
	t.Setenv("FAULTY_ARGS", string(b))
	p, err := f.Launch("faulty", filepath.Join(binDir, "faulty"), nil, 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	return p, control
}

func setMode(t *testing.T, control, mode string) {
	t.Helper()
	if err := os.WriteFile(control, []byte(mode), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestMisbehavingPluginIsRestarted(t *testing.T) {
	for _, tc := range []struct {
		mode, reason string
	}{
		{"hang", "scheduler plugin faulty is unavailable: it did not answer Filter within 300ms; restarting"},
		{"garbage", "scheduler plugin faulty is unavailable: it answered Score with garbage (score 1000 for node node-"},
		{"crash", "scheduler plugin faulty is unavailable: it exited (exit status 3); restarting"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			f := newFactory(t)
			nodes := nodeInfos(20)
			f.SetNodeLister(func() []*framework.NodeInfo { return nodes })
			p, control := launchFaulty(t, f)
			fw := newFramework(t, p)
			ctx := context.Background()
			if _, err := schedule(ctx, fw, testPod("a"), nodes); err != nil {
				t.Fatal(err)
			}
			pid := p.Stats().Pid
			setMode(t, control, tc.mode)
			start := time.Now()
			_, err := schedule(ctx, fw, testPod("b"), nodes)
			if err == nil || !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("schedule while %s: err = %v, want it to say %q", tc.mode, err, tc.reason)
			}
			if d := time.Since(start); d > 3*time.Second {
				t.Errorf("the failed cycle took %v", d)
			}
			setMode(t, control, "ok")
			waitFor(t, "a new process", func() bool { s := p.Stats(); return s.Up && s.Pid != pid })
			if _, err := schedule(ctx, fw, testPod("c"), nodes); err != nil {
				t.Errorf("after the restart: %v", err)
			}
			// The old process is gone.
			if err := syscall.Kill(pid, 0); err == nil {
				t.Errorf("the %s process %d is still alive", tc.mode, pid)
			}
		})
	}
}

func TestFilterIsBatched(t *testing.T) {
	f := newFactory(t)
	nodes := nodeInfos(300)
	for _, i := range []int{3, 4, 5} {
		nodes[i].Node().Labels["faulty/reject"] = "yes"
	}
	f.SetNodeLister(func() []*framework.NodeInfo { return nodes })
	p, _ := launchFaulty(t, f)
	fw := newFramework(t, p)
	before := p.Stats().Calls
	state := framework.NewCycleState()
	feasible, diag, err := fw.FindFeasibleNodes(context.Background(), state, testPod("a"), nodes)
	if err != nil {
		t.Fatal(err)
	}
	// Every rejection must be faulty's, and only the 3 labelled nodes are rejected.
	if diag.NodeToStatus.Len() != 3 {
		t.Errorf("%d nodes rejected, want 3", diag.NodeToStatus.Len())
	}
	diag.NodeToStatus.Each(func(name string, s *framework.Status) {
		if s.Message() != "node(s) were rejected by faulty" {
			t.Errorf("node %s: %v", name, s)
		}
	})
	if len(feasible) != 297 {
		t.Errorf("%d feasible nodes, want 297", len(feasible))
	}
	// SyncNodes and one Filter for all 300 nodes.
	if calls := p.Stats().Calls - before; calls != 2 {
		t.Errorf("filtering 300 nodes took %d calls, want 2", calls)
	}
}

// TestBatchedWithoutPreExtensionPoints places the plugin at filter and score only, as a
// configuration that forgets preFilter and preScore would: the batches still happen.
func TestBatchedWithoutPreExtensionPoints(t *testing.T) {
	f := newFactory(t)
	nodes := nodeInfos(300)
	nodes[7].Node().Labels["faulty/reject"] = "yes"
	f.SetNodeLister(func() []*framework.NodeInfo { return nodes })
	p, _ := launchFaulty(t, f)
	fw, err := framework.New(framework.Profile{
		Name: "bare", QueueSort: sortPlugin{}, Bind: []framework.BindPlugin{bindPlugin{}},
		Filter: []framework.FilterPlugin{p}, Score: []framework.WeightedScorePlugin{{Plugin: p, Weight: 1}},
		PercentageOfNodesToScore: 100,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	before := p.Stats().Calls
	r, err := fw.SchedulePod(context.Background(), framework.NewCycleState(), testPod("a"), nodes)
	if err != nil {
		t.Fatal(err)
	}
	if r.FeasibleNodes != 299 {
		t.Errorf("%d feasible nodes, want 299", r.FeasibleNodes)
	}
	// SyncNodes, one Filter, one Score.
	if calls := p.Stats().Calls - before; calls != 3 {
		t.Errorf("scheduling over 300 nodes took %d calls, want 3", calls)
	}
}

func TestSignPod(t *testing.T) {
	runtimeClass := func(name, class string) *corev1.Pod {
		pod := testPod(name)
		if class != "" {
			pod.Spec.RuntimeClassName = &class
		}
		return pod
	}
	launch := func(t *testing.T, f *Factory, sig string) *Plugin {
		t.Helper()
		t.Setenv("FAULTY_ARGS", `{"name":"faulty"`+sig+`}`)
		p, err := f.Launch("faulty", filepath.Join(binDir, "faulty"), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}

	t.Run("declared none", func(t *testing.T) {
		p := launch(t, newFactory(t), "")
		if p.Info().PodSignature != nil {
			t.Errorf("Info().PodSignature = %+v, want nil", p.Info().PodSignature)
		}
		if frag, ok := p.SignPod(testPod("a")); ok {
			t.Errorf("SignPod = %q, true; want ok false", frag)
		}
	})
	t.Run("declared empty", func(t *testing.T) {
		p := launch(t, newFactory(t), `,"podSignature":[]`)
		if frag, ok := p.SignPod(runtimeClass("a", "gvisor")); frag != "" || !ok {
			t.Errorf("SignPod = %q, %v; want \"\", true", frag, ok)
		}
	})
	t.Run("the cost example declares empty", func(t *testing.T) {
		p := launchCost(t, newFactory(t))
		if frag, ok := p.SignPod(testPod("a")); frag != "" || !ok {
			t.Errorf("SignPod = %q, %v; want \"\", true", frag, ok)
		}
	})
	t.Run("declared fields", func(t *testing.T) {
		p := launch(t, newFactory(t), `,"podSignature":["spec.runtimeClassName","spec.containers.image","metadata.annotations"]`)
		sign := func(pod *corev1.Pod) string {
			t.Helper()
			frag, ok := p.SignPod(pod)
			if !ok {
				t.Fatalf("SignPod(%s) ok false", pod.Name)
			}
			return frag
		}
		a, b := sign(runtimeClass("a", "gvisor")), sign(runtimeClass("b", "gvisor"))
		if a != b {
			t.Errorf("pods that differ only by name: %q and %q", a, b)
		}
		if want := `["gvisor",["berth.local/busybox:1.35"],null]`; a != want {
			t.Errorf("fragment = %s, want %s", a, want)
		}
		if c := sign(runtimeClass("c", "kata")); c == a {
			t.Errorf("another runtimeClassName, same fragment %q", c)
		}
		if d := sign(runtimeClass("d", "")); d == a || d != `[null,["berth.local/busybox:1.35"],null]` {
			t.Errorf("no runtimeClassName: fragment %q", d)
		}
		e := runtimeClass("e", "gvisor")
		e.Spec.Containers = append(e.Spec.Containers, corev1.Container{Name: "side", Image: "berth.local/pause"})
		if sign(e) == a {
			t.Errorf("another container image, same fragment")
		}
		// Maps encode with sorted keys: the same annotations give the same fragment.
		f, g := runtimeClass("f", "gvisor"), runtimeClass("g", "gvisor")
		f.Annotations = map[string]string{"x": "1", "y": "2", "z": "3"}
		g.Annotations = map[string]string{"z": "3", "y": "2", "x": "1"}
		if sign(f) != sign(g) || sign(f) == a {
			t.Errorf("annotations: %q and %q (without: %q)", sign(f), sign(g), a)
		}
	})
	t.Run("down", func(t *testing.T) {
		// A backoff long enough to look at the plugin while it is down.
		f := newFactoryBackoff(t, time.Second)
		p := launch(t, f, `,"podSignature":[]`)
		if _, ok := p.SignPod(testPod("a")); !ok {
			t.Fatal("SignPod ok false while up")
		}
		if err := syscall.Kill(p.Stats().Pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "the plugin to be seen down", func() bool { return !p.Stats().Up })
		if frag, ok := p.SignPod(testPod("a")); ok {
			t.Errorf("SignPod while down = %q, true; want ok false", frag)
		}
		if p.Stats().Up {
			t.Fatal("the plugin came back before the check while down was done: raise the backoff")
		}
	})
}

func TestMalformedSignatureIsRefused(t *testing.T) {
	// The SDK will not serve a malformed signature, so the host's check is tested alone.
	for _, fields := range [][]string{{"status.phase"}, {"spec.runtimeClassName", ""}, {"spec.containers[0].image"}} {
		err := checkSignature(scheduler.Info{Name: "x", PodSignature: &scheduler.PodSignature{Fields: fields}})
		bad := fields[len(fields)-1]
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
			t.Errorf("%q: err = %v, want a refusal naming the path", fields, err)
		}
	}
	for _, sig := range []*scheduler.PodSignature{nil, {}, {Fields: []string{"metadata.annotations", "spec.runtimeClassName"}}} {
		if err := checkSignature(scheduler.Info{PodSignature: sig}); err != nil {
			t.Errorf("%+v: %v", sig, err)
		}
	}
}
