package integration

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"berth.dev/berth/core/apiserver"
)

// TestServiceAddresses: ClusterIPs and NodePorts are allocated at create, refused clearly
// when taken or out of range, freed at once when their Service goes or changes type, kept
// across a restart, and never leaked by a dry run or a refused create.
func TestServiceAddresses(t *testing.T) {
	skipShort(t)
	dir := t.TempDir()
	// A /24 keeps .1-.16 for asked-for addresses (the static subrange): random picks take
	// others first, so the fixed .5 and .6 below never collide with them.
	ranges := apiserver.ServiceRanges{ClusterIPs: netip.MustParsePrefix("10.100.0.0/24"), NodePortFirst: 30000, NodePortLast: 30004}
	start := func() (*apiserver.Server, context.CancelFunc) {
		ctx, cancel := context.WithCancel(suite.ctx)
		srv, err := apiserver.Start(ctx, apiserver.Config{DataDir: dir, Port: 0, Logger: quietLogger(), ServiceRanges: ranges})
		if err != nil {
			cancel()
			t.Fatal(err)
		}
		return srv, cancel
	}
	srv, stop := start()
	cs := clientset(t, srv.Kubeconfig)
	ctx := testContext(t)
	ns := createNamespace(t, cs, "svc")
	svcs := cs.CoreV1().Services(ns)
	service := func(name string, typ corev1.ServiceType, clusterIP string, nodePort int32) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{
			Type: typ, ClusterIP: clusterIP, Selector: map[string]string{"app": name},
			Ports: []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080), NodePort: nodePort}},
		}}
	}
	create := func(s *corev1.Service) (*corev1.Service, error) { return svcs.Create(ctx, s, metav1.CreateOptions{}) }
	mustCreate := func(s *corev1.Service) *corev1.Service {
		t.Helper()
		got, err := create(s)
		if err != nil {
			t.Fatalf("create service %s: %v", s.Name, err)
		}
		return got
	}
	wantInvalid := func(err error, what, msg string) {
		t.Helper()
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), msg) {
			t.Errorf("%s: %v; want 422 Invalid saying %q", what, err, msg)
		}
	}

	a := mustCreate(service("a", corev1.ServiceTypeClusterIP, "", 0))
	ip, err := netip.ParseAddr(a.Spec.ClusterIP)
	if err != nil || !ranges.ClusterIPs.Contains(ip) || len(a.Spec.ClusterIPs) != 1 || a.Spec.ClusterIPs[0] != a.Spec.ClusterIP {
		t.Errorf("ClusterIP %q, clusterIPs %v; want one address of %s", a.Spec.ClusterIP, a.Spec.ClusterIPs, ranges.ClusterIPs)
	}
	if len(a.Spec.IPFamilies) != 1 || a.Spec.IPFamilies[0] != corev1.IPv4Protocol || a.Spec.IPFamilyPolicy == nil || *a.Spec.IPFamilyPolicy != corev1.IPFamilyPolicySingleStack {
		t.Errorf("ipFamilies %v, policy %v; want [IPv4] SingleStack", a.Spec.IPFamilies, a.Spec.IPFamilyPolicy)
	}
	n := mustCreate(service("n", corev1.ServiceTypeNodePort, "", 0))
	if p := n.Spec.Ports[0].NodePort; p < 30000 || p > 30004 {
		t.Errorf("nodePort %d, want one of 30000-30004", p)
	}
	if h := mustCreate(service("h", corev1.ServiceTypeClusterIP, corev1.ClusterIPNone, 0)); h.Spec.ClusterIP != corev1.ClusterIPNone {
		t.Errorf("headless service got ClusterIP %q", h.Spec.ClusterIP)
	}
	ext := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ext"}, Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.com"}}
	if e := mustCreate(ext); e.Spec.ClusterIP != "" {
		t.Errorf("ExternalName service got ClusterIP %q", e.Spec.ClusterIP)
	}

	// Taken, out of range, and a dry run that must not keep what it showed.
	_, err = create(service("a2", corev1.ServiceTypeClusterIP, a.Spec.ClusterIP, 0))
	wantInvalid(err, "a taken ClusterIP", "provided IP is already allocated")
	_, err = create(service("far", corev1.ServiceTypeClusterIP, "10.200.0.1", 0))
	wantInvalid(err, "a ClusterIP out of range", "is not in the valid range")
	_, err = create(service("n2", corev1.ServiceTypeNodePort, "", n.Spec.Ports[0].NodePort))
	wantInvalid(err, "a taken nodePort", "provided port is already allocated")
	_, err = create(service("n3", corev1.ServiceTypeNodePort, "", 31000))
	wantInvalid(err, "a nodePort out of range", "The range of valid ports is 30000-30004")
	dry, err := svcs.Create(ctx, service("dry", corev1.ServiceTypeClusterIP, "10.100.0.5", 0), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil || dry.Spec.ClusterIP != "10.100.0.5" {
		t.Fatalf("dry run: %v, ClusterIP %q", err, dry.Spec.ClusterIP)
	}
	mustCreate(service("static", corev1.ServiceTypeClusterIP, "10.100.0.5", 0)) // the dry run kept nothing

	// A refused create (invalid: no ports) keeps nothing either.
	bad := service("bad", corev1.ServiceTypeClusterIP, "10.100.0.6", 0)
	bad.Spec.Ports = nil
	if _, err := create(bad); !apierrors.IsInvalid(err) {
		t.Fatalf("a service without ports: %v, want Invalid", err)
	}
	mustCreate(service("six", corev1.ServiceTypeClusterIP, "10.100.0.6", 0))

	// Deleting frees at once; changing type from NodePort gives the port back.
	if err := svcs.Delete(ctx, "a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	mustCreate(service("a3", corev1.ServiceTypeClusterIP, a.Spec.ClusterIP, 0))
	cur, err := svcs.Get(ctx, "n", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	port := cur.Spec.Ports[0].NodePort
	patched, err := svcs.Patch(ctx, "n", types.MergePatchType, []byte(`{"spec":{"type":"ClusterIP"}}`), metav1.PatchOptions{})
	if err != nil {
		t.Fatalf("NodePort -> ClusterIP: %v", err)
	}
	if patched.Spec.Ports[0].NodePort != 0 || patched.Spec.ClusterIP != cur.Spec.ClusterIP {
		t.Errorf("after the type change: nodePort %d, ClusterIP %s; want 0 and the same %s", patched.Spec.Ports[0].NodePort, patched.Spec.ClusterIP, cur.Spec.ClusterIP)
	}
	mustCreate(service("n4", corev1.ServiceTypeNodePort, "", port))

	// The NodePort range holds five ports: fill it, and the next create says it is full.
	for i := 0; ; i++ {
		_, err := create(service(fmt.Sprintf("fill%d", i), corev1.ServiceTypeNodePort, "", 0))
		if err == nil {
			continue
		}
		if !strings.Contains(err.Error(), "range is full") || i != 4 {
			t.Errorf("create %d in a 5-port range: %v; want the fifth to fail with `range is full`", i, err)
		}
		break
	}

	// After a restart the claims stand: a taken address is still refused.
	stop()
	if err := srv.Wait(); err != nil {
		t.Fatalf("server stopped with: %v", err)
	}
	srv, stop = start()
	defer func() { stop(); _ = srv.Wait() }()
	svcs = clientset(t, srv.Kubeconfig).CoreV1().Services(ns)
	_, err = svcs.Create(ctx, service("again", corev1.ServiceTypeClusterIP, "10.100.0.5", 0), metav1.CreateOptions{})
	wantInvalid(err, "a ClusterIP taken before the restart", "provided IP is already allocated")
}
