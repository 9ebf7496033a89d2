package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func testServer(cfg config, logs io.Writer) *server {
	s := newServer(cfg, log.New(logs, "", 0))
	s.hostname = func() (string, error) { return "web-1", nil }
	s.environ = func() []string { return []string{"VERSION=2.0", "HOME=/", "POD_NAME=web-1"} }
	return s
}

func TestHandlers(t *testing.T) {
	cases := []struct {
		name, method, target, body string
		failHealthz                bool
		wantCode                   int
		wantBody                   string
	}{
		{name: "healthz", target: "/healthz", wantCode: 200, wantBody: "ok"},
		{name: "healthz fail query", target: "/healthz?fail=1", wantCode: 500, wantBody: "failing on purpose\n"},
		{name: "healthz fail flag", target: "/healthz", failHealthz: true, wantCode: 500, wantBody: "failing on purpose\n"},
		{name: "healthz fail flag overridden", target: "/healthz?fail=0", failHealthz: true, wantCode: 200, wantBody: "ok"},
		{name: "hostname", target: "/hostname", wantCode: 200, wantBody: "web-1"},
		{name: "env sorted", target: "/env", wantCode: 200, wantBody: "HOME=/\nPOD_NAME=web-1\nVERSION=2.0\n"},
		{name: "echo query", target: "/echo?msg=hello%20there", wantCode: 200, wantBody: "hello there"},
		{name: "echo empty query", target: "/echo?msg=", body: "ignored", method: "POST", wantCode: 200, wantBody: ""},
		{name: "echo body", target: "/echo", method: "POST", body: "line 1\nline 2", wantCode: 200, wantBody: "line 1\nline 2"},
		{name: "version", target: "/version", wantCode: 200, wantBody: "1.5"},
		{name: "index", target: "/", wantCode: 200, wantBody: "berth-testserver 1.5 on web-1\n"},
		{name: "unknown path", target: "/nope", wantCode: 404, wantBody: "404 page not found\n"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var logs bytes.Buffer
			h := testServer(config{version: "1.5", failHealthz: c.failHealthz}, &logs).handler()
			method := c.method
			if method == "" {
				method = "GET"
			}
			var body io.Reader
			if c.body != "" {
				body = strings.NewReader(c.body)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(method, c.target, body))
			if rec.Code != c.wantCode || rec.Body.String() != c.wantBody {
				t.Errorf("%s %s: %d %q, want %d %q", method, c.target, rec.Code, rec.Body.String(), c.wantCode, c.wantBody)
			}
			// One log line per request, naming the path and the status.
			lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
			if len(lines) != 1 || !strings.Contains(lines[0], " "+c.target+" ") || !strings.Contains(lines[0], " "+strconv.Itoa(c.wantCode)+" ") {
				t.Errorf("log lines %q", lines)
			}
		})
	}
}

func TestEchoBodyLimit(t *testing.T) {
	h := testServer(config{}, io.Discard).handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/echo", strings.NewReader(strings.Repeat("x", maxEchoBody+1))))
	if rec.Code != http.StatusRequestEntityTooLarge {
		t.Errorf("a body over the limit: %d, want 413", rec.Code)
	}
}

func TestParseConfig(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	cases := []struct {
		name    string
		args    []string
		env     map[string]string
		want    config
		wantErr string
	}{
		{name: "defaults", want: config{httpPort: 8080, tcpPort: 9000, version: version}},
		{name: "environment", env: map[string]string{"PORT": "8081", "TCP_PORT": "9001", "VERSION": "2.0", "HEALTHZ_FAIL": "true"},
			want: config{httpPort: 8081, tcpPort: 9001, version: "2.0", failHealthz: true}},
		{name: "flags win over the environment", args: []string{"--http-port", "80", "--tcp-port=90", "--version", "3.0", "--healthz-fail"},
			env:  map[string]string{"PORT": "8081", "VERSION": "2.0"},
			want: config{httpPort: 80, tcpPort: 90, version: "3.0", failHealthz: true}},
		{name: "bad PORT", env: map[string]string{"PORT": "http"}, wantErr: `PORT="http"`},
		{name: "bad HEALTHZ_FAIL", env: map[string]string{"HEALTHZ_FAIL": "maybe"}, wantErr: "HEALTHZ_FAIL"},
		{name: "port out of range", args: []string{"--http-port", "70000"}, wantErr: "--http-port 70000 is out of range"},
		{name: "stray argument", args: []string{"serve"}, wantErr: "unexpected arguments"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseConfig(c.args, env(c.env))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want one containing %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Errorf("config %+v, want %+v", got, c.want)
			}
		})
	}
}

// TestServeEchoAndShutdown runs both servers on loopback: TCP echo works, an open echo
// connection does not hold up the shutdown, and serve returns at once when ctx ends.
func TestServeEchoAndShutdown(t *testing.T) {
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs safeBuffer
	s := testServer(config{version: "1.0"}, &logs)
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx, httpLn, tcpLn) }()

	resp, err := http.Get("http://" + httpLn.Addr().String() + "/version")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "1.0" {
		t.Errorf("/version = %q", body)
	}

	conn, err := net.Dial("tcp", tcpLn.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := conn.Write([]byte("ping\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping\n" {
		t.Fatalf("echo: %q, %v", buf, err)
	}

	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return within 5 s of the signal")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("shutdown took %s with an idle echo connection open", d)
	}
	// The open echo connection was closed by the shutdown.
	if _, err := conn.Read(buf); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("echo connection still open after shutdown (read err %v)", err)
	}
	if !strings.Contains(logs.String(), "GET /version 200") || !strings.Contains(logs.String(), "echoed 5B") {
		t.Errorf("logs:\n%s", logs.String())
	}
}

// safeBuffer is a bytes.Buffer the server's goroutines can log to while the test reads it.
type safeBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *safeBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *safeBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
