package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
)

func testVersionSupported(ctx context.Context, t *T) {
	want := t.Network().CNIVersion
	seen := map[string]bool{}
	for _, p := range t.Network().Plugins {
		typ := p.Network.Type
		if seen[typ] {
			continue
		}
		seen[typ] = true
		info, err := t.suite.cni.GetVersionInfo(ctx, typ)
		if err != nil {
			t.Errorf("VERSION of %s: %v", typ, err)
			continue
		}
		vs := info.SupportedVersions()
		t.Logf("%s supports %v", typ, vs)
		if len(vs) == 0 {
			t.Errorf("VERSION of %s lists no supported versions", typ)
		}
		if !slices.Contains(vs, want) {
			t.Errorf("%s does not support the configuration's cniVersion %s (it supports %v)", typ, want, vs)
		}
	}
}

// addCurrent runs ADD for a new attachment and returns it with its result in the current
// schema.
func addCurrent(ctx context.Context, t *T) (*Attachment, *types100.Result) {
	a := t.MustAdd(ctx)
	r, err := current(a.Result)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return a, r
}

func testAddResult(ctx context.Context, t *T) {
	a := t.MustAdd(ctx)
	if raw, err := json.Marshal(a.Result); err == nil {
		t.Logf("result: %s", raw)
	}
	for _, p := range validateResult(a.Result, t.Network().CNIVersion) {
		t.Errorf("%s", p)
	}
}

func testAddInterfaces(ctx context.Context, t *T) {
	a, r := addCurrent(ctx, t)
	if sandboxInterface(r, a.IfName, a.NetNS) < 0 {
		t.Errorf("the result lists no interface %s with sandbox %s: %v", a.IfName, a.NetNS, r.Interfaces)
	}
	ns := openView(t, a.NetNS)
	host := hostViewOf(t)
	for _, iface := range r.Interfaces {
		view, where := host, "the host"
		if iface.Sandbox != "" {
			if iface.Sandbox != a.NetNS {
				t.Errorf("interface %s is in sandbox %s, not in the container's %s", iface.Name, iface.Sandbox, a.NetNS)
				continue
			}
			view, where = ns, "the namespace"
		}
		l, err := view.link(iface.Name)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if l == nil {
			t.Errorf("the result lists interface %s, but %s has no such link", iface.Name, where)
			continue
		}
		if iface.Mac != "" {
			if mac, err := net.ParseMAC(iface.Mac); err == nil && !bytes.Equal(mac, l.Attrs().HardwareAddr) {
				t.Errorf("interface %s in %s has MAC %s, the result says %s", iface.Name, where, l.Attrs().HardwareAddr, iface.Mac)
			}
		}
		if iface.Sandbox != "" && l.Attrs().OperState != 0 && l.Attrs().Flags&net.FlagUp == 0 {
			t.Errorf("interface %s in the namespace is down", iface.Name)
		}
	}
}

func testAddAddresses(ctx context.Context, t *T) {
	a, r := addCurrent(ctx, t)
	if len(r.IPs) == 0 {
		t.Skipf("the result has no IPs (a chain without IPAM)")
	}
	ns := openView(t, a.NetNS)
	host := hostViewOf(t)
	for _, ip := range r.IPs {
		if ip.Interface == nil || *ip.Interface < 0 || *ip.Interface >= len(r.Interfaces) {
			t.Logf("ip %s names no interface: not checked", ip.Address.String())
			continue
		}
		iface := r.Interfaces[*ip.Interface]
		view, where := host, "on the host"
		if iface.Sandbox != "" {
			view, where = ns, "in the namespace"
		}
		l, err := view.link(iface.Name)
		if err != nil || l == nil {
			t.Errorf("ip %s is on interface %s, which is not %s (%v)", ip.Address.String(), iface.Name, where, err)
			continue
		}
		as, err := view.addrs(l)
		if err != nil {
			t.Errorf("%v", err)
			continue
		}
		if !hasAddr(as, &ip.Address) {
			t.Errorf("the result says %s is on %s %s, which has %v", ip.Address.String(), iface.Name, where, addrStrings(as))
		}
	}
}

