package agent_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/hosttest"
	"berth.dev/berth/core/internal/testserver"
)

// kubectlBinaries are the oldest and newest kubectl berth supports: 1.27 speaks SPDY for
// exec, attach and port-forward; 1.33 WebSocket (v5.channel.k8s.io) for exec and attach
// and SPDY tunnelled through WebSocket for port-forward.
var kubectlBinaries = []string{
	"/usr/lib/google-cloud-sdk/bin/kubectl.1.27",
	"/usr/lib/google-cloud-sdk/bin/kubectl.1.33",
}

// allKubectlBinaries adds the versions in between (1.30 is the first with WebSocket exec,
// 1.31 the first with WebSocket port-forward), run with BERTH_TEST_ALL_KUBECTL=1.
var allKubectlBinaries = []string{
	"/usr/lib/google-cloud-sdk/bin/kubectl.1.27",
	"/usr/lib/google-cloud-sdk/bin/kubectl.1.28",
	"/usr/lib/google-cloud-sdk/bin/kubectl.1.29",
	"/usr/lib/google-cloud-sdk/bin/kubectl.1.30",
	"/usr/lib/google-cloud-sdk/bin/kubectl.1.31",
	"/usr/lib/google-cloud-sdk/bin/kubectl.1.32",
	"/usr/lib/google-cloud-sdk/bin/kubectl.1.33",
}

