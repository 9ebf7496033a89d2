// Command berth-csi-local is berth's own CSI driver, local.csi.berth.dev, as a process of its
// own: node-local volumes made of sparse image files, loop devices and ext4
// (drivers/csi/local). Start it with its socket in the agent's plugins_registry directory and
// the agent registers it; docs/csi-driver.md describes flags, state and defects.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/resource"

	"berth.dev/berth/drivers/csi/local"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "berth-csi-local:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var (
		endpoint, nodeID, stateDir, capacity, defect string
		controllerPublish, verbose                   bool
		maxVolumes                                   int64
	)
	defects := make([]string, len(local.Defects))
	for i, d := range local.Defects {
		defects[i] = string(d)
	}
	cmd := &cobra.Command{
		Use:   "berth-csi-local --endpoint unix:///PATH.sock --node-id NODE --state-dir DIR [--capacity 100Gi] [--defect NAME] [--controller-publish]",
		Short: "Serve berth's local CSI driver (" + local.DriverName + ") on a unix socket",
		Long: `berth-csi-local serves the CSI Identity, Controller and Node services of
` + local.DriverName + ` on one unix socket. Volumes are sparse image files under
--state-dir, attached as loop devices and formatted ext4 (or raw, for block volumes), and
are accessible from this node only (topology ` + local.TopologyKey + `=NODE).
State is kept in STATE_DIR/state.json: a restarted driver finds its volumes, snapshots and
mounts again and leaves the mounts alone. It needs root (losetup, mount).`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if endpoint == "" {
				return errors.New("--endpoint is required")
			}
			if nodeID == "" {
				return errors.New("--node-id is required")
			}
			if stateDir == "" {
				return errors.New("--state-dir is required")
			}
			q, err := resource.ParseQuantity(capacity)
			if err != nil {
				return fmt.Errorf("--capacity %q: %w", capacity, err)
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			return local.Serve(cmd.Context(), endpoint, local.Config{
				NodeID:            nodeID,
				StateDir:          stateDir,
				Capacity:          q.Value(),
				Defect:            local.Defect(defect),
				ControllerPublish: controllerPublish,
				MaxVolumesPerNode: maxVolumes,
				Version:           version(),
				Log:               log,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&endpoint, "endpoint", "", "CSI endpoint, unix:///path/to.sock (a stale socket file is replaced)")
	f.StringVar(&nodeID, "node-id", "", "this node's id: NodeGetInfo's node_id and the value of the topology segment")
	f.StringVar(&stateDir, "state-dir", "", "directory of state.json, volumes/ and snapshots/ (created if missing)")
	f.StringVar(&capacity, "capacity", "100Gi", "size of the pool that volumes and snapshots are allocated from")
	f.StringVar(&defect, "defect", "", "deliberate CSI violation, for testing the conformance suite: "+fmt.Sprint(defects))
	f.BoolVar(&controllerPublish, "controller-publish", false, "declare PUBLISH_UNPUBLISH_VOLUME: ControllerPublishVolume attaches the loop device and NodeStageVolume needs its publish_context")
	f.Int64Var(&maxVolumes, "max-volumes-per-node", 0, "max_volumes_per_node reported by NodeGetInfo (0: no limit)")
	f.BoolVar(&verbose, "verbose", false, "log every CSI call (debug level)")
	return cmd
}

// version is berth's module version when the binary was built from a tagged module, else "dev".
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
