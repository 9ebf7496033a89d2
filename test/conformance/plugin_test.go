package conformance

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"berth.dev/berth/conformance/plugin"
	"berth.dev/berth/plugins/admission"
	"berth.dev/berth/plugins/scheduler"
)

// examplePlugins are the plugin binaries berth ships (plugins/examples), by command.
var examplePlugins = []string{"berth-scheduler-cost", "berth-admission-require-limits"}

// buildPlugins builds berth, the example plugins and the broken test plugins
// (test/conformance/plugins) into one directory of the test's.
func buildPlugins(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	pkgs := []string{"berth.dev/berth/cmd/berth", "berth.dev/berth/test/conformance/plugins/..."}
	for _, p := range examplePlugins {
		pkgs = append(pkgs, "berth.dev/berth/cmd/"+p)
	}
	out, err := exec.Command("go", append([]string{"build", "-o", dir + "/"}, pkgs...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("go build the plugins: %v\n%s", err, out)
	}
	return dir
}

func TestPluginSuiteHandshakesMatchTheSDK(t *testing.T) {
	// The suite repeats the SDK's handshakes rather than import it; they must not drift.
	if plugin.SchedulerHandshake != scheduler.Handshake {
		t.Errorf("conformance/plugin's scheduler handshake %+v, the SDK's %+v", plugin.SchedulerHandshake, scheduler.Handshake)
	}
	if plugin.AdmissionHandshake != admission.Handshake {
		t.Errorf("conformance/plugin's admission handshake %+v, the SDK's %+v", plugin.AdmissionHandshake, admission.Handshake)
	}
	if !slices.Contains(scheduler.APIVersions, plugin.APIVersion) || !slices.Contains(admission.APIVersions, plugin.APIVersion) {
		t.Errorf("the suite speaks API %s; the SDK speaks %v (scheduler) and %v (admission)", plugin.APIVersion, scheduler.APIVersions, admission.APIVersions)
	}
}

// TestPluginSuite runs `berth conformance plugin` on every example plugin, as make test
// promises, and the suite on the broken plugins, each of which must fail exactly the
// tests of what it breaks.
func TestPluginSuite(t *testing.T) {
	dir := buildPlugins(t)
	berth := filepath.Join(dir, "berth")

	for _, name := range examplePlugins {
		t.Run("cli/"+name, func(t *testing.T) {
			jsonFile, junit := filepath.Join(t.TempDir(), "report.json"), filepath.Join(t.TempDir(), "report.xml")
			out, err := exec.Command(berth, "conformance", "plugin", "--path", filepath.Join(dir, name), "--json", jsonFile, "--junit", junit).CombinedOutput()
			if err != nil {
				t.Fatalf("berth conformance plugin --path %s: %v\n%s", name, err, out)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			for _, l := range lines[:len(lines)-1] {
				if !strings.HasPrefix(l, "PASS ") && !strings.HasPrefix(l, "SKIP ") {
					t.Errorf("unexpected line %q", l)
				}
			}
			if last := lines[len(lines)-1]; !strings.HasSuffix(last, " skipped") || !strings.Contains(last, " passed, 0 failed, ") {
				t.Errorf("closing line %q", last)
			}
			var rep plugin.Report
			if data, err := os.ReadFile(jsonFile); err != nil {
				t.Error(err)
			} else if err := json.Unmarshal(data, &rep); err != nil || rep.Passed < 12 || rep.Failed != 0 || len(rep.Results) != len(plugin.Tests()) {
				t.Errorf("JSON report (%v):\n%s", err, data)
			}
			if _, err := os.Stat(junit); err != nil {
				t.Errorf("JUnit report: %v", err)
			}
		})
	}

	t.Run("require-limits with defaultLimits", func(t *testing.T) {
		// With defaults the plugin mutates: its whole-object patches are checked too.
		rep := runPluginSuite(t, filepath.Join(dir, "berth-admission-require-limits"), `{"defaultLimits":{"cpu":"500m","memory":"256Mi"}}`)
		if !rep.OK() {
			t.Errorf("failed: %v", rep.Names(plugin.StatusFail))
		}
	})

	for _, tc := range []struct {
		bin  string
		fail []string
	}{
		{"badscore", []string{"score/range"}},
		{"random", []string{"determinism/same-input"}},
		{"crash", []string{"empty/pod"}},
		{"hang", []string{"extension-points/declared-answer", "filter/statuses", "determinism/same-input", "empty/pod", "deadlines/every-call"}},
		{"liar", []string{"info/declarations", "extension-points/declared-answer", "extension-points/undeclared-refused", "filter/statuses", "determinism/same-input", "empty/no-nodes"}},
		// Not a plugin at all: no handshake, and nothing else can run.
		{"/bin/true", nil},
	} {
		t.Run("broken/"+filepath.Base(tc.bin), func(t *testing.T) {
			path := tc.bin
			if !filepath.IsAbs(path) {
				path = filepath.Join(dir, path)
			}
			rep := runPluginSuite(t, path, "")
			failed := rep.Names(plugin.StatusFail)
			if tc.fail == nil {
				if r, _ := rep.Result("handshake/protocol"); r.Status != plugin.StatusFail || rep.Passed != 0 {
					t.Errorf("a binary that is not a plugin: handshake %s, %d passed", r.Status, rep.Passed)
				}
				return
			}
			if !slices.Equal(failed, tc.fail) {
				t.Errorf("failed %v, want %v", failed, tc.fail)
			}
		})
	}

	t.Run("cli/failure exits non-zero", func(t *testing.T) {
		out, err := exec.Command(berth, "conformance", "plugin", "--path", filepath.Join(dir, "badscore")).CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Errorf("exit %v, want code 1\n%s", err, out)
		}
		if !strings.Contains(string(out), "FAIL score/range: Score (the plugin has no normalizeScore) gave node node-a the score 150, outside [0, 100]") ||
			!strings.Contains(string(out), " passed, 1 failed, ") {
			t.Errorf("output:\n%s", out)
		}
	})
}

// runPluginSuite runs the suite in-process on the plugin at path with args.
func runPluginSuite(t *testing.T, path, args string) *plugin.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out strings.Builder
	rep, err := plugin.Run(ctx, plugin.Config{Path: path, Args: []byte(args), Output: &out})
	if err != nil {
		t.Fatalf("run the suite on %s: %v", path, err)
	}
	t.Logf("berth conformance plugin --path %s:\n%s", path, out.String())
	return rep
}
