// Package wrap is the common part of the deliberately broken CNI plugins that prove
// berth's CNI conformance suite catches faults (test/conformance/cni_test.go). Each
// plugin delegates every verb to a real plugin (the "delegate" object of its network
// configuration, e.g. ptp with host-local, run from CNI_PATH) and then breaks one
// promise of the spec, chosen by its Fault:
//
//   - leaky: DEL removes the interface but never releases the IPAM address;
//   - liar: ADD reports an address it did not configure;
//   - fragile: a second DEL of the same container fails;
//   - blind: CHECK passes without looking, even when the interface is gone.
//
// The wrapper speaks CNI 0.4.0 to 1.1.0 itself; "delegateVersion" is the version it
// speaks to the delegate, so that a chain at 1.1.0 (GC, STATUS) can wrap Debian's
// 1.1.1 plugins, which stop at 1.0.0. GC and STATUS are no-ops that succeed.
package wrap

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// Fault is the promise a plugin breaks.
type Fault int

// The faults of the four broken plugins.
const (
	LeakIPAM Fault = iota + 1
	LieAddress
	FailSecondDel
	BlindCheck
)

// conf is the wrapper's own part of the network configuration.
type conf struct {
	types.PluginConf
	Delegate        map[string]any `json:"delegate"`
	DelegateVersion string         `json:"delegateVersion"`
	// StateDir keeps fragile's record of the containers it deleted.
	StateDir string `json:"stateDir"`
	// NoopIPAM marks leaky's own invocation as the delegate's IPAM on DEL (set from
	// ipam.noopIPAM).
	NoopIPAM bool `json:"-"`
}

// Main runs the plugin with fault f.
func Main(f Fault) {
	p := &plugin{fault: f, self: filepath.Base(os.Args[0])}
	skel.PluginMainFuncs(skel.CNIFuncs{Add: p.add, Del: p.del, Check: p.check, GC: p.noop, Status: p.noop},
		version.PluginSupports("0.4.0", "1.0.0", "1.1.0"), "berth's broken CNI plugin "+p.self)
}

type plugin struct {
	fault Fault
	self  string
}

func parse(args *skel.CmdArgs) (*conf, map[string]any, error) {
	var c conf
	if err := json.Unmarshal(args.StdinData, &c); err != nil {
		return nil, nil, fmt.Errorf("network configuration: %w", err)
	}
	var raw map[string]any
	if err := json.Unmarshal(args.StdinData, &raw); err != nil {
		return nil, nil, fmt.Errorf("network configuration: %w", err)
	}
	// Called as its delegate's IPAM, leaky gets the delegate's configuration.
	if ipam, ok := raw["ipam"].(map[string]any); ok && ipam["noopIPAM"] == true {
		c.NoopIPAM = true
	}
	if !c.NoopIPAM && c.Delegate == nil {
		return nil, nil, errors.New(`network configuration: no "delegate" plugin`)
	}
	if c.DelegateVersion == "" {
		c.DelegateVersion = c.CNIVersion
	}
	return &c, raw, nil
}

// delegateConf is the delegate's configuration: its object with the network's name, the
// delegate's version and the prevResult in that version.
func delegateConf(c *conf, raw map[string]any, edit func(map[string]any)) ([]byte, error) {
	d := map[string]any{}
	for k, v := range c.Delegate {
		d[k] = v
	}
	d["name"] = c.Name
	d["cniVersion"] = c.DelegateVersion
	if prev, ok := raw["prevResult"].(map[string]any); ok {
		prev["cniVersion"] = c.DelegateVersion
		d["prevResult"] = prev
	}
	if edit != nil {
		edit(d)
	}
	return json.Marshal(d)
}

func delegateType(c *conf) string {
	t, _ := c.Delegate["type"].(string)
	return t
}

func (p *plugin) add(args *skel.CmdArgs) error {
	c, raw, err := parse(args)
	if err != nil {
		return err
	}
	if p.fault == LieAddress {
		// The lie must not reach the delegate, which would check it.
		stripLie(raw, args.ContainerID)
	}
	stdin, err := delegateConf(c, raw, nil)
	if err != nil {
		return err
	}
	res, err := invoke.DelegateAdd(context.TODO(), delegateType(c), stdin, nil)
	if err != nil {
		return err
	}
	if p.fault == FailSecondDel {
		if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
			return fmt.Errorf("state dir: %w", err)
		}
		_ = os.Remove(filepath.Join(c.StateDir, args.ContainerID))
	}
	if p.fault == LieAddress {
		r, err := types100.NewResultFromResult(res)
		if err != nil {
			return err
		}
		idx := -1
		for i, iface := range r.Interfaces {
			if iface.Sandbox != "" {
				idx = i
			}
		}
		r.IPs = append(r.IPs, &types100.IPConfig{Interface: &idx, Address: lie(args.ContainerID)})
		res = r
	}
	return types.PrintResult(res, c.CNIVersion)
}

func (p *plugin) del(args *skel.CmdArgs) error {
	c, raw, err := parse(args)
	if err != nil {
		return err
	}
	if c.NoopIPAM {
		return nil // leaky, called as its delegate's IPAM: keep the address
	}
	if p.fault == FailSecondDel && c.StateDir != "" {
		mark := filepath.Join(c.StateDir, args.ContainerID)
		if _, err := os.Stat(mark); err == nil {
			return fmt.Errorf("container %s was already deleted", args.ContainerID)
		}
	}
	if p.fault == LieAddress {
		stripLie(raw, args.ContainerID)
	}
	stdin, err := delegateConf(c, raw, func(d map[string]any) {
		if p.fault == LeakIPAM {
			d["ipam"] = map[string]any{"type": p.self, "noopIPAM": true}
		}
	})
	if err != nil {
		return err
	}
	if err := invoke.DelegateDel(context.TODO(), delegateType(c), stdin, nil); err != nil {
		return err
	}
	if p.fault == FailSecondDel && c.StateDir != "" {
		// Only a container that was added is recorded: a DEL without ADD still works.
		if _, err := os.Stat(c.StateDir); err == nil {
			return os.WriteFile(filepath.Join(c.StateDir, args.ContainerID), nil, 0o600)
		}
	}
	return nil
}

func (p *plugin) check(args *skel.CmdArgs) error {
	if p.fault == BlindCheck {
		return nil
	}
	c, raw, err := parse(args)
	if err != nil {
		return err
	}
	if p.fault == LieAddress {
		stripLie(raw, args.ContainerID)
	}
	stdin, err := delegateConf(c, raw, nil)
	if err != nil {
		return err
	}
	return invoke.DelegateCheck(context.TODO(), delegateType(c), stdin, nil)
}

func (p *plugin) noop(*skel.CmdArgs) error { return nil }

// lie is the address liar claims: one of 2001:db8::/64 (documentation addresses, never
// routed) made from the container ID, so that no two containers share it.
func lie(containerID string) net.IPNet {
	sum := sha256.Sum256([]byte(containerID))
	ip := net.ParseIP("2001:db8::")
	copy(ip[8:], sum[:8])
	return net.IPNet{IP: ip, Mask: net.CIDRMask(64, 128)}
}

// stripLie removes liar's invented address from a prevResult.
func stripLie(raw map[string]any, containerID string) {
	prev, ok := raw["prevResult"].(map[string]any)
	if !ok {
		return
	}
	ips, _ := prev["ips"].([]any)
	l := lie(containerID)
	var keep []any
	for _, ip := range ips {
		if m, ok := ip.(map[string]any); ok && m["address"] == l.String() {
			continue
		}
		keep = append(keep, ip)
	}
	prev["ips"] = keep
}
