package agent_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/core/hosttest"
	"berth.dev/berth/core/internal/testserver"
)

// TestTestserverImageOnContainerd runs berth.local/testserver:1.0, built from the real
// berth-testserver binary, as a pod with an httpGet readiness probe on /healthz: it becomes
// Ready, answers the test on its pod IP (through the node's bridge) with its host name,
// which is the pod's name, its version from the image's env and a TCP echo, and, deleted
// with a long grace period, stops at SIGTERM instead of waiting for SIGKILL.
func TestTestserverImageOnContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds berth-testserver, starts containerd, real containers and an API server")
	}
	hosttest.RequireHost(t)
	start := time.Now()
	step := func(what string) { t.Logf("%5.1fs %s", time.Since(start).Seconds(), what) }
	dir := t.TempDir()

	// The image needs a static binary: the one make build makes, built here the same way.
	bin := filepath.Join(dir, images.TestserverBinaryName)
	build := exec.Command("go", "build", "-o", bin, "berth.dev/berth/cmd/berth-testserver")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build berth-testserver: %v\n%s", err, out)
	}
	files, err := images.BuildTestserver(filepath.Join(dir, "testserver-images"), bin)
	if err != nil {
		t.Fatal(err)
	}
	step("berth-testserver and its images built")

	srv := testserver.Start(t)
	kube := srv.Kube
	cidr := hosttest.FreePodCIDR(t)
	rt := startContainerd(t, dir, cidr, fmt.Sprintf("bertht%d", os.Getpid()%100000), srv.Logs)
	ctx := context.Background()
	for _, f := range files {
		if err := images.Import(ctx, strings.TrimPrefix(rt.Endpoint, "unix://"), containerd.Namespace, f); err != nil {
			t.Fatal(err)
		}
	}

	const node = "node-testserver"
	runAgent(t, agent.Config{
		Kube: kube, NodeName: node, RuntimeEndpoint: rt.Endpoint, DataDir: filepath.Join(dir, "agent"),
		PodCIDR: cidr, Log: srv.Log.With("component", "agent"), LeaseRenewInterval: time.Second,
	})
	step("containerd, API server and agent up")

	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: "default", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			NodeName: node,
			// Far longer than the test waits for the deletion: only a server that exits
			// at SIGTERM is gone in time.
			TerminationGracePeriodSeconds: ptr.To[int64](120),
			Containers: []corev1.Container{{
				Name: "main", Image: images.TestserverRef, ImagePullPolicy: corev1.PullIfNotPresent,
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {Name: "echo", ContainerPort: 9000}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
						Path: "/healthz", Port: intstr.FromString("http"),
					}},
					PeriodSeconds: 1, TimeoutSeconds: 1, SuccessThreshold: 1, FailureThreshold: 3,
				},
			}},
		},
	}
	pod, err = kube.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var ready *corev1.Pod
	testserver.WaitForWithin(t, "the test server pod Ready", 60*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		ready = p
		return podReady(p) && p.Status.PodIP != "", fmt.Errorf("phase %s, conditions %+v, containers %+v", p.Status.Phase, p.Status.Conditions, p.Status.ContainerStatuses)
	})
	step("pod Ready through its httpGet readiness probe")

	ip := ready.Status.PodIP
	if _, subnet, _ := net.ParseCIDR(cidr); !subnet.Contains(net.ParseIP(ip)) {
		t.Fatalf("pod IP %s is not in the test's pod network %s", ip, cidr)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	get := func(path string) string {
		t.Helper()
		resp, err := client.Get("http://" + net.JoinHostPort(ip, "8080") + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s %q, %v", path, resp.Status, body, err)
		}
		return string(body)
	}
	if got := get("/hostname"); got != pod.Name {
		t.Errorf("/hostname = %q, want the pod's name %q", got, pod.Name)
	}
	if got := get("/version"); got != "1.0" {
		t.Errorf("/version = %q, want 1.0 (the image's VERSION)", got)
	}
	if got := get("/echo?msg=hi"); got != "hi" {
		t.Errorf("/echo?msg=hi = %q", got)
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(ip, "9000"), 5*time.Second)
	if err != nil {
		t.Fatalf("dial the TCP echo port: %v", err)
	}
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprint(conn, "ping")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "ping" {
		t.Errorf("TCP echo: %q, %v", buf, err)
	}
	conn.Close()

	// The server logs a line per request to stdout, which the runtime keeps as the log.
	// The runtime copies the container's output to the file on its own time: poll.
	logFile := filepath.Join(dir, "agent", "pods", "default_"+pod.Name+"_"+string(pod.UID), "main", "0.log")
	var data []byte
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		data, err = os.ReadFile(logFile)
		if err == nil && strings.Contains(string(data), "GET /hostname 200") && strings.Contains(string(data), "GET /healthz 200") {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("container log %s after 10 s: %v\n%s", logFile, err, data)
			break
		}
	}
	step("pod answered on its IP")

	deleted := time.Now()
	if err := kube.CoreV1().Pods("default").Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testserver.WaitForWithin(t, "the pod gone well within its 120 s grace period", 30*time.Second, func() (bool, error) {
		_, err := kube.CoreV1().Pods("default").Get(ctx, pod.Name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), err
	})
	step(fmt.Sprintf("pod deleted in %.1fs", time.Since(deleted).Seconds()))
}
