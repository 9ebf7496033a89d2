package agent

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestParseLogOptions(t *testing.T) {
	for _, tc := range []struct {
		query, want, err string
	}{
		{query: "", want: "{}"},
		{query: "follow=true&previous=1&timestamps=true&tailLines=5&limitBytes=10&sinceSeconds=3",
			want: `{"follow":true,"previous":true,"sinceSeconds":3,"timestamps":true,"tailLines":5,"limitBytes":10}`},
		{query: "sinceTime=2026-01-01T00:00:00Z", want: `{"sinceTime":"2026-01-01T00:00:00Z"}`},
		{query: "tailLines=-1", err: "tailLines: Invalid value: -1: must be greater than or equal to 0"},
		{query: "limitBytes=0", err: "limitBytes: Invalid value: 0: must be greater than 0"},
		{query: "sinceSeconds=0", err: "sinceSeconds: Invalid value: 0: must be greater than 0"},
		{query: "sinceSeconds=1&sinceTime=2026-01-01T00:00:00Z", err: "at most one of `sinceTime` or `sinceSeconds` may be specified"},
		{query: "follow=maybe", err: `follow="maybe" is not a boolean`},
		{query: "tailLines=x", err: `tailLines="x" is not an integer`},
		{query: "sinceTime=yesterday", err: `sinceTime="yesterday" is not an RFC 3339 time`},
	} {
		q, _ := url.ParseQuery(tc.query)
		opts, err := parseLogOptions(q)
		if tc.err != "" {
			if err == nil || message(err) != tc.err {
				t.Errorf("%q: error %v, want %q", tc.query, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.query, err)
			continue
		}
		data, _ := json.Marshal(opts)
		if got := string(data); got != tc.want {
			t.Errorf("%q: %s, want %s", tc.query, got, tc.want)
		}
	}
}

func TestLogContainerID(t *testing.T) {
	running := corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}
	lastDone := corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ContainerID: "containerd://old"}}
	for _, tc := range []struct {
		name     string
		status   corev1.ContainerStatus
		previous bool
		want     string
		err      string
	}{
		{name: "running", status: corev1.ContainerStatus{ContainerID: "containerd://cur", State: running}, want: "cur"},
		{name: "previous", status: corev1.ContainerStatus{ContainerID: "containerd://cur", State: running, LastTerminationState: lastDone}, previous: true, want: "old"},
		{name: "no previous", status: corev1.ContainerStatus{ContainerID: "containerd://cur", State: running}, previous: true,
			err: `previous terminated container "c" in pod "p" not found`},
		{name: "terminated", status: corev1.ContainerStatus{State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ContainerID: "containerd://done"}}}, want: "done"},
		{name: "crash loop", status: corev1.ContainerStatus{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}, LastTerminationState: lastDone}, want: "old"},
		{name: "creating", status: corev1.ContainerStatus{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}},
			err: `container "c" in pod "p" is waiting to start: ContainerCreating`},
		{name: "image", status: corev1.ContainerStatus{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff"}}},
			err: `container "c" in pod "p" is waiting to start: trying and failing to pull image`},
	} {
		tc.status.Name = "c"
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{tc.status}}}
		id, err := logContainerID(pod, "c", tc.previous)
		switch {
		case tc.err != "" && (err == nil || message(err) != tc.err):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
		case tc.err == "" && (err != nil || id != tc.want):
			t.Errorf("%s: %q, %v, want %q", tc.name, id, err, tc.want)
		}
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}}
	if _, err := logContainerID(pod, "c", false); err == nil || message(err) != `container "c" in pod "p" is waiting to start - no logs yet` {
		t.Errorf("no status: %v", err)
	}
}

// fakeCRI answers ContainerStatus from a map; the rest of the CRI is nil and panics when
// called, which these tests do not.
type fakeCRI struct {
	runtimeapi.RuntimeServiceClient
	mu      sync.Mutex
	logPath string
	state   runtimeapi.ContainerState
}

func (f *fakeCRI) ContainerStatus(_ context.Context, in *runtimeapi.ContainerStatusRequest, _ ...grpc.CallOption) (*runtimeapi.ContainerStatusResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: in.ContainerId, LogPath: f.logPath, State: f.state}}, nil
}

func (f *fakeCRI) setState(s runtimeapi.ContainerState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = s
}

// logTestServer serves containerLogs for pod default/p, container c, whose CRI log file is
// the returned path.
func logTestServer(t *testing.T) (*httptest.Server, *fakeCRI, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "0.log")
	cri := &fakeCRI{logPath: path, state: runtimeapi.ContainerState_CONTAINER_RUNNING}
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "default"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c"}}},
		Status: corev1.PodStatus{ContainerStatuses: []corev1.ContainerStatus{{
			Name: "c", ContainerID: "containerd://abc", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}},
		}}},
	}
	if err := indexer.Add(pod); err != nil {
		t.Fatal(err)
	}
	a := &Agent{log: slog.New(slog.DiscardHandler), runtime: cri, pods: corelisters.NewPodLister(indexer), now: time.Now}
	s := &streamServer{a: a}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", s.serveContainerLogs)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, cri, path
}

