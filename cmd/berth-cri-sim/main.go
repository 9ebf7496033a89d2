// Command berth-cri-sim is berth's simulated container runtime as a process of its own: a
// CRI runtime and image service on a unix socket whose containers run without processes
// (drivers/cri/sim). Point an agent at it with --runtime-endpoint unix://PATH.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"berth.dev/berth/drivers/cri/sim"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "berth-cri-sim:", err)
		os.Exit(1)
	}
}

func newCommand() *cobra.Command {
	var (
		socket, podCIDR, defect, streamAddr string
		missing                             []string
		verbose                             bool
	)
	defects := make([]string, len(sim.Defects))
	for i, d := range sim.Defects {
		defects[i] = string(d)
	}
	cmd := &cobra.Command{
		Use:   "berth-cri-sim --socket PATH [--pod-cidr CIDR] [--defect NAME]",
		Short: "Serve a simulated CRI runtime (containers without processes) on a unix socket",
		Long: `berth-cri-sim serves CRI v1 (runtime and image services) on a unix socket. Its
containers run without processes: it interprets the command contract of berth's CRI
conformance suite (sleep, echo, cat, env, exit, httpd and sh -c scripts of them) on
timers, so that many nodes can run on one machine. State is kept in memory only: a
restarted simulator has lost its sandboxes, containers and pulled images.`,
		Args:          cobra.NoArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if socket == "" {
				return errors.New("--socket is required")
			}
			level := slog.LevelInfo
			if verbose {
				level = slog.LevelDebug
			}
			log := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: level}))
			return sim.Serve(cmd.Context(), socket, sim.Config{
				PodCIDR:       podCIDR,
				MissingImages: missing,
				StreamAddr:    streamAddr,
				Defect:        sim.Defect(defect),
				Log:           log,
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&socket, "socket", "", "unix socket to serve CRI on (a stale socket file is replaced)")
	f.StringVar(&podCIDR, "pod-cidr", "10.244.0.0/24", "range the pod IPs come from")
	f.StringVar(&defect, "defect", "", "deliberate CRI violation, for testing the conformance suite: "+strings.Join(defects, ", "))
	f.StringVar(&streamAddr, "stream-address", "127.0.0.1:0", "host:port of the exec/attach/port-forward server")
	f.StringSliceVar(&missing, "missing-image", nil, "image that pulls fail for, as if the registry lacked it (repeatable)")
	f.BoolVar(&verbose, "verbose", false, "log at debug level")
	return cmd
}
