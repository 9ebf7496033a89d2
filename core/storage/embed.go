package storage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.etcd.io/etcd/server/v3/etcdserver/api/membership"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

const (
	// memberName is constant so that a restart on the same dir is the same member.
	memberName = "berth"
	// portsFile remembers the last ports so a restart keeps its endpoints when it can.
	portsFile = "etcd-ports.json"
	// logFile receives etcd's own log, so a server's terminal stays quiet but a failed
	// start can still be diagnosed.
	logFile = "etcd.log"
	// readyTimeout bounds the wait for the member to elect itself and serve. Replaying a
	// large WAL on a slow disk is what takes time here.
	readyTimeout = 60 * time.Second
	// startAttempts covers the race between reserving a free port and etcd binding it.
	startAttempts = 5
	// quotaBackendBytes is etcd's largest recommended quota (the default is 2 GiB, which a
	// large cluster's history between compactions can reach).
	quotaBackendBytes = 8 << 30
)

// Embedded is an etcd server running inside this process, its data under dir.
type Embedded struct {
	etcd      *embed.Etcd
	dir       string
	endpoints []string
	closeOnce sync.Once
}

// embeddedPorts is the content of dir/etcd-ports.json.
type embeddedPorts struct {
	Client int `json:"client"`
	Peer   int `json:"peer"`
}

// StartEmbedded starts a single-member etcd with its data in dir, listening on free
// 127.0.0.1 ports (the previous run's ports when they are still free, so endpoints are
// stable across restarts), and returns once it serves requests. A restart on the same
// dir keeps the data even when the ports have to change.
func StartEmbedded(ctx context.Context, dir string) (*Embedded, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s: %w", dir, err)
	}
	// The dir holds every object, Secrets included: keep it private, as etcd recommends
	// (MkdirAll leaves an existing dir's mode alone, hence the Chmod).
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("start embedded etcd: create data dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("start embedded etcd: make data dir private: %w", err)
	}
	saved, _ := readPorts(dir) // a missing or unreadable file only means new ports

	var lastErr error
	for attempt := 0; attempt < startAttempts; attempt++ {
		ports := saved
		if attempt > 0 || ports.Client == 0 || ports.Peer == 0 || !portFree(ports.Client) || !portFree(ports.Peer) {
			var err error
			if ports, err = freePorts(); err != nil {
				return nil, fmt.Errorf("start embedded etcd in %s: %w", dir, err)
			}
		}
		e, err := startEmbeddedOnce(ctx, dir, ports)
		if err == nil {
			if err := writePorts(dir, ports); err != nil {
				_ = e.Close()
				return nil, fmt.Errorf("start embedded etcd in %s: %w", dir, err)
			}
			return e, nil
		}
		if !isAddrInUse(err) {
			return nil, err
		}
		lastErr = err // another process took a port between reservation and bind
	}
	return nil, fmt.Errorf("start embedded etcd in %s: no free ports after %d attempts: %w", dir, startAttempts, lastErr)
}

func startEmbeddedOnce(ctx context.Context, dir string, ports embeddedPorts) (*Embedded, error) {
	clientURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports.Client))}
	peerURL := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports.Peer))}

	cfg := embed.NewConfig()
	cfg.Name = memberName
	cfg.Dir = dir
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	// Read only when the data dir is new; on a restart the member list in the WAL wins,
	// which is why the peer URL is corrected after start (see syncPeerURL).
	cfg.InitialCluster = cfg.InitialClusterFromName(memberName)
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.QuotaBackendBytes = quotaBackendBytes
	// berth compacts itself (RunCompactor), as kube-apiserver does; etcd's own
	// auto-compaction stays off so there is one policy.
	cfg.AutoCompactionRetention = ""
	// The JSON gateway on the client port is unused: berth speaks gRPC.
	cfg.EnableGRPCGateway = false
	// Warnings and errors only, appended to dir/etcd.log. No log rotation: etcd 3.5
	// registers it as a process-global zap sink sharing one lumberjack config, so two
	// embedded servers in one process (tests, side-by-side servers) would write into
	// each other's file, and the race detector flags it.
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{filepath.Join(dir, logFile)}

	etcd, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd in %s (client %s, peer %s): %w", dir, clientURL.Host, peerURL.Host, err)
	}
	fail := func(err error) (*Embedded, error) {
		etcd.Close()
		return nil, err
	}
	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case <-etcd.Server.ReadyNotify():
	case err := <-etcd.Err():
		return fail(fmt.Errorf("embedded etcd in %s failed while starting (see %s): %w", dir, filepath.Join(dir, logFile), err))
	case <-etcd.Server.StopNotify():
		return fail(fmt.Errorf("embedded etcd in %s stopped while starting (see %s)", dir, filepath.Join(dir, logFile)))
	case <-timer.C:
		return fail(fmt.Errorf("embedded etcd in %s not ready after %s (see %s)", dir, readyTimeout, filepath.Join(dir, logFile)))
	case <-ctx.Done():
		return fail(fmt.Errorf("start embedded etcd in %s: %w", dir, ctx.Err()))
	}

	if err := syncPeerURL(ctx, etcd, peerURL.String()); err != nil {
		return fail(fmt.Errorf("embedded etcd in %s: %w", dir, err))
	}
	return &Embedded{etcd: etcd, dir: dir, endpoints: []string{clientURL.String()}}, nil
}

