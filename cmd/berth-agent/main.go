// Command berth-agent is berth's node agent alone: the same code and flags as `berth agent`,
// in a binary that links nothing of the control plane, so that a node that runs only the
// agent does not pay for the server's packages in memory (ADR 0010).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"berth.dev/berth/cmd/internal/nodeagent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	cmd := nodeagent.Command("berth-agent")
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	if err := cmd.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "berth-agent:", err)
		os.Exit(1)
	}
}
