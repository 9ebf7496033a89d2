// Package logging sets up the log of berth's binaries: slog text on stderr, with
// client-go's klog routed through it.
package logging

import (
	"log/slog"
	"os"

	"k8s.io/klog/v2"
)

// New returns berth's logger, and routes client-go's klog messages (leader election,
// informers) through it so that the process logs in one format.
func New(verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	klog.SetSlogLogger(log.With("component", "client-go"))
	return log
}
