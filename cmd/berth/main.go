// Command berth is the one CLI of berth's core: the API server, the controllers and, as they land, the
// agent, a whole cluster in one command, the conformance suites and benchmarks.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
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
	stopProfile := startCPUProfile()
	err := root.ExecuteContext(ctx)
	stopProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, "berth:", err)
		os.Exit(1)
	}
}

// startCPUProfile profiles the whole command to $BERTH_CPU_PROFILE.<pid> when that
// variable is set: a benchmark passes its environment to the server it starts, so this
// shows what the benchmarked server spends its CPU on. The returned func stops it.
func startCPUProfile() func() {
	path := os.Getenv("BERTH_CPU_PROFILE")
	if path == "" {
		return func() {}
	}
	f, err := os.Create(fmt.Sprintf("%s.%d", path, os.Getpid()))
	if err != nil {
		fmt.Fprintln(os.Stderr, "berth: BERTH_CPU_PROFILE:", err)
		return func() {}
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, "berth: BERTH_CPU_PROFILE:", err)
		f.Close()
		return func() {}
	}
	return func() {
		pprof.StopCPUProfile()
		f.Close()
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
