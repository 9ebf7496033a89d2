package cni

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	types040 "github.com/containernetworking/cni/pkg/types/040"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"berth.dev/berth/conformance/internal/report"
)

func TestLoadConf(t *testing.T) {
	dir := t.TempDir()
	single := filepath.Join(dir, "10-one.conf")
	if err := os.WriteFile(single, []byte(`{"cniVersion":"1.0.0","name":"one","type":"bridge","bridge":"br9"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	list := filepath.Join(dir, "10-two.conflist")
	if err := os.WriteFile(list, []byte(`{"cniVersion":"0.4.0","name":"two","plugins":[{"type":"ptp"},{"type":"portmap"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		file, name, version string
		types               []string
	}{
		{single, "one", "1.0.0", []string{"bridge"}},
		{list, "two", "0.4.0", []string{"ptp", "portmap"}},
	} {
		l, err := LoadConf(c.file)
		if err != nil {
			t.Fatalf("%s: %v", c.file, err)
		}
		var types []string
		for _, p := range l.Plugins {
			types = append(types, p.Network.Type)
		}
		if l.Name != c.name || l.CNIVersion != c.version || strings.Join(types, ",") != strings.Join(c.types, ",") {
			t.Errorf("%s: name %q version %q plugins %v", c.file, l.Name, l.CNIVersion, types)
		}
	}
	bad := filepath.Join(dir, "bad.conf")
	if err := os.WriteFile(bad, []byte(`{"name":`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadConf(bad); err == nil {
		t.Error("LoadConf accepted a file that is not JSON")
	}
}

func TestValidateResult(t *testing.T) {
	_, addr, _ := net.ParseCIDR("10.1.2.3/24")
	addr.IP = net.ParseIP("10.1.2.3")
	idx := func(i int) *int { return &i }
	good := &types100.Result{
		CNIVersion: "1.0.0",
		Interfaces: []*types100.Interface{{Name: "eth0", Mac: "aa:bb:cc:dd:ee:ff", Sandbox: "/var/run/netns/x"}},
		IPs:        []*types100.IPConfig{{Interface: idx(0), Address: *addr, Gateway: net.ParseIP("10.1.2.1")}},
	}
	if p := validateResult(good, "1.0.0"); len(p) != 0 {
		t.Errorf("a good result: %v", p)
	}
	if p := validateResult(good, "0.4.0"); len(p) == 0 {
		t.Error("a 1.0.0 result for a 0.4.0 configuration passed")
	}
	badIndex := *good
	badIndex.IPs = []*types100.IPConfig{{Interface: idx(3), Address: *addr}}
	if p := validateResult(&badIndex, "1.0.0"); len(p) != 1 || !strings.Contains(p[0], "interface index 3") {
		t.Errorf("an IP on interface 3 of 1: %v", p)
	}
	badGW := *good
	badGW.IPs = []*types100.IPConfig{{Interface: idx(0), Address: *addr, Gateway: net.ParseIP("fe80::1")}}
	if p := validateResult(&badGW, "1.0.0"); len(p) != 1 || !strings.Contains(p[0], "other address family") {
		t.Errorf("an IPv4 address with an IPv6 gateway: %v", p)
	}
	old := &types040.Result{
		CNIVersion: "0.4.0",
		Interfaces: []*types040.Interface{{Name: "eth0"}},
		IPs:        []*types040.IPConfig{{Version: "6", Interface: idx(0), Address: *addr}},
	}
	if p := validateResult(old, "0.4.0"); len(p) != 1 || !strings.Contains(p[0], `version "6"`) {
		t.Errorf("a 0.4.0 IPv4 address marked version 6: %v", p)
	}
}

func TestReportForms(t *testing.T) {
	r := &Report{Suite: "cni", ConfFile: "/x.conflist", RunID: "abc", Started: time.Unix(0, 0)}
	r.add(report.Result{Name: "add/result", Status: report.StatusPass, Duration: time.Second})
	r.add(report.Result{Name: "del/twice", Status: report.StatusFail, Messages: []string{"second DEL failed"}})
	r.add(report.Result{Name: "gc/valid-attachments", Status: report.StatusSkip, Messages: []string{"cniVersion 0.4.0"}})
	if got := r.Summary(); got != "1 passed, 1 failed, 1 skipped" {
		t.Errorf("summary %q", got)
	}
	if r.OK() {
		t.Error("a report with a failure is OK")
	}
	var js bytes.Buffer
	if err := r.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back["failed"] != float64(1) || back["confFile"] != "/x.conflist" {
		t.Errorf("JSON report %s (%v)", js.String(), err)
	}
	var x bytes.Buffer
	if err := r.WriteJUnit(&x); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`classname="cni/del"`, `<failure message="second DEL failed"`, `<skipped message="cniVersion 0.4.0"`, `name="confFile" value="/x.conflist"`} {
		if !strings.Contains(x.String(), want) {
			t.Errorf("JUnit report lacks %s:\n%s", want, x.String())
		}
	}
	if got := r.Results[1].Line(); got != "FAIL del/twice: second DEL failed" {
		t.Errorf("line %q", got)
	}
}

func TestSelectionAndNames(t *testing.T) {
	sel, err := NewSelection(`^(add|del)/`, `twice`)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tt := range sel.Filter(Tests()) {
		names = append(names, tt.Name)
	}
	if got := strings.Join(names, " "); got != "add/result add/interfaces add/addresses add/routes del/removes del/without-add" {
		t.Errorf("selected %s", got)
	}
	seen := map[string]bool{}
	for _, tt := range Tests() {
		if seen[tt.Name] || !strings.Contains(tt.Name, "/") {
			t.Errorf("test name %q is repeated or has no group", tt.Name)
		}
		seen[tt.Name] = true
	}
	if _, err := NewSelection("(", ""); err == nil {
		t.Error("a bad focus expression was accepted")
	}
}
