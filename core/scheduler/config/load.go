package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
	corev1 "k8s.io/api/core/v1"

	"berth.dev/berth/core/internal/yamlconf"
	"berth.dev/berth/core/scheduler/plugins"
)

// Load reads and validates a configuration file; every error reads "FILE:LINE: reason".
func Load(path string) (*Configuration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read scheduler configuration: %w", err)
	}
	return Parse(path, data)
}

// Parse validates a configuration file's content; file names it in errors, and relative
// external plugin paths are resolved against its folder.
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

func (d *decoder) int32(n *yaml.Node, what string) (int32, error) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
		return 0, d.Errf(n, "%s: want a whole number, got %s", what, yamlconf.KindName(n))
	}
	v, err := strconv.ParseInt(n.Value, 0, 32)
	if err != nil {
		return 0, d.Errf(n, "%s: %q is not a 32-bit number", what, n.Value)
	}
	return int32(v), nil
}

func (d *decoder) bool(n *yaml.Node, what string) (bool, error) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
		return false, d.Errf(n, "%s: want true or false, got %s", what, yamlconf.KindName(n))
	}
	var b bool
	if err := n.Decode(&b); err != nil {
		return false, d.Errf(n, "%s: %v", what, err)
	}
	return b, nil
}

func (d *decoder) list(n *yaml.Node, what string) ([]*yaml.Node, error) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil, nil
	}
	if n.Kind != yaml.SequenceNode {
		return nil, d.Errf(n, "%s: want a list, got %s", what, yamlconf.KindName(n))
	}
	return n.Content, nil
}

func (d *decoder) percentage(n *yaml.Node, what string) (int32, error) {
	v, err := d.int32(n, what)
	if err != nil {
		return 0, err
	}
	if v < 0 || v > 100 {
		return 0, d.Errf(n, "%s %d: want 0 (adaptive) to 100", what, v)
	}
	return v, nil
}

func (d *decoder) configuration(n *yaml.Node) (*Configuration, error) {
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil, d.Errf(n, "empty file, want a %s of apiVersion %s", Kind, APIVersion)
	}
	f, err := d.Fields(n, Kind, "apiVersion", "kind", "percentageOfNodesToScore", "profiles")
	if err != nil {
		return nil, err
	}
	av, ok := f["apiVersion"]
	if !ok {
		return nil, d.Errf(n, "apiVersion is missing: want %s", APIVersion)
	}
	if s, err := d.Str(av.Value, "apiVersion"); err != nil {
		return nil, err
	} else if s != APIVersion {
		return nil, d.Errf(av.Value, "apiVersion %q is not supported: want %s", s, APIVersion)
	}
	k, ok := f["kind"]
	if !ok {
		return nil, d.Errf(n, "kind is missing: want %s", Kind)
	}
	if s, err := d.Str(k.Value, "kind"); err != nil {
		return nil, err
	} else if s != Kind {
		return nil, d.Errf(k.Value, "kind %q is not supported: want %s", s, Kind)
	}
	c := &Configuration{}
	if p, ok := f["percentageOfNodesToScore"]; ok {
		if c.PercentageOfNodesToScore, err = d.percentage(p.Value, "percentageOfNodesToScore"); err != nil {
			return nil, err
		}
	}
	var items []*yaml.Node
	if p, ok := f["profiles"]; ok {
		if items, err = d.list(p.Value, "profiles"); err != nil {
			return nil, err
		}
	}
	names := map[string]int{}
	for i, item := range items {
		p, err := d.profile(item, fmt.Sprintf("profiles[%d]", i))
		if err != nil {
			return nil, err
		}
		r := resolve(p, probeImpl(p))
		if n := len(r.points["queueSort"]); n != 1 {
			return nil, d.Errf(item, "profile %q has %d queueSort plugins %v, want exactly one", p.SchedulerName, n, r.points["queueSort"])
		}
		if len(r.points["bind"]) == 0 && len(p.External) == 0 {
			return nil, d.Errf(item, "profile %q has no bind plugin: it could not bind any pod", p.SchedulerName)
		}
		if j, dup := names[p.SchedulerName]; dup {
			return nil, d.Errf(item, "schedulerName %q is already the name of profiles[%d]", p.SchedulerName, j)
		}
		names[p.SchedulerName] = i
		c.Profiles = append(c.Profiles, *p)
	}
	if len(c.Profiles) == 0 {
		c.Profiles = Default().Profiles
	}
	// One queue serves every profile, so they must order it alike (kube-scheduler's rule).
	first := queueSortOf(&c.Profiles[0])
	for i := 1; i < len(c.Profiles); i++ {
		if q := queueSortOf(&c.Profiles[i]); q != first {
			return nil, fmt.Errorf("%s:%d: profile %q sorts its queue with %s, but profile %q with %s: every profile must use the same queueSort plugin",
				d.File, c.Profiles[i].Line, c.Profiles[i].SchedulerName, q, c.Profiles[0].SchedulerName, first)
		}
	}
	return c, nil
}