func testAddRoutes(ctx context.Context, t *T) {
	a, r := addCurrent(ctx, t)
	if len(r.Routes) == 0 {
		t.Skipf("the result has no routes")
	}
	ns := openView(t, a.NetNS)
	rs, err := ns.routes()
	if err != nil {
		t.Fatalf("%v", err)
	}
	for _, rt := range r.Routes {
		if !hasRoute(rs, &rt.Dst, rt.GW) {
			var have []string
			for _, x := range rs {
				have = append(have, x.String())
			}
			t.Errorf("the result lists route %s, which the namespace does not have; it has %v", rt.String(), have)
		}
	}
}

// requireCheck skips a test of CHECK when the configuration has none.
func requireCheck(t *T) {
	if ok, _ := version.GreaterThanOrEqualTo(t.Network().CNIVersion, "0.4.0"); !ok {
		t.Skipf("cniVersion %s: CHECK arrived with spec 0.4.0", t.Network().CNIVersion)
	}
	if t.Network().DisableCheck {
		t.Skipf("the configuration sets disableCheck")
	}
}

// requireVersion skips a test of a verb the configuration's version does not have.
func requireVersion(t *T, min, verb string) {
	if ok, _ := version.GreaterThanOrEqualTo(t.Network().CNIVersion, min); !ok {
		t.Skipf("cniVersion %s: %s arrived with spec %s", t.Network().CNIVersion, verb, min)
	}
}

func testCheckAfterAdd(ctx context.Context, t *T) {
	requireCheck(t)
	a := t.MustAdd(ctx)
	if err := t.Check(ctx, a); err != nil {
		t.Errorf("CHECK right after ADD failed: %v", err)
	}
}

func testCheckRemovedInterface(ctx context.Context, t *T) {
	requireCheck(t)
	a, r := addCurrent(ctx, t)
	ns := openView(t, a.NetNS)
	l, err := ns.link(a.IfName)
	if err != nil || l == nil {
		t.Fatalf("interface %s is not in the namespace after ADD (%v)", a.IfName, err)
	}
	if err := ns.h.LinkDel(l); err != nil {
		t.Fatalf("remove %s from the namespace: %v", a.IfName, err)
	}
	if err := t.Check(ctx, a); err == nil {
		t.Errorf("CHECK passed although the container's interface %s was removed", a.IfName)
	} else {
		t.Logf("CHECK failed as it should: %v", err)
	}
	// The reference plugins find the iptables rules DEL removes (ipMasq) by the
	// addresses of the container's interface: a stand-in with those addresses lets the
	// cleanup's DEL leave the host clean.
	// A veth pair, both ends in the namespace: the plugins make veths, so the kernel
	// has them (a dummy link needs a module that may be missing).
	standIn := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a.IfName}, PeerName: "cnict-peer"}
	if err := ns.h.LinkAdd(standIn); err != nil {
		t.Logf("cleanup: stand-in for %s: %v", a.IfName, err)
		return
	}
	for _, ip := range sandboxIPs(r, sandboxInterface(r, a.IfName, a.NetNS)) {
		if err := ns.h.AddrAdd(standIn, &netlink.Addr{IPNet: &ip.Address}); err != nil {
			t.Logf("cleanup: address %s on the stand-in: %v", ip.Address.String(), err)
		}
	}
}

