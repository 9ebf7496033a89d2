package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"berth.dev/berth/core/scheduler/framework"
	"berth.dev/berth/core/scheduler/plugins"
)

const header = "apiVersion: scheduler.berth.dev/v1\nkind: SchedulerConfiguration\n"

// TestParseErrors checks each error a bad file gives, with its line.
func TestParseErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "notexec"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "sched.yaml")
	tests := []struct {
		name, yaml, want string
	}{
		{"bad apiVersion", "apiVersion: kubescheduler.config.k8s.io/v1\nkind: SchedulerConfiguration\n",
			`:1: apiVersion "kubescheduler.config.k8s.io/v1" is not supported: want scheduler.berth.dev/v1`},
		{"missing apiVersion", "kind: SchedulerConfiguration\n", ":1: apiVersion is missing: want scheduler.berth.dev/v1"},
		{"bad kind", "apiVersion: scheduler.berth.dev/v1\nkind: KubeSchedulerConfiguration\n",
			`:2: kind "KubeSchedulerConfiguration" is not supported: want SchedulerConfiguration`},
		{"unknown top field", header + "profile: []\n", `:3: unknown field "profile" in SchedulerConfiguration`},
		{"unknown profile field", header + "profiles:\n- schedulerName: a\n  plugin: {}\n", `:5: unknown field "plugin" in profiles[0]`},
		{"bad percentage", header + "percentageOfNodesToScore: 120\n", ":3: percentageOfNodesToScore 120: want 0 (adaptive) to 100"},
		{"percentage not a number", header + "percentageOfNodesToScore: half\n", `:3: percentageOfNodesToScore: want a whole number, got "half"`},
		{"duplicate schedulerName", header + "profiles:\n- schedulerName: a\n- schedulerName: a\n", `:5: schedulerName "a" is already the name of profiles[0]`},
		{"unknown plugin", header + "profiles:\n- plugins:\n    filter:\n      enabled:\n      - name: Nope\n", `:7: unknown plugin "Nope"`},
		{"plugin at a point it lacks", header + "profiles:\n- plugins:\n    score:\n      enabled:\n      - name: NodePorts\n",
			`:7: plugin "NodePorts" does not implement the score extension point`},
		{"zero weight", header + "profiles:\n- plugins:\n    score:\n      enabled:\n      - name: NodeAffinity\n        weight: 0\n",
			`:8: weight 0 of plugin "NodeAffinity": want a positive weight`},
		{"negative weight", header + "profiles:\n- plugins:\n    multiPoint:\n      enabled:\n      - name: InterPodAffinity\n        weight: -2\n",
			`:8: weight -2 of plugin "InterPodAffinity": want a positive weight`},
		{"weight off score", header + "profiles:\n- plugins:\n    filter:\n      enabled:\n      - name: NodeAffinity\n        weight: 2\n",
			`:8: weight of plugin "NodeAffinity" at filter: a weight is only allowed at score or multiPoint`},
		{"weight on a disabled entry", header + "profiles:\n- plugins:\n    score:\n      disabled:\n      - name: NodeAffinity\n        weight: 2\n",
			`:8: unknown field "weight" in profiles[0].plugins.score.disabled[0]`},
		{"unknown point", header + "profiles:\n- plugins:\n    scoring: {}\n", `:5: unknown field "scoring" in profiles[0].plugins`},
		{"bad scoring strategy", header + "profiles:\n- pluginConfig:\n  - name: NodeResourcesFit\n    args:\n      scoringStrategy:\n        type: RequestedToCapacityRatio\n",
			`:8: scoringStrategy type "RequestedToCapacityRatio" is not supported: want LeastAllocated or MostAllocated`},
		{"args of a plugin without", header + "profiles:\n- pluginConfig:\n  - name: NodePorts\n    args: {}\n", `:5: plugin "NodePorts" takes no arguments`},
		{"unknown args field", header + "profiles:\n- pluginConfig:\n  - name: InterPodAffinity\n    args:\n      hardPodAffinityWeigth: 3\n",
			`:7: unknown field "hardPodAffinityWeigth" in profiles[0].pluginConfig[0].args`},
		{"default constraints without List", header + "profiles:\n- pluginConfig:\n  - name: PodTopologySpread\n    args:\n      defaultConstraints:\n      - {maxSkew: 1, topologyKey: zone, whenUnsatisfiable: DoNotSchedule}\n",
			":7: defaultConstraints need defaultingType: List"},
		{"external path missing", header + "profiles:\n- externalPlugins:\n  - name: Site\n    path: ./nothere\n", `:6: external plugin "Site": stat ` + dir + "/nothere: no such file or directory"},
		{"external not executable", header + "profiles:\n- externalPlugins:\n  - name: Site\n    path: notexec\n", `:6: external plugin "Site": ` + dir + "/notexec is not executable"},
		{"external in-tree name", header + "profiles:\n- externalPlugins:\n  - name: NodePorts\n    path: /bin/sh\n", `:5: external plugin "NodePorts" has the name of an in-tree plugin`},
		{"external bad timeout", header + "profiles:\n- externalPlugins:\n  - name: Site\n    path: /bin/sh\n    timeout: soon\n", `:7: profiles[0].externalPlugins[0].timeout "soon": want a positive duration`},
		{"two queue sorts", header + "profiles:\n- schedulerName: a\n- schedulerName: b\n  plugins:\n    queueSort:\n      disabled:\n      - name: '*'\n",
			`:5: profile "b" has 0 queueSort plugins [], want exactly one`},
		{"no binder", header + "profiles:\n- plugins:\n    multiPoint:\n      disabled:\n      - name: DefaultBinder\n", `:4: profile "default-scheduler" has no bind plugin`},
		{"enable star", header + "profiles:\n- plugins:\n    filter:\n      enabled:\n      - name: '*'\n", `:7: "*" can only be disabled, not enabled`},
		{"external args not JSON", header + "profiles:\n- externalPlugins:\n  - name: Site\n    path: /bin/sh\n    args:\n      nested: {1: one}\n", `:8: profiles[0].externalPlugins[0].args: want a mapping with string keys`},
		{"two documents", header + "---\n" + header, `:3: a second YAML document`},
		{"not yaml", header + "profiles: [\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(file, []byte(tt.yaml))
			if err == nil {
				t.Fatalf("no error, want %q", tt.want)
			}
			if !strings.HasPrefix(err.Error(), file+":") || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error\n  %v\nwant FILE%s", err, tt.want)
			}
		})
	}
}

