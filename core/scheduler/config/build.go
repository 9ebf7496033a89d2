package config

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/sets"

	"berth.dev/berth/core/scheduler/framework"
	"berth.dev/berth/core/scheduler/plugins"
)

// mergeSet merges a profile's plugin set into the defaults as kube-scheduler does: a
// disabled default leaves ("*": all of them), a default enabled again is reconfigured in
// its place (keeping its order), and the other enabled plugins follow the defaults.
func mergeSet(defaults []Plugin, custom PluginSet) []Plugin {
	disabled := sets.New[string]()
	for _, d := range custom.Disabled {
		disabled.Insert(d.Name)
	}
	index := map[string]int{}
	for i, e := range custom.Enabled {
		index[e.Name] = i
	}
	replaced := sets.New[int]()
	var out []Plugin
	if !disabled.Has("*") {
		for _, d := range defaults {
			if disabled.Has(d.Name) {
				continue
			}
			if i, ok := index[d.Name]; ok {
				d = custom.Enabled[i]
				replaced.Insert(i)
			}
			out = append(out, d)
		}
	}
	for i, e := range custom.Enabled {
		if !replaced.Has(i) {
			out = append(out, e)
		}
	}
	return out
}

// resolved is a profile's plugins per extension point, in order, with Score weights.
type resolved struct {
	points  map[string][]string
	weights map[string]int64
	// names are every plugin the profile enables somewhere, in first-seen order.
	names []string
	// lines locate each enabled plugin's entry (0 for defaults), for errors.
	lines map[string]int
}

// resolve expands the merged multiPoint set into each extension point as kube-scheduler
// does: the plugins enabled at the point itself that also come from multiPoint first
// (they override it), then the rest of multiPoint that implement the point and are not
// disabled there, then the point's other plugins. A point that disables "*" keeps only
// its own plugins. impl says whether a plugin implements a point.
func resolve(p *Profile, impl func(name, point string) bool) resolved {
	r := resolved{points: map[string][]string{}, weights: map[string]int64{}, lines: map[string]int{}}
	var defaults []Plugin
	for _, d := range plugins.DefaultPlugins() {
		pl := Plugin{Name: d.Name}
		if d.Weight > 0 {
			w := int32(d.Weight)
			pl.Weight = &w
		}
		defaults = append(defaults, pl)
	}
	custom := p.Plugins.MultiPoint
	named := sets.New[string]()
	for _, point := range append([]string{"multiPoint"}, extensionPoints...) {
		for _, e := range p.Plugins.set(point).Enabled {
			named.Insert(e.Name)
		}
	}
	for _, e := range p.External {
		if !named.Has(e.Name) {
			custom.Enabled = append(custom.Enabled, Plugin{Name: e.Name, Line: e.Line})
		}
	}
	multi := mergeSet(defaults, custom)
	seen := sets.New[string]()
	note := func(pl Plugin) {
		if !seen.Has(pl.Name) {
			seen.Insert(pl.Name)
			r.names = append(r.names, pl.Name)
			r.lines[pl.Name] = pl.Line
		}
	}
	for _, pl := range multi {
		note(pl)
	}
	for _, point := range extensionPoints {
		set := p.Plugins.set(point)
		var own []string
		for _, e := range set.Enabled {
			own = append(own, e.Name)
			note(e)
		}
		disabled := sets.New[string]()
		for _, d := range set.Disabled {
			disabled.Insert(d.Name)
		}
		if disabled.Has("*") {
			r.points[point] = own
			continue
		}
		ownSet := sets.New(own...)
		override := sets.New[string]()
		var fromMulti []string
		for _, pl := range multi {
			if !impl(pl.Name, point) || disabled.Has(pl.Name) {
				continue
			}
			if ownSet.Has(pl.Name) {
				override.Insert(pl.Name)
				continue
			}
			fromMulti = append(fromMulti, pl.Name)
		}
		var list []string
		for _, n := range own {
			if override.Has(n) {
				list = append(list, n)
			}
		}
		list = append(list, fromMulti...)
		for _, n := range own {
			if !override.Has(n) {
				list = append(list, n)
			}
		}
		r.points[point] = list
	}
	for _, pl := range multi {
		if pl.Weight != nil {
			r.weights[pl.Name] = int64(*pl.Weight)
		}
	}
	// A plugin enabled at score itself takes that entry's weight (1 when it gives none)
	// over multiPoint's, as in kube-scheduler.
	for _, e := range p.Plugins.Score.Enabled {
		r.weights[e.Name] = 1
		if e.Weight != nil {
			r.weights[e.Name] = int64(*e.Weight)
		}
	}
	for _, n := range r.points["score"] {
		if r.weights[n] == 0 {
			r.weights[n] = 1
		}
	}
	return r
}

// probeImpl answers implements for in-tree plugins; external ones are taken to implement
// only the points they are named at (their interfaces are known once they run).
func probeImpl(p *Profile) func(name, point string) bool {
	return func(name, point string) bool {
		if pl, ok := probes[name]; ok {
			return implements(pl, point)
		}
		for _, e := range p.Plugins.set(point).Enabled {
			if e.Name == name {
				return true
			}
		}
		return false
	}
}

// queueSortOf names the profile's QueueSort plugin(s).
func queueSortOf(p *Profile) string {
	return fmt.Sprint(resolve(p, probeImpl(p)).points["queueSort"])
}

