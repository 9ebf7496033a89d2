// Package apiversion is the API version negotiation both plugin SDKs (plugins/scheduler,
// plugins/admission) share: the host picks the highest version both sides speak, or says
// in an operator's words why there is none.
package apiversion

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Negotiate picks the highest version of hostVersions that the plugin also speaks.
// kind names the protocol ("scheduler"), who the plugin ("plugin", "admission plugin").
func Negotiate(kind, who, pluginName string, pluginVersions, hostVersions []string) (string, error) {
	best, bestN := "", -1
	for _, v := range pluginVersions {
		n, ok := number(v)
		if ok && n > bestN && slices.Contains(hostVersions, v) {
			best, bestN = v, n
		}
	}
	if bestN >= 0 {
		return best, nil
	}
	if len(pluginVersions) == 0 {
		return "", fmt.Errorf("%s %s announces no %s API version; this berth speaks %s", who, pluginName, kind, strings.Join(hostVersions, ", "))
	}
	return "", fmt.Errorf("%s %s speaks %s API %s; this berth speaks %s", who, pluginName, kind, strings.Join(pluginVersions, ", "), strings.Join(hostVersions, ", "))
}

// number parses "v3" as 3.
func number(v string) (int, bool) {
	rest, ok := strings.CutPrefix(v, "v")
	if !ok {
		return 0, false
	}
	n, err := strconv.Atoi(rest)
	return n, err == nil && n > 0
}
