// Package config reads the scheduler's configuration file, a SchedulerConfiguration of
// apiVersion scheduler.berth.dev/v1 shaped like kube-scheduler's
// KubeSchedulerConfiguration (profiles, plugins per extension point, pluginConfig), plus
// berth's externalPlugins, and builds the framework's profiles from it, merging each
// profile's plugins into the defaults as kube-scheduler does.
package config

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"berth.dev/berth/core/scheduler/framework"
	"berth.dev/berth/core/scheduler/plugins"
)

// The apiVersion and kind of the configuration file.
const (
	APIVersion = "scheduler.berth.dev/v1"
	Kind       = "SchedulerConfiguration"
)

// Configuration is a parsed and validated configuration file.
type Configuration struct {
	// File is the path the configuration was read from ("" when built in code); errors
	// found later (while building profiles) name it with the line.
	File string
	// PercentageOfNodesToScore: 0 is the adaptive default; a profile may override it.
	PercentageOfNodesToScore int32
	// Profiles, at least one; pods choose one by spec.schedulerName.
	Profiles []Profile
}

// Profile is one scheduler profile as the file gives it.
type Profile struct {
	// SchedulerName is what pods put in spec.schedulerName ("default-scheduler" when
	// the file leaves it out).
	SchedulerName string
	// PercentageOfNodesToScore overrides the configuration's when set (nil: not set).
	PercentageOfNodesToScore *int32
	// Plugins are the changes to the default plugins, per extension point.
	Plugins Plugins
	// PluginConfig holds the arguments of in-tree plugins by plugin name: a
	// *plugins.NodeResourcesFitArgs, *plugins.InterPodAffinityArgs or
	// *plugins.PodTopologySpreadArgs.
	PluginConfig map[string]any
	// External are the out-of-process plugins the profile declares.
	External []ExternalPlugin
	// Line is where the profile starts in the file.
	Line int
}

// ExternalPlugin is an out-of-process plugin (go-plugin) a profile declares. Unless the
// profile's plugins name it, it is enabled at multiPoint (every extension point it
// implements), after the default plugins.
type ExternalPlugin struct {
	// Name is the plugin's name in the profile; it must not be an in-tree plugin's.
	Name string
	// Path is the plugin's executable, absolute (the file gives it relative to its folder).
	Path string
	// Args are handed to the plugin as they are in the file (nil when absent).
	Args map[string]any
	// Timeout bounds each call to the plugin (0: the host's default).
	Timeout time.Duration
	// File and Line locate the entry, for the host's error messages.
	File string
	Line int
}

// ArgsJSON returns the plugin's args as JSON ("{}" when there are none), the form a
// plugin host hands them on in.
func (e ExternalPlugin) ArgsJSON() ([]byte, error) {
	if e.Args == nil {
		return []byte("{}"), nil
	}
	b, err := json.Marshal(e.Args)
	if err != nil {
		return nil, fmt.Errorf("external plugin %q: args: %w", e.Name, err)
	}
	return b, nil
}

// ExternalFactory starts (or connects to) an external plugin; the scheduler's caller
// supplies it. The plugin it returns must implement the framework's interfaces of the
// extension points it serves.
type ExternalFactory func(ExternalPlugin) (framework.Plugin, error)

// Plugins are the plugin sets of each extension point; MultiPoint applies to every point
// a plugin implements.
type Plugins struct {
	MultiPoint, QueueSort, PreFilter, Filter, PostFilter, PreScore, Score, Reserve, Permit, PreBind, Bind PluginSet
}

// PluginSet is what a profile enables and disables at one extension point; a disabled
// name "*" disables every default plugin there.
type PluginSet struct {
	Enabled  []Plugin
	Disabled []Plugin
}

// Plugin is one entry of a PluginSet.
type Plugin struct {
	Name string
	// Weight of a Score plugin (nil: the default's, or 1).
	Weight *int32
	// Line is where the entry is in the file.
	Line int
}

// extensionPoints are the points a profile names, in the file's spelling and the
// framework's order.
var extensionPoints = []string{"queueSort", "preFilter", "filter", "postFilter", "preScore", "score", "reserve", "permit", "preBind", "bind"}

// set returns the PluginSet of a point by its name in the file.
func (p *Plugins) set(point string) *PluginSet {
	switch point {
	case "multiPoint":
		return &p.MultiPoint
	case "queueSort":
		return &p.QueueSort
	case "preFilter":
		return &p.PreFilter
	case "filter":
		return &p.Filter
	case "postFilter":
		return &p.PostFilter
	case "preScore":
		return &p.PreScore
	case "score":
		return &p.Score
	case "reserve":
		return &p.Reserve
	case "permit":
		return &p.Permit
	case "preBind":
		return &p.PreBind
	case "bind":
		return &p.Bind
	}
	return nil
}

// implements reports whether a plugin serves an extension point.
func implements(pl framework.Plugin, point string) bool {
	// A plugin that says which points it serves (an out-of-process plugin's adapter
	// has every method, whatever the plugin behind it implements) is taken at its word.
	if d, declares := pl.(interface{ ExtensionPoints() []string }); declares {
		return point == "multiPoint" || slices.Contains(d.ExtensionPoints(), point)
	}
	var ok bool
	switch point {
	case "queueSort":
		_, ok = pl.(framework.QueueSortPlugin)
	case "preFilter":
		_, ok = pl.(framework.PreFilterPlugin)
	case "filter":
		_, ok = pl.(framework.FilterPlugin)
	case "postFilter":
		_, ok = pl.(framework.PostFilterPlugin)
	case "preScore":
		_, ok = pl.(framework.PreScorePlugin)
	case "score":
		_, ok = pl.(framework.ScorePlugin)
	case "reserve":
		_, ok = pl.(framework.ReservePlugin)
	case "permit":
		_, ok = pl.(framework.PermitPlugin)
	case "preBind":
		_, ok = pl.(framework.PreBindPlugin)
	case "bind":
		_, ok = pl.(framework.BindPlugin)
	case "multiPoint":
		ok = true
	}
	return ok
}

// probes are in-tree plugins made with no scheduler behind them, to learn which
// extension points each implements.
var probes = func() map[string]framework.Plugin {
	m := map[string]framework.Plugin{}
	for _, name := range plugins.Names() {
		if pl, err := plugins.New(name, nil, plugins.DefaultOptions{}); err == nil {
			m[name] = pl
		}
	}
	return m
}()

// Default is the configuration without a file: one default-scheduler profile with the
// default plugins.
func Default() *Configuration {
	return &Configuration{Profiles: []Profile{{SchedulerName: plugins.DefaultSchedulerName}}}
}