// TestStreamingOnContainerd runs the agent with its streaming server against containerd
// and the real API server, and drives logs, exec, attach and port-forward with the real
// kubectl 1.27 and 1.33 through the API server.
func TestStreamingOnContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containerd, real containers and an API server")
	}
	hosttest.RequireHost(t)
	for _, k := range kubectlBinaries {
		if _, err := os.Stat(k); err != nil {
			t.Skipf("kubectl missing: %v", err)
		}
	}
	start := time.Now()
	step := func(what string) { t.Logf("%5.1fs %s", time.Since(start).Seconds(), what) }
	dir := t.TempDir()
	srv := testserver.Start(t)
	kube, log := srv.Kube, srv.Log
	kubeconfig := writeKubeconfig(t, srv.Config, filepath.Join(dir, "admin.kubeconfig"))

	cidr := hosttest.FreePodCIDR(t)
	bridge := fmt.Sprintf("berthst%d", os.Getpid()%100000)
	rt := startContainerd(t, dir, cidr, bridge, srv.Logs)

	const node = "node-streaming"
	ctx := context.Background()
	stopAgent := runAgent(t, agent.Config{
		Kube: kube, NodeName: node, RuntimeEndpoint: rt.Endpoint, DataDir: filepath.Join(dir, "agent"),
		PodCIDR: cidr, Log: log.With("component", "agent"), LeaseRenewInterval: time.Second,
		// Loopback only: the API server reaches the agent at the node's InternalIP.
		NodeIP: "127.0.0.1", StreamingAddr: "127.0.0.1:0", ClientCA: srv.Config.CAData,
	})

	var port int32
	testserver.WaitForWithin(t, "node with its agent's port", 30*time.Second, func() (bool, error) {
		n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		port = n.Status.DaemonEndpoints.KubeletEndpoint.Port
		return port > 0, fmt.Errorf("daemonEndpoints %+v", n.Status.DaemonEndpoints)
	})
	step("agent serving on port " + strconv.Itoa(int(port)))

	// Without a client certificate of the cluster CA, the agent answers 401.
	anon := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if resp, err := anon.Get(fmt.Sprintf("https://127.0.0.1:%d/containerLogs/default/x/y", port)); err != nil {
		t.Errorf("anonymous request to the agent: %v", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("anonymous request to the agent: %s, want 401", resp.Status)
		}
	}

	// talker logs a 40,000-byte line, which the runtime writes as partial (P) records of
	// 16 KiB, then two lines five seconds apart, then sleeps; it has a sidecar, so logs
	// without -c must name one.
	talker := busyboxPod("talker", node, corev1.RestartPolicyAlways, "sh", "-c",
		`head -c 40000 /dev/zero | tr '\0' x; echo; echo early; sleep 5; echo late; exec sleep 3600`)
	talker.Spec.Containers = append(talker.Spec.Containers, corev1.Container{
		Name: "side", Image: talker.Spec.Containers[0].Image, ImagePullPolicy: corev1.PullIfNotPresent,
		Command: []string{"sh", "-c", "echo from-side; exec sleep 3600"},
	})
	// web serves a page with busybox httpd for port-forward.
	web := busyboxPod("web", node, corev1.RestartPolicyAlways, "sh", "-c",
		`mkdir -p /www && echo hello-from-pod > /www/index.html && exec httpd -f -p 8080 -h /www`)
	// crasher exits 1 after a line, so it restarts and has a previous container.
	crasher := busyboxPod("crasher", node, corev1.RestartPolicyAlways, "sh", "-c", `echo attempt-$(cat /proc/uptime); sleep 1; exit 1`)
	// unpullable never starts: its image is not there and cannot be pulled.
	unpullable := busyboxPod("unpullable", node, corev1.RestartPolicyAlways, "true")
	unpullable.Spec.Containers[0].Image = "127.0.0.1:1/missing:1"
	// ghost is bound to a node that has no agent.
	ghost := busyboxPod("ghost", "node-without-agent", corev1.RestartPolicyAlways, "true")
	if _, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-without-agent"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*corev1.Pod{talker, web, crasher, unpullable, ghost} {
		if _, err := kube.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"talker", "web"} {
		waitRunning(t, kube, name)
	}
	step("pods running")

	// The 40,000-byte line arrives whole.
	testserver.WaitForWithin(t, "talker's last line", 30*time.Second, func() (bool, error) {
		out, _, err := kubectl(t, kubeconfig, kubectlBinaries[1], "", "logs", "talker", "-c", "main")
		return out == strings.Repeat("x", 40000)+"\nearly\nlate\n", fmt.Errorf("%.30q ... %q, %v", out, out[max(0, len(out)-20):], err)
	})

	// Without a container name, Kubernetes' error (through the API, as kubectl picks a
	// default container itself).
	// (Stream, as kubectl reads logs.)
	_, err := kube.CoreV1().Pods("default").GetLogs("talker", &corev1.PodLogOptions{}).Stream(ctx)
	if want := "a container name must be specified for pod talker, choose one of: [main side]"; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("logs without a container: %v, want %q", err, want)
	}

	testserver.WaitForWithin(t, "crasher restarted", 60*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, "crasher", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) != 1 {
			return false, err
		}
		cs := p.Status.ContainerStatuses[0]
		return cs.RestartCount >= 1 && cs.LastTerminationState.Terminated != nil, fmt.Errorf("status %+v", cs)
	})
	step("crasher restarted")
	testserver.WaitForWithin(t, "unpullable waiting", 30*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, "unpullable", metav1.GetOptions{})
		if err != nil || len(p.Status.ContainerStatuses) != 1 {
			return false, err
		}
		w := p.Status.ContainerStatuses[0].State.Waiting
		return w != nil && (w.Reason == "ErrImagePull" || w.Reason == "ImagePullBackOff"), fmt.Errorf("state %+v", p.Status.ContainerStatuses[0].State)
	})

	binaries := kubectlBinaries
	if os.Getenv("BERTH_TEST_ALL_KUBECTL") != "" {
		binaries = allKubectlBinaries
	}
	for _, k := range binaries {
		version := strings.TrimPrefix(filepath.Ext(k), ".")
		t.Run("kubectl-1."+version, func(t *testing.T) {
			testKubectl(t, kube, kubeconfig, k, node, "1-"+version)
		})
	}

	// A stopping agent ends the streams it serves: an exec in progress returns.
	longExec := exec.Command(kubectlBinaries[len(kubectlBinaries)-1], "--kubeconfig", kubeconfig, "exec", "web", "--", "sleep", "600")
	if err := longExec.Start(); err != nil {
		t.Fatal(err)
	}
	execDone := make(chan error, 1)
	go func() { execDone <- longExec.Wait() }()
	time.Sleep(2 * time.Second) // the stream is up
	stopAgent()
	select {
	case err := <-execDone:
		t.Logf("exec after the agent stopped: %v", err)
	case <-time.After(20 * time.Second):
		_ = longExec.Process.Kill()
		<-execDone
		t.Errorf("an exec stream outlived its agent by 20 s")
	}
}

