// Package admissionplugins runs berth's out-of-process admission (site policy) plugins,
// written with the SDK in plugins/admission, for the API server: it reads the admission
// configuration file (Load), launches each plugin with hashicorp/go-plugin (Start), and
// calls the plugins whose rules match a create or update (Host.Mutate, Host.Validate).
//
// A plugin that crashes, misses its deadline or answers something malformed is killed and
// restarted with backoff; meanwhile, and on any other failure to get an answer, the
// requests it should judge follow its failurePolicy: Fail refuses them with an internal
// error naming the plugin and the reason, Ignore admits them and logs a warning.
package admissionplugins

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"berth.dev/berth/core/internal/yamlconf"
	"berth.dev/berth/plugins/admission"
)

// The apiVersion and kind of an admission configuration file.
const (
	APIVersion = "admission.berth.dev/v1"
	Kind       = "AdmissionConfiguration"
)

// DefaultTimeout is the deadline of one call to a plugin when the configuration sets
// none; MaxTimeout bounds what it may set (Kubernetes bounds webhooks alike).
const (
	DefaultTimeout = 2 * time.Second
	MaxTimeout     = 30 * time.Second
)

// FailurePolicy says what happens to a request when its plugin cannot answer.
type FailurePolicy string

// The failure policies.
const (
	// Fail refuses the request (the default: a policy that can be bypassed by crashing
	// its plugin is no policy).
	Fail FailurePolicy = "Fail"
	// Ignore admits the request as if the plugin were not configured, with a warning in
	// the server's log.
	Ignore FailurePolicy = "Ignore"
)

// Configuration is an admission configuration file.
type Configuration struct {
	// File is the path it was read from.
	File string
	// Plugins are called in this order (mutating ones, then validating ones).
	Plugins []*PluginConfig
}

// PluginConfig is one plugin of the configuration.
type PluginConfig struct {
	// Name is the plugin's name; the binary must answer to it.
	Name string
	// Path is the plugin's binary, absolute (the file gives it relative to its folder).
	Path string
	// Args are passed to the plugin as JSON.
	Args map[string]any
	// FailurePolicy is Fail or Ignore.
	FailurePolicy FailurePolicy
	// Timeout is the deadline of each call.
	Timeout time.Duration
	// Rules say which requests the plugin is called for: any rule matching.
	Rules []Rule
	// NamespaceSelector limits the plugin to objects in namespaces whose labels match
	// (cluster-scoped objects always match); nil matches every namespace.
	NamespaceSelector labels.Selector
	// File and Line locate the plugin's entry, for messages.
	File string
	Line int
}

// ArgsJSON returns the plugin's arguments as JSON (nil when none).
func (p *PluginConfig) ArgsJSON() ([]byte, error) {
	if p.Args == nil {
		return nil, nil
	}
	return json.Marshal(p.Args)
}

// Rule matches requests by operation, API group and resource; "*" matches any.
type Rule struct {
	Operations []admission.Operation
	APIGroups  []string
	Resources  []string
}

// Matches reports whether the rule covers an operation on a resource of a group.
func (r Rule) Matches(op admission.Operation, group, resource string) bool {
	return (slices.Contains(r.Operations, op) || slices.Contains(r.Operations, "*")) &&
		(slices.Contains(r.APIGroups, group) || slices.Contains(r.APIGroups, "*")) &&
		(slices.Contains(r.Resources, resource) || slices.Contains(r.Resources, "*"))
}

// Load reads and validates a configuration file; every error reads "FILE:LINE: reason".
func Load(path string) (*Configuration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read admission configuration: %w", err)
	}
	return Parse(path, data)
}

// Parse validates a configuration file's content; file names it in errors, and relative
// plugin paths are resolved against its folder.
func Parse(file string, data []byte) (*Configuration, error) {
	root, err := yamlconf.Document(file, data, Kind, APIVersion)
	if err != nil {
		return nil, err
	}
	d := &decoder{yamlconf.Decoder{File: file, Dir: filepath.Dir(file)}}
	c, err := d.configuration(root)
	if err != nil {
		return nil, err
	}
	c.File = file
	return c, nil
}

// decoder walks the YAML nodes itself (core/internal/yamlconf), so that every error can
// name its line and every unknown field is refused.
type decoder struct {
	yamlconf.Decoder
}