func testCheckRemovedAddress(ctx context.Context, t *T) {
	requireCheck(t)
	a, r := addCurrent(ctx, t)
	idx := sandboxInterface(r, a.IfName, a.NetNS)
	ips := sandboxIPs(r, idx)
	if idx < 0 || len(ips) == 0 {
		t.Skipf("the result has no IP on %s", a.IfName)
	}
	ns := openView(t, a.NetNS)
	l, err := ns.link(a.IfName)
	if err != nil || l == nil {
		t.Fatalf("interface %s is not in the namespace after ADD (%v)", a.IfName, err)
	}
	as, err := ns.addrs(l)
	if err != nil {
		t.Fatalf("%v", err)
	}
	removed := false
	for _, x := range as {
		if x.IPNet != nil && x.IP.Equal(ips[0].Address.IP) {
			if err := ns.h.AddrDel(l, &x); err != nil {
				t.Fatalf("remove %s from %s: %v", x.IPNet, a.IfName, err)
			}
			removed = true
		}
	}
	if !removed {
		t.Fatalf("address %s of the result is not on %s (see add/addresses)", ips[0].Address.String(), a.IfName)
	}
	if err := t.Check(ctx, a); err == nil {
		t.Errorf("CHECK passed although address %s was removed from %s", ips[0].Address.String(), a.IfName)
	} else {
		t.Logf("CHECK failed as it should: %v", err)
	}
	// Back, so that the cleanup's DEL finds the iptables rules it made for it.
	if err := ns.h.AddrAdd(l, &netlink.Addr{IPNet: &ips[0].Address}); err != nil {
		t.Logf("cleanup: restore %s: %v", ips[0].Address.String(), err)
	}
}

func testDelRemoves(ctx context.Context, t *T) {
	a, r := addCurrent(ctx, t)
	host := hostViewOf(t)
	// Host-side veth ends belong to this attachment; a bridge is shared and stays.
	var veths []string
	for _, iface := range r.Interfaces {
		if iface.Sandbox != "" {
			continue
		}
		if l, err := host.link(iface.Name); err == nil && l != nil && l.Type() == "veth" {
			veths = append(veths, iface.Name)
		}
	}
	if err := t.Del(ctx, a); err != nil {
		t.Fatalf("%v", err)
	}
	ns := openView(t, a.NetNS)
	if l, err := ns.link(a.IfName); err != nil {
		t.Errorf("%v", err)
	} else if l != nil {
		t.Errorf("interface %s is still in the namespace after DEL", a.IfName)
	}
	for _, name := range veths {
		if l, err := host.link(name); err != nil {
			t.Errorf("%v", err)
		} else if l != nil {
			t.Errorf("host veth %s is still there after DEL", name)
		}
	}
	for _, rule := range rulesNaming(ctx, t, a.ID) {
		t.Errorf("a firewall rule for the container is still there after DEL: %s", rule)
	}
}

// rulesNaming returns the iptables rules that name container id, as the reference
// plugins' rules do in their comments (ipMasq, portmap). Without iptables-save there
// is nothing to look at.
func rulesNaming(ctx context.Context, t *T, id string) []string {
	var out []string
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		path, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		dump, err := exec.CommandContext(ctx, path).Output()
		if err != nil {
			t.Logf("%s: %v", tool, err)
			continue
		}
		for _, line := range strings.Split(string(dump), "\n") {
			if strings.Contains(line, `"`+id+`"`) {
				out = append(out, line)
			}
		}
	}
	return out
}

func testDelTwice(ctx context.Context, t *T) {
	a := t.MustAdd(ctx)
	if err := t.Del(ctx, a); err != nil {
		t.Fatalf("first DEL: %v", err)
	}
	if err := t.Del(ctx, a); err != nil {
		t.Errorf("second DEL failed (DEL must be idempotent): %v", err)
	}
}

func testDelWithoutAdd(ctx context.Context, t *T) {
	a := t.NewAttachment()
	if err := t.Del(ctx, a); err != nil {
		t.Errorf("DEL of a container that was never added failed: %v", err)
	}
}

