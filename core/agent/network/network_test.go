package network

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var params = Params{Name: "berth", PodCIDR: "10.244.9.0/24", Bridge: "berth0", DataDir: "/var/lib/x/ipam"}

func TestParse(t *testing.T) {
	head := "apiVersion: network.berth.dev/v1\nkind: NetworkConfiguration\n"
	for _, c := range []struct {
		in, driver, err string
	}{
		{head, DriverBridge, ""},
		{head + "driver: ptp\n", DriverPTP, ""},
		{head + "driver: custom\nconflist: '{}'\n", DriverCustom, ""},
		{head + "driver: custom\n", "", "needs a conflist"},
		{head + "driver: ptp\nconflist: '{}'\n", "", "for driver custom only"},
		{head + "driver: flannel\n", "", `unknown driver "flannel"`},
		{head + "driver: bridge\nbridge: a-very-long-bridge-name\n", "", "longer than 15"},
		{head + "drvier: ptp\n", "", "unknown field"},
		{"apiVersion: v1\nkind: ConfigMap\n", "", "want network.berth.dev/v1"},
	} {
		got, err := Parse([]byte(c.in))
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%q: %v", c.in, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%q: error %v, want one with %q", c.in, err, c.err)
		case c.err == "" && got.Driver != c.driver:
			t.Errorf("%q: driver %q, want %q", c.in, got.Driver, c.driver)
		}
	}
}

func TestRender(t *testing.T) {
	types := func(data []byte) []string {
		var l struct {
			Name    string           `json:"name"`
			Plugins []map[string]any `json:"plugins"`
		}
		if err := json.Unmarshal(data, &l); err != nil {
			t.Fatalf("%s: %v", data, err)
		}
		var out []string
		for _, p := range l.Plugins {
			out = append(out, p["type"].(string))
		}
		return out
	}
	for _, c := range []struct {
		conf Configuration
		want string
		has  []string
	}{
		{Configuration{Driver: DriverBridge}, "bridge,portmap", []string{`"bridge": "berth0"`, `"subnet": "10.244.9.0/24"`, `"dataDir": "/var/lib/x/ipam"`}},
		{Configuration{Driver: DriverBridge, Bridge: "br7"}, "bridge,portmap", []string{`"bridge": "br7"`}},
		{Configuration{Driver: DriverPTP}, "ptp,portmap", []string{`"subnet": "10.244.9.0/24"`, `"dataDir": "/var/lib/x/ipam"`}},
		{Configuration{Driver: DriverCustom, Conflist: `{"cniVersion":"1.0.0","name":"{{.Name}}","plugins":[{"type":"macvlan","ipam":{"type":"host-local","subnet":"{{.PodCIDR}}"}}]}`},
			"macvlan", []string{`"subnet":"10.244.9.0/24"`}},
	} {
		data, err := Render(c.conf, params)
		if err != nil {
			t.Fatalf("%+v: %v", c.conf, err)
		}
		if got := strings.Join(types(data), ","); got != c.want {
			t.Errorf("%+v: plugins %s, want %s", c.conf, got, c.want)
		}
		for _, h := range c.has {
			if !strings.Contains(string(data), h) {
				t.Errorf("%+v: conflist lacks %s:\n%s", c.conf, h, data)
			}
		}
	}
	for _, bad := range []string{`{"name": "{{.Nope}}"}`, `{"cniVersion":"1.0.0","name":"x","plugins":[]}`, `not json {{.Name}}`, `{{`} {
		if _, err := Render(Configuration{Driver: DriverCustom, Conflist: bad}, params); err == nil {
			t.Errorf("custom conflist %q was accepted", bad)
		}
	}
}

// TestWatcher changes the file under a running watcher: the conf dir follows, and a bad
// configuration leaves the last good one in place.
func TestWatcher(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "network.yaml")
	confDir := filepath.Join(dir, "net.d")
	write := func(body string) {
		t.Helper()
		tmp := file + ".new"
		if err := os.WriteFile(tmp, []byte("apiVersion: network.berth.dev/v1\nkind: NetworkConfiguration\n"+body), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, file); err != nil {
			t.Fatal(err)
		}
	}
	rendered := func() string {
		data, _ := os.ReadFile(filepath.Join(confDir, ConflistFile))
		return string(data)
	}
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s; conf dir has %s", what, rendered())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	write("driver: bridge\n")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	w := &Watcher{File: file, ConfDir: confDir, Params: params}
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitFor("bridge rendered", func() bool { return strings.Contains(rendered(), `"type": "bridge"`) })
	write("driver: ptp\n")
	waitFor("ptp rendered", func() bool { return strings.Contains(rendered(), `"type": "ptp"`) })
	write("driver: nonsense\n")
	time.Sleep(3 * settle)
	if !strings.Contains(rendered(), `"type": "ptp"`) {
		t.Errorf("a bad configuration replaced the last good one: %s", rendered())
	}
	write("driver: bridge\n")
	waitFor("bridge rendered again", func() bool { return strings.Contains(rendered(), `"type": "bridge"`) })
	if left, _ := filepath.Glob(filepath.Join(confDir, ".*")); len(left) != 0 {
		t.Errorf("temporary files left in the conf dir: %v", left)
	}
}
