package containerd

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteConfig(t *testing.T) {
	dir := t.TempDir()
	p, err := WriteConfig(Config{DataDir: dir, SandboxImage: "berth.local/pause:3.10", PodCIDR: "10.244.7.0/24", Bridge: "berthtest0"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Endpoint != "unix://"+filepath.Join(dir, "containerd.sock") {
		t.Errorf("endpoint %s", p.Endpoint)
	}
	toml, err := os.ReadFile(p.Config)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"restrict_oom_score_adj = true",
		`sandbox_image = "berth.local/pause:3.10"`,
		`bin_dir = "/usr/lib/cni"`,
		`conf_dir = "` + p.CNIConfDir + `"`,
		`root = "` + p.Root + `"`,
		`state = "` + p.State + `"`,
		`address = "` + p.Address + `"`,
	} {
		if !strings.Contains(string(toml), want) {
			t.Errorf("config.toml lacks %s:\n%s", want, toml)
		}
	}
	data, err := os.ReadFile(filepath.Join(p.CNIConfDir, "10-berth.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Name    string `json:"name"`
		Plugins []struct {
			Type   string `json:"type"`
			Bridge string `json:"bridge"`
			IPAM   struct {
				Type    string                `json:"type"`
				Ranges  [][]map[string]string `json:"ranges"`
				DataDir string                `json:"dataDir"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatalf("conflist: %v\n%s", err, data)
	}
	if len(conf.Plugins) != 2 || conf.Plugins[0].Type != "bridge" || conf.Plugins[1].Type != "portmap" {
		t.Fatalf("plugins %+v", conf.Plugins)
	}
	b := conf.Plugins[0]
	if b.Bridge != "berthtest0" || b.IPAM.Type != "host-local" || b.IPAM.Ranges[0][0]["subnet"] != "10.244.7.0/24" || b.IPAM.DataDir != p.CNIDataDir {
		t.Errorf("bridge %+v", b)
	}
}

func TestConfigChecks(t *testing.T) {
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no data dir", Config{SandboxImage: "p"}},
		{"no sandbox image", Config{DataDir: "/tmp/x"}},
		{"long bridge name", Config{DataDir: "/tmp/x", SandboxImage: "p", Bridge: "a-very-long-bridge-name"}},
		{"bad CIDR", Config{DataDir: t.TempDir(), SandboxImage: "p", PodCIDR: "10.244.0.0"}},
		{"socket path too long", Config{DataDir: "/tmp/" + strings.Repeat("d", 100), SandboxImage: "p"}},
	}
	for _, tt := range tests {
		if _, err := WriteConfig(tt.cfg); err == nil {
			t.Errorf("%s: no error", tt.name)
		}
	}
}