// testKubectl runs one kubectl binary through logs, exec, attach and port-forward;
// suffix names the pods it makes of its own.
func testKubectl(t *testing.T, kube kubernetes.Interface, kubeconfig, k, node, suffix string) {
	ctx := context.Background()
	run := func(stdin string, args ...string) (string, string, error) {
		return kubectl(t, kubeconfig, k, stdin, args...)
	}
	mustRun := func(stdin string, args ...string) string {
		t.Helper()
		out, stderr, err := run(stdin, args...)
		if err != nil {
			t.Errorf("kubectl %s: %v\nstdout: %s\nstderr: %s", strings.Join(args, " "), err, out, stderr)
		}
		return out
	}

	// logs: -c, --tail, --timestamps, --since, --since-time, a wrong container.
	if out := mustRun("", "logs", "talker", "-c", "side"); out != "from-side\n" {
		t.Errorf("logs -c side: %q", out)
	}
	if out := mustRun("", "logs", "talker", "-c", "main", "--tail=2"); out != "early\nlate\n" {
		t.Errorf("logs --tail=2: %.40q", out)
	}
	stamped := mustRun("", "logs", "talker", "-c", "main", "--timestamps", "--tail=2")
	lines := strings.Split(strings.TrimSuffix(stamped, "\n"), "\n")
	if len(lines) != 2 {
		t.Fatalf("logs --timestamps --tail=2: %d lines: %.200q", len(lines), stamped)
	}
	stampOf := func(line, text string) time.Time {
		ts, rest, _ := strings.Cut(line, " ")
		at, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil || rest != text {
			t.Fatalf("logs --timestamps line %q: %v", line, err)
		}
		return at
	}
	early, late := stampOf(lines[0], "early"), stampOf(lines[1], "late")
	if late.Sub(early) < 4*time.Second {
		t.Fatalf("early at %s, late at %s: not 5 s apart", early, late)
	}
	since := mustRun("", "logs", "talker", "-c", "main", "--since-time="+late.Add(-time.Second).Format(time.RFC3339))
	if since != "late\n" {
		t.Errorf("logs --since-time: %.40q", since)
	}
	// --since=Ns, N covering "late" but not "early", five seconds before it.
	n := int(math.Ceil(time.Since(late).Seconds())) + 2
	since = mustRun("", "logs", "talker", "-c", "main", fmt.Sprintf("--since=%ds", n))
	if since != "late\n" {
		t.Errorf("logs --since=%ds: %.40q", n, since)
	}
	if _, stderr, err := run("", "logs", "talker", "-c", "nope"); err == nil || !strings.Contains(stderr, "container nope is not valid for pod talker") {
		t.Errorf("logs -c nope: %v: %s", err, stderr)
	}
	// --previous: the crasher's last attempt; web never restarted.
	if out := mustRun("", "logs", "crasher", "--previous"); !strings.HasPrefix(out, "attempt-") {
		t.Errorf("logs --previous: %q", out)
	}
	if _, stderr, err := run("", "logs", "web", "--previous"); err == nil || !strings.Contains(stderr, `previous terminated container "main" in pod "web" not found`) {
		t.Errorf("logs --previous without a restart: %v: %s", err, stderr)
	}

	// Pods that cannot stream answer at once with the reason. (kubectl port-forward
	// refuses a pod that is not Running before it asks.)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"logs", "unpullable"}, `container "main" in pod "unpullable" is waiting to start: `},
		{[]string{"exec", "unpullable", "--", "true"}, `container not found ("main")`},
		{[]string{"logs", "ghost"}, "node node-without-agent has no agent endpoint"},
		{[]string{"exec", "ghost", "--", "true"}, "node node-without-agent has no agent endpoint"},
	} {
		began := time.Now()
		_, stderr, err := run("", tc.args...)
		if err == nil || !strings.Contains(stderr, tc.want) || time.Since(began) > 20*time.Second {
			t.Errorf("kubectl %s: %v after %s: %q, want %q", strings.Join(tc.args, " "), err, time.Since(began).Round(time.Millisecond), stderr, tc.want)
		}
	}

	// logs -f ends when the container exits.
	counter := busyboxPod("counter-"+suffix, node, corev1.RestartPolicyNever, "sh", "-c", "for i in 1 2 3; do echo $i; sleep 1; done")
	if _, err := kube.CoreV1().Pods("default").Create(ctx, counter, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, kube, counter.Name)
	followStart := time.Now()
	if out := mustRun("", "logs", "-f", counter.Name); out != "1\n2\n3\n" {
		t.Errorf("logs -f: %q", out)
	}
	if d := time.Since(followStart); d > 15*time.Second {
		t.Errorf("logs -f took %s to end after the container exited", d)
	}

	// exec: output, stdin, exit code.
	if out := mustRun("", "exec", "web", "--", "echo", "hi"); out != "hi\n" {
		t.Errorf("exec echo hi: %q", out)
	}
	if out := mustRun("data\n", "exec", "-i", "web", "--", "cat"); out != "data\n" {
		t.Errorf("exec -i cat: %q", out)
	}
	if _, stderr, err := run("", "exec", "web", "--", "sh", "-c", "exit 3"); exitCode(err) != 3 {
		t.Errorf("exec exit 3: exit code %d (%v): %s", exitCode(err), err, stderr)
	}
	if _, stderr, err := run("", "exec", "talker", "-c", "nope", "--", "true"); err == nil || !strings.Contains(stderr, "container nope is not valid for pod talker") {
		t.Errorf("exec -c nope: %v: %s", err, stderr)
	}
	// A terminal, through script(1)'s pty.
	if _, err := exec.LookPath("script"); err == nil {
		cmd := exec.Command("script", "-qec", fmt.Sprintf("%s --kubeconfig %s exec -it web -- sh -c 'tty; echo tty-ok'", k, kubeconfig), "/dev/null")
		cmd.Stdin = strings.NewReader("")
		out, err := runTimeout(cmd, 30*time.Second)
		if err != nil || !strings.Contains(out, "/dev/pts/") || !strings.Contains(out, "tty-ok") {
			t.Errorf("exec -it: %v: %q", err, out)
		}
	}

	// attach: the container reads a line from its stdin and answers on stdout.
	attachee := busyboxPod("attach-"+suffix, node, corev1.RestartPolicyNever, "sh", "-c", "read line; echo got $line")
	attachee.Spec.Containers[0].Stdin, attachee.Spec.Containers[0].StdinOnce = true, true
	if _, err := kube.CoreV1().Pods("default").Create(ctx, attachee, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitRunning(t, kube, attachee.Name)
	if out := mustRun("hello\n", "attach", "-i", attachee.Name); !strings.Contains(out, "got hello") {
		t.Errorf("attach -i: %q", out)
	}

	// port-forward to busybox httpd, then a GET through it.
	local := freeLocalPort(t)
	pf := exec.Command(k, "--kubeconfig", kubeconfig, "port-forward", "pod/web", fmt.Sprintf("%d:8080", local))
	stdout, err := pf.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var pfErr strings.Builder
	pf.Stderr = &pfErr
	if err := pf.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = pf.Process.Kill()
		_ = pf.Wait()
	}()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "Forwarding from 127.0.0.1") {
				ready <- sc.Text()
			}
		}
		close(ready)
	}()
	select {
	case line, ok := <-ready:
		if !ok {
			t.Fatalf("port-forward ended: %s", pfErr.String())
		}
		t.Logf("port-forward: %s", line)
	case <-time.After(30 * time.Second):
		t.Fatalf("port-forward not ready: %s", pfErr.String())
	}
	for i := range 2 { // twice: each GET is a new stream on the same connection
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/", local))
		if err != nil {
			t.Fatalf("GET %d through port-forward: %v (kubectl: %s)", i, err, pfErr.String())
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "hello-from-pod\n" {
			t.Errorf("GET %d through port-forward: %s %q", i, resp.Status, body)
		}
	}
}

