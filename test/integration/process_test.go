package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// sigtermLimit is how long `berth server` may take to exit after SIGTERM.
const sigtermLimit = 10 * time.Second

// stopCleanly sends SIGTERM and fails the test unless the process exits 0 within sigtermLimit.
func stopCleanly(t *testing.T, p *berthProcess) {
	t.Helper()
	took, err := p.stop(sigtermLimit)
	if err != nil {
		t.Fatalf("after SIGTERM: %v (took %s); want exit status 0 within %s\n%s", err, took.Round(time.Millisecond), sigtermLimit, tail(p.logs.String(), 30))
	}
	t.Logf("berth server exited 0, %s after SIGTERM", took.Round(time.Millisecond))
}

// snapshot is what must survive a restart: every object's uid, and its resourceVersion
// (or generation, for objects whose status the controllers write).
type snapshot map[string]string

// seed writes a few objects of different kinds and returns their identities.
func seed(t *testing.T, cs kubernetes.Interface, ns string) snapshot {
	t.Helper()
	ctx := testContext(t)
	createNamespace(t, cs, ns)
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, configMap("cm", map[string]string{"k": "v"}, map[string]string{"a": "1"}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, testDeployment("dep", 2), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "sec"}, StringData: map[string]string{"p": "w"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: ns + "-node"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return identities(t, cs, ns)
}

// identities reads the seeded objects' uid@resourceVersion.
func identities(t *testing.T, cs kubernetes.Interface, ns string) snapshot {
	t.Helper()
	ctx := testContext(t)
	s := snapshot{}
	add := func(what string, o metav1.Object, err error) {
		if err != nil {
			t.Errorf("get %s: %v", what, err)
			return
		}
		s[what] = string(o.GetUID()) + "@" + o.GetResourceVersion()
	}
	nsObj, err := cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	add("namespace", nsObj, err)
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "cm", metav1.GetOptions{})
	add("configmap", cm, err)
	if err == nil && cm.Data["a"] != "1" {
		t.Errorf("configmap data %v, want a=1", cm.Data)
	}
	// The controllers write the status of the Deployment and of the Node (no agent renews its
	// Lease) whenever they like: for those, the identity is the uid and the spec's
	// generation, not the resourceVersion.
	dep, err := cs.AppsV1().Deployments(ns).Get(ctx, "dep", metav1.GetOptions{})
	if err != nil {
		t.Errorf("get deployment: %v", err)
	} else {
		s["deployment"] = fmt.Sprintf("%s@generation %d", dep.UID, dep.Generation)
	}
	sec, err := cs.CoreV1().Secrets(ns).Get(ctx, "sec", metav1.GetOptions{})
	add("secret", sec, err)
	if err == nil && string(sec.Data["p"]) != "w" {
		t.Errorf("secret data %v, want p=w", sec.Data)
	}
	node, err := cs.CoreV1().Nodes().Get(ctx, ns+"-node", metav1.GetOptions{})
	if err != nil {
		t.Errorf("get node: %v", err)
	} else {
		s["node"] = string(node.UID)
	}
	return s
}

func expectSame(t *testing.T, before, after snapshot) {
	t.Helper()
	for what, id := range before {
		if after[what] != id {
			t.Errorf("%s after restart: identity %q, want %q", what, after[what], id)
		}
	}
}

