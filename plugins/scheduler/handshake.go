package scheduler

import (
	"github.com/hashicorp/go-plugin"

	"berth.dev/berth/plugins/internal/apiversion"
	schedulerv1 "berth.dev/berth/specs/scheduler/v1"
)

// Handshake is go-plugin's handshake between berth's scheduler and a scheduler plugin.
// ProtocolVersion changes only when go-plugin's wire itself breaks; the scheduler
// protocol's evolution is the API version negotiated by PluginInfo (APIVersions).
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "BERTH_SCHEDULER_PLUGIN",
	MagicCookieValue: "c6a3bf0e-berth-scheduler-plugin",
}

// PluginName is the key of the scheduler plugin in go-plugin's plugin set.
const PluginName = "scheduler"

// APIVersions are the versions of the scheduler protocol this SDK speaks, oldest first.
// A plugin built with it announces them; the scheduler picks the highest it shares.
var APIVersions = []string{"v1"}

// ExtensionPoint names a step of the scheduling framework.
type ExtensionPoint = schedulerv1.ExtensionPoint

// The extension points a plugin can implement.
const (
	PreFilterPoint      = schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_FILTER
	FilterPoint         = schedulerv1.ExtensionPoint_EXTENSION_POINT_FILTER
	PostFilterPoint     = schedulerv1.ExtensionPoint_EXTENSION_POINT_POST_FILTER
	PreScorePoint       = schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_SCORE
	ScorePoint          = schedulerv1.ExtensionPoint_EXTENSION_POINT_SCORE
	NormalizeScorePoint = schedulerv1.ExtensionPoint_EXTENSION_POINT_NORMALIZE_SCORE
	ReservePoint        = schedulerv1.ExtensionPoint_EXTENSION_POINT_RESERVE
	PermitPoint         = schedulerv1.ExtensionPoint_EXTENSION_POINT_PERMIT
	PreBindPoint        = schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_BIND
)

// PointName returns an extension point's name as the scheduler configuration spells it
// (preFilter, score ...).
func PointName(p ExtensionPoint) string {
	switch p {
	case PreFilterPoint:
		return "preFilter"
	case FilterPoint:
		return "filter"
	case PostFilterPoint:
		return "postFilter"
	case PreScorePoint:
		return "preScore"
	case ScorePoint:
		return "score"
	case NormalizeScorePoint:
		return "normalizeScore"
	case ReservePoint:
		return "reserve"
	case PermitPoint:
		return "permit"
	case PreBindPoint:
		return "preBind"
	}
	return p.String()
}

// NegotiateAPIVersion picks the highest API version both the plugin and the host speak,
// or explains why there is none, in words an operator can act on.
func NegotiateAPIVersion(pluginName string, pluginVersions, hostVersions []string) (string, error) {
	return apiversion.Negotiate("scheduler", "plugin", pluginName, pluginVersions, hostVersions)
}