func (d *decoder) profile(n *yaml.Node, what string) (*Profile, error) {
	f, err := d.Fields(n, what, "schedulerName", "percentageOfNodesToScore", "plugins", "pluginConfig", "externalPlugins")
	if err != nil {
		return nil, err
	}
	p := &Profile{SchedulerName: plugins.DefaultSchedulerName, Line: n.Line, PluginConfig: map[string]any{}}
	if v, ok := f["schedulerName"]; ok {
		if p.SchedulerName, err = d.Str(v.Value, what+".schedulerName"); err != nil {
			return nil, err
		}
		if p.SchedulerName == "" {
			return nil, d.Errf(v.Value, "%s.schedulerName is empty", what)
		}
	}
	if v, ok := f["percentageOfNodesToScore"]; ok {
		pct, err := d.percentage(v.Value, what+".percentageOfNodesToScore")
		if err != nil {
			return nil, err
		}
		p.PercentageOfNodesToScore = &pct
	}
	// External plugins first: their names are known plugin names in the rest of the profile.
	external := map[string]bool{}
	if v, ok := f["externalPlugins"]; ok {
		items, err := d.list(v.Value, what+".externalPlugins")
		if err != nil {
			return nil, err
		}
		for i, item := range items {
			e, err := d.externalPlugin(item, fmt.Sprintf("%s.externalPlugins[%d]", what, i))
			if err != nil {
				return nil, err
			}
			if external[e.Name] {
				return nil, d.Errf(item, "external plugin %q is declared twice", e.Name)
			}
			external[e.Name] = true
			p.External = append(p.External, *e)
		}
	}
	if v, ok := f["plugins"]; ok {
		if err := d.plugins(v.Value, what+".plugins", &p.Plugins, external); err != nil {
			return nil, err
		}
	}
	if v, ok := f["pluginConfig"]; ok {
		items, err := d.list(v.Value, what+".pluginConfig")
		if err != nil {
			return nil, err
		}
		for i, item := range items {
			if err := d.pluginConfig(item, fmt.Sprintf("%s.pluginConfig[%d]", what, i), p, external); err != nil {
				return nil, err
			}
		}
	}
	return p, nil
}

func (d *decoder) plugins(n *yaml.Node, what string, out *Plugins, external map[string]bool) error {
	points := append([]string{"multiPoint"}, extensionPoints...)
	f, err := d.Fields(n, what, points...)
	if err != nil {
		return err
	}
	for _, point := range points {
		v, ok := f[point]
		if !ok {
			continue
		}
		pf, err := d.Fields(v.Value, what+"."+point, "enabled", "disabled")
		if err != nil {
			return err
		}
		set := out.set(point)
		for _, which := range []string{"enabled", "disabled"} {
			lv, ok := pf[which]
			if !ok {
				continue
			}
			items, err := d.list(lv.Value, what+"."+point+"."+which)
			if err != nil {
				return err
			}
			for i, item := range items {
				pl, err := d.plugin(item, fmt.Sprintf("%s.%s.%s[%d]", what, point, which, i), point, which == "enabled", external)
				if err != nil {
					return err
				}
				if which == "enabled" {
					for _, prev := range set.Enabled {
						if prev.Name == pl.Name {
							return d.Errf(item, "plugin %q is enabled twice at %s", pl.Name, point)
						}
					}
					set.Enabled = append(set.Enabled, *pl)
				} else {
					set.Disabled = append(set.Disabled, *pl)
				}
			}
		}
	}
	return nil
}

