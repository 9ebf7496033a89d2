package storage

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestEmbeddedRestart restarts the embedded etcd on one dir twice: once with its old
// ports free (they are reused), once with them taken (new ports, same data, and the
// member list follows the new peer URL).
func TestEmbeddedRestart(t *testing.T) {
	dir := t.TempDir()
	ctx := testCtx(t)

	type step struct {
		name       string
		blockPorts bool // hold the previous run's ports so the start must pick others
		write      string
	}
	steps := []step{
		{name: "first start", write: "/cm/first"},
		{name: "restart, ports free", write: "/cm/second"},
		{name: "restart, ports taken", blockPorts: true, write: "/cm/third"},
	}
	var written []string
	var prevEndpoints []string
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.blockPorts {
				saved, err := readPorts(dir)
				if err != nil {
					t.Fatalf("read saved ports: %v", err)
				}
				for _, p := range []int{saved.Client, saved.Peer} {
					ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
					if err != nil {
						t.Fatalf("hold port %d: %v", p, err)
					}
					defer ln.Close()
				}
			}

			e, err := StartEmbedded(ctx, dir)
			if err != nil {
				t.Fatalf("StartEmbedded: %v", err)
			}
			defer e.Close()
			c, err := NewClient(e.Endpoints())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s := New(c, "/registry")

			switch {
			case prevEndpoints == nil:
			case st.blockPorts && slices.Equal(e.Endpoints(), prevEndpoints):
				t.Fatalf("endpoints %v reused although those ports were taken", prevEndpoints)
			case !st.blockPorts && !slices.Equal(e.Endpoints(), prevEndpoints):
				t.Errorf("endpoints %v, want the previous run's %v (ports were free)", e.Endpoints(), prevEndpoints)
			}
			prevEndpoints = e.Endpoints()

			for _, key := range written {
				if obj, err := s.Get(ctx, key); err != nil || string(obj.Value) != key {
					t.Errorf("after restart, Get %s = %q, %v", key, obj.Value, err)
				}
			}
			mustCreate(t, s, st.write, st.write)
			written = append(written, st.write)

			// The member list advertises the peer URL this run listens on.
			ports, err := readPorts(dir)
			if err != nil {
				t.Fatal(err)
			}
			members, err := c.MemberList(ctx)
			if err != nil {
				t.Fatal(err)
			}
			wantPeer := fmt.Sprintf("http://127.0.0.1:%d", ports.Peer)
			if len(members.Members) != 1 || !slices.Equal(members.Members[0].PeerURLs, []string{wantPeer}) {
				t.Errorf("member list %v, want one member with peer URL %s", members.Members, wantPeer)
			}
			if u, _ := url.Parse(e.Endpoints()[0]); u.Port() != strconv.Itoa(ports.Client) {
				t.Errorf("saved client port %d, endpoint %s", ports.Client, e.Endpoints()[0])
			}
		})
	}
	// etcd's own log goes to the data dir, not to the test's (or server's) stderr.
	if _, err := os.Stat(filepath.Join(dir, logFile)); err != nil {
		t.Errorf("etcd log: %v", err)
	}
}

// TestEmbeddedStartFails checks that a start that cannot work returns an error naming
// the dir, instead of hanging until the ready timeout.
func TestEmbeddedStartFails(t *testing.T) {
	notDir := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(notDir, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	canceled, cancel := context.WithCancel(context.Background())
	cancel()

	tests := []struct {
		name string
		ctx  context.Context
		dir  string
	}{
		{name: "dir is a file", ctx: testCtx(t), dir: notDir},
		{name: "context already ended", ctx: canceled, dir: t.TempDir()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			e, err := StartEmbedded(tt.ctx, tt.dir)
			if err == nil {
				e.Close()
				t.Fatal("StartEmbedded succeeded")
			}
			if !strings.Contains(err.Error(), tt.dir) {
				t.Errorf("error %q does not name the dir %s", err, tt.dir)
			}
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("failing took %s", d)
			}
		})
	}
}

// TestExternalEtcd runs the round trip against Debian's etcd server binary, the kind of
// etcd a site runs at scale, to catch client/server version mismatches.
func TestExternalEtcd(t *testing.T) {
	const bin = "/usr/bin/etcd"
	if _, err := os.Stat(bin); err != nil {
		t.Skipf("%s not installed (apt-get install etcd-server)", bin)
	}
	dir := t.TempDir()
	ports, err := freePorts()
	if err != nil {
		t.Fatal(err)
	}
	clientURL := fmt.Sprintf("http://127.0.0.1:%d", ports.Client)
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports.Peer)
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(bin,
		"--name", "ext",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", clientURL, "--advertise-client-urls", clientURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "ext="+peerURL,
		"--logger", "zap", "--log-level", "error",
	)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	c := newClient(t, []string{clientURL})
	s := New(c, "/registry")
	ctx := testCtx(t)

	// Wait for the server to serve: Revision fails until then.
	deadline := time.Now().Add(30 * time.Second)
	for {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := s.Revision(rctx)
		cancel()
		if err == nil {
			break
		}
		select {
		case werr := <-exited:
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("%s exited: %v\n%s", bin, werr, log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not serving after 30s: %v", bin, err)
		}
		time.Sleep(200 * time.Millisecond)
	}

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, errc := s.Watch(wctx, "/pods/ns1/", 0)
	rev := mustCreate(t, s, "/pods/ns1/a", "hello")
	obj, err := s.Get(ctx, "/pods/ns1/a")
	if err != nil || string(obj.Value) != "hello" || obj.Revision != rev {
		t.Fatalf("Get = %s, %v; want \"hello\" at %d", fmtObj(obj), err, rev)
	}
	rev2 := mustUpdate(t, s, "/pods/ns1/a", "again")
	del, err := s.Delete(ctx, "/pods/ns1/a", rev2)
	if err != nil {
		t.Fatal(err)
	}
	checkEvents(t, events, errc, []wantEvent{
		{Added, "/pods/ns1/a", "hello", rev},
		{Modified, "/pods/ns1/a", "again", rev2},
		{Deleted, "/pods/ns1/a", "again", del.Revision},
	})
}

// BenchmarkCreate measures creates per second from 16 concurrent writers (8 per core
// on the 2-core reference machine), each create its own key. Run with
//
//	go test ./core/storage/ -run '^$' -bench Create -benchtime 5000x
func BenchmarkCreate(b *testing.B) {
	e, err := StartEmbedded(context.Background(), b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	c, err := NewClient(e.Endpoints())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	s := New(c, "/registry")
	value := make([]byte, 1024) // about a small pod's JSON
	var n atomic.Int64
	const writers = 16

	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := n.Add(1)
				if i > int64(b.N) {
					return
				}
				if _, err := s.Create(context.Background(), fmt.Sprintf("/pods/bench/p%d", i), value); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "creates/s")
}
