package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"berth.dev/berth/core/hosttest"
)

// TestSeedsDemoOnBerthUp is issue 6's walkthrough of the seeds' webapp/webdb demo on a
// real single-node `berth up` (containerd, the node proxy, the cluster DNS server, the
// Ingress controller), driven with kubectl 1.33 as a user would, with berth's test server
// standing in for both images (webapp's port 3000 mapped to the server's 8080):
//   - webdb and webapp, 2 replicas each, with their Services (webapp NodePort), Ready;
//   - from a busybox pod, nslookup webapp and webdb.default.svc.cluster.local answer the
//     ClusterIPs, an HTTP GET of webapp:3000 reaches a webapp pod, and the pod (created
//     after the Services) has WEBDB_SERVICE_HOST;
//   - the NodePort answers on 127.0.0.1 from both replicas;
//   - scaled to 3, the new pod answers within a second of being Ready;
//   - a rollout (1.0 -> 2.0) with readiness probes loses no request of a client looping
//     on the NodePort;
//   - an Ingress without a class (berth up's IngressClass berth is the default) routes /app
//     to webapp, and reports the node's address.
func TestSeedsDemoOnBerthUp(t *testing.T) {
	skipShort(t)
	hosttest.RequireHost(t)
	bin := berthBinary(t)
	// `berth up` builds the image berth.local/testserver from this static binary.
	buildBeside(t, bin, "./cmd/berth-testserver", true)
	dir := filepath.Join(t.TempDir(), "up")
	// A bridge of the test's own, so that other `berth up` tests (on berth0) can run beside.
	bridge := fmt.Sprintf("berthdm%d", os.Getpid()%100000)
	netConfig := filepath.Join(t.TempDir(), "network.yaml")
	if err := os.WriteFile(netConfig, []byte("apiVersion: network.berth.dev/v1\nkind: NetworkConfiguration\ndriver: bridge\nbridge: "+bridge+"\n"), 0o644); err != nil {
		fatalf(t, "%v", err)
	}
	httpPort, httpsPort := freePort(t), freePort(t)
	p, err := launchBerthCommand(bin, "up", dir, "--pod-cidr", hosttest.FreePodCIDR(t), "--network-config", netConfig,
		"--streaming-address", "0.0.0.0:0", "--node-name", "demo-node", "--csi-driver", "none",
		"--ingress-http-port", fmt.Sprint(httpPort), "--ingress-https-port", fmt.Sprint(httpsPort))
	if err != nil {
		fatalf(t, "%v", err)
	}
	k := kubectlRun{Version: "1.33", Kubeconfig: p.kubeconfig}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("berth up output:\n%s", tail(p.logs.String(), 80))
			saveArtifact(t, "berth-up.log", p.logs.String())
			logProblems(t, k, p.logs.String())
		}
		k.run(t, "delete", "ingress,deployments,pods", "--all", "--grace-period=1", "--wait=true", "--timeout=60s")
		if _, err := p.stop(60 * time.Second); err != nil {
			t.Logf("berth up after SIGTERM: %v", err)
		}
		hosttest.KillShims(t, dir)
		hosttest.UnmountUnder(t, dir)
		if out, err := exec.Command("ip", "link", "del", bridge).CombinedOutput(); err != nil && !strings.Contains(string(out), "Cannot find device") {
			t.Errorf("cleanup: delete bridge %s: %v: %s", bridge, err, out)
		}
		restateFailure(t)
	})
	start := time.Now()
	step := func(what string) { t.Logf("%5.1fs %s", time.Since(start).Seconds(), what) }

	waitFor(t, 90*time.Second, "the node Ready", func() (bool, string) {
		res := k.run(t, "get", "nodes", "--no-headers")
		return strings.Contains(res.Stdout, "demo-node") && strings.Contains(res.Stdout, " Ready "), res.Stdout + res.Stderr
	})
	apply(t, k, demoManifest)
	readyPods := func(app string, n int) []string {
		t.Helper()
		var names []string
		waitFor(t, 90*time.Second, fmt.Sprintf("%d Ready pods of %s", n, app), func() (bool, string) {
			res := k.run(t, "get", "pods", "-l", "app="+app, "--no-headers", "-o", "custom-columns=N:.metadata.name,R:.status.containerStatuses[0].ready,D:.metadata.deletionTimestamp")
			names = nil
			for _, l := range strings.Split(res.Stdout, "\n") {
				if f := strings.Fields(l); len(f) == 3 && f[1] == "true" && f[2] == "<none>" {
					names = append(names, f[0])
				}
			}
			return len(names) == n, res.Stdout + res.Stderr
		})
		return names
	}
	webapps := readyPods("webapp", 2)
	readyPods("webdb", 2)
	step("webapp and webdb Ready")

	clusterIP := func(svc string) string {
		return strings.TrimSpace(k.mustRun(t, "get", "service", svc, "-o", "jsonpath={.spec.clusterIP}").Stdout)
	}
	webappIP, webdbIP := clusterIP("webapp"), clusterIP("webdb")
	nodePort := strings.TrimSpace(k.mustRun(t, "get", "service", "webapp", "-o", "jsonpath={.spec.ports[0].nodePort}").Stdout)

	// The client pod comes after the Services: it sees their environment variables.
	k.mustRun(t, "run", "client", "--image=berth.local/busybox:1.35", "--restart=Never", "--", "sleep", "3600")
	runningPod(t, k, "run=client", "")
	for name, ip := range map[string]string{"webapp": webappIP, "webdb.default.svc.cluster.local": webdbIP} {
		waitFor(t, 20*time.Second, "nslookup "+name+" from the client pod", func() (bool, string) {
			res := k.run(t, "exec", "client", "--", "nslookup", name)
			return strings.Contains(res.Stdout, "Address: "+ip), res.Stdout + res.Stderr
		})
	}
	res := k.mustRun(t, "exec", "client", "--", "env")
	if !strings.Contains(res.Stdout, "WEBDB_SERVICE_HOST="+webdbIP+"\n") {
		t.Errorf("the client pod's environment has no WEBDB_SERVICE_HOST=%s:\n%s", webdbIP, res.Stdout)
	}
	// busybox's static wget crashes on these machines: nc speaks the HTTP instead, to the
	// Service's name.
	waitFor(t, 20*time.Second, "webapp:3000 from the client pod", func() (bool, string) {
		res := k.run(t, "exec", "client", "--", "sh", "-c", `printf 'GET / HTTP/1.0\r\nHost: webapp\r\n\r\n' | nc -w 3 webapp 3000`)
		return strings.Contains(res.Stdout, "berth-testserver 1.0 on webapp-"), res.Stdout + res.Stderr
	})
	step("DNS, environment and webapp:3000 from a pod")

	// The NodePort from the host, spread over both replicas (a new connection each time).
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	nodeURL := "http://127.0.0.1:" + nodePort + "/hostname"
	seen := map[string]int{}
	for i := 0; i < 40 && len(seen) < 2; i++ {
		body, err := httpGet(client, nodeURL, "")
		if err != nil {
			fatalf(t, "GET %s: %v", nodeURL, err)
		}
		seen[body]++
	}
	if seen[webapps[0]] == 0 || seen[webapps[1]] == 0 {
		t.Errorf("40 requests to the NodePort reached %v; want both %v", seen, webapps)
	}
	step(fmt.Sprintf("NodePort %s answers from both replicas", nodePort))

	// Scale to 3: the new pod is in the rotation within a second of being Ready.
	k.mustRun(t, "scale", "deployment", "webapp", "--replicas=3")
	three := readyPods("webapp", 3)
	ready := time.Now()
	third := ""
	for _, n := range three {
		if n != webapps[0] && n != webapps[1] {
			third = n
		}
	}
	for {
		body, err := httpGet(client, nodeURL, "")
		if err == nil && body == third {
			break
		}
		if time.Since(ready) > 5*time.Second {
			fatalf(t, "the third pod %s did not answer within 5 s of Ready (last: %q %v)", third, body, err)
		}
	}
	if d := time.Since(ready); d > time.Second {
		t.Errorf("the third pod answered %v after kubectl showed it Ready; want within a second", d)
	}
	step(fmt.Sprintf("third replica in the rotation %v after Ready", time.Since(ready).Round(time.Millisecond)))

	// A rollout to 2.0 while a client loops on the NodePort: no request fails.
	loopCtx, stopLoop := context.WithCancel(context.Background())
	var (
		mu       sync.Mutex
		ok       int
		failures []string
		versions = map[string]int{}
		wg       sync.WaitGroup
	)
	wg.Go(func() {
		for i := 0; loopCtx.Err() == nil && i < 100000; i++ {
			body, err := httpGet(client, "http://127.0.0.1:"+nodePort+"/version", "")
			mu.Lock()
			if err != nil {
				failures = append(failures, err.Error())
			} else {
				ok++
				versions[body]++
			}
			mu.Unlock()
			time.Sleep(5 * time.Millisecond)
		}
	})
	k.mustRun(t, "set", "image", "deployment/webapp", "webapp=berth.local/testserver:2.0")
	rollout := k.run(t, "rollout", "status", "deployment/webapp", "--timeout=120s")
	time.Sleep(time.Second)
	stopLoop()
	wg.Wait()
	if rollout.Code != 0 {
		fatalf(t, "kubectl rollout status failed:\n%s", rollout)
	}
	if len(failures) > 0 {
		t.Errorf("%d of %d requests failed during the rollout; first: %v", len(failures), ok+len(failures), failures[:min(3, len(failures))])
	}
	if versions["2.0"] == 0 {
		t.Errorf("no request reached 2.0 during the rollout: %v", versions)
	}
	last, err := httpGet(client, "http://127.0.0.1:"+nodePort+"/version", "")
	if err != nil || last != "2.0" {
		t.Errorf("after the rollout: %q %v; want 2.0", last, err)
	}
	step(fmt.Sprintf("rollout to 2.0: %d requests, %d failed, versions %v", ok+len(failures), len(failures), versions))

	// The Ingress: /app goes to webapp (the test server answers 404 for a path it does not
	// know, and logs it), anything else to the controller's 404; the node's address in the
	// status.
	res = k.mustRun(t, "get", "ingressclass", "berth", "-o", `jsonpath={.spec.controller} {.metadata.annotations.ingressclass\.kubernetes\.io/is-default-class}`)
	if strings.TrimSpace(res.Stdout) != "berth.dev/ingress true" {
		t.Errorf("IngressClass berth: %q, want controller berth.dev/ingress, marked default", res.Stdout)
	}
	apply(t, k, demoIngressManifest)
	ingressURL := fmt.Sprintf("http://127.0.0.1:%d", httpPort)
	waitFor(t, 10*time.Second, "the Ingress routing /app to webapp", func() (bool, string) {
		if _, err := httpGet(client, ingressURL+"/app?from=ingress", "demo.local"); err != nil && !strings.Contains(err.Error(), "404 page not found") {
			return false, err.Error()
		}
		res := k.run(t, "logs", "-l", "app=webapp", "--tail=-1", "--prefix")
		return strings.Contains(res.Stdout, "GET /app?from=ingress 404"), res.Stdout + res.Stderr
	})
	if _, err := httpGet(client, ingressURL+"/other", "demo.local"); err == nil || !strings.Contains(err.Error(), "no Ingress rule matches") {
		t.Errorf("GET /other through the Ingress: %v; want the controller's 404", err)
	}
	waitFor(t, 10*time.Second, "the Ingress's ADDRESS", func() (bool, string) {
		res := k.run(t, "get", "ingress", "webapp", "-o", "jsonpath={.status.loadBalancer.ingress[*].ip}")
		nodeIP := strings.TrimSpace(k.run(t, "get", "node", "demo-node", "-o", `jsonpath={.status.addresses[?(@.type=="InternalIP")].address}`).Stdout)
		return nodeIP != "" && strings.TrimSpace(res.Stdout) == nodeIP, res.Stdout + res.Stderr + " node " + nodeIP
	})
	step("Ingress /app -> webapp")
}

