package admission

import (
	"github.com/hashicorp/go-plugin"

	"berth.dev/berth/plugins/internal/apiversion"
)

// Handshake is go-plugin's handshake between berth's API server and an admission plugin.
// ProtocolVersion changes only when go-plugin's wire itself breaks; the admission
// protocol's evolution is the API version negotiated by PluginInfo (APIVersions).
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "BERTH_ADMISSION_PLUGIN",
	MagicCookieValue: "5d0e7a91-berth-admission-plugin",
}

// PluginName is the key of the admission plugin in go-plugin's plugin set.
const PluginName = "admission"

// APIVersions are the versions of the admission protocol this SDK speaks, oldest first.
// A plugin built with it announces them; the API server picks the highest it shares.
var APIVersions = []string{"v1"}

// NegotiateAPIVersion picks the highest API version both the plugin and the host speak,
// or explains why there is none, in words an operator can act on.
func NegotiateAPIVersion(pluginName string, pluginVersions, hostVersions []string) (string, error) {
	return apiversion.Negotiate("admission", "admission plugin", pluginName, pluginVersions, hostVersions)
}
