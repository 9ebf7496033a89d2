// Command berth is the one CLI of berth's core: the API server, the controllers and, as they land, the
// agent, a whole cluster in one command, the conformance suites and benchmarks.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"berth.dev/berth/cmd/internal/nodeagent"
	"berth.dev/berth/core/apiserver"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "berth",
		Short:         "berth: a compact container orchestrator that speaks the Kubernetes API",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newServerCommand(), newControllersCommand(), newSchedulerCommand(), nodeagent.Command("agent"), newUpCommand(), newImagesCommand(), newVersionCommand())
	root.AddCommand(newBenchCommand())
	root.AddCommand(newConformanceCommand())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "berth:", err)
		os.Exit(1)
	}
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print berth's version and the Kubernetes API version it serves",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintf(cmd.OutOrStdout(), "berth %s (Kubernetes API %s)\n", apiserver.BerthVersion, apiserver.KubernetesVersion)
		},
	}
}
