package admission

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/go-plugin"
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
	best, bestN := "", -1
	for _, v := range pluginVersions {
		n, ok := apiVersionNumber(v)
		if ok && n > bestN && slices.Contains(hostVersions, v) {
			best, bestN = v, n
		}
	}
	if bestN >= 0 {
		return best, nil
	}
	if len(pluginVersions) == 0 {
		return "", fmt.Errorf("admission plugin %s announces no admission API version; this berth speaks %s", pluginName, strings.Join(hostVersions, ", "))
	}
	return "", fmt.Errorf("admission plugin %s speaks admission API %s; this berth speaks %s", pluginName, strings.Join(pluginVersions, ", "), strings.Join(hostVersions, ", "))
}

// apiVersionNumber parses "v3" as 3.
func apiVersionNumber(v string) (int, bool) {
	rest, ok := strings.CutPrefix(v, "v")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n > 0
}
