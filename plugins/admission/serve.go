package admission

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	admissionv1 "berth.dev/berth/specs/admission/v1"
)

// GRPCPlugin is the admission plugin kind in go-plugin's terms: the plugin side serves
// Impl, the host side gets a *Client.
type GRPCPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is the plugin (nil on the host side).
	Impl Plugin
}

// GRPCServer registers the plugin's server.
func (p *GRPCPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	srv, err := newServer(p.Impl)
	if err != nil {
		return err
	}
	admissionv1.RegisterAdmissionServer(s, srv)
	return nil
}

// GRPCClient returns the host's *Client over the connection.
func (p *GRPCPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (any, error) {
	return NewClient(conn), nil
}

// PluginSet is the go-plugin plugin set of an admission plugin (Impl nil on the host).
func PluginSet(impl Plugin) plugin.PluginSet {
	return plugin.PluginSet{PluginName: &GRPCPlugin{Impl: impl}}
}

// Serve runs p as an admission plugin: a plugin's main calls it and nothing else. It
// returns when the API server stops the plugin. Run by hand, outside an API server, it
// prints that it is a plugin and exits non-zero.
func Serve(p Plugin) {
	if err := check(p); err != nil {
		fmt.Fprintf(os.Stderr, "admission plugin: %v\n", err)
		os.Exit(1)
	}
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: Handshake,
		Plugins:         PluginSet(p),
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}

// check reports what newServer would refuse, before go-plugin's handshake starts.
func check(p Plugin) error {
	if p == nil {
		return errors.New("nil plugin passed to Serve")
	}
	_, err := newServer(p)
	return err
}