func testGCValidAttachments(ctx context.Context, t *T) {
	requireVersion(t, "1.1.0", "GC")
	keep := t.MustAdd(ctx)
	stale := t.MustAdd(ctx)
	err := t.suite.cni.GCNetworkList(ctx, t.Network(), &libcni.GCArgs{
		ValidAttachments: []types.GCAttachment{{ContainerID: keep.ID, IfName: keep.IfName}},
	})
	if err != nil {
		t.Fatalf("GC with %s valid: %v", keep.ID, err)
	}
	// libcni deletes the stale attachment it has cached before the plugins' GC.
	stale.deleted = true
	if ok, _ := version.GreaterThanOrEqualTo(t.Network().CNIVersion, "0.4.0"); ok && !t.Network().DisableCheck {
		if err := t.Check(ctx, keep); err != nil {
			t.Errorf("the valid attachment fails CHECK after GC: %v", err)
		}
	}
	ns := openView(t, keep.NetNS)
	if l, err := ns.link(keep.IfName); err != nil || l == nil {
		t.Errorf("GC removed the interface of the valid attachment %s (%v)", keep.ID, err)
	}
}

func testStatusReady(ctx context.Context, t *T) {
	requireVersion(t, "1.1.0", "STATUS")
	if err := t.suite.cni.GetStatusNetworkList(ctx, t.Network()); err != nil {
		t.Errorf("STATUS: %v", err)
	}
}

// addMany makes n attachments and returns them with the addresses each got; it ends the
// test when an ADD fails or an address is handed out twice.
func addMany(ctx context.Context, t *T, n int, round string) ([]*Attachment, map[string]string) {
	owners := map[string]string{}
	var as []*Attachment
	for i := range n {
		a := t.NewAttachment()
		res, err := t.Add(ctx, a)
		if err != nil {
			t.Fatalf("%s: ADD %d of %d: %v", round, i+1, n, err)
		}
		r, err := current(res)
		if err != nil {
			t.Fatalf("%v", err)
		}
		if i == 0 && len(r.IPs) == 0 {
			t.Skipf("the result has no IPs (a chain without IPAM)")
		}
		for _, ip := range r.IPs {
			key := ip.Address.IP.String()
			if other, ok := owners[key]; ok {
				t.Fatalf("%s: address %s handed out twice, to %s and %s", round, key, other, a.ID)
			}
			owners[key] = a.ID
		}
		as = append(as, a)
	}
	return as, owners
}

func testIPAMUnique(ctx context.Context, t *T) {
	n := t.Config().IPAMAttachments
	_, owners := addMany(ctx, t, n, "ADD")
	t.Logf("%d attachments, %d distinct addresses", n, len(owners))
}

func testIPAMRelease(ctx context.Context, t *T) {
	n := t.Config().IPAMAttachments
	// A plugin that leaks has lost the earlier tests' addresses already, so even the
	// first round may run dry.
	first, owners := addMany(ctx, t, n, "first round, after the earlier tests' DELs")
	for _, a := range first {
		if err := t.Del(ctx, a); err != nil {
			t.Fatalf("%v", err)
		}
		if err := deleteNetNS(a.ID); err != nil {
			t.Logf("%v", err)
		}
	}
	// Without the first round's addresses back, a pool of fewer than 2n addresses runs
	// dry here.
	_, again := addMany(ctx, t, n, "second round, after DEL of the first "+fmt.Sprint(n))
	reused := 0
	for ip := range again {
		if _, ok := owners[ip]; ok {
			reused++
		}
	}
	t.Logf("the second round reused %d of the first round's %d addresses", reused, len(owners))
}

// pluginError is the spec's error object ("Error" output).
type pluginError struct {
	CNIVersion string `json:"cniVersion"`
	Code       *int   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details"`
}

// execPlugin runs one plugin binary the way libcni does, with exactly the environment
// given (plus PATH), and returns its stdout and whether it exited non-zero.
func execPlugin(ctx context.Context, t *T, typ string, env []string, stdin []byte) ([]byte, bool) {
	cmd := exec.CommandContext(ctx, filepath.Join(t.Config().BinDir, typ))
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "CNI_PATH=" + t.Config().BinDir}, env...)
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if stderr.Len() > 0 {
		t.Logf("%s stderr: %s", typ, strings.TrimSpace(stderr.String()))
	}
	var exit *exec.ExitError
	if err != nil && !errors.As(err, &exit) {
		t.Fatalf("run %s: %v", typ, err)
	}
	return stdout.Bytes(), err != nil
}

