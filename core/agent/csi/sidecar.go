package csi

import (
	"context"
	"log/slog"

	"google.golang.org/grpc"

	"berth.dev/berth/core/agent/csi/sidecar"
	"berth.dev/berth/core/kubeclient"
)

// SidecarConfig is what the controller sidecars of one driver are given: the fields of
// sidecar.Config, kept as a type of this package so that tests can replace runSidecar.
type SidecarConfig struct {
	Client     kubeclient.Interface
	Conn       *grpc.ClientConn
	DriverName string
	NodeName   string
	// Topology is the node's segment from NodeGetInfo (nil if the driver has none).
	Topology map[string]string
	// NodeScoped: the driver declared VOLUME_ACCESSIBILITY_CONSTRAINTS, so the sidecar
	// acts only for its own node.
	NodeScoped bool
	Logger     *slog.Logger
}

// runSidecar runs a driver's controller sidecars (provisioner, deleter, resizer,
// attacher) until ctx ends; nil runs none. A variable so that tests see what it is given
// without a controller behind it.
var runSidecar = func(ctx context.Context, cfg SidecarConfig) error {
	return sidecar.Run(ctx, sidecar.Config{
		Client: cfg.Client, Conn: cfg.Conn, DriverName: cfg.DriverName, NodeName: cfg.NodeName,
		Topology: cfg.Topology, NodeScoped: cfg.NodeScoped, Logger: cfg.Logger,
	})
}
