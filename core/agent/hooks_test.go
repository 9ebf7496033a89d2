package agent

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestHookRun(t *testing.T) {
	var hits []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits = append(hits, r.URL.Path)
		if r.URL.Path == "/fail" {
			http.Error(w, "not today", http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	host, portText, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	port, _ := strconv.Atoi(portText)

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "ns", UID: "u1"},
		Status:     corev1.PodStatus{PodIP: host},
	}
	c := &corev1.Container{Name: "main"}
	httpHook := func(path string) *corev1.LifecycleHandler {
		return &corev1.LifecycleHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt(port)}}
	}
	tests := []struct {
		name    string
		hook    *corev1.LifecycleHandler
		resp    *runtimeapi.ExecSyncResponse
		wantErr string // "" for success
	}{
		{name: "exec ok", hook: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}},
			resp: &runtimeapi.ExecSyncResponse{}},
		{name: "exec fails", hook: &corev1.LifecycleHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c", "exit 1"}}},
			resp:    &runtimeapi.ExecSyncResponse{ExitCode: 1, Stdout: []byte("nope")},
			wantErr: `Exec lifecycle hook ([sh -c exit 1]) for Container "main" in Pod "web_ns(u1)" failed - error: command 'sh -c exit 1' failed, message: "nope"`},
		{name: "http ok", hook: httpHook("/ok")},
		{name: "http fails", hook: httpHook("/fail"),
			wantErr: `HTTP lifecycle hook (/fail) for Container "main" in Pod "web_ns(u1)" failed - error:`},
		{name: "sleep", hook: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 5}}},
		{name: "no action", hook: &corev1.LifecycleHandler{},
			wantErr: `cannot run handler: lifecycle hook of container "main" in pod "web_ns(u1)" has no action`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newHookRunner(&fakeExec{resp: tt.resp})
			var slept time.Duration
			r.sleep = func(_ context.Context, d time.Duration) { slept = d }
			err := r.run(context.Background(), pod, c, "cid", tt.hook, 3*time.Second)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("run: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.wantErr)):
				t.Fatalf("run: got %v, want an error starting %q", err, tt.wantErr)
			}
			if tt.hook.Sleep != nil && slept != 3*time.Second {
				t.Errorf("sleep of 5 s within a 3 s budget slept %v, want 3s", slept)
			}
		})
	}
	if strings.Join(hits, ",") != "/ok,/fail" {
		t.Errorf("HTTP hooks reached %v, want /ok then /fail", hits)
	}
}