// expectError runs every plugin of the chain with bad input made by input and checks
// that each fails with the spec's error object and the code the spec gives that fault.
func expectError(ctx context.Context, t *T, what string, wantCode int, input func(a *Attachment, p *libcni.PluginConfig) ([]string, []byte)) {
	seen := map[string]bool{}
	for _, p := range t.Network().Plugins {
		typ := p.Network.Type
		if seen[typ] {
			continue
		}
		seen[typ] = true
		a := t.NewAttachment()
		a.added = true // whatever a plugin that ignores the fault made is removed
		env, stdin := input(a, p)
		out, failed := execPlugin(ctx, t, typ, env, stdin)
		if !failed {
			t.Errorf("%s accepted %s (exit 0, output %s)", typ, what, bytes.TrimSpace(out))
			continue
		}
		var e pluginError
		if err := json.Unmarshal(out, &e); err != nil {
			t.Errorf("%s failed on %s but its stdout is not the spec's error object: %q (%v)", typ, what, out, err)
			continue
		}
		t.Logf("%s: %s", typ, bytes.Join(bytes.Fields(out), []byte(" ")))
		switch {
		case e.Code == nil:
			t.Errorf("%s's error for %s has no code: %s", typ, what, out)
		case e.Msg == "":
			t.Errorf("%s's error for %s has no msg: %s", typ, what, out)
		case *e.Code != wantCode:
			t.Errorf("%s's error for %s has code %d, the spec's code for it is %d (msg %q)", typ, what, *e.Code, wantCode, e.Msg)
		}
	}
}

// pluginStdin is the configuration libcni would give plugin p, with name and version.
func pluginStdin(t *T, p *libcni.PluginConfig, cniVersion string) []byte {
	conf, err := libcni.InjectConf(p, map[string]any{"name": t.Network().Name, "cniVersion": cniVersion})
	if err != nil {
		t.Fatalf("configuration of %s: %v", p.Network.Type, err)
	}
	return conf.Bytes
}

func testErrorMissingContainerID(ctx context.Context, t *T) {
	expectError(ctx, t, "an ADD without CNI_CONTAINERID", int(types.ErrInvalidEnvironmentVariables),
		func(a *Attachment, p *libcni.PluginConfig) ([]string, []byte) {
			return []string{"CNI_COMMAND=ADD", "CNI_NETNS=" + a.NetNS, "CNI_IFNAME=" + a.IfName},
				pluginStdin(t, p, t.Network().CNIVersion)
		})
}

func testErrorBadConfig(ctx context.Context, t *T) {
	expectError(ctx, t, "a configuration that is not JSON", int(types.ErrDecodingFailure),
		func(a *Attachment, p *libcni.PluginConfig) ([]string, []byte) {
			return []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + a.ID, "CNI_NETNS=" + a.NetNS, "CNI_IFNAME=" + a.IfName},
				[]byte(`{"cniVersion": "` + t.Network().CNIVersion + `", "name": "` + t.Network().Name + `", "type": `)
		})
}

func testErrorUnknownVersion(ctx context.Context, t *T) {
	expectError(ctx, t, "cniVersion 99.0.0", int(types.ErrIncompatibleCNIVersion),
		func(a *Attachment, p *libcni.PluginConfig) ([]string, []byte) {
			return []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + a.ID, "CNI_NETNS=" + a.NetNS, "CNI_IFNAME=" + a.IfName},
				pluginStdin(t, p, "99.0.0")
		})
}

// openView opens a namespace for a test, closed after it.
func openView(t *T, path string) *nsView {
	v, err := openNS(path)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func(context.Context) { v.close() })
	return v
}

// hostViewOf opens the host's namespace for a test, closed after it.
func hostViewOf(t *T) *nsView {
	v, err := hostView()
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func(context.Context) { v.close() })
	return v
}

// addrStrings lists addresses for a message.
func addrStrings(as []netlink.Addr) []string {
	var out []string
	for _, a := range as {
		if a.IPNet != nil {
			out = append(out, a.IPNet.String())
		}
	}
	return out
}
