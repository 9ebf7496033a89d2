package cni

import (
	"encoding/json"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/types"
	types040 "github.com/containernetworking/cni/pkg/types/040"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// current converts a result of any version to the current schema, which the checks of
// what is in the namespace read.
func current(res types.Result) (*types100.Result, error) {
	r, err := types100.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("convert the result (version %s) to %s: %w", res.Version(), types100.ImplementedSpecVersion, err)
	}
	return r, nil
}

// validateResult checks ADD's result against the schema of the configuration's version
// (spec "Success" output): the version, interfaces with names and valid MACs, IPs with
// an address, a gateway of the same family and an interface index inside the interface
// list, routes with a destination, DNS servers that are addresses. It returns every
// problem it finds.
func validateResult(res types.Result, confVersion string) []string {
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	if res.Version() != confVersion {
		bad("the result is version %s, the configuration's cniVersion is %s", res.Version(), confVersion)
	}
	// The JSON form, as the runtime receives it: the version-specific fields are checked
	// there.
	raw, err := json.Marshal(res)
	if err != nil {
		return append(problems, fmt.Sprintf("encode the result: %v", err))
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return append(problems, fmt.Sprintf("decode the result: %v", err))
	}
	if v, _ := doc["cniVersion"].(string); v == "" {
		bad("the result has no cniVersion")
	}
	since100, _ := version.GreaterThanOrEqualTo(confVersion, "1.0.0")
	if !since100 {
		if r040, err := types040.GetResult(res); err == nil {
			for i, ip := range r040.IPs {
				want := "4"
				if ip.Address.IP.To4() == nil {
					want = "6"
				}
				if ip.Version != want {
					bad("ips[%d] (%s): version %q, want %q (required before spec 1.0.0)", i, ip.Address.String(), ip.Version, want)
				}
			}
		}
	} else if ips, _ := doc["ips"].([]any); len(ips) > 0 {
		for i, ip := range ips {
			if m, _ := ip.(map[string]any); m != nil {
				if _, ok := m["version"]; ok {
					bad("ips[%d] has a version field, which spec 1.0.0 removed", i)
				}
			}
		}
	}
	r, err := current(res)
	if err != nil {
		return append(problems, err.Error())
	}
	for i, iface := range r.Interfaces {
		if iface.Name == "" {
			bad("interfaces[%d] has no name", i)
		}
		if iface.Mac != "" {
			if _, err := net.ParseMAC(iface.Mac); err != nil {
				bad("interfaces[%d] (%s): mac %q: %v", i, iface.Name, iface.Mac, err)
			}
		}
	}
	for i, ip := range r.IPs {
		if ip.Address.IP == nil || ip.Address.Mask == nil {
			bad("ips[%d] has no address", i)
			continue
		}
		if ip.Interface != nil && (*ip.Interface < 0 || *ip.Interface >= len(r.Interfaces)) {
			bad("ips[%d] (%s): interface index %d is outside the %d interfaces", i, ip.Address.String(), *ip.Interface, len(r.Interfaces))
		}
		if ip.Gateway != nil && (ip.Gateway.To4() == nil) != (ip.Address.IP.To4() == nil) {
			bad("ips[%d] (%s): gateway %s is of the other address family", i, ip.Address.String(), ip.Gateway)
		}
	}
	for i, rt := range r.Routes {
		if rt == nil || rt.Dst.IP == nil {
			bad("routes[%d] has no dst", i)
			continue
		}
		if rt.GW != nil && (rt.GW.To4() == nil) != (rt.Dst.IP.To4() == nil) {
			bad("routes[%d] (%s): gw %s is of the other address family", i, rt.Dst.String(), rt.GW)
		}
	}
	for i, ns := range r.DNS.Nameservers {
		if net.ParseIP(ns) == nil {
			bad("dns.nameservers[%d]: %q is not an IP address", i, ns)
		}
	}
	return problems
}

// sandboxInterface returns the index of the interface named ifName in the namespace at
// netnsPath, -1 when the result names none.
func sandboxInterface(r *types100.Result, ifName, netnsPath string) int {
	for i, iface := range r.Interfaces {
		if iface.Name == ifName && iface.Sandbox == netnsPath {
			return i
		}
	}
	return -1
}

// sandboxIPs returns the IPs of the result that are on the interface at index idx.
func sandboxIPs(r *types100.Result, idx int) []*types100.IPConfig {
	var out []*types100.IPConfig
	for _, ip := range r.IPs {
		if ip.Interface != nil && *ip.Interface == idx {
			out = append(out, ip)
		}
	}
	return out
}
