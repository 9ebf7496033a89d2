package csi

import (
	"context"
	"regexp"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
)

// pluginName is the spec's form of a plugin name: domain name notation, at most 63
// characters, alphanumerics at both ends and dashes, dots and alphanumerics between.
var pluginName = regexp.MustCompile(`^[a-zA-Z0-9]([-.a-zA-Z0-9]*[a-zA-Z0-9])?$`)

func testGetPluginInfo(ctx context.Context, t *T) {
	info, err := t.Identity().GetPluginInfo(ctx, &csipb.GetPluginInfoRequest{})
	if err != nil {
		t.Fatalf("GetPluginInfo: %v", err)
	}
	name := info.GetName()
	switch {
	case name == "":
		t.Errorf("GetPluginInfo returned no name")
	case len(name) > 63:
		t.Errorf("plugin name %q has %d characters, the spec allows 63", name, len(name))
	case !pluginName.MatchString(name):
		t.Errorf("plugin name %q is not in domain name notation (alphanumerics at both ends, dashes, dots and alphanumerics between)", name)
	}
	if info.GetVendorVersion() == "" {
		t.Errorf("GetPluginInfo returned no vendor_version (the spec requires one)")
	}
	t.Logf("plugin %s version %s", name, info.GetVendorVersion())
}

func testGetPluginCapabilities(ctx context.Context, t *T) {
	resp, err := t.Identity().GetPluginCapabilities(ctx, &csipb.GetPluginCapabilitiesRequest{})
	if err != nil {
		t.Fatalf("GetPluginCapabilities: %v", err)
	}
	for _, c := range resp.GetCapabilities() {
		switch {
		case c.GetService() != nil:
			if c.GetService().GetType() == csipb.PluginCapability_Service_UNKNOWN {
				t.Errorf("GetPluginCapabilities lists service capability UNKNOWN")
			}
			t.Logf("service %s", c.GetService().GetType())
		case c.GetVolumeExpansion() != nil:
			if c.GetVolumeExpansion().GetType() == csipb.PluginCapability_VolumeExpansion_UNKNOWN {
				t.Errorf("GetPluginCapabilities lists volume expansion UNKNOWN")
			}
			t.Logf("volume expansion %s", c.GetVolumeExpansion().GetType())
		default:
			t.Errorf("GetPluginCapabilities lists a capability of no known kind: %v", c)
		}
	}
	// A controller capability without the controller service is one no CO ever uses.
	if !t.s.pluginCaps[csipb.PluginCapability_Service_CONTROLLER_SERVICE] && len(t.s.ctrlCaps) > 0 {
		t.Errorf("controller capabilities without CONTROLLER_SERVICE")
	}
	if t.hasCtrl(csipb.ControllerServiceCapability_RPC_EXPAND_VOLUME) && len(t.s.expansion) == 0 {
		t.Errorf("the controller declares EXPAND_VOLUME but GetPluginCapabilities lists no volume expansion (ONLINE or OFFLINE)")
	}
}

func testProbe(ctx context.Context, t *T) {
	resp, err := t.Identity().Probe(ctx, &csipb.ProbeRequest{})
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	if r := resp.GetReady(); r != nil && !r.GetValue() {
		t.Errorf("Probe says the plugin is not ready")
	}
}