// syncPeerURL records the member's current peer URL in the member list. etcd keeps the
// peer URL of the first start in its WAL and ignores the configured one on restart; a
// single member never dials itself so it still works, but a stale URL would mislead
// `etcdctl member list` and break adding a second member later.
func syncPeerURL(ctx context.Context, etcd *embed.Etcd, peerURL string) error {
	id := etcd.Server.ID()
	m := etcd.Server.Cluster().Member(id)
	if m == nil {
		return fmt.Errorf("member %s is not in its own member list", id)
	}
	if slices.Equal(m.PeerURLs, []string{peerURL}) {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	_, err := etcd.Server.UpdateMember(ctx, membership.Member{
		ID:             id,
		RaftAttributes: membership.RaftAttributes{PeerURLs: []string{peerURL}, IsLearner: m.IsLearner},
	})
	if err != nil {
		return fmt.Errorf("update peer URL of member %s from %v to %s: %w", id, m.PeerURLs, peerURL, err)
	}
	return nil
}

// Endpoints returns the client URLs, for NewClient.
func (e *Embedded) Endpoints() []string { return slices.Clone(e.endpoints) }

// Close stops the server and waits until it has released its data dir. Clients of
// it are not told: their watches wait silently for the server to come back (clientv3
// retries forever), so close clients too, or give their watches a context.
func (e *Embedded) Close() error {
	e.closeOnce.Do(func() {
		e.etcd.Close()
		<-e.etcd.Server.StopNotify()
	})
	return nil
}

// NewClient dials etcd at endpoints. It does not block on the connection: the first
// request fails (after its context's deadline) if etcd is unreachable.
func NewClient(endpoints []string) (*clientv3.Client, error) {
	// The client logs retries at warn level; only errors are worth a server's stderr.
	logCfg := zap.NewProductionConfig()
	logCfg.Level = zap.NewAtomicLevelAt(zapcore.ErrorLevel)
	lg, err := logCfg.Build()
	if err != nil {
		return nil, fmt.Errorf("etcd client logger: %w", err)
	}
	c, err := clientv3.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 10 * time.Second,
		// Keepalives as kube-apiserver sets them: a dead connection is noticed within
		// ~40s instead of at the next TCP timeout.
		DialKeepAliveTime:    30 * time.Second,
		DialKeepAliveTimeout: 10 * time.Second,
		Logger:               lg,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client for %s: %w", strings.Join(endpoints, ","), err)
	}
	return c, nil
}

// freePorts reserves two distinct free ports by listening on :0, then releases them
// for etcd. Both listeners are held at once so the two ports differ.
func freePorts() (embeddedPorts, error) {
	var ports [2]int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for i := range ports {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return embeddedPorts{}, fmt.Errorf("reserve a free port: %w", err)
		}
		lns = append(lns, ln)
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	return embeddedPorts{Client: ports[0], Peer: ports[1]}, nil
}

func portFree(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

func isAddrInUse(err error) bool {
	// etcd sometimes flattens the error with %v, so the text is checked too.
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

func readPorts(dir string) (embeddedPorts, error) {
	var p embeddedPorts
	b, err := os.ReadFile(filepath.Join(dir, portsFile))
	if err != nil {
		return p, err
	}
	if err := json.Unmarshal(b, &p); err != nil {
		return embeddedPorts{}, fmt.Errorf("parse %s: %w", portsFile, err)
	}
	return p, nil
}

func writePorts(dir string, p embeddedPorts) error {
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	// Write then rename, so a crash never leaves a half-written file behind.
	tmp := filepath.Join(dir, portsFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("save ports: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, portsFile)); err != nil {
		return fmt.Errorf("save ports: %w", err)
	}
	return nil
}