func getLogs(t *testing.T, srv *httptest.Server, container, query string) (int, string) {
	t.Helper()
	resp, err := http.Get(srv.URL + "/containerLogs/default/p/" + container + "?" + query)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func TestContainerLogs(t *testing.T) {
	srv, _, path := logTestServer(t)
	// CRI log lines as containerd writes them: the second line came in two partial (P)
	// records, as a line longer than the runtime's buffer does.
	content := strings.Join([]string{
		"2026-01-01T00:00:00.000000001Z stdout F first",
		"2026-01-01T00:00:01.5Z stderr F second",
		"2026-01-01T00:00:02Z stdout P par",
		"2026-01-01T00:00:02.1Z stdout F tial",
		"2026-01-01T00:00:03Z stdout F last",
	}, "\n") + "\n"
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ query, want string }{
		{"", "first\nsecond\npartial\nlast\n"},
		{"tailLines=1", "last\n"},
		// Tail counts the file's lines, partial records included, as the kubelet does.
		{"tailLines=3", "partial\nlast\n"},
		{"tailLines=0", ""},
		{"sinceTime=2026-01-01T00:00:02Z", "partial\nlast\n"},
		// Timestamps in the kubelet's fixed-width RFC 3339 form, once per joined line.
		{"timestamps=true&tailLines=3", "2026-01-01T00:00:02.000000000Z partial\n2026-01-01T00:00:03.000000000Z last\n"},
		{"limitBytes=8", "first\nse"},
	} {
		code, body := getLogs(t, srv, "c", tc.query)
		if code != http.StatusOK || body != tc.want {
			t.Errorf("%q: %d %q, want %q", tc.query, code, body, tc.want)
		}
	}
	for _, tc := range []struct {
		container, query string
		code             int
		want             string
	}{
		{"c", "previous=true", http.StatusBadRequest, `previous terminated container "c" in pod "p" not found` + "\n"},
		{"nope", "", http.StatusNotFound, `container "nope" not found in pod "default/p"` + "\n"},
		{"c", "tailLines=-2", http.StatusBadRequest, "tailLines: Invalid value: -2: must be greater than or equal to 0\n"},
	} {
		code, body := getLogs(t, srv, tc.container, tc.query)
		if code != tc.code || body != tc.want {
			t.Errorf("%s %q: %d %q, want %d %q", tc.container, tc.query, code, body, tc.code, tc.want)
		}
	}
}

// TestContainerLogsFollow: follow streams what the container writes and ends once the
// container has exited and its log is read to the end.
func TestContainerLogsFollow(t *testing.T) {
	srv, cri, path := logTestServer(t)
	if err := os.WriteFile(path, []byte("2026-01-01T00:00:00Z stdout F one\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get(srv.URL + "/containerLogs/default/p/c?follow=true")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	got := make([]byte, 4)
	if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != "one\n" {
		t.Fatalf("first line: %q, %v", got, err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("2026-01-01T00:00:01Z stdout F two\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := io.ReadFull(resp.Body, got); err != nil || string(got) != "two\n" {
		t.Fatalf("second line: %q, %v", got, err)
	}
	cri.setState(runtimeapi.ContainerState_CONTAINER_EXITED)
	done := make(chan error, 1)
	go func() {
		rest, err := io.ReadAll(resp.Body)
		if err == nil && len(rest) > 0 {
			err = io.ErrUnexpectedEOF
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("end of the followed log: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("follow did not end after the container exited")
	}
}

func TestParseStreamFlags(t *testing.T) {
	for _, tc := range []struct {
		query string
		want  streamFlags
		err   string
	}{
		{query: "stdout=1&stderr=1", want: streamFlags{stdout: true, stderr: true}},
		{query: "stdin=true&stdout=true&stderr=true&tty=true", want: streamFlags{stdin: true, stdout: true, tty: true}},
		{query: "tty=1", err: "you must specify at least 1 of stdin, stdout, stderr"},
		{query: "stdin=yes", err: `stdin="yes" is not a boolean`},
	} {
		q, _ := url.ParseQuery(tc.query)
		got, err := parseStreamFlags(q)
		if tc.err != "" {
			if err == nil || message(err) != tc.err {
				t.Errorf("%q: %v, want %q", tc.query, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%q: %+v, %v, want %+v", tc.query, got, err, tc.want)
		}
	}
}