func (d *decoder) plugin(n *yaml.Node, what, point string, enabled bool, external map[string]bool) (*Plugin, error) {
	allowed := []string{"name"}
	if enabled {
		allowed = append(allowed, "weight")
	}
	f, err := d.Fields(n, what, allowed...)
	if err != nil {
		return nil, err
	}
	nv, ok := f["name"]
	if !ok {
		return nil, d.Errf(n, "%s: name is missing", what)
	}
	pl := &Plugin{Line: nv.Value.Line}
	if pl.Name, err = d.Str(nv.Value, what+".name"); err != nil {
		return nil, err
	}
	if pl.Name == "*" && !enabled {
		return pl, nil
	}
	if pl.Name == "*" {
		return nil, d.Errf(nv.Value, `"*" can only be disabled, not enabled`)
	}
	probe, inTree := probes[pl.Name]
	if !inTree && !external[pl.Name] {
		return nil, d.Errf(nv.Value, "unknown plugin %q (in-tree plugins: %s; an out-of-process plugin must be declared in externalPlugins)", pl.Name, strings.Join(plugins.Names(), ", "))
	}
	if enabled && inTree && !implements(probe, point) {
		return nil, d.Errf(nv.Value, "plugin %q does not implement the %s extension point", pl.Name, point)
	}
	if w, ok := f["weight"]; ok {
		if point != "score" && point != "multiPoint" {
			return nil, d.Errf(w.Key, "weight of plugin %q at %s: a weight is only allowed at score or multiPoint", pl.Name, point)
		}
		v, err := d.int32(w.Value, what+".weight")
		if err != nil {
			return nil, err
		}
		if v <= 0 {
			return nil, d.Errf(w.Value, "weight %d of plugin %q: want a positive weight (disable the plugin to turn its score off)", v, pl.Name)
		}
		if point == "multiPoint" && inTree && !implements(probe, "score") {
			return nil, d.Errf(w.Key, "weight of plugin %q: it does not score, so a weight means nothing", pl.Name)
		}
		pl.Weight = &v
	}
	return pl, nil
}

func (d *decoder) externalPlugin(n *yaml.Node, what string) (*ExternalPlugin, error) {
	f, err := d.Fields(n, what, "name", "path", "args", "timeout")
	if err != nil {
		return nil, err
	}
	e := &ExternalPlugin{File: d.File, Line: n.Line}
	nv, ok := f["name"]
	if !ok {
		return nil, d.Errf(n, "%s: name is missing", what)
	}
	if e.Name, err = d.Str(nv.Value, what+".name"); err != nil {
		return nil, err
	}
	if e.Name == "" || e.Name == "*" {
		return nil, d.Errf(nv.Value, "%s: %q is not a plugin name", what, e.Name)
	}
	if plugins.IsInTree(e.Name) {
		return nil, d.Errf(nv.Value, "external plugin %q has the name of an in-tree plugin", e.Name)
	}
	pv, ok := f["path"]
	if !ok {
		return nil, d.Errf(n, "%s: path is missing", what)
	}
	path, err := d.Str(pv.Value, what+".path")
	if err != nil {
		return nil, err
	}
	if path == "" {
		return nil, d.Errf(pv.Value, "%s.path is empty", what)
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
		return nil, d.Errf(pv.Value, "external plugin %q: %v", e.Name, err)
	case !st.Mode().IsRegular():
		return nil, d.Errf(pv.Value, "external plugin %q: %s is not a regular file", e.Name, path)
	case st.Mode().Perm()&0o111 == 0:
		return nil, d.Errf(pv.Value, "external plugin %q: %s is not executable", e.Name, path)
	}
	e.Path = path
	if av, ok := f["args"]; ok && !(av.Value.Kind == yaml.ScalarNode && av.Value.Tag == "!!null") {
		if av.Value.Kind != yaml.MappingNode {
			return nil, d.Errf(av.Value, "%s.args: want a mapping, got %s", what, yamlconf.KindName(av.Value))
		}
		if err := av.Value.Decode(&e.Args); err != nil {
			return nil, d.Errf(av.Value, "%s.args: %v", what, err)
		}
		if _, err := e.ArgsJSON(); err != nil {
			return nil, d.Errf(av.Value, "%s.args: want a mapping with string keys, as JSON has: %v", what, err)
		}
	}
	if tv, ok := f["timeout"]; ok {
		s, err := d.Str(tv.Value, what+".timeout")
		if err != nil {
			return nil, err
		}
		if e.Timeout, err = time.ParseDuration(s); err != nil || e.Timeout <= 0 {
			return nil, d.Errf(tv.Value, "%s.timeout %q: want a positive duration such as 500ms or 2s", what, s)
		}
	}
	return e, nil
}

