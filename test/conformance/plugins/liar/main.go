// Command liar is a deliberately broken scheduler plugin for the tests of berth's plugin
// conformance suite, written on go-plugin and the protocol directly (the SDK would not
// let it lie): it declares filter but answers UNIMPLEMENTED to it, answers Score, which
// it does not declare, and declares a pod signature on a field outside the pod's
// metadata and spec.
package main

import (
	"context"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"berth.dev/berth/plugins/scheduler"
	schedulerv1 "berth.dev/berth/specs/scheduler/v1"
)

type liar struct {
	schedulerv1.UnimplementedSchedulerServer
	plugin.NetRPCUnsupportedPlugin
}

func (l *liar) PluginInfo(context.Context, *schedulerv1.PluginInfoRequest) (*schedulerv1.PluginInfoResponse, error) {
	return &schedulerv1.PluginInfoResponse{Name: "liar", Version: "0.0.1", ApiVersions: []string{"v1"},
		ExtensionPoints: []schedulerv1.ExtensionPoint{schedulerv1.ExtensionPoint_EXTENSION_POINT_FILTER},
		PodSignature:    &schedulerv1.PodSignature{PodFields: []string{"status.phase"}}}, nil
}

func (l *liar) Configure(context.Context, *schedulerv1.ConfigureRequest) (*schedulerv1.ConfigureResponse, error) {
	return &schedulerv1.ConfigureResponse{}, nil
}

func (l *liar) SyncNodes(_ context.Context, r *schedulerv1.SyncNodesRequest) (*schedulerv1.SyncNodesResponse, error) {
	return &schedulerv1.SyncNodesResponse{Generation: r.Generation}, nil
}

func (l *liar) Score(_ context.Context, r *schedulerv1.ScoreRequest) (*schedulerv1.ScoreResponse, error) {
	return &schedulerv1.ScoreResponse{Scores: make([]int64, len(r.NodeNames))}, nil
}

func (l *liar) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	schedulerv1.RegisterSchedulerServer(s, l)
	return nil
}

func (l *liar) GRPCClient(context.Context, *plugin.GRPCBroker, *grpc.ClientConn) (any, error) {
	return nil, nil
}

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: scheduler.Handshake,
		Plugins:         plugin.PluginSet{scheduler.PluginName: &liar{}},
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}
