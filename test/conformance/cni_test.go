package conformance

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"berth.dev/berth/conformance/cni"
	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/hosttest"
)

// requireCNIHost skips the test when this machine cannot run the CNI plugins.
func requireCNIHost(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("runs CNI plugins in network namespaces")
	}
	hosttest.RequireRoot(t, "to make network namespaces")
	hosttest.RequireCNIPlugins(t, "bridge", "ptp", "host-local", "portmap")
	hosttest.RequireCommands(t, "iptables")
}

// runCNISuite runs the suite on conf (written to dir) and returns the report, with the
// output in the test's log.
func runCNISuite(t *testing.T, binDir, dir string, conf []byte, attachments int) *cni.Report {
	t.Helper()
	confFile := filepath.Join(dir, "net.conflist")
	if err := os.WriteFile(confFile, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	rep, err := cni.Run(ctx, cni.Config{BinDir: binDir, ConfFile: confFile, IPAMAttachments: attachments, Output: &out})
	t.Logf("conformance cni on %s:\n%s", confFile, out.String())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Leftovers != "" {
		t.Errorf("%s", rep.Leftovers)
	}
	return rep
}

// checkNoLeftovers fails the test when a namespace of the suite, a route on cidr or an
// iptables rule of run runID is left on the host.
func checkNoLeftovers(t *testing.T, cidr, runID string) {
	t.Helper()
	if out, err := exec.Command("iptables-save").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, cni.NamespacePrefix+runID+"-") {
				t.Errorf("an iptables rule of the run was left behind: %s", line)
			}
		}
	}
	if entries, err := os.ReadDir("/var/run/netns"); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), cni.NamespacePrefix) {
				t.Errorf("namespace %s was left behind", e.Name())
			}
		}
	}
	prefix := strings.TrimSuffix(cidr, "0/24")
	if out, err := exec.Command("ip", "-4", "route", "show").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(line, prefix) && !strings.HasPrefix(line, cidr) {
				t.Errorf("a route to a pod address was left behind: %s", line)
			}
		}
	}
}

// TestCNISuiteOnShippedChains runs the suite on the two networks berth's agent renders
// (bridge and ptp, each with host-local and portmap) with Debian's reference plugins:
// every test passes, GC and STATUS are skipped (the conflists are cniVersion 0.4.0).
func TestCNISuiteOnShippedChains(t *testing.T) {
	requireCNIHost(t)
	for _, driver := range []string{"bridge", "ptp"} {
		t.Run(driver, func(t *testing.T) {
			dir := t.TempDir()
			cidr := hosttest.FreePodCIDR(t)
			bridge := fmt.Sprintf("berthcni%d", os.Getpid()%100000)
			var conf []byte
			var err error
			switch driver {
			case "bridge":
				conf, err = containerd.CNIConflist(bridge, cidr, filepath.Join(dir, "ipam"))
				t.Cleanup(func() {
					if out, err := exec.Command("ip", "link", "del", bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
						t.Errorf("cleanup: delete bridge %s: %v: %s", bridge, err, out)
					}
				})
			case "ptp":
				conf, err = containerd.PTPConflist(cidr, filepath.Join(dir, "ipam"))
			}
			if err != nil {
				t.Fatal(err)
			}
			rep := runCNISuite(t, containerd.DefaultCNIBinDir, dir, conf, cni.DefaultIPAMAttachments)
			for _, res := range rep.Results {
				switch {
				case res.Status == cni.StatusFail:
					t.Errorf("%s failed: %s", res.Name, strings.Join(res.Messages, "; "))
				case res.Status == cni.StatusSkip && !strings.HasPrefix(res.Name, "gc/") && !strings.HasPrefix(res.Name, "status/"):
					t.Errorf("%s skipped: %s", res.Name, strings.Join(res.Messages, "; "))
				}
			}
			if len(rep.Results) != len(cni.Tests()) {
				t.Errorf("%d results for %d tests", len(rep.Results), len(cni.Tests()))
			}
			checkNoLeftovers(t, cidr, rep.RunID)
		})
	}
}

// TestCNISuiteCatchesBrokenPlugins runs the suite on the four broken plugins of
// cniplugins/ (each wrapping ptp and host-local, at cniVersion 1.1.0 so that GC and
// STATUS run too): each fails exactly the tests of the promise it breaks.
func TestCNISuiteCatchesBrokenPlugins(t *testing.T) {
	requireCNIHost(t)
	binDir := t.TempDir()
	// The broken plugins find their delegates (ptp, host-local) in the same CNI_PATH.
	entries, err := os.ReadDir(containerd.DefaultCNIBinDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.Symlink(filepath.Join(containerd.DefaultCNIBinDir, e.Name()), filepath.Join(binDir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	expected := map[string][]string{
		"leaky":   {"ipam/release"},
		"liar":    {"add/addresses"},
		"fragile": {"del/twice"},
		"blind":   {"check/removed-interface", "check/removed-address"},
	}
	var pkgs []string
	for name := range expected {
		pkgs = append(pkgs, "berth.dev/berth/test/conformance/cniplugins/"+name)
	}
	slices.Sort(pkgs)
	build := exec.Command("go", append([]string{"build", "-o", binDir + "/"}, pkgs...)...)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the broken plugins: %v\n%s", err, out)
	}
	for _, name := range []string{"leaky", "liar", "fragile", "blind"} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			cidr := hosttest.FreePodCIDR(t)
			_, subnet, _ := net.ParseCIDR(cidr)
			base := subnet.IP.To4()
			// 45 addresses for 30 attachments at once: a leak shows in ipam/release's
			// second round of 30.
			at := func(last byte) string { return net.IPv4(base[0], base[1], base[2], last).String() }
			conf, err := json.MarshalIndent(map[string]any{
				"cniVersion": "1.1.0",
				"name":       "broken-" + name,
				"plugins": []any{map[string]any{
					"type":            name,
					"delegateVersion": "1.0.0",
					"stateDir":        filepath.Join(dir, "state"),
					"delegate": map[string]any{
						"type": "ptp",
						"ipam": map[string]any{
							"type":    "host-local",
							"ranges":  [][]map[string]string{{{"subnet": cidr, "rangeStart": at(10), "rangeEnd": at(54)}}},
							"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
							"dataDir": filepath.Join(dir, "ipam"),
						},
					},
				}},
			}, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			rep := runCNISuite(t, binDir, dir, conf, 30)
			failed := rep.Names(cni.StatusFail)
			if !slices.Equal(failed, expected[name]) {
				t.Errorf("%s failed %v, want exactly %v", name, failed, expected[name])
			}
			if skipped := rep.Names(cni.StatusSkip); len(skipped) != 0 {
				t.Errorf("%s skipped %v", name, skipped)
			}
			checkNoLeftovers(t, cidr, rep.RunID)
		})
	}
}