func (d *decoder) pluginConfig(n *yaml.Node, what string, p *Profile, external map[string]bool) error {
	f, err := d.Fields(n, what, "name", "args")
	if err != nil {
		return err
	}
	nv, ok := f["name"]
	if !ok {
		return d.Errf(n, "%s: name is missing", what)
	}
	name, err := d.Str(nv.Value, what+".name")
	if err != nil {
		return err
	}
	if _, dup := p.PluginConfig[name]; dup {
		return d.Errf(nv.Value, "pluginConfig of plugin %q is given twice", name)
	}
	if external[name] {
		return d.Errf(nv.Value, "plugin %q is external: give its args in externalPlugins", name)
	}
	if !plugins.IsInTree(name) {
		return d.Errf(nv.Value, "pluginConfig of unknown plugin %q", name)
	}
	av, ok := f["args"]
	if !ok {
		return d.Errf(n, "%s: args are missing", what)
	}
	var args any
	switch name {
	case plugins.NodeResourcesFitName:
		args, err = d.fitArgs(av.Value, what+".args")
	case plugins.InterPodAffinityName:
		args, err = d.interPodArgs(av.Value, what+".args")
	case plugins.PodTopologySpreadName:
		args, err = d.spreadArgs(av.Value, what+".args")
	default:
		return d.Errf(nv.Value, "plugin %q takes no arguments", name)
	}
	if err != nil {
		return err
	}
	// Check the args as the plugin will, so that a bad value stops the start.
	if _, err := plugins.New(name, args, plugins.DefaultOptions{}); err != nil {
		return d.Errf(av.Value, "%v", err)
	}
	p.PluginConfig[name] = args
	return nil
}

func (d *decoder) fitArgs(n *yaml.Node, what string) (*plugins.NodeResourcesFitArgs, error) {
	f, err := d.Fields(n, what, "scoringStrategy")
	if err != nil {
		return nil, err
	}
	a := &plugins.NodeResourcesFitArgs{}
	sv, ok := f["scoringStrategy"]
	if !ok {
		return a, nil
	}
	sf, err := d.Fields(sv.Value, what+".scoringStrategy", "type", "resources")
	if err != nil {
		return nil, err
	}
	if tv, ok := sf["type"]; ok {
		s, err := d.Str(tv.Value, what+".scoringStrategy.type")
		if err != nil {
			return nil, err
		}
		switch plugins.ScoringStrategy(s) {
		case plugins.LeastAllocated, plugins.MostAllocated:
			a.Strategy = plugins.ScoringStrategy(s)
		default:
			return nil, d.Errf(tv.Value, "scoringStrategy type %q is not supported: want %s or %s", s, plugins.LeastAllocated, plugins.MostAllocated)
		}
	}
	if rv, ok := sf["resources"]; ok {
		items, err := d.list(rv.Value, what+".scoringStrategy.resources")
		if err != nil {
			return nil, err
		}
		for i, item := range items {
			w := fmt.Sprintf("%s.scoringStrategy.resources[%d]", what, i)
			rf, err := d.Fields(item, w, "name", "weight")
			if err != nil {
				return nil, err
			}
			nv, ok := rf["name"]
			if !ok {
				return nil, d.Errf(item, "%s: name is missing", w)
			}
			name, err := d.Str(nv.Value, w+".name")
			if err != nil {
				return nil, err
			}
			r := plugins.ResourceWeight{Name: corev1.ResourceName(name), Weight: 1}
			if wv, ok := rf["weight"]; ok {
				v, err := d.int32(wv.Value, w+".weight")
				if err != nil {
					return nil, err
				}
				if v <= 0 || v > 100 {
					return nil, d.Errf(wv.Value, "weight %d of resource %s: want 1 to 100", v, name)
				}
				r.Weight = int64(v)
			}
			a.Resources = append(a.Resources, r)
		}
	}
	return a, nil
}

