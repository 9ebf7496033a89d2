package admissionplugins

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"berth.dev/berth/plugins/admission"
)

// writeConfig writes an executable "plugin" and a configuration beside it.
func writeConfig(t *testing.T, body string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "plugin"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "notexec"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "admission.yaml")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

const header = "apiVersion: admission.berth.dev/v1\nkind: AdmissionConfiguration\n"

func TestLoad(t *testing.T) {
	path := writeConfig(t, header+`plugins:
  - name: p
    path: plugin
    args: {a: 1, b: [x]}
    failurePolicy: Ignore
    timeout: 500ms
    rules:
      - operations: [CREATE, UPDATE]
        apiGroups: [""]
        resources: [pods]
      - operations: ["*"]
        apiGroups: [apps]
        resources: ["*"]
    namespaceSelector:
      matchLabels: {team: a}
  - name: q
    path: plugin
    rules: [{operations: [CREATE], apiGroups: ["*"], resources: [configmaps]}]
`)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Plugins) != 2 {
		t.Fatalf("%d plugins", len(c.Plugins))
	}
	p, q := c.Plugins[0], c.Plugins[1]
	if p.Path != filepath.Join(filepath.Dir(path), "plugin") || p.FailurePolicy != Ignore || p.Timeout != 500*time.Millisecond || p.Line != 4 {
		t.Errorf("p = %+v", p)
	}
	if a, _ := p.ArgsJSON(); string(a) != `{"a":1,"b":["x"]}` {
		t.Errorf("args = %s", a)
	}
	if !p.Rules[0].Matches(admission.Update, "", "pods") || p.Rules[0].Matches(admission.Create, "", "services") ||
		!p.Rules[1].Matches(admission.Create, "apps", "deployments") || p.Rules[1].Matches(admission.Create, "", "pods") {
		t.Errorf("rules %+v match wrongly", p.Rules)
	}
	if !p.NamespaceSelector.Matches(labels.Set{"team": "a"}) || p.NamespaceSelector.Matches(labels.Set{"team": "b"}) {
		t.Errorf("selector %v", p.NamespaceSelector)
	}
	if q.FailurePolicy != Fail || q.Timeout != DefaultTimeout || q.NamespaceSelector != nil || q.Args != nil {
		t.Errorf("defaults of q = %+v", q)
	}
}

func TestLoadErrors(t *testing.T) {
	plugin := func(extra string) string {
		return header + "plugins:\n  - name: p\n    path: plugin\n    rules: [{operations: [CREATE], apiGroups: [\"\"], resources: [pods]}]\n" + extra
	}
	for _, tc := range []struct {
		name, body, want string
	}{
		{"empty", "", ":1: empty file"},
		{"apiVersion", "apiVersion: v1\nkind: AdmissionConfiguration\n", `:1: apiVersion "v1" is not known, want admission.berth.dev/v1`},
		{"kind", "apiVersion: admission.berth.dev/v1\nkind: Foo\n", `:2: kind "Foo" is not known`},
		{"unknown field", header + "plugin: []\n", `:3: unknown field "plugin" in the configuration`},
		{"no path", header + "plugins:\n  - name: p\n", `:4: plugin "p": path is missing`},
		{"missing binary", header + "plugins:\n  - name: p\n    path: nothere\n", `:5: plugin "p": stat `},
		{"not executable", header + "plugins:\n  - name: p\n    path: notexec\n", `:5: plugin "p": `},
		{"no rules", header + "plugins:\n  - name: p\n    path: plugin\n", `:4: plugin "p": rules are missing`},
		{"bad policy", plugin("    failurePolicy: Maybe\n"), `:7: plugin "p": failurePolicy "Maybe": want Fail or Ignore`},
		{"bad timeout", plugin("    timeout: 2\n"), `:7: plugin "p": timeout "2"`},
		{"long timeout", plugin("    timeout: 1m\n"), `:7: plugin "p": timeout "1m": want a positive duration up to 30s`},
		{"bad op", header + "plugins:\n  - name: p\n    path: plugin\n    rules: [{operations: [DELETE], apiGroups: [\"\"], resources: [pods]}]\n", `:6: plugin "p": rules[0].operations: "DELETE": want CREATE, UPDATE or *`},
		{"subresource", header + "plugins:\n  - name: p\n    path: plugin\n    rules:\n      - operations: [CREATE]\n        apiGroups: [\"\"]\n        resources: [pods/status]\n", `:9: plugin "p": rules[0].resources: "pods/status"`},
		{"empty list", header + "plugins:\n  - name: p\n    path: plugin\n    rules:\n      - operations: []\n        apiGroups: [\"\"]\n        resources: [pods]\n", `:7: plugin "p": rules[0].operations is empty`},
		{"rule field missing", header + "plugins:\n  - name: p\n    path: plugin\n    rules:\n      - operations: [CREATE]\n", `:7: plugin "p": rules[0]: apiGroups is missing`},
		{"selector", plugin("    namespaceSelector: {matchLabel: {a: b}}\n"), `:7: plugin "p": namespaceSelector: want a label selector`},
		{"args", plugin("    args: [1]\n"), `:7: plugin "p": args: want a mapping`},
		{"twice", plugin("  - name: p\n    path: plugin\n    rules: [{operations: [CREATE], apiGroups: [\"\"], resources: [pods]}]\n"), `:7: plugin "p" is configured twice (first at line 4)`},
		{"two documents", header + "---\n" + header, ":3: a second YAML document"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, tc.body)
			_, err := Load(path)
			if err == nil || !strings.HasPrefix(err.Error(), path+":") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Load = %v, want %s%s...", err, path, tc.want)
			}
		})
	}
}

func TestExampleConfigurationLoads(t *testing.T) {
	// The example's path points at bin/, which `make build` fills: check it with a
	// stand-in binary at that place relative to a copy of the file.
	data, err := os.ReadFile("../../../plugins/examples/require-limits/admission-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	dir := filepath.Join(root, "plugins", "examples", "require-limits")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(root, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "bin", "berth-admission-require-limits"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	c, err := Parse(filepath.Join(dir, "admission-config.yaml"), data)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Plugins) != 1 || c.Plugins[0].Name != "require-limits" || c.Plugins[0].FailurePolicy != Fail {
		t.Errorf("example configuration = %+v", c.Plugins)
	}
}