func TestParseExample(t *testing.T) {
	c, err := Load("../../../docs/examples/scheduler-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Profiles) < 2 {
		t.Fatalf("want at least two profiles in the example, got %d", len(c.Profiles))
	}
}

func TestExternalPlugins(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "plugins", "site")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "sched.yaml")
	c, err := Parse(file, []byte(header+"profiles:\n- externalPlugins:\n  - name: Site\n    path: plugins/site\n    timeout: 2s\n    args: {zone: a, limit: 3}\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := c.Profiles[0].External[0]
	if e.Path != bin || e.Timeout.Seconds() != 2 || e.Args["zone"] != "a" || e.Args["limit"] != 3 || e.Line != 5 {
		t.Errorf("external plugin %+v", e)
	}
	if js, err := e.ArgsJSON(); err != nil || string(js) != `{"limit":3,"zone":"a"}` {
		t.Errorf("ArgsJSON: %s, %v", js, err)
	}
	opts := func(string) plugins.DefaultOptions { return plugins.DefaultOptions{} }
	if _, err := c.Build(opts, nil); err == nil || !strings.Contains(err.Error(), "external plugins are not available") || !strings.HasPrefix(err.Error(), file+":5:") {
		t.Errorf("Build without a factory: %v", err)
	}
	// A filter-only external plugin, enabled at multiPoint by default, lands at filter.
	profiles, err := c.Build(opts, func(ExternalPlugin) (framework.Plugin, error) { return siteFilter{}, nil })
	if err != nil {
		t.Fatal(err)
	}
	f := profiles[0].Filter
	if last := f[len(f)-1].Name(); last != "Site" {
		t.Errorf("last filter is %s, want Site", last)
	}
}

type siteFilter struct{ framework.FilterPlugin }

func (siteFilter) Name() string { return "Site" }

// TestMerge checks that a profile's plugins merge into the defaults as kube-scheduler
// merges them.
func TestMerge(t *testing.T) {
	tests := []struct {
		name    string
		plugins string
		point   string
		want    []string
		weights map[string]int64
	}{
		{"defaults", "", "score", []string{"TaintToleration", "NodeAffinity", "NodeResourcesFit", "PodTopologySpread", "InterPodAffinity"},
			map[string]int64{"TaintToleration": 3, "NodeAffinity": 2, "NodeResourcesFit": 1, "PodTopologySpread": 2, "InterPodAffinity": 2}},
		{"default filters", "", "filter", []string{"NodeUnschedulable", "NodeName", "TaintToleration", "NodeAffinity", "NodePorts", "NodeResourcesFit", "VolumeBinding", "PodTopologySpread", "InterPodAffinity"}, nil},
		{"disable one at score", "    score:\n      disabled:\n      - name: NodeResourcesFit\n", "score",
			[]string{"TaintToleration", "NodeAffinity", "PodTopologySpread", "InterPodAffinity"}, nil},
		{"disabled at score stays at filter", "    score:\n      disabled:\n      - name: NodeResourcesFit\n", "filter",
			[]string{"NodeUnschedulable", "NodeName", "TaintToleration", "NodeAffinity", "NodePorts", "NodeResourcesFit", "VolumeBinding", "PodTopologySpread", "InterPodAffinity"}, nil},
		{"reweight at score moves it first", "    score:\n      enabled:\n      - name: NodeResourcesFit\n        weight: 5\n", "score",
			[]string{"NodeResourcesFit", "TaintToleration", "NodeAffinity", "PodTopologySpread", "InterPodAffinity"}, map[string]int64{"NodeResourcesFit": 5}},
		{"reweight at multiPoint keeps the order", "    multiPoint:\n      enabled:\n      - name: InterPodAffinity\n        weight: 7\n", "score",
			[]string{"TaintToleration", "NodeAffinity", "NodeResourcesFit", "PodTopologySpread", "InterPodAffinity"}, map[string]int64{"InterPodAffinity": 7}},
		{"star at score", "    score:\n      disabled:\n      - name: '*'\n      enabled:\n      - name: NodeAffinity\n", "score", []string{"NodeAffinity"}, map[string]int64{"NodeAffinity": 1}},
		{"star at multiPoint", "    multiPoint:\n      disabled:\n      - name: '*'\n      enabled:\n      - name: PrioritySort\n      - name: NodeResourcesFit\n      - name: DefaultBinder\n",
			"filter", []string{"NodeResourcesFit"}, nil},
		{"disabled at multiPoint", "    multiPoint:\n      disabled:\n      - name: InterPodAffinity\n      - name: PodTopologySpread\n", "preFilter",
			[]string{"NodeAffinity", "NodePorts", "NodeResourcesFit", "VolumeBinding"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			y := header + "profiles:\n- schedulerName: x\n"
			if tt.plugins != "" {
				y += "  plugins:\n" + tt.plugins
			}
			c, err := Parse("test.yaml", []byte(y))
			if err != nil {
				t.Fatal(err)
			}
			points, weights := c.Profiles[0].Resolved()
			if !reflect.DeepEqual(points[tt.point], tt.want) {
				t.Errorf("%s: %v\nwant %v", tt.point, points[tt.point], tt.want)
			}
			for n, w := range tt.weights {
				if weights[n] != w {
					t.Errorf("weight of %s: %d, want %d", n, weights[n], w)
				}
			}
			// And the framework profile builds, with the same score order.
			profiles, err := c.Build(func(string) plugins.DefaultOptions { return plugins.DefaultOptions{} }, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.point == "score" {
				var got []string
				for _, s := range profiles[0].Score {
					got = append(got, s.Plugin.Name())
					if w, ok := tt.weights[s.Plugin.Name()]; ok && s.Weight != w {
						t.Errorf("built weight of %s: %d, want %d", s.Plugin.Name(), s.Weight, w)
					}
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("built score plugins %v, want %v", got, tt.want)
				}
			}
		})
	}
}

func TestDefaultWithoutFile(t *testing.T) {
	profiles, err := Default().Build(func(string) plugins.DefaultOptions { return plugins.DefaultOptions{} }, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(profiles) != 1 || profiles[0].Name != "default-scheduler" || profiles[0].QueueSort.Name() != "PrioritySort" || len(profiles[0].Bind) != 1 {
		t.Errorf("default profiles %+v", profiles)
	}
}

// TestDocExample parses the annotated example of docs/scheduler.md (its external plugin
// pointed at /bin/sh), so that the documentation stays true.
func TestDocExample(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/scheduler.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(doc)
	start := strings.Index(s, "```yaml\napiVersion: scheduler.berth.dev/v1")
	if start < 0 {
		t.Fatal("no yaml example in docs/scheduler.md")
	}
	s = s[start+len("```yaml\n"):]
	s = s[:strings.Index(s, "```")]
	s = strings.Replace(s, "path: plugins/site-policy", "path: /bin/sh", 1)
	c, err := Parse("scheduler.md", []byte(s))
	if err != nil {
		t.Fatal(err)
	}
	points, weights := c.Profiles[0].Resolved()
	if weights["InterPodAffinity"] != 3 || weights["NodeResourcesFit"] != 5 || points["score"][0] != "NodeResourcesFit" {
		t.Errorf("score %v weights %v", points["score"], weights)
	}
	if e := c.Profiles[0].External; len(e) != 1 || e[0].Args["team"] != "storage" {
		t.Errorf("external %+v", e)
	}
}