// httpGet returns the trimmed body of a GET of url (with Host header host when not
// empty); a status other than 200 is an error carrying the body.
func httpGet(client *http.Client, url, host string) (string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	if host != "" {
		req.Host = host
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return strings.TrimSpace(string(b)), nil
}

// The seeds' demo with berth's test server in both images: webapp serves HTTP on 3000
// (the server's 8080 behind the Service's targetPort), webdb a TCP port (the server's echo
// on 9000). The preStop sleep keeps a terminating webapp pod serving while the Service's
// endpoints drop it, as Kubernetes' documentation advises for zero-downtime rollouts.
const demoManifest = `apiVersion: apps/v1
kind: Deployment
metadata: {name: webdb}
spec:
  replicas: 2
  selector: {matchLabels: {app: webdb}}
  template:
    metadata: {labels: {app: webdb}}
    spec:
      terminationGracePeriodSeconds: 5
      containers:
      - name: webdb
        image: berth.local/testserver:1.0
        ports: [{name: db, containerPort: 9000}]
        readinessProbe: {tcpSocket: {port: db}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: webdb}
spec:
  selector: {app: webdb}
  ports: [{port: 5432, targetPort: db}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: webapp}
spec:
  replicas: 2
  selector: {matchLabels: {app: webapp}}
  template:
    metadata: {labels: {app: webapp}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: webapp
        image: berth.local/testserver:1.0
        ports: [{name: http, containerPort: 8080}]
        env: [{name: WEBDB_URL, value: "tcp://webdb:5432"}]
        readinessProbe: {httpGet: {path: /healthz, port: http}, periodSeconds: 1}
        lifecycle: {preStop: {sleep: {seconds: 2}}}
---
apiVersion: v1
kind: Service
metadata: {name: webapp}
spec:
  type: NodePort
  selector: {app: webapp}
  ports: [{port: 3000, targetPort: http}]
`

const demoIngressManifest = `apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: webapp}
spec:
  rules:
  - http:
      paths:
      - path: /app
        pathType: Prefix
        backend: {service: {name: webapp, port: {number: 3000}}}
`