// kubectl runs k with the kubeconfig and stdin, for at most a minute.
func kubectl(t *testing.T, kubeconfig, k, stdin string, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(k, append([]string{"--kubeconfig", kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := runTimeout(cmd, time.Minute)
	return out, stderr.String(), err
}

// runTimeout runs cmd, killing it after limit, and returns its stdout.
func runTimeout(cmd *exec.Cmd, limit time.Duration) (string, error) {
	var stdout strings.Builder
	cmd.Stdout = &stdout
	if err := cmd.Start(); err != nil {
		return "", err
	}
	timer := time.AfterFunc(limit, func() { _ = cmd.Process.Kill() })
	defer timer.Stop()
	err := cmd.Wait()
	return stdout.String(), err
}

func exitCode(err error) int {
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

func waitRunning(t *testing.T, kube kubernetes.Interface, name string) {
	t.Helper()
	testserver.WaitForWithin(t, name+" Running", 60*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cs := range p.Status.ContainerStatuses {
			if cs.State.Running == nil {
				return false, fmt.Errorf("container %s: %+v", cs.Name, cs.State)
			}
		}
		return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s", p.Status.Phase)
	})
}

func freeLocalPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// writeKubeconfig writes cfg, the test server's admin configuration, as a kubeconfig file
// for kubectl.
func writeKubeconfig(t *testing.T, cfg *rest.Config, path string) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["berth"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData, CertificateAuthority: cfg.CAFile}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData,
		ClientCertificate: cfg.CertFile, ClientKey: cfg.KeyFile,
	}
	kc.Contexts["berth"] = &clientcmdapi.Context{Cluster: "berth", AuthInfo: "admin"}
	kc.CurrentContext = "berth"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}