// strs reads a non-empty list of strings, each passed to check.
func (d *decoder) strs(n *yaml.Node, what string, check func(*yaml.Node, string) error) ([]string, error) {
	if n.Kind != yaml.SequenceNode {
		return nil, d.Errf(n, "%s: want a list, got %s", what, yamlconf.KindName(n))
	}
	if len(n.Content) == 0 {
		return nil, d.Errf(n, "%s is empty: it would match nothing", what)
	}
	out := make([]string, 0, len(n.Content))
	for i, item := range n.Content {
		s, err := d.Str(item, fmt.Sprintf("%s[%d]", what, i))
		if err != nil {
			return nil, err
		}
		if err := check(item, s); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

func (d *decoder) configuration(n *yaml.Node) (*Configuration, error) {
	f, err := d.Fields(n, "the configuration", "apiVersion", "kind", "plugins")
	if err != nil {
		return nil, err
	}
	av, ok := f["apiVersion"]
	if !ok {
		return nil, d.Errf(n, "apiVersion is missing, want %s", APIVersion)
	}
	if s, _ := d.Str(av.Value, "apiVersion"); s != APIVersion {
		return nil, d.Errf(av.Value, "apiVersion %s is not known, want %s", yamlconf.KindName(av.Value), APIVersion)
	}
	kv, ok := f["kind"]
	if !ok {
		return nil, d.Errf(n, "kind is missing, want %s", Kind)
	}
	if s, _ := d.Str(kv.Value, "kind"); s != Kind {
		return nil, d.Errf(kv.Value, "kind %s is not known, want %s", yamlconf.KindName(kv.Value), Kind)
	}
	c := &Configuration{}
	pv, ok := f["plugins"]
	if !ok || yamlconf.IsNull(pv.Value) {
		return c, nil
	}
	if pv.Value.Kind != yaml.SequenceNode {
		return nil, d.Errf(pv.Value, "plugins: want a list, got %s", yamlconf.KindName(pv.Value))
	}
	seen := map[string]int{}
	for i, item := range pv.Value.Content {
		p, err := d.plugin(item, fmt.Sprintf("plugins[%d]", i))
		if err != nil {
			return nil, err
		}
		if line, dup := seen[p.Name]; dup {
			return nil, d.Errf(item, "plugin %q is configured twice (first at line %d)", p.Name, line)
		}
		seen[p.Name] = item.Line
		c.Plugins = append(c.Plugins, p)
	}
	return c, nil
}

func (d *decoder) plugin(n *yaml.Node, what string) (*PluginConfig, error) {
	f, err := d.Fields(n, what, "name", "path", "args", "failurePolicy", "timeout", "rules", "namespaceSelector")
	if err != nil {
		return nil, err
	}
	p := &PluginConfig{File: d.File, Line: n.Line, FailurePolicy: Fail, Timeout: DefaultTimeout}
	nv, ok := f["name"]
	if !ok {
		return nil, d.Errf(n, "%s: name is missing", what)
	}
	if p.Name, err = d.Str(nv.Value, what+".name"); err != nil {
		return nil, err
	}
	if p.Name == "" {
		return nil, d.Errf(nv.Value, "%s.name is empty", what)
	}
	what = fmt.Sprintf("plugin %q", p.Name)
	pv, ok := f["path"]
	if !ok {
		return nil, d.Errf(n, "%s: path is missing", what)
	}
	path, err := d.Str(pv.Value, what+": path")
	if err != nil {
		return nil, err
	}
	if path == "" {
		return nil, d.Errf(pv.Value, "%s: path is empty", what)
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(d.Dir, path)
	}
	if abs, err := filepath.Abs(path); err == nil {
		path = abs
	}
	st, err := os.Stat(path)
	switch {
	case err != nil:
		return nil, d.Errf(pv.Value, "%s: %v", what, err)
	case !st.Mode().IsRegular():
		return nil, d.Errf(pv.Value, "%s: %s is not a regular file", what, path)
	case st.Mode().Perm()&0o111 == 0:
		return nil, d.Errf(pv.Value, "%s: %s is not executable", what, path)
	}
	p.Path = path
	if av, ok := f["args"]; ok && !yamlconf.IsNull(av.Value) {
		if av.Value.Kind != yaml.MappingNode {
			return nil, d.Errf(av.Value, "%s: args: want a mapping, got %s", what, yamlconf.KindName(av.Value))
		}
		if err := av.Value.Decode(&p.Args); err != nil {
			return nil, d.Errf(av.Value, "%s: args: %v", what, err)
		}
		if _, err := p.ArgsJSON(); err != nil {
			return nil, d.Errf(av.Value, "%s: args: want a mapping with string keys, as JSON has: %v", what, err)
		}
	}
	if fv, ok := f["failurePolicy"]; ok {
		s, err := d.Str(fv.Value, what+": failurePolicy")
		if err != nil {
			return nil, err
		}
		switch FailurePolicy(s) {
		case Fail, Ignore:
			p.FailurePolicy = FailurePolicy(s)
		default:
			return nil, d.Errf(fv.Value, "%s: failurePolicy %q: want Fail or Ignore", what, s)
		}
	}
	if tv, ok := f["timeout"]; ok {
		s, err := d.Str(tv.Value, what+": timeout")
		if err != nil {
			return nil, err
		}
		if p.Timeout, err = time.ParseDuration(s); err != nil || p.Timeout <= 0 || p.Timeout > MaxTimeout {
			return nil, d.Errf(tv.Value, "%s: timeout %q: want a positive duration up to %s, such as 500ms or 2s", what, s, MaxTimeout)
		}
	}
	rv, ok := f["rules"]
	if !ok || yamlconf.IsNull(rv.Value) {
		return nil, d.Errf(n, "%s: rules are missing: a plugin without rules would never be called", what)
	}
	if rv.Value.Kind != yaml.SequenceNode || len(rv.Value.Content) == 0 {
		return nil, d.Errf(rv.Value, "%s: rules: want a non-empty list, got %s", what, yamlconf.KindName(rv.Value))
	}
	for i, item := range rv.Value.Content {
		r, err := d.rule(item, fmt.Sprintf("%s: rules[%d]", what, i))
		if err != nil {
			return nil, err
		}
		p.Rules = append(p.Rules, r)
	}
	if sv, ok := f["namespaceSelector"]; ok && !yamlconf.IsNull(sv.Value) {
		if p.NamespaceSelector, err = d.selector(sv.Value, what+": namespaceSelector"); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func (d *decoder) rule(n *yaml.Node, what string) (Rule, error) {
	f, err := d.Fields(n, what, "operations", "apiGroups", "resources")
	if err != nil {
		return Rule{}, err
	}
	for _, k := range []string{"operations", "apiGroups", "resources"} {
		if _, ok := f[k]; !ok {
			return Rule{}, d.Errf(n, "%s: %s is missing", what, k)
		}
	}
	var r Rule
	ops, err := d.strs(f["operations"].Value, what+".operations", func(n *yaml.Node, s string) error {
		switch admission.Operation(s) {
		case admission.Create, admission.Update, "*":
			return nil
		}
		return d.Errf(n, "%s.operations: %q: want CREATE, UPDATE or *", what, s)
	})
	if err != nil {
		return Rule{}, err
	}
	for _, o := range ops {
		r.Operations = append(r.Operations, admission.Operation(o))
	}
	if r.APIGroups, err = d.strs(f["apiGroups"].Value, what+".apiGroups", func(*yaml.Node, string) error { return nil }); err != nil {
		return Rule{}, err
	}
	r.Resources, err = d.strs(f["resources"].Value, what+".resources", func(n *yaml.Node, s string) error {
		if s == "" || strings.Contains(s, "/") {
			return d.Errf(n, "%s.resources: %q: want a resource name such as pods, or * (subresources are not admitted by plugins)", what, s)
		}
		return nil
	})
	return r, err
}

// selector reads a Kubernetes label selector (matchLabels, matchExpressions).
func (d *decoder) selector(n *yaml.Node, what string) (labels.Selector, error) {
	var raw any
	if err := n.Decode(&raw); err != nil {
		return nil, d.Errf(n, "%s: %v", what, err)
	}
	b, err := json.Marshal(raw)
	if err != nil {
		return nil, d.Errf(n, "%s: want a label selector (matchLabels, matchExpressions): %v", what, err)
	}
	var ls metav1.LabelSelector
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ls); err != nil {
		return nil, d.Errf(n, "%s: want a label selector (matchLabels, matchExpressions): %v", what, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(&ls)
	if err != nil {
		return nil, d.Errf(n, "%s: %v", what, err)
	}
	return sel, nil
}
