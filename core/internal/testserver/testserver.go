// Package testserver starts berth's real API server in-process (embedded etcd on a temp
// dir) for the integration tests of the controllers, the scheduler and the agent, and runs
// controllers against it until the test ends. The server's and the controllers' logs are printed when the test fails, or
// always with BERTH_TEST_LOG set.
package testserver

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"berth.dev/berth/core/apiserver"
)

// Server is a running in-process API server.
type Server struct {
	// Config is the admin's client configuration: client-go's defaults (protobuf bodies),
	// with QPS high enough for tests that poll.
	Config *rest.Config
	// Kube is a clientset built from Config.
	Kube kubernetes.Interface
	// Log collects what the server and the controllers log.
	Log *slog.Logger
	// Logs is where Log writes, for the output of other processes a test starts (it is
	// printed with the rest when the test fails).
	Logs io.Writer
	ctx  context.Context
}

// Start starts the API server on a temp dir; it stops when the test ends.
func Start(t *testing.T) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("starts an API server with embedded etcd")
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := apiserver.Start(ctx, apiserver.Config{DataDir: t.TempDir(), Port: 0, Logger: log.With("component", "apiserver")})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	// Cleanups run last-registered first: this one, registered first, stops the server after
	// every controller has stopped.
	t.Cleanup(func() {
		cancel()
		if err := srv.Wait(); err != nil {
			t.Logf("server stopped with: %v", err)
		}
		if t.Failed() || os.Getenv("BERTH_TEST_LOG") != "" {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.QPS, cfg.Burst = 200, 400
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &Server{Config: cfg, Kube: kube, Log: log, Logs: logs, ctx: ctx}
}

// Recorder returns an event recorder that writes to the API server as component, as the
// controller manager's recorders do.
func (s *Server) Recorder(t *testing.T, component string) record.EventRecorder {
	t.Helper()
	b := record.NewBroadcaster(record.WithContext(s.ctx))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.Kube.CoreV1().Events("")})
	t.Cleanup(b.Shutdown)
	return b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component})
}

// Informers returns a shared informer factory on the server; Run starts it.
func (s *Server) Informers() informers.SharedInformerFactory {
	return informers.NewSharedInformerFactory(s.Kube, 0)
}

// Run starts factory and the controller, whose informers must be registered with factory
// already, and stops both when the test ends; an error from the controller fails the test.
func (s *Server) Run(t *testing.T, factory informers.SharedInformerFactory, c interface{ Run(context.Context) error }) {
	t.Helper()
	ctx, cancel := context.WithCancel(s.ctx)
	factory.Start(ctx.Done())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("controller Run: %v", err)
		}
		factory.Shutdown()
	})
}

// WaitFor polls cond every 50 ms for up to 30 seconds, failing the test with what (and
// cond's last error) if it never holds.
func WaitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	WaitForWithin(t, what, 30*time.Second, cond)
}

// WaitForWithin is WaitFor with a limit of the caller's.
func WaitForWithin(t *testing.T, what string, limit time.Duration, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	var last error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting: %s (last error: %v)", what, last)
}

// syncBuffer collects logs written from many goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
