package nodeagent

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A driver that exits is started again; when the node stops, the driver is stopped and
// run returns.
func TestDriverProcessRestartsAndStops(t *testing.T) {
	dir := t.TempDir()
	starts := filepath.Join(dir, "starts")
	script := filepath.Join(dir, "driver.sh")
	// The first process exits at once (a crash); later ones stay up until signalled.
	body := "#!/bin/sh\necho started >> " + starts + "\n" +
		"[ $(wc -l < " + starts + ") -ge 2 ] && exec sleep 60\nexit 3\n"
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	d := driverProcess{name: "test", path: script, logFile: filepath.Join(dir, "log", "driver.log"),
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.run(ctx) }()

	deadline := time.Now().Add(10 * time.Second)
	for {
		b, _ := os.ReadFile(starts)
		if strings.Count(string(b), "started") >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the driver was not restarted after it exited; starts file: %q", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(driverStopGrace + 5*time.Second):
		t.Fatal("run did not return after its context ended")
	}
	b, _ := os.ReadFile(starts)
	if n := strings.Count(string(b), "started"); n != 2 {
		t.Errorf("driver started %d times, want 2 (one crash, one restart)", n)
	}
}

func TestFindDriverBinaryNamesWhatIsMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	_, err := findDriverBinary("berth-no-such-driver")
	if err == nil || !strings.Contains(err.Error(), "berth-no-such-driver") {
		t.Fatalf("err = %v, want one naming the missing binary", err)
	}
}
