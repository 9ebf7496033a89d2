package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultRouteTable is the routing table that holds the unreachable route of the service
// range, and DefaultRulePriority the priority of the rule that consults it (before the
// main table's 32766).
const (
	DefaultRouteTable   = 0xbe27
	DefaultRulePriority = 32000
)

// serviceRoute is the unreachable route for the service range. It sits in a table of its
// own, consulted only for packets that did not start on this node (`not iif lo`):
// forwarded packets (from pods) to a service address that DNAT did not rewrite fail in
// routing with ICMP host unreachable. Locally started connections must not see it: the
// kernel routes a socket's packets before the nat output hook rewrites them, so an
// unreachable route there would fail every connection to a ClusterIP; the filter-output
// chain rejects the unassigned ones instead.
type serviceRoute struct {
	cidr     netip.Prefix
	table    int
	priority int
}

func (r serviceRoute) route() *netlink.Route {
	return &netlink.Route{
		Dst:   &net.IPNet{IP: r.cidr.Addr().AsSlice(), Mask: net.CIDRMask(r.cidr.Bits(), 32)},
		Type:  unix.RTN_UNREACHABLE,
		Table: r.table,
	}
}

func (r serviceRoute) rule() *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family = unix.AF_INET
	rule.Table = r.table
	rule.Priority = r.priority
	rule.IifName = "lo"
	rule.Invert = true
	return rule
}

// ensure adds the route and the rule when they are missing.
func (r serviceRoute) ensure() error {
	if err := netlink.RouteReplace(r.route()); err != nil {
		return fmt.Errorf("unreachable route for %s in table %d: %w", r.cidr, r.table, err)
	}
	rules, err := netlink.RuleListFiltered(unix.AF_INET, &netlink.Rule{Table: r.table}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return fmt.Errorf("list routing rules: %w", err)
	}
	for _, x := range rules {
		if x.Priority == r.priority && x.Invert && x.IifName == "lo" {
			return nil
		}
	}
	if err := netlink.RuleAdd(r.rule()); err != nil && !errors.Is(err, syscall.EEXIST) {
		return fmt.Errorf("routing rule for table %d: %w", r.table, err)
	}
	return nil
}

// remove deletes the route and the rule; missing ones are no error.
func (r serviceRoute) remove() error {
	var errs error
	if err := netlink.RuleDel(r.rule()); err != nil && !errors.Is(err, syscall.ENOENT) {
		errs = fmt.Errorf("delete routing rule for table %d: %w", r.table, err)
	}
	if err := netlink.RouteDel(r.route()); err != nil && !errors.Is(err, syscall.ESRCH) && !errors.Is(err, syscall.ENOENT) {
		errs = errors.Join(errs, fmt.Errorf("delete unreachable route for %s: %w", r.cidr, err))
	}
	return errs
}

// routeLocalnetPath is the sysctl that lets packets from 127.0.0.1 be routed to another
// interface: needed for NodePorts on localhost, whose DNATed packets leave toward the pod
// network with source 127.0.0.1 (and are then masqueraded). kube-proxy sets the same.
const routeLocalnetPath = "/proc/sys/net/ipv4/conf/all/route_localnet"

func enableRouteLocalnet() error {
	if b, err := os.ReadFile(routeLocalnetPath); err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	if err := os.WriteFile(routeLocalnetPath, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable route_localnet for NodePorts on 127.0.0.1: %w", err)
	}
	return nil
}
