// Command berth-testserver is the server in berth's test image (berth.local/testserver):
// a small static binary for probes, Services and rollouts. It answers HTTP on --http-port
// (/healthz, /hostname, /env, /echo, /version and a one-line page at /), echoes TCP on
// --tcp-port, logs one line per request to stdout and exits at once on SIGTERM, so that a
// pod's graceful termination takes no longer than the runtime needs.
//
// Its version comes, in order of precedence, from --version, the VERSION environment
// variable (the image sets it: 1.0 and 2.0 differ only there) and the value linked in at
// build time with -ldflags "-X main.version=...".
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// maxEchoBody bounds what /echo reads from a request body, so a client cannot make the
// server hold an arbitrary amount of memory.
const maxEchoBody = 1 << 20

// config is what the flags and the environment set.
type config struct {
	httpPort, tcpPort int
	version           string
	// failHealthz makes /healthz answer 500 from the start, for probe demos.
	failHealthz bool
}

func main() {
	if err := run(os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "berth-testserver:", err)
		os.Exit(1)
	}
}

// parseConfig reads the flags; the environment gives the defaults (PORT, TCP_PORT,
// VERSION, HEALTHZ_FAIL), as a container's env is the easiest knob in a pod spec.
func parseConfig(args []string, getenv func(string) string) (config, error) {
	c := config{httpPort: 8080, tcpPort: 9000, version: version}
	var err error
	if v := getenv("PORT"); v != "" {
		if c.httpPort, err = strconv.Atoi(v); err != nil {
			return c, fmt.Errorf("environment PORT=%q is not a port number", v)
		}
	}
	if v := getenv("TCP_PORT"); v != "" {
		if c.tcpPort, err = strconv.Atoi(v); err != nil {
			return c, fmt.Errorf("environment TCP_PORT=%q is not a port number", v)
		}
	}
	if v := getenv("VERSION"); v != "" {
		c.version = v
	}
	if v := getenv("HEALTHZ_FAIL"); v != "" {
		if c.failHealthz, err = strconv.ParseBool(v); err != nil {
			return c, fmt.Errorf("environment HEALTHZ_FAIL=%q is not a boolean", v)
		}
	}
	fs := flag.NewFlagSet("berth-testserver", flag.ContinueOnError)
	fs.IntVar(&c.httpPort, "http-port", c.httpPort, "HTTP port (environment PORT)")
	fs.IntVar(&c.tcpPort, "tcp-port", c.tcpPort, "TCP echo port (environment TCP_PORT)")
	fs.StringVar(&c.version, "version", c.version, "version to report (environment VERSION; the build's by default)")
	fs.BoolVar(&c.failHealthz, "healthz-fail", c.failHealthz, "make /healthz answer 500 (environment HEALTHZ_FAIL)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, p := range []struct {
		name string
		port int
	}{{"--http-port", c.httpPort}, {"--tcp-port", c.tcpPort}} {
		if p.port < 0 || p.port > 65535 {
			return c, fmt.Errorf("%s %d is out of range", p.name, p.port)
		}
	}
	return c, nil
}

// run serves until SIGTERM or SIGINT and then stops both listeners.
func run(args []string, getenv func(string) string, out io.Writer) error {
	cfg, err := parseConfig(args, getenv)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	logger := log.New(out, "", log.LstdFlags|log.Lmicroseconds)
	httpLn, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(cfg.httpPort)))
	if err != nil {
		return fmt.Errorf("listen for HTTP on port %d: %w", cfg.httpPort, err)
	}
	tcpLn, err := net.Listen("tcp", net.JoinHostPort("", strconv.Itoa(cfg.tcpPort)))
	if err != nil {
		httpLn.Close()
		return fmt.Errorf("listen for TCP echo on port %d: %w", cfg.tcpPort, err)
	}
	srv := newServer(cfg, logger)
	logger.Printf("berth-testserver %s listening: HTTP %s, TCP echo %s", cfg.version, httpLn.Addr(), tcpLn.Addr())
	return srv.serve(ctx, httpLn, tcpLn)
}

// server holds what the handlers share.
type server struct {
	cfg      config
	log      *log.Logger
	hostname func() (string, error)
	environ  func() []string
}

func newServer(cfg config, logger *log.Logger) *server {
	return &server{cfg: cfg, log: logger, hostname: os.Hostname, environ: os.Environ}
}

