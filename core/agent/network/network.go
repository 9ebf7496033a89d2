// Package network makes the node's pod network a matter of configuration: a file of kind
// NetworkConfiguration (apiVersion network.berth.dev/v1) chooses the CNI driver, bridge,
// ptp or a custom conflist, and the agent renders it into the container runtime's CNI
// conf dir. The runtime reads that dir for every new sandbox (containerd's CRI plugin
// watches it and reloads by itself), so a changed file applies to new pods without a
// restart; pods already running keep the network they were attached to.
//
//	apiVersion: network.berth.dev/v1
//	kind: NetworkConfiguration
//	driver: ptp            # bridge (default) | ptp | custom
//	# custom: conflist is a text/template of a CNI conflist, with .PodCIDR, .Bridge,
//	# .DataDir and .Name
package network

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/template"

	"sigs.k8s.io/yaml"
)

const (
	// APIVersion and Kind identify a network configuration file.
	APIVersion = "network.berth.dev/v1"
	Kind       = "NetworkConfiguration"

	// The drivers.
	DriverBridge = "bridge"
	DriverPTP    = "ptp"
	DriverCustom = "custom"

	// ConflistFile is the file the network is rendered to in the CNI conf dir; the
	// runtime, with max_conf_num 1, uses the first file of the dir by name.
	ConflistFile = "10-berth.conflist"
)

// Configuration is a NetworkConfiguration file.
type Configuration struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	// Driver is bridge, ptp or custom; bridge when empty.
	Driver string `json:"driver,omitempty"`
	// Bridge is the host bridge of the bridge driver; the node's default when empty.
	Bridge string `json:"bridge,omitempty"`
	// Conflist is the custom driver's CNI conflist, a text/template rendered with Params.
	Conflist string `json:"conflist,omitempty"`
}

// Params are the node's facts a configuration is rendered with.
type Params struct {
	// Name is the CNI network's name.
	Name string
	// PodCIDR is the subnet pods get their addresses from.
	PodCIDR string
	// Bridge is the default host bridge (the configuration may name another).
	Bridge string
	// DataDir keeps host-local's leases; every driver shares it, so that a pod of the
	// new driver never gets the address of a running pod of the old one.
	DataDir string
}

// Parse reads a configuration file's content and checks it.
func Parse(data []byte) (Configuration, error) {
	var c Configuration
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return Configuration{}, fmt.Errorf("network configuration: %w", err)
	}
	if c.APIVersion != APIVersion || c.Kind != Kind {
		return Configuration{}, fmt.Errorf("network configuration: apiVersion %q and kind %q, want %s and %s", c.APIVersion, c.Kind, APIVersion, Kind)
	}
	if c.Driver == "" {
		c.Driver = DriverBridge
	}
	switch c.Driver {
	case DriverBridge, DriverPTP:
		if c.Conflist != "" {
			return Configuration{}, fmt.Errorf("network configuration: conflist is for driver %s only, the driver is %s", DriverCustom, c.Driver)
		}
	case DriverCustom:
		if strings.TrimSpace(c.Conflist) == "" {
			return Configuration{}, fmt.Errorf("network configuration: driver %s needs a conflist", DriverCustom)
		}
	default:
		return Configuration{}, fmt.Errorf("network configuration: unknown driver %q (bridge, ptp or custom)", c.Driver)
	}
	if len(c.Bridge) > 15 {
		return Configuration{}, fmt.Errorf("network configuration: bridge name %q is longer than 15 bytes", c.Bridge)
	}
	return c, nil
}

// Load reads and checks a configuration file.
func Load(path string) (Configuration, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Configuration{}, fmt.Errorf("network configuration: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return Configuration{}, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// Render is the CNI conflist of c on a node with p.
func Render(c Configuration, p Params) ([]byte, error) {
	if _, _, err := net.ParseCIDR(p.PodCIDR); err != nil {
		return nil, fmt.Errorf("pod CIDR: %w", err)
	}
	if c.Bridge != "" {
		p.Bridge = c.Bridge
	}
	ipam := map[string]any{
		"type":    "host-local",
		"ranges":  [][]map[string]string{{{"subnet": p.PodCIDR}}},
		"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
		"dataDir": p.DataDir,
	}
	portmap := map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}}
	var main map[string]any
	switch c.Driver {
	case DriverBridge, "":
		if p.Bridge == "" {
			return nil, errors.New("network configuration: the bridge driver needs a bridge name")
		}
		main = map[string]any{"type": "bridge", "bridge": p.Bridge, "isGateway": true, "ipMasq": true, "hairpinMode": true, "ipam": ipam}
	case DriverPTP:
		main = map[string]any{"type": "ptp", "ipMasq": true, "ipam": ipam}
	case DriverCustom:
		return renderCustom(c.Conflist, p)
	default:
		return nil, fmt.Errorf("network configuration: unknown driver %q", c.Driver)
	}
	// The loopback plugin is not in the chain: containerd's CRI plugin sets up lo itself.
	conf := map[string]any{"cniVersion": "0.4.0", "name": p.Name, "plugins": []any{main, portmap}}
	return json.MarshalIndent(conf, "", "  ")
}

// renderCustom executes a custom conflist template and checks that the outcome is a
// conflist, so that a typo never reaches the runtime.
func renderCustom(text string, p Params) ([]byte, error) {
	tmpl, err := template.New("conflist").Option("missingkey=error").Parse(text)
	if err != nil {
		return nil, fmt.Errorf("network configuration: conflist template: %w", err)
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, p); err != nil {
		return nil, fmt.Errorf("network configuration: conflist template: %w", err)
	}
	var list struct {
		CNIVersion string            `json:"cniVersion"`
		Name       string            `json:"name"`
		Plugins    []json.RawMessage `json:"plugins"`
	}
	if err := json.Unmarshal(buf.Bytes(), &list); err != nil {
		return nil, fmt.Errorf("network configuration: the rendered conflist is not JSON: %w", err)
	}
	if list.Name == "" || list.CNIVersion == "" || len(list.Plugins) == 0 {
		return nil, errors.New("network configuration: the rendered conflist needs name, cniVersion and plugins")
	}
	return buf.Bytes(), nil
}

// Write renders c into confDir/ConflistFile through a temporary file and a rename, so
// that the runtime never reads half a conflist. The temporary name has no CNI extension,
// so the runtime never loads it either.
func Write(confDir string, c Configuration, p Params) error {
	data, err := Render(c, p)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		return fmt.Errorf("CNI conf dir: %w", err)
	}
	tmp, err := os.CreateTemp(confDir, ".berth-conflist-*.tmp")
	if err != nil {
		return fmt.Errorf("CNI conf dir: %w", err)
	}
	defer os.Remove(tmp.Name()) // a no-op after the rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write CNI conflist: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write CNI conflist: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("write CNI conflist: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(confDir, ConflistFile)); err != nil {
		return fmt.Errorf("write CNI conflist: %w", err)
	}
	return nil
}
