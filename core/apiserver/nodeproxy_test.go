package apiserver

import (
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPodContainer(t *testing.T) {
	one := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "a"}}}}
	two := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}, Spec: corev1.PodSpec{
		InitContainers: []corev1.Container{{Name: "init"}},
		Containers:     []corev1.Container{{Name: "a"}, {Name: "b"}},
	}}
	none := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p"}}
	for _, tc := range []struct {
		name      string
		pod       *corev1.Pod
		container string
		want, err string
	}{
		{name: "only container by default", pod: one, want: "a"},
		{name: "named", pod: two, container: "b", want: "b"},
		{name: "init container", pod: two, container: "init", want: "init"},
		{name: "must choose", pod: two, err: "a container name must be specified for pod p, choose one of: [init a b]"},
		{name: "unknown", pod: one, container: "x", err: "container x is not valid for pod p"},
		{name: "no containers", pod: none, err: "a container name must be specified for pod p"},
	} {
		got, err := podContainer(tc.pod, tc.container)
		if tc.err != "" {
			if !apierrors.IsBadRequest(err) || err.Error() != tc.err {
				t.Errorf("%s: %v, want BadRequest %q", tc.name, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v, want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestLogOptions(t *testing.T) {
	for _, tc := range []struct {
		query, agent, err string
	}{
		{query: "container=c&follow=true&tailLines=10&timestamps=true", agent: "follow=true&tailLines=10&timestamps=true"},
		{query: "previous=true&limitBytes=100&sinceSeconds=5", agent: "limitBytes=100&previous=true&sinceSeconds=5"},
		{query: "sinceTime=2026-01-02T03:04:05Z", agent: "sinceTime=2026-01-02T03%3A04%3A05Z"},
		{query: "tailLines=-1", err: `PodLogOptions "p" is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0`},
		{query: "limitBytes=0", err: `PodLogOptions "p" is invalid: limitBytes: Invalid value: 0: must be greater than 0`},
		{query: "sinceSeconds=1&sinceTime=2026-01-02T03:04:05Z", err: "at most one of `sinceTime` or `sinceSeconds` may be specified"},
		{query: "stream=Stdout", err: "stream: Forbidden: may not be specified"},
	} {
		q, _ := url.ParseQuery(tc.query)
		opts, err := logOptions(q, "p")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: %v, want %q", tc.query, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.query, err)
			continue
		}
		if got := agentLogQuery(opts).Encode(); got != tc.agent {
			t.Errorf("%q: agent query %q, want %q", tc.query, got, tc.agent)
		}
	}
}

func TestRemoteCommandOptions(t *testing.T) {
	q, _ := url.ParseQuery("command=sh&command=-c&command=exit+3&container=main&stdin=true&stdout=true&stderr=true&tty=false")
	opts, container, err := remoteCommandOptions("exec", q)
	if err != nil || container != "main" {
		t.Fatalf("exec options: %q, %v", container, err)
	}
	if got, want := agentStreamQuery(opts).Encode(), "command=sh&command=-c&command=exit+3&stderr=1&stdin=1&stdout=1"; got != want {
		t.Errorf("exec agent query %q, want %q", got, want)
	}
	q, _ = url.ParseQuery("container=c&stdin=true&stdout=true&tty=true")
	opts, container, err = remoteCommandOptions("attach", q)
	if err != nil || container != "c" {
		t.Fatalf("attach options: %q, %v", container, err)
	}
	if got, want := agentStreamQuery(opts).Encode(), "stdin=1&stdout=1&tty=1"; got != want {
		t.Errorf("attach agent query %q, want %q", got, want)
	}
}

func TestNodeAgentURL(t *testing.T) {
	node := func(port int32, addrs ...corev1.NodeAddress) *corev1.Node {
		n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}
		n.Status.DaemonEndpoints.KubeletEndpoint.Port = port
		n.Status.Addresses = addrs
		return n
	}
	internal := corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: "10.0.0.7"}
	host := corev1.NodeAddress{Type: corev1.NodeHostName, Address: "n1.example"}
	u, err := nodeAgentURL(node(10250, host, internal))
	if err != nil || u.String() != "https://10.0.0.7:10250" {
		t.Errorf("url %v, %v", u, err)
	}
	if _, err := nodeAgentURL(node(0, internal)); !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "node n1 has no agent endpoint") {
		t.Errorf("no port: %v", err)
	}
	if _, err := nodeAgentURL(node(10250, host)); !apierrors.IsServiceUnavailable(err) || !strings.Contains(err.Error(), "no InternalIP") {
		t.Errorf("no InternalIP: %v", err)
	}
}

func TestAgentError(t *testing.T) {
	for _, tc := range []struct {
		code   int
		body   string
		check  func(error) bool
		wantIn string
	}{
		{http.StatusBadRequest, "previous terminated container \"c\" in pod \"p\" not found\n", apierrors.IsBadRequest, `previous terminated container "c" in pod "p" not found`},
		{http.StatusInternalServerError, "boom", apierrors.IsInternalError, "boom"},
		{http.StatusNotFound, "pod \"default/p\" does not exist", apierrors.IsNotFound, "does not exist"},
		{http.StatusUnauthorized, "Unauthorized", apierrors.IsInternalError, "the node agent refused the API server's client certificate"},
	} {
		err := agentError(&http.Response{StatusCode: tc.code, Body: io.NopCloser(strings.NewReader(tc.body))}, "p")
		if !tc.check(err) || !strings.Contains(err.Error(), tc.wantIn) {
			t.Errorf("%d %q: %v", tc.code, tc.body, err)
		}
	}
	// The message is the agent's text as it is, the way kubectl shows a kubelet's.
	err := agentError(&http.Response{StatusCode: http.StatusBadRequest, Body: io.NopCloser(strings.NewReader("x is waiting\n"))}, "p")
	if err.Error() != "x is waiting" {
		t.Errorf("message %q", err.Error())
	}
}