// Resolved returns, per extension point, the names of the plugins a profile runs, in
// order, and the Score weights: the defaults merged with the profile's changes. External
// plugins enabled only at multiPoint are listed at the points named for them only.
func (p *Profile) Resolved() (points map[string][]string, weights map[string]int64) {
	r := resolve(p, probeImpl(p))
	return r.points, r.weights
}

// Build makes the framework's profiles. opts gives what the in-tree plugins of a profile
// need from the scheduler; external starts the profile's external plugins (nil: a profile
// with one is an error).
func (c *Configuration) Build(opts func(profile string) plugins.DefaultOptions, external ExternalFactory) ([]framework.Profile, error) {
	out := make([]framework.Profile, 0, len(c.Profiles))
	for i := range c.Profiles {
		p, err := c.buildProfile(&c.Profiles[i], opts(c.Profiles[i].SchedulerName), external)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	return out, nil
}

func (c *Configuration) where(line int) string {
	switch {
	case c.File == "":
		return "scheduler configuration: "
	case line == 0:
		return c.File + ": "
	}
	return fmt.Sprintf("%s:%d: ", c.File, line)
}

func (c *Configuration) buildProfile(p *Profile, o plugins.DefaultOptions, external ExternalFactory) (framework.Profile, error) {
	ext := map[string]ExternalPlugin{}
	for _, e := range p.External {
		ext[e.Name] = e
	}
	// First pass with what is known before anything runs, to learn which plugins to make.
	names := resolve(p, probeImpl(p))
	instances := map[string]framework.Plugin{}
	for _, name := range names.names {
		if e, ok := ext[name]; ok {
			if external == nil {
				return framework.Profile{}, fmt.Errorf("%sprofile %q: external plugin %q: external plugins are not available", c.where(e.Line), p.SchedulerName, name)
			}
			pl, err := external(e)
			if err != nil {
				return framework.Profile{}, fmt.Errorf("%sprofile %q: external plugin %q: %w", c.where(e.Line), p.SchedulerName, name, err)
			}
			if pl == nil {
				return framework.Profile{}, fmt.Errorf("%sprofile %q: external plugin %q: the plugin host returned no plugin", c.where(e.Line), p.SchedulerName, name)
			}
			instances[name] = pl
			continue
		}
		pl, err := plugins.New(name, p.PluginConfig[name], o)
		if err != nil {
			return framework.Profile{}, fmt.Errorf("%sprofile %q: %w", c.where(names.lines[name]), p.SchedulerName, err)
		}
		instances[name] = pl
	}
	// External plugins named at a point must implement it.
	for _, point := range extensionPoints {
		for _, e := range p.Plugins.set(point).Enabled {
			if pl, ok := instances[e.Name]; ok && !implements(pl, point) {
				return framework.Profile{}, fmt.Errorf("%sprofile %q: plugin %q does not implement the %s extension point", c.where(e.Line), p.SchedulerName, e.Name, point)
			}
		}
	}
	r := resolve(p, func(name, point string) bool {
		pl, ok := instances[name]
		return ok && implements(pl, point)
	})
	fp := framework.Profile{Name: p.SchedulerName, PercentageOfNodesToScore: c.PercentageOfNodesToScore}
	if p.PercentageOfNodesToScore != nil {
		fp.PercentageOfNodesToScore = *p.PercentageOfNodesToScore
	}
	if qs := r.points["queueSort"]; len(qs) > 1 {
		return framework.Profile{}, fmt.Errorf("%sprofile %q: only one queueSort plugin may be enabled, got %v", c.where(p.Line), p.SchedulerName, qs)
	} else if len(qs) == 1 {
		fp.QueueSort = instances[qs[0]].(framework.QueueSortPlugin)
	}
	for _, n := range r.points["preFilter"] {
		fp.PreFilter = append(fp.PreFilter, instances[n].(framework.PreFilterPlugin))
	}
	for _, n := range r.points["filter"] {
		fp.Filter = append(fp.Filter, instances[n].(framework.FilterPlugin))
	}
	for _, n := range r.points["postFilter"] {
		fp.PostFilter = append(fp.PostFilter, instances[n].(framework.PostFilterPlugin))
	}
	for _, n := range r.points["preScore"] {
		fp.PreScore = append(fp.PreScore, instances[n].(framework.PreScorePlugin))
	}
	for _, n := range r.points["score"] {
		fp.Score = append(fp.Score, framework.WeightedScorePlugin{Plugin: instances[n].(framework.ScorePlugin), Weight: r.weights[n]})
	}
	for _, n := range r.points["reserve"] {
		fp.Reserve = append(fp.Reserve, instances[n].(framework.ReservePlugin))
	}
	for _, n := range r.points["permit"] {
		fp.Permit = append(fp.Permit, instances[n].(framework.PermitPlugin))
	}
	for _, n := range r.points["preBind"] {
		fp.PreBind = append(fp.PreBind, instances[n].(framework.PreBindPlugin))
	}
	for _, n := range r.points["bind"] {
		fp.Bind = append(fp.Bind, instances[n].(framework.BindPlugin))
	}
	if fp.QueueSort == nil {
		return framework.Profile{}, fmt.Errorf("%sprofile %q: no queueSort plugin is enabled", c.where(p.Line), p.SchedulerName)
	}
	if len(fp.Bind) == 0 {
		return framework.Profile{}, fmt.Errorf("%sprofile %q: no bind plugin is enabled", c.where(p.Line), p.SchedulerName)
	}
	return fp, nil
}
