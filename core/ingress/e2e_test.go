package ingress_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/core/controllers/deployment"
	"berth.dev/berth/core/controllers/endpointslice"
	"berth.dev/berth/core/controllers/replicaset"
	"berth.dev/berth/core/hosttest"
	"berth.dev/berth/core/ingress"
	"berth.dev/berth/core/internal/testserver"
)

// TestIngressOnContainerd runs the controller with the real pieces: the API server, the
// Deployment, ReplicaSet and EndpointSlice controllers, an agent on a containerd of the
// test's own, and a Deployment of berth's test server (2 replicas, readiness on /healthz)
// behind a Service and an Ingress of the default class "berth". From the host, on
// 127.0.0.1: a host rule round robin over both pods, a host-less Exact rule, 404 for what
// no rule matches, HTTPS with the certificate of a TLS Secret chosen by SNI, the node's
// address in the Ingress's status, a third replica in the rotation within a second of
// being Ready, an Ingress edit served within a second, and 503 once the Service is gone.
// Root only.
func TestIngressOnContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds berth-testserver, starts containerd, real containers and an API server")
	}
	hosttest.RequireHost(t)
	start := time.Now()
	step := func(what string) { t.Logf("%5.1fs %s", time.Since(start).Seconds(), what) }
	dir := t.TempDir()
	ctx := context.Background()

	bin := filepath.Join(dir, images.TestserverBinaryName)
	build := exec.Command("go", "build", "-o", bin, "berth.dev/berth/cmd/berth-testserver")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build berth-testserver: %v\n%s", err, out)
	}
	tarballs, err := images.BuildTestserver(filepath.Join(dir, "testserver-images"), bin)
	if err != nil {
		t.Fatal(err)
	}

	srv := testserver.Start(t)
	kube, log := srv.Kube, srv.Log
	f1 := srv.Informers()
	esc, err := endpointslice.New(kube, f1, endpointslice.Options{Log: log.With("controller", "endpointslice")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, f1, esc)
	f2 := srv.Informers()
	rsc, err := replicaset.New(kube, f2, replicaset.Options{Log: log.With("controller", "replicaset")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, f2, rsc)
	f3 := srv.Informers()
	dc, err := deployment.New(kube, f3, deployment.Options{Log: log.With("controller", "deployment")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, f3, dc)

	cidr := hosttest.FreePodCIDR(t)
	rt := hosttest.StartContainerd(t, dir, containerd.Config{PodCIDR: cidr, Bridge: fmt.Sprintf("berthin%d", os.Getpid()%100000), Output: srv.Logs}, tarballs...)
	const node = "node-ingress-e2e"
	a, err := agent.New(agent.Config{Kube: kube, NodeName: node, RuntimeEndpoint: rt.Endpoint,
		DataDir: filepath.Join(dir, "agent"), PodCIDR: cidr, Log: log.With("component", "agent")})
	if err != nil {
		t.Fatal(err)
	}
	actx, stopAgent := context.WithCancel(ctx)
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(actx) }()
	t.Cleanup(func() {
		stopAgent()
		if err := <-agentDone; err != nil {
			t.Errorf("agent: %v", err)
		}
	})

	httpPort, httpsPort := freePort(t), freePort(t)
	c, err := ingress.New(ingress.Config{Kube: kube, NodeName: node, HTTPAddr: fmt.Sprintf(":%d", httpPort),
		HTTPSAddr: fmt.Sprintf(":%d", httpsPort), Log: log.With("component", "ingress")})
	if err != nil {
		t.Fatal(err)
	}
	ictx, stopIngress := context.WithCancel(ctx)
	ingressDone := make(chan error, 1)
	go func() { ingressDone <- c.Run(ictx) }()
	t.Cleanup(func() {
		stopIngress()
		if err := <-ingressDone; err != nil {
			t.Errorf("ingress: %v", err)
		}
	})
	if err := ingress.EnsureDefaultClass(ctx, kube, log); err != nil {
		t.Fatal(err)
	}

	secret, cert := selfSigned(t, "web-tls", "web.example.com")
	if _, err := kube.CoreV1().Secrets("default").Create(ctx, secret, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	dep := testserverDeployment("web", node, 2)
	if _, err := kube.AppsV1().Deployments("default").Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := kube.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http")}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	prefix, exact := networkingv1.PathTypePrefix, networkingv1.PathTypeExact
	backend := func(port networkingv1.ServiceBackendPort) networkingv1.IngressBackend {
		return networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{Name: "web", Port: port}}
	}
	ing := &networkingv1.Ingress{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: networkingv1.IngressSpec{ // no class: "berth" is the default
			TLS: []networkingv1.IngressTLS{{Hosts: []string{"web.example.com"}, SecretName: "web-tls"}},
			Rules: []networkingv1.IngressRule{
				{Host: "web.example.com", IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
					Paths: []networkingv1.HTTPIngressPath{{Path: "/hostname", PathType: &prefix, Backend: backend(networkingv1.ServiceBackendPort{Name: "http"})}},
				}}},
				{IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
					Paths: []networkingv1.HTTPIngressPath{{Path: "/version", PathType: &exact, Backend: backend(networkingv1.ServiceBackendPort{Number: 80})}},
				}}},
			},
		},
	}
	if _, err := kube.NetworkingV1().Ingresses("default").Create(ctx, ing, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pods := waitReadyPods(t, kube, 2, 90*time.Second)
	step(fmt.Sprintf("node, controller and 2 ready pods %v", pods))

	httpURL := func(path string) string { return fmt.Sprintf("http://127.0.0.1:%d%s", httpPort, path) }
	var seen map[string]int
	testserver.WaitForWithin(t, "both pods answering web.example.com/hostname", 10*time.Second, func() (bool, error) {
		seen = map[string]int{}
		for range 4 {
			code, body, err := get(http.DefaultClient, httpURL("/hostname"), "web.example.com")
			if err != nil || code != 200 {
				return false, fmt.Errorf("%d %q %v", code, body, err)
			}
			seen[body]++
		}
		return seen[pods[0]] == 2 && seen[pods[1]] == 2, fmt.Errorf("answers %v", seen)
	})
	step("round robin over both pods")
	if code, body, err := get(http.DefaultClient, httpURL("/version"), "any.host"); err != nil || code != 200 || body != "1.0" {
		t.Errorf("host-less Exact /version: %d %q %v; want 200 1.0", code, body, err)
	}
	for _, tc := range []struct{ host, path string }{{"other.org", "/hostname"}, {"web.example.com", "/version/x"}, {"web.example.com", "/"}} {
		if code, body, err := get(http.DefaultClient, httpURL(tc.path), tc.host); err != nil || code != 404 {
			t.Errorf("Host %s %s: %d %q %v; want 404", tc.host, tc.path, code, body, err)
		}
	}

	roots := x509.NewCertPool()
	roots.AddCert(cert)
	tlsClient := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: "web.example.com"}}}
	testserver.WaitForWithin(t, "HTTPS with the Secret's certificate", 10*time.Second, func() (bool, error) {
		code, body, err := get(tlsClient, fmt.Sprintf("https://127.0.0.1:%d/hostname", httpsPort), "web.example.com")
		return err == nil && code == 200 && (body == pods[0] || body == pods[1]), fmt.Errorf("%d %q %v", code, body, err)
	})
	step("HTTPS by SNI")

	var nodeIP string
	testserver.WaitFor(t, "the node's InternalIP in the Ingress's status", func() (bool, error) {
		n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, ad := range n.Status.Addresses {
			if ad.Type == corev1.NodeInternalIP {
				nodeIP = ad.Address
			}
		}
		got, err := kube.NetworkingV1().Ingresses("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		lb := got.Status.LoadBalancer.Ingress
		return nodeIP != "" && len(lb) == 1 && lb[0].IP == nodeIP, fmt.Errorf("status %+v, node IP %q", lb, nodeIP)
	})

	// A third replica joins the rotation within a second of being Ready.
	if _, err := kube.AppsV1().Deployments("default").Patch(ctx, "web", types.MergePatchType, []byte(`{"spec":{"replicas":3}}`), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	all := waitReadyPods(t, kube, 3, 60*time.Second)
	ready := time.Now()
	third := ""
	for _, p := range all {
		if p != pods[0] && p != pods[1] {
			third = p
		}
	}
	testserver.WaitForWithin(t, "the third pod "+third+" in the rotation", 5*time.Second, func() (bool, error) {
		_, body, err := get(http.DefaultClient, httpURL("/hostname"), "web.example.com")
		return body == third, err
	})
	if d := time.Since(ready); d > time.Second {
		t.Errorf("the third pod answered %v after the test saw it Ready; want within a second", d)
	}
	step(fmt.Sprintf("third pod in rotation %v after Ready", time.Since(ready).Round(time.Millisecond)))

	// An edit of the Ingress is served within a second.
	got, err := kube.NetworkingV1().Ingresses("default").Get(ctx, "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got.Spec.Rules[0].HTTP.Paths = append(got.Spec.Rules[0].HTTP.Paths,
		networkingv1.HTTPIngressPath{Path: "/echo", PathType: &exact, Backend: backend(networkingv1.ServiceBackendPort{Number: 80})})
	if _, err := kube.NetworkingV1().Ingresses("default").Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	testserver.WaitForWithin(t, "the new path /echo", time.Second, func() (bool, error) {
		code, body, err := get(http.DefaultClient, httpURL("/echo?msg=hi"), "web.example.com")
		return code == 200 && body == "hi", fmt.Errorf("%d %q %v", code, body, err)
	})

	// Without the Service: 503 within a second.
	if err := kube.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	testserver.WaitForWithin(t, "503 without the Service", time.Second, func() (bool, error) {
		code, body, err := get(http.DefaultClient, httpURL("/hostname"), "web.example.com")
		return code == 503 && strings.Contains(body, "service default/web not found"), fmt.Errorf("%d %q %v", code, body, err)
	})
	step("edits served")
	if err := kube.AppsV1().Deployments("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
}

// testserverDeployment runs berth's test server (named port http, 8080) on node, Ready
// when /healthz answers.
func testserverDeployment(name, node string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(replicas),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeName: node, TerminationGracePeriodSeconds: ptr.To[int64](1),
					Containers: []corev1.Container{{
						Name: "web", Image: images.TestserverRef, ImagePullPolicy: corev1.PullIfNotPresent,
						Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}},
							PeriodSeconds: 1,
						},
					}},
				},
			},
		},
	}
}