func (d *decoder) interPodArgs(n *yaml.Node, what string) (*plugins.InterPodAffinityArgs, error) {
	f, err := d.Fields(n, what, "hardPodAffinityWeight", "ignorePreferredTermsOfExistingPods")
	if err != nil {
		return nil, err
	}
	a := plugins.DefaultInterPodAffinityArgs()
	if v, ok := f["hardPodAffinityWeight"]; ok {
		if a.HardPodAffinityWeight, err = d.int32(v.Value, what+".hardPodAffinityWeight"); err != nil {
			return nil, err
		}
		if a.HardPodAffinityWeight < 0 || a.HardPodAffinityWeight > 100 {
			return nil, d.Errf(v.Value, "hardPodAffinityWeight %d: want 0 to 100", a.HardPodAffinityWeight)
		}
	}
	if v, ok := f["ignorePreferredTermsOfExistingPods"]; ok {
		if a.IgnorePreferredTermsOfExistingPods, err = d.bool(v.Value, what+".ignorePreferredTermsOfExistingPods"); err != nil {
			return nil, err
		}
	}
	return &a, nil
}

func (d *decoder) spreadArgs(n *yaml.Node, what string) (*plugins.PodTopologySpreadArgs, error) {
	f, err := d.Fields(n, what, "defaultConstraints", "defaultingType")
	if err != nil {
		return nil, err
	}
	a := &plugins.PodTopologySpreadArgs{DefaultingType: plugins.SystemDefaulting}
	if v, ok := f["defaultingType"]; ok {
		s, err := d.Str(v.Value, what+".defaultingType")
		if err != nil {
			return nil, err
		}
		if s != string(plugins.SystemDefaulting) && s != string(plugins.ListDefaulting) {
			return nil, d.Errf(v.Value, "defaultingType %q: want %s or %s", s, plugins.SystemDefaulting, plugins.ListDefaulting)
		}
		a.DefaultingType = plugins.DefaultingType(s)
	}
	if v, ok := f["defaultConstraints"]; ok {
		items, err := d.list(v.Value, what+".defaultConstraints")
		if err != nil {
			return nil, err
		}
		if len(items) > 0 && a.DefaultingType != plugins.ListDefaulting {
			return nil, d.Errf(v.Key, "defaultConstraints need defaultingType: %s", plugins.ListDefaulting)
		}
		for i, item := range items {
			w := fmt.Sprintf("%s.defaultConstraints[%d]", what, i)
			cf, err := d.Fields(item, w, "maxSkew", "topologyKey", "whenUnsatisfiable")
			if err != nil {
				return nil, err
			}
			var c corev1.TopologySpreadConstraint
			if mv, ok := cf["maxSkew"]; !ok {
				return nil, d.Errf(item, "%s: maxSkew is missing", w)
			} else if c.MaxSkew, err = d.int32(mv.Value, w+".maxSkew"); err != nil {
				return nil, err
			} else if c.MaxSkew <= 0 {
				return nil, d.Errf(mv.Value, "maxSkew %d: want a positive number", c.MaxSkew)
			}
			if tv, ok := cf["topologyKey"]; !ok {
				return nil, d.Errf(item, "%s: topologyKey is missing", w)
			} else if c.TopologyKey, err = d.Str(tv.Value, w+".topologyKey"); err != nil {
				return nil, err
			}
			if uv, ok := cf["whenUnsatisfiable"]; !ok {
				return nil, d.Errf(item, "%s: whenUnsatisfiable is missing", w)
			} else {
				s, err := d.Str(uv.Value, w+".whenUnsatisfiable")
				if err != nil {
					return nil, err
				}
				if s != string(corev1.DoNotSchedule) && s != string(corev1.ScheduleAnyway) {
					return nil, d.Errf(uv.Value, "whenUnsatisfiable %q: want %s or %s", s, corev1.DoNotSchedule, corev1.ScheduleAnyway)
				}
				c.WhenUnsatisfiable = corev1.UnsatisfiableConstraintAction(s)
			}
			a.DefaultConstraints = append(a.DefaultConstraints, c)
		}
	}
	return a, nil
}
