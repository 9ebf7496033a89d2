package network

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// settle is how long the watcher waits after the last change of the file before it
// reads it, so that an editor's several writes become one render.
const settle = 200 * time.Millisecond

// Watcher keeps a CNI conf dir rendered from a configuration file.
type Watcher struct {
	// File is the NetworkConfiguration file.
	File string
	// ConfDir is the runtime's CNI conf dir.
	ConfDir string
	// Params are the node's facts.
	Params Params
	// Log receives what the watcher did and the configurations it refused.
	Log *slog.Logger

	last []byte
}

// Apply renders the file into the conf dir now. A file that cannot be read or rendered
// leaves the conf dir as it was.
func (w *Watcher) Apply() error {
	c, err := Load(w.File)
	if err != nil {
		return err
	}
	data, err := Render(c, w.Params)
	if err != nil {
		return fmt.Errorf("%s: %w", w.File, err)
	}
	if bytes.Equal(data, w.last) {
		return nil
	}
	if err := Write(w.ConfDir, c, w.Params); err != nil {
		return err
	}
	w.last = data
	w.logger().Info("pod network rendered", "file", w.File, "driver", c.Driver, "confDir", w.ConfDir)
	return nil
}

func (w *Watcher) logger() *slog.Logger {
	if w.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return w.Log
}

// Run re-renders the conf dir whenever the file changes, until ctx ends. It watches the
// file's directory rather than the file, since editors and ConfigMap mounts replace a
// file instead of writing it. A bad configuration is logged and the last good one stays.
func (w *Watcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch network configuration: %w", err)
	}
	defer fw.Close()
	dir := filepath.Dir(w.File)
	if err := fw.Add(dir); err != nil {
		return fmt.Errorf("watch network configuration dir %s: %w", dir, err)
	}
	// A change between the first Apply and the watch being set would be missed.
	if err := w.Apply(); err != nil {
		w.logger().Error("network configuration refused; the conf dir keeps the last good one", "err", err)
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	base := filepath.Base(w.File)
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return nil
			}
			// Besides the file itself, a ConfigMap volume swaps its ..data symlink.
			if name := filepath.Base(ev.Name); name == base || name == "..data" {
				timer.Reset(settle)
			}
		case err, ok := <-fw.Errors:
			if !ok {
				return nil
			}
			w.logger().Warn("watch network configuration", "err", err)
		case <-timer.C:
			if _, err := os.Stat(w.File); err != nil {
				w.logger().Warn("network configuration file is gone; the conf dir keeps the last one", "file", w.File)
				continue
			}
			if err := w.Apply(); err != nil {
				w.logger().Error("network configuration refused; the conf dir keeps the last good one", "err", err)
			}
		}
	}
}