// waitReadyPods waits for n Ready pods of app=web and returns their names.
func waitReadyPods(t *testing.T, kube kubernetes.Interface, n int, limit time.Duration) []string {
	t.Helper()
	var names []string
	testserver.WaitForWithin(t, fmt.Sprintf("%d ready pods", n), limit, func() (bool, error) {
		list, err := kube.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, err
		}
		names = nil
		for _, p := range list.Items {
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue && p.DeletionTimestamp == nil {
					names = append(names, p.Name)
				}
			}
		}
		return len(names) == n, fmt.Errorf("ready: %v", names)
	})
	return names
}

func get(client *http.Client, url, host string) (int, string, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	req.Host = host
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := client.Do(req.WithContext(ctx))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(body)), err
}

// freePort is a TCP port nothing listens on right now.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", ":0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	p, _ := strconv.Atoi(port)
	return p
}

// selfSigned makes a self-signed certificate for host and the kubernetes.io/tls Secret
// holding it.
func selfSigned(t *testing.T, name, host string) (*corev1.Secret, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: host},
		DNSNames: []string{host}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Type:       corev1.SecretTypeTLS,
		Data: map[string][]byte{
			corev1.TLSCertKey:       pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
			corev1.TLSPrivateKeyKey: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		},
	}, cert
}
