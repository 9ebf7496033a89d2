package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/controllers/endpointslice"
	"berth.dev/berth/core/controllers/servicelb"
	"berth.dev/berth/core/hosttest"
	"berth.dev/berth/core/internal/testserver"
	"berth.dev/berth/core/proxy"
)

// TestProxyOnContainerd runs the proxy beside a real agent on a containerd of its own and
// the real API server: pods behind Services are reached through ClusterIPs, NodePorts
// (127.0.0.1 and the node's InternalIP) and a LoadBalancer ingress; scaling, rejection
// without endpoints, hairpin, session affinity and unassigned service addresses behave.
// Root only. Its table, route, rule and bridge are its own and removed at the end.
func TestProxyOnContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containerd, real containers and an API server")
	}
	hosttest.RequireHost(t)
	start := time.Now()
	step := func(what string) { t.Logf("%5.1fs %s", time.Since(start).Seconds(), what) }
	dir := t.TempDir()
	srv := testserver.Start(t)
	kube, log := srv.Kube, srv.Log
	ctx := context.Background()

	factory := srv.Informers()
	esc, err := endpointslice.New(kube, factory, endpointslice.Options{Log: log.With("controller", "endpointslice")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, factory, esc)
	factory2 := srv.Informers()
	lbc, err := servicelb.New(kube, factory2, servicelb.Options{Log: log.With("controller", "servicelb")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, factory2, lbc)

	cidr := hosttest.FreePodCIDR(t)
	bridge := fmt.Sprintf("berthpx%d", os.Getpid()%100000)
	rt := startContainerd(t, dir, cidr, bridge, srv.Logs)
	const node = "node-proxy-e2e"
	actx, stopAgent := context.WithCancel(ctx)
	a, err := agent.New(agent.Config{Kube: kube, NodeName: node, RuntimeEndpoint: rt.Endpoint,
		DataDir: filepath.Join(dir, "agent"), PodCIDR: cidr, Log: log.With("component", "agent")})
	if err != nil {
		t.Fatal(err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(actx) }()
	t.Cleanup(func() {
		stopAgent()
		if err := <-agentDone; err != nil {
			t.Errorf("agent: %v", err)
		}
	})

	// The proxy, on a table, routing table and rule priority of this test's own.
	if old, err := os.ReadFile("/proc/sys/net/ipv4/conf/all/route_localnet"); err == nil {
		t.Cleanup(func() { _ = os.WriteFile("/proc/sys/net/ipv4/conf/all/route_localnet", old, 0o644) })
	}
	pcfg := proxy.Config{
		Kube: kube, NodeName: node, ServiceCIDR: netip.MustParsePrefix(proxy.DefaultServiceCIDR),
		ClusterCIDR: netip.MustParsePrefix(cidr), TableName: fmt.Sprintf("berth-proxy-e2e%d", os.Getpid()),
		RouteTable: 0xbe00 + os.Getpid()%200, RulePriority: 31000 + os.Getpid()%700, Log: log.With("component", "proxy"),
	}
	p, err := proxy.New(pcfg)
	if err != nil {
		t.Fatal(err)
	}
	pctx, stopProxy := context.WithCancel(ctx)
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- p.Run(pctx) }()
	t.Cleanup(func() {
		stopProxy()
		if err := <-proxyDone; err != nil {
			t.Errorf("proxy: %v", err)
		}
		if err := proxy.Cleanup(pcfg); err != nil {
			t.Errorf("proxy cleanup: %v", err)
		}
	})

	var nodeIP string
	testserver.WaitForWithin(t, "node Ready with an InternalIP", 30*time.Second, func() (bool, error) {
		n, err := kube.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, ad := range n.Status.Addresses {
			if ad.Type == corev1.NodeInternalIP {
				nodeIP = ad.Address
			}
		}
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				return nodeIP != "", nil
			}
		}
		return false, nil
	})
	step("node Ready, proxy running")

	for _, name := range []string{"web-1", "web-2"} {
		createPod(t, kube, webPod(name, node))
	}
	createPod(t, kube, busyboxPod("client", node, map[string]string{"app": "client"}, "sleep", "3600"))
	web := createService(t, kube, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "default"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeLoadBalancer, Selector: map[string]string{"app": "web"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	})
	sticky := createService(t, kube, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "sticky", Namespace: "default"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "web"}, SessionAffinity: corev1.ServiceAffinityClientIP,
			Ports: []corev1.ServicePort{{Port: 81, TargetPort: intstr.FromInt32(8080)}}},
	})
	empty := createService(t, kube, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "empty", Namespace: "default"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "nothing"},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}}},
	})
	clientID := waitRunning(t, kube, "client")
	web1ID := waitRunning(t, kube, "web-1")
	waitRunning(t, kube, "web-2")
	step("pods running, services created")

	// ClusterIP: both pods answer, over several tries.
	url := fmt.Sprintf("http://%s/hostname", web.Spec.ClusterIP)
	seen := map[string]int{}
	testserver.WaitForWithin(t, "both endpoints through the ClusterIP", 30*time.Second, func() (bool, error) {
		out, code := rt.httpGet(clientID, url)
		if code == 0 {
			seen[strings.TrimSpace(out)]++
		}
		return seen["web-1"] > 0 && seen["web-2"] > 0, fmt.Errorf("answers %v, last exit %d: %s", seen, code, out)
	})
	step(fmt.Sprintf("ClusterIP reaches both pods: %v", seen))

	// NodePort on 127.0.0.1 and the node's InternalIP, from the host.
	np := web.Spec.Ports[0].NodePort
	for _, host := range []string{"127.0.0.1", nodeIP} {
		u := fmt.Sprintf("http://%s/hostname", net.JoinHostPort(host, fmt.Sprint(np)))
		testserver.WaitForWithin(t, "NodePort "+u, 15*time.Second, func() (bool, error) {
			body, err := httpGet(u)
			return err == nil && strings.HasPrefix(body, "web-"), err
		})
	}
	step("NodePort answers on 127.0.0.1 and " + nodeIP)

	// LoadBalancer: servicelb publishes the node's InternalIP, which serves port 80.
	testserver.WaitForWithin(t, "load balancer ingress", 15*time.Second, func() (bool, error) {
		s, err := kube.CoreV1().Services("default").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		in := s.Status.LoadBalancer.Ingress
		return len(in) == 1 && in[0].IP == nodeIP, fmt.Errorf("ingress %+v", in)
	})
	lbURL := fmt.Sprintf("http://%s/hostname", net.JoinHostPort(nodeIP, "80"))
	testserver.WaitForWithin(t, "LoadBalancer ingress "+lbURL, 15*time.Second, func() (bool, error) {
		body, err := httpGet(lbURL)
		return err == nil && strings.HasPrefix(body, "web-"), err
	})
	step("LoadBalancer ingress answers")

	// Hairpin: a pod reaches itself through its Service.
	self := 0
	for range 12 {
		out, code := rt.httpGet(web1ID, url)
		if code != 0 {
			t.Errorf("hairpin from web-1: exit %d: %s", code, out)
			break
		}
		if strings.TrimSpace(out) == "web-1" {
			self++
		}
	}
	if self == 0 {
		t.Errorf("web-1 never reached itself through the Service in 12 tries")
	}
	step(fmt.Sprintf("hairpin: web-1 reached itself %d times in 12", self))

	// Session affinity: every try from the client lands on the same pod.
	stickyURL := fmt.Sprintf("http://%s:81/hostname", sticky.Spec.ClusterIP)
	got := map[string]int{}
	for range 8 {
		out, code := rt.httpGet(clientID, stickyURL)
		if code != 0 {
			t.Errorf("sticky service: exit %d: %s", code, out)
			break
		}
		got[strings.TrimSpace(out)]++
	}
	if len(got) != 1 {
		t.Errorf("sessionAffinity ClientIP: answers from %v, want one pod", got)
	}
	step(fmt.Sprintf("session affinity holds: %v", got))

	// No endpoints: refused at once.
	began := time.Now()
	out, code := rt.execCode(clientID, "nc", "-w", "5", empty.Spec.ClusterIP, "80")
	if took := time.Since(began); code == 0 || took > time.Second {
		t.Errorf("service without endpoints: exit %d after %v: %s", code, took, out)
	} else {
		step(fmt.Sprintf("no endpoints: refused in %v: %s", took.Round(time.Millisecond), strings.TrimSpace(out)))
	}

	// An unassigned service address fails at once, from a pod and from the host. Sent only
	// once the route and the reject rule are known to be there, so nothing leaves the node.
	unassigned := unassignedServiceIP(t, kube)
	requireServiceRoute(t, pcfg)
	began = time.Now()
	out, code = rt.execCode(clientID, "nc", "-w", "5", unassigned, "80")
	if took := time.Since(began); code == 0 || took > time.Second {
		t.Errorf("unassigned service IP from a pod: exit %d after %v: %s", code, took, out)
	} else {
		step(fmt.Sprintf("unassigned %s from a pod: failed in %v: %s", unassigned, took.Round(time.Millisecond), strings.TrimSpace(out)))
	}
	began = time.Now()
	if c, err := net.DialTimeout("tcp", unassigned+":80", 5*time.Second); err == nil {
		c.Close()
		t.Errorf("unassigned service IP from the host: connected")
	} else if took := time.Since(began); took > time.Second {
		t.Errorf("unassigned service IP from the host: failed only after %v: %v", took, err)
	} else {
		step(fmt.Sprintf("unassigned %s from the host: failed in %v: %v", unassigned, took.Round(time.Millisecond), err))
	}

	// Scaling: a third pod is in the kernel's rules within a second of its endpoint.
	createPod(t, kube, webPod("web-3", node))
	waitRunning(t, kube, "web-3")
	var web3 string
	var published time.Time
	testserver.WaitForWithin(t, "web-3 in the EndpointSlice", 30*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, "web-3", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		web3 = p.Status.PodIP
		sl, err := kube.DiscoveryV1().EndpointSlices("default").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
		if err != nil {
			return false, err
		}
		for _, s := range sl.Items {
			for _, e := range s.Endpoints {
				if web3 != "" && len(e.Addresses) > 0 && e.Addresses[0] == web3 && (e.Conditions.Ready == nil || *e.Conditions.Ready) {
					published = time.Now()
					return true, nil
				}
			}
		}
		return false, nil
	})
	nft, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	chain := fmt.Sprintf("ep-default/web/tcp/80__%s:8080", web3)
	table := &nftables.Table{Name: pcfg.TableName, Family: nftables.TableFamilyIPv4}
	for {
		if _, err := nft.ListChain(table, chain); err == nil {
			break
		}
		if time.Since(published) > time.Second {
			t.Fatalf("chain %s not in the kernel a second after the endpoint was published", chain)
		}
		time.Sleep(5 * time.Millisecond)
	}
	step(fmt.Sprintf("scaled: web-3's rules in the kernel %v after its EndpointSlice was read", time.Since(published).Round(time.Millisecond)))
	seen = map[string]int{}
	testserver.WaitForWithin(t, "web-3 through the ClusterIP", 30*time.Second, func() (bool, error) {
		out, code := rt.httpGet(clientID, url)
		if code == 0 {
			seen[strings.TrimSpace(out)]++
		}
		return seen["web-3"] > 0, fmt.Errorf("answers %v", seen)
	})
	step("web-3 answers through the ClusterIP")
}

func httpGet(u string) (string, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}
