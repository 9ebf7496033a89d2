package agent_test

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/core/agent"
	"berth.dev/berth/core/dns"
	"berth.dev/berth/core/hosttest"
	"berth.dev/berth/core/internal/testserver"
)

// TestClusterDNSOnContainerd runs an agent with cluster DNS on containerd: a ClusterFirst
// pod's /etc/resolv.conf names the kube-dns ClusterIP with the cluster's search path; the
// agent's DNS server, listening on the pod bridge's gateway, answers the pod's nslookup of
// a Service with its ClusterIP; and the pod, made after the Service, has its environment
// variables and the kubernetes Service's.
func TestClusterDNSOnContainerd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containerd, real containers and an API server")
	}
	hosttest.RequireHost(t)
	dir := t.TempDir()
	srv := testserver.Start(t)
	kube := srv.Kube
	ctx := context.Background()

	// The API server makes default/kubernetes and kube-system/kube-dns by itself.
	var dnsIP string
	testserver.WaitForWithin(t, "default services", 20*time.Second, func() (bool, error) {
		k, err := kube.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		d, err := kube.CoreV1().Services(dns.ServiceNamespace).Get(ctx, dns.ServiceName, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if k.Spec.ClusterIP != "10.96.0.1" || d.Spec.ClusterIP != "10.96.0.10" {
			return false, fmt.Errorf("kubernetes at %s, kube-dns at %s", k.Spec.ClusterIP, d.Spec.ClusterIP)
		}
		dnsIP = d.Spec.ClusterIP
		return true, nil
	})

	cidr := hosttest.FreePodCIDR(t)
	rt := startContainerd(t, dir, cidr, fmt.Sprintf("berthdns%d", os.Getpid()%100000), srv.Logs)
	gateway := netip.MustParsePrefix(cidr).Addr().Next().String()
	// The host's resolvers as the agent sees them: loopback only, so that nothing the
	// server forwards leaves the machine.
	resolv := filepath.Join(dir, "resolv.conf")
	if err := os.WriteFile(resolv, []byte("nameserver 127.0.0.1\nsearch corp.example\noptions timeout:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	webapp, err := kube.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "webapp"},
		Spec: corev1.ServiceSpec{Selector: map[string]string{"app": "webapp"},
			Ports: []corev1.ServicePort{{Name: "http", Port: 80}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}

	const node = "node-dns"
	stopAgent := runAgent(t, agent.Config{
		Kube: kube, NodeName: node, RuntimeEndpoint: rt.Endpoint, DataDir: filepath.Join(dir, "agent"),
		PodCIDR: cidr, Log: srv.Log.With("component", "agent"), NodeIP: "127.0.0.1",
		ClusterDNS: []string{dnsIP}, ResolvConf: resolv, DNSListen: []string{net.JoinHostPort(gateway, "53")},
	})
	t.Cleanup(func() {
		stopAgent()
		// The node's kube-dns endpoint goes with the agent.
		if _, err := kube.DiscoveryV1().EndpointSlices(dns.ServiceNamespace).Get(ctx, dns.SliceName(node), metav1.GetOptions{}); err == nil {
			t.Errorf("EndpointSlice %s left behind", dns.SliceName(node))
		}
	})

	// The node publishes its DNS server in kube-dns.
	testserver.WaitForWithin(t, "kube-dns endpoint of the node", 30*time.Second, func() (bool, error) {
		s, err := kube.DiscoveryV1().EndpointSlices(dns.ServiceNamespace).Get(ctx, dns.SliceName(node), metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return len(s.Endpoints) == 1 && s.Endpoints[0].Addresses[0] == gateway && *s.Ports[0].Port == 53, fmt.Errorf("slice %+v", s)
	})

	pod := busyboxPod("dnsclient", node, corev1.RestartPolicyAlways, "sleep", "3600")
	pod.Spec.DNSPolicy = corev1.DNSClusterFirst
	if _, err := kube.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var container string
	testserver.WaitForWithin(t, "dnsclient Running", 60*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(ctx, "dnsclient", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) != 1 {
			return false, fmt.Errorf("status %+v", p.Status)
		}
		container = strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
		return true, nil
	})

	got := strings.Fields(strings.ReplaceAll(rt.exec(t, container, "cat", "/etc/resolv.conf"), "\n", " | "))
	want := strings.Fields("search default.svc.cluster.local svc.cluster.local cluster.local corp.example | nameserver " + dnsIP + " | options ndots:5 |")
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("/etc/resolv.conf:\n got  %s\n want %s", strings.Join(got, " "), strings.Join(want, " "))
	}

	out := rt.exec(t, container, "nslookup", "webapp.default.svc.cluster.local", gateway)
	if !strings.Contains(out, "Address: "+webapp.Spec.ClusterIP) {
		t.Errorf("nslookup webapp.default.svc.cluster.local %s:\n%s\nwant the ClusterIP %s", gateway, out, webapp.Spec.ClusterIP)
	}
	out = rt.exec(t, container, "sh", "-c", "echo $WEBAPP_SERVICE_HOST $WEBAPP_SERVICE_PORT_HTTP $KUBERNETES_SERVICE_HOST $KUBERNETES_PORT")
	if want := webapp.Spec.ClusterIP + " 80 10.96.0.1 tcp://10.96.0.1:443"; strings.TrimSpace(out) != want {
		t.Errorf("service env %q, want %q", strings.TrimSpace(out), want)
	}
}
