package apiserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"berth.dev/berth/core/apiserver/admissionplugins"
	"berth.dev/berth/core/pki"
	"berth.dev/berth/core/storage"
)

// Config is what `berth server` is started with.
type Config struct {
	// DataDir holds the embedded etcd's data, the certificates and admin.kubeconfig.
	DataDir string
	// BindAddress and Port are where HTTPS is served (127.0.0.1 and 6443 by default).
	BindAddress string
	Port        int
	// EtcdEndpoints, when set, name an external etcd cluster instead of the embedded one.
	EtcdEndpoints []string
	// CompactionInterval is how often old etcd revisions are compacted (5 minutes by default).
	CompactionInterval time.Duration
	// DefaultTolerationSeconds is how long pods tolerate a not-ready or unreachable node by
	// default before the node lifecycle controller evicts them (300 s when zero).
	DefaultTolerationSeconds int64
	// ServiceRanges are the ClusterIP CIDR and NodePort range (DefaultServiceRanges when zero).
	ServiceRanges ServiceRanges
	Logger        *slog.Logger
	// Admission, when set, is the site's admission plugins' configuration (--admission-config):
	// they are started before the API serves, and a plugin that does not start fails Start.
	Admission *admissionplugins.Configuration
}

// Server is a running API server.
type Server struct {
	URL        string
	Kubeconfig string
	Store      *storage.Store
	Client     *clientv3.Client
	done       chan error
}

// Start starts etcd (embedded unless endpoints are given), the certificates and the HTTPS
// server, and returns once the server answers. It stops when ctx ends; Wait returns then.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("a data dir is required (--data-dir)")
	}
	if cfg.BindAddress == "" {
		cfg.BindAddress = "127.0.0.1"
	}
	if cfg.CompactionInterval == 0 {
		cfg.CompactionInterval = 5 * time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("create data dir %s: %w", cfg.DataDir, err)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(cfg.BindAddress, strconv.Itoa(cfg.Port)))
	if err != nil {
		return nil, fmt.Errorf("listen on %s:%d: %w", cfg.BindAddress, cfg.Port, err)
	}
	port := ln.Addr().(*net.TCPAddr).Port

	var embedded *storage.Embedded
	endpoints := cfg.EtcdEndpoints
	if len(endpoints) == 0 {
		embedded, err = storage.StartEmbedded(ctx, filepath.Join(cfg.DataDir, "etcd"))
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("start embedded etcd: %w", err)
		}
		endpoints = embedded.Endpoints()
	}
	closeAll := func() {
		ln.Close()
		if embedded != nil {
			embedded.Close()
		}
	}
	client, err := storage.NewClient(endpoints)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("connect to etcd %v: %w", endpoints, err)
	}
	store := storage.New(client, "/registry")
	pingCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = store.Revision(pingCtx)
	cancel()
	if err != nil {
		client.Close()
		closeAll()
		return nil, fmt.Errorf("etcd at %v does not answer: %w", endpoints, err)
	}

	bundle, err := pki.Ensure(cfg.DataDir, []string{cfg.BindAddress})
	if err != nil {
		client.Close()
		closeAll()
		return nil, err
	}
	tlsConfig, err := bundle.TLSConfig()
	if err != nil {
		client.Close()
		closeAll()
		return nil, err
	}
	host := cfg.BindAddress
	if host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	url := "https://" + net.JoinHostPort(host, strconv.Itoa(port))
	kubeconfig := filepath.Join(cfg.DataDir, "admin.kubeconfig")

	serveCtx, stopServing := context.WithCancel(ctx)
	handler, err := NewHandler(serveCtx, store, pki.NewAuthenticator(bundle.CACert).Authenticate)
	if err != nil {
		stopServing()
		client.Close()
		closeAll()
		return nil, err
	}
	handler.DefaultTolerationSeconds = cfg.DefaultTolerationSeconds
	nodeTLS, err := bundle.NodeClientTLS()
	if err != nil {
		stopServing()
		client.Close()
		closeAll()
		return nil, err
	}
	handler.SetNodeClientTLS(nodeTLS)
	if cfg.ServiceRanges.ClusterIPs.IsValid() {
		if err := handler.SetServiceRanges(cfg.ServiceRanges); err != nil {
			stopServing()
			client.Close()
			closeAll()
			return nil, err
		}
	}
	go handler.services.run(serveCtx)
	if err := handler.ensureSystemNamespaces(ctx); err != nil {
		stopServing()
		client.Close()
		closeAll()
		return nil, err
	}
	if cfg.Admission != nil {
		plugins, err := admissionplugins.Start(cfg.Admission, admissionplugins.Options{Log: log})
		if err != nil {
			stopServing()
			client.Close()
			closeAll()
			return nil, err
		}
		handler.SetAdmissionPlugins(plugins)
	}
	srv := &http.Server{
		Handler:           handler,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
	}
	s := &Server{URL: url, Kubeconfig: kubeconfig, Store: store, Client: client, done: make(chan error, 1)}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.ServeTLS(ln, "", "") }()
	go store.RunCompactor(serveCtx, cfg.CompactionInterval)
	if err := bundle.WriteKubeconfig(kubeconfig, url); err != nil {
		stopServing()
		srv.Close()
		handler.admissionPlugins.Close()
		client.Close()
		closeAll()
		return nil, err
	}
	go ensureDefaultServices(serveCtx, kubeconfig, handler.services.ranges.ClusterIPs, cfg.BindAddress, port, log) // defaultservices.go
	log.Info("berth API server serving", "url", url, "kubeconfig", kubeconfig, "etcd", endpoints, "embedded", embedded != nil)

	go func() {
		var err error
		select {
		case <-ctx.Done():
		case err = <-serveErr:
		}
		// Shut down in order: stop accepting, let requests finish (watches are cut), then etcd.
		stopServing()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if serr := srv.Shutdown(shutdownCtx); serr != nil {
			srv.Close()
		}
		cancel()
		handler.admissionPlugins.Close()
		client.Close()
		if embedded != nil {
			if cerr := embedded.Close(); cerr != nil && err == nil {
				err = cerr
			}
		}
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.done <- err
	}()
	return s, nil
}

// Wait blocks until the server has stopped and returns why, nil after a clean shutdown.
func (s *Server) Wait() error { return <-s.done }