// serve runs the HTTP server on httpLn and the echo server on tcpLn until ctx ends; it
// returns once both have stopped, their connections included.
func (s *server) serve(ctx context.Context, httpLn, tcpLn net.Listener) error {
	hs := &http.Server{Handler: s.handler(), ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	errc := make(chan error, 2)
	wg.Add(2)
	go func() {
		defer wg.Done()
		if err := hs.Serve(httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			errc <- fmt.Errorf("HTTP server: %w", err)
		}
	}()
	echoCtx, stopEcho := context.WithCancel(context.Background())
	defer stopEcho()
	go func() {
		defer wg.Done()
		if err := s.serveEcho(echoCtx, tcpLn); err != nil {
			errc <- fmt.Errorf("TCP echo server: %w", err)
		}
	}()
	var err error
	select {
	case <-ctx.Done():
		s.log.Printf("signal received; shutting down")
	case err = <-errc:
	}
	// A pod's grace period is 30 s by default; open keep-alive connections must not use it.
	shutCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if serr := hs.Shutdown(shutCtx); serr != nil {
		hs.Close()
	}
	stopEcho()
	tcpLn.Close()
	wg.Wait()
	return err
}

// handler routes the HTTP endpoints and logs every request.
func (s *server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", s.healthz)
	mux.HandleFunc("/hostname", s.hostnameHandler)
	mux.HandleFunc("/env", s.env)
	mux.HandleFunc("/echo", s.echo)
	mux.HandleFunc("/version", s.versionHandler)
	mux.HandleFunc("/{$}", s.index)
	return s.logged(mux)
}

func (s *server) healthz(w http.ResponseWriter, r *http.Request) {
	fail := s.cfg.failHealthz
	if v := r.URL.Query().Get("fail"); v != "" {
		if b, err := strconv.ParseBool(v); err == nil {
			fail = b
		}
	}
	if fail {
		http.Error(w, "failing on purpose", http.StatusInternalServerError)
		return
	}
	fmt.Fprint(w, "ok")
}

func (s *server) hostnameHandler(w http.ResponseWriter, _ *http.Request) {
	host, err := s.hostname()
	if err != nil {
		http.Error(w, fmt.Sprintf("host name: %v", err), http.StatusInternalServerError)
		return
	}
	fmt.Fprint(w, host)
}

func (s *server) env(w http.ResponseWriter, _ *http.Request) {
	env := append([]string(nil), s.environ()...)
	sort.Strings(env)
	for _, kv := range env {
		fmt.Fprintln(w, kv)
	}
}

// echo answers the query parameter msg when there is one, the request body otherwise.
func (s *server) echo(w http.ResponseWriter, r *http.Request) {
	if r.URL.Query().Has("msg") {
		fmt.Fprint(w, r.URL.Query().Get("msg"))
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxEchoBody))
	if err != nil {
		http.Error(w, fmt.Sprintf("read body: %v", err), http.StatusRequestEntityTooLarge)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Write(body)
}

func (s *server) versionHandler(w http.ResponseWriter, _ *http.Request) {
	fmt.Fprint(w, s.cfg.version)
}

func (s *server) index(w http.ResponseWriter, _ *http.Request) {
	host, err := s.hostname()
	if err != nil {
		host = "unknown host"
	}
	fmt.Fprintf(w, "berth-testserver %s on %s\n", s.cfg.version, host)
}

// statusRecorder remembers the status a handler wrote, for the log line.
type statusRecorder struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (r *statusRecorder) WriteHeader(code int) {
	if r.status == 0 {
		r.status = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	n, err := r.ResponseWriter.Write(b)
	r.bytes += n
	return n, err
}

func (s *server) logged(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)
		if rec.status == 0 {
			rec.status = http.StatusOK
		}
		s.log.Printf("http %s %s %s %d %dB %s", r.RemoteAddr, r.Method, r.URL.RequestURI(), rec.status, rec.bytes, time.Since(start).Round(time.Microsecond))
	})
}

// serveEcho accepts connections on ln and copies what each sends back to it, until ctx
// ends (it then closes every open connection) or ln fails.
func (s *server) serveEcho(ctx context.Context, ln net.Listener) error {
	var (
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
		wg    sync.WaitGroup
	)
	defer wg.Wait()
	stopped := context.AfterFunc(ctx, func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	defer stopped()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			return nil
		}
		conns[c] = true
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			n, _ := io.Copy(c, c)
			c.Close()
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			s.log.Printf("tcp %s echoed %dB in %s", c.RemoteAddr(), n, time.Since(start).Round(time.Microsecond))
		}()
	}
}