// TestServersSideBySide: two servers with their own data dirs and ports, each with its own data.
func TestServersSideBySide(t *testing.T) {
	skipShort(t)
	a := startBerth(t, t.TempDir())
	b := startBerth(t, t.TempDir())
	if a.url == b.url {
		t.Fatalf("both servers serve %s", a.url)
	}
	csA, csB := clientset(t, a.kubeconfig), clientset(t, b.kubeconfig)
	ctx := testContext(t)
	if _, err := csA.CoreV1().ConfigMaps("default").Create(ctx, configMap("only-in-a", nil, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := csB.CoreV1().ConfigMaps("default").Create(ctx, configMap("only-in-b", nil, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := csB.CoreV1().ConfigMaps("default").Get(ctx, "only-in-a", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("server B sees server A's object: %v", err)
	}
	if _, err := csA.CoreV1().ConfigMaps("default").Get(ctx, "only-in-a", metav1.GetOptions{}); err != nil {
		t.Errorf("server A lost its object: %v", err)
	}
	// Each server's certificates are its own: A's admin credentials are no good on B.
	cfg := restConfig(t, a.kubeconfig)
	cfg.Host = b.url
	cross, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cross.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err == nil {
		t.Errorf("server B accepted server A's kubeconfig")
	}
	stopCleanly(t, a)
	stopCleanly(t, b)
}

// TestSIGTERMAndRestart: SIGTERM stops the server cleanly; on the same data dir everything is
// still there, with the same uid and resourceVersion, and the old kubeconfig still works.
func TestSIGTERMAndRestart(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	p := startBerth(t, dir)
	caBefore := kubeconfigCA(t, p.kubeconfig)
	before := seed(t, clientset(t, p.kubeconfig), "restart")
	stopCleanly(t, p)

	p = startBerth(t, dir)
	cs := clientset(t, p.kubeconfig)
	expectSame(t, before, identities(t, cs, "restart"))
	if !strings.EqualFold(fmt.Sprintf("%x", caBefore), fmt.Sprintf("%x", kubeconfigCA(t, p.kubeconfig))) {
		t.Errorf("the CA changed across a restart: kubeconfigs handed out before no longer work")
	}
	// Writes go on from where they were: a new object gets a newer resourceVersion.
	ctx := testContext(t)
	cm, err := cs.CoreV1().ConfigMaps("restart").Get(ctx, "cm", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["a"] = "2"
	if _, err := cs.CoreV1().ConfigMaps("restart").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Errorf("update after restart with the stored resourceVersion: %v", err)
	}
	stopCleanly(t, p)
}

func kubeconfigCA(t *testing.T, path string) []byte {
	t.Helper()
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.Clusters[cfg.Contexts[cfg.CurrentContext].Cluster].CertificateAuthorityData
}

// TestExternalEtcd: `berth server --etcd-endpoints` keeps its objects in an etcd it did not
// start (Debian's etcd-server), and finds them again after a restart.
func TestExternalEtcd(t *testing.T) {
	skipShort(t)
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("no etcd binary (scripts/install-deps.sh installs etcd-server)")
	}
	endpoint := startEtcd(t, etcdBin)

	dir := t.TempDir()
	p := startBerth(t, dir, "--etcd-endpoints", endpoint)
	if _, err := os.Stat(filepath.Join(dir, "etcd")); err == nil {
		t.Errorf("%s/etcd exists: an embedded etcd was started although --etcd-endpoints was given", dir)
	}
	cs := clientset(t, p.kubeconfig)
	before := seed(t, cs, "external")
	ctx := testContext(t)

	// Watch works through the external etcd.
	list, err := cs.CoreV1().ConfigMaps("external").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w, err := cs.CoreV1().ConfigMaps("external").Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ConfigMaps("external").Create(ctx, configMap("watched", nil, nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := eventName(nextEvent(t, w, 10*time.Second)); got != "ADDED watched" {
		t.Errorf("watch through external etcd: got %q, want ADDED watched", got)
	}
	w.Stop()

	// The objects are in that etcd.
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	resp, err := cli.Get(ctx, "/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, kv := range resp.Kvs {
		found = found || (strings.Contains(string(kv.Key), "/configmaps/external/watched"))
	}
	if !found {
		t.Errorf("no key for configmap external/watched in the external etcd (%d keys)", len(resp.Kvs))
	}

	stopCleanly(t, p)
	p = startBerth(t, dir, "--etcd-endpoints", endpoint)
	expectSame(t, before, identities(t, clientset(t, p.kubeconfig), "external"))
	if _, err := clientset(t, p.kubeconfig).CoreV1().ConfigMaps("external").Get(ctx, "watched", metav1.GetOptions{}); err != nil {
		t.Errorf("configmap written before the restart: %v", err)
	}
	stopCleanly(t, p)
}

// startEtcd runs etcd on free loopback ports in a temp dir and returns its client URL.
func startEtcd(t *testing.T, bin string) string {
	t.Helper()
	client := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	peer := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	cmd := exec.Command(bin,
		"--name", "berth-test", "--data-dir", filepath.Join(t.TempDir(), "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
		"--initial-cluster", "berth-test="+peer, "--initial-cluster-state", "new",
		"--log-level", "warn")
	logs := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.Env = append(os.Environ(), "ETCD_UNSUPPORTED_ARCH="+runtime.GOARCH)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("etcd output:\n%s", tail(logs.String(), 30))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(client + "/health")
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var h struct{ Health string }
			if json.Unmarshal(body, &h) == nil && h.Health == "true" {
				return client
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("etcd exited: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcd not healthy within 30s:\n%s", logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestUnauthenticatedRequest: a request without a client certificate gets 401 and a Status.
func TestUnauthenticatedRequest(t *testing.T) {
	skipShort(t)
	p := sharedBerth(t)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(kubeconfigCA(t, p.kubeconfig)) {
		t.Fatal("no CA in the kubeconfig")
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	for _, path := range []string{"/api/v1/namespaces", "/api/v1/namespaces/default/configmaps", "/apis/apps/v1/deployments", "/apis"} {
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, p.url+path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without credentials: %d, want 401\n%s", path, resp.StatusCode, body)
			continue
		}
		var st metav1.Status
		if err := json.Unmarshal(body, &st); err != nil || st.Kind != "Status" || st.Reason != metav1.StatusReasonUnauthorized || st.Code != 401 {
			t.Errorf("GET %s: body %s, want a Status with reason Unauthorized and code 401", path, body)
		}
	}
	// A client certificate from a CA the server does not trust is refused with 401, as
	// kube-apiserver does (it requests client certificates and verifies them itself), not by
	// failing the TLS handshake, so clients can tell "not logged in" from "cannot connect".
	certPEM, keyPEM := foreignClientCert(t)
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	// Offered whatever CAs the server names, as client-go (so kubectl) does; Go's default would
	// withhold a certificate the server's CA list does not match.
	offer := func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	foreign := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, GetClientCertificate: offer}}}
	if resp, err := foreign.Get(p.url + "/api/v1/namespaces"); err != nil {
		t.Errorf("GET with a client certificate of another CA: %v; want an HTTP 401 Unauthorized", err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET with a client certificate of another CA: %d, want 401", resp.StatusCode)
		}
	}

	// A bearer token berth never issued is no credential either.
	req, _ := http.NewRequest(http.MethodGet, p.url+"/api/v1/namespaces", nil)
	req.Header.Set("Authorization", "Bearer not-a-token")
	if resp, err := client.Do(req); err != nil {
		t.Fatal(err)
	} else {
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET with a made-up bearer token: %d, want 401", resp.StatusCode)
		}
	}
}

// TestControllerLeaderElection: two servers on one etcd run one set of controllers, chosen
// through the Lease kube-system/berth-controller-manager; when the leader stops, the other
// takes over without waiting for the Lease to expire (it was given up).
func TestControllerLeaderElection(t *testing.T) {
	skipShort(t)
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		t.Skip("no etcd binary (scripts/install-deps.sh installs etcd-server)")
	}
	endpoint := startEtcd(t, etcdBin)
	a := startBerth(t, t.TempDir(), "--etcd-endpoints", endpoint)
	b := startBerth(t, t.TempDir(), "--etcd-endpoints", endpoint)
	cs := clientset(t, a.kubeconfig)
	ctx := testContext(t)

	const elected = "elected: running the controllers"
	holder := func() string {
		lease, err := cs.CoordinationV1().Leases("kube-system").Get(ctx, "berth-controller-manager", metav1.GetOptions{})
		if err != nil || lease.Spec.HolderIdentity == nil {
			return ""
		}
		return *lease.Spec.HolderIdentity
	}
	var first string
	waitUntil(t, 30*time.Second, "a controller manager holds the Lease", func() bool {
		first = holder()
		return first != "" && (strings.Contains(a.logs.String(), elected) || strings.Contains(b.logs.String(), elected))
	})
	// Each server logs its own identity as identity=...; the other's only as leader=....
	leader, standby := a, b
	if !strings.Contains(a.logs.String(), "identity="+first) {
		leader, standby = b, a
	}
	if !strings.Contains(leader.logs.String(), elected) {
		t.Fatalf("the Lease names %s but that server did not log %q", first, elected)
	}
	// A few renewals later the standby still has not run the controllers.
	time.Sleep(3 * time.Second)
	if strings.Contains(standby.logs.String(), elected) {
		t.Fatalf("both servers run the controllers:\n%s", tail(standby.logs.String(), 20))
	}

	stopCleanly(t, leader)
	// The leader gave the Lease up, so the standby takes it within a few retry periods
	// (2 s each), well before the 15 s lease duration would run out.
	cs = clientset(t, standby.kubeconfig)
	waitUntil(t, 10*time.Second, "the standby takes over the Lease", func() bool {
		h := holder()
		return h != "" && h != first && strings.Contains(standby.logs.String(), elected)
	})
}

// waitUntil polls cond every 100 ms until it holds, failing the test after limit.
func waitUntil(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s", limit, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
