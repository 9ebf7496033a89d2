package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/agent/containerd"
	"berth.dev/berth/core/agent/images"
	"berth.dev/berth/core/hosttest"
	"berth.dev/berth/core/internal/testserver"
	"berth.dev/berth/core/proxy"
)

// testRuntime is the containerd the test started, with a CRI client of its own.
type testRuntime struct{ *hosttest.Containerd }

// startContainerd starts containerd with a CNI bridge of the test's own and imports
// berth's images; hosttest.StartContainerd's cleanup removes everything at the end.
func startContainerd(t *testing.T, dir, cidr, bridge string, logs io.Writer) *testRuntime {
	t.Helper()
	return &testRuntime{hosttest.StartContainerd(t, dir, containerd.Config{PodCIDR: cidr, Bridge: bridge, Output: logs})}
}

// execCode runs cmd in a container and returns its output (stdout and stderr) and exit code.
func (rt *testRuntime) execCode(id string, cmd ...string) (string, int32) {
	resp, err := rt.Runtime.ExecSync(context.Background(), &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 10})
	if err != nil {
		return err.Error(), -1
	}
	return string(resp.Stdout) + string(resp.Stderr), resp.ExitCode
}

// httpGet fetches url ("http://host:port/path") from inside a container with busybox nc
// (busybox's static wget crashes on these machines) and returns the body, trimmed.
func (rt *testRuntime) httpGet(id, url string) (string, int32) {
	hostPort, path, _ := strings.Cut(strings.TrimPrefix(url, "http://"), "/")
	host, port, err := net.SplitHostPort(hostPort)
	if err != nil {
		host, port = hostPort, "80"
	}
	out, code := rt.execCode(id, "sh", "-c", fmt.Sprintf(`printf 'GET /%s HTTP/1.0\r\n\r\n' | nc -w 2 %s %s`, path, host, port))
	if code != 0 {
		return out, code
	}
	_, body, ok := strings.Cut(out, "\r\n\r\n")
	if !ok {
		return out, 1
	}
	return strings.TrimSpace(body), 0
}

func busyboxPod(name, node string, labels map[string]string, command ...string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: labels},
		Spec: corev1.PodSpec{
			NodeName: node, TerminationGracePeriodSeconds: ptr.To[int64](1),
			Containers: []corev1.Container{{
				Name: "main", Image: images.BusyboxRef, Command: command, ImagePullPolicy: corev1.PullIfNotPresent,
				Env: []corev1.EnvVar{{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}}},
			}},
		},
	}
}

// webPod serves its name at /hostname on port 8080 with busybox httpd.
func webPod(name, node string) *corev1.Pod {
	return busyboxPod(name, node, map[string]string{"app": "web"},
		"sh", "-c", `mkdir -p /www && echo "$POD_NAME" > /www/hostname && exec httpd -f -p 8080 -h /www`)
}

func createPod(t *testing.T, kube kubernetes.Interface, p *corev1.Pod) *corev1.Pod {
	t.Helper()
	p, err := kube.CoreV1().Pods("default").Create(context.Background(), p, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func createService(t *testing.T, kube kubernetes.Interface, s *corev1.Service) *corev1.Service {
	t.Helper()
	s, err := kube.CoreV1().Services("default").Create(context.Background(), s, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// waitRunning waits for the pod to be Running and Ready and returns its container's ID.
func waitRunning(t *testing.T, kube kubernetes.Interface, name string) string {
	t.Helper()
	var id string
	testserver.WaitForWithin(t, name+" Running and Ready", 60*time.Second, func() (bool, error) {
		p, err := kube.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		ready := false
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady {
				ready = c.Status == corev1.ConditionTrue
			}
		}
		if len(p.Status.ContainerStatuses) == 1 {
			id = strings.TrimPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
		}
		return ready && id != "" && p.Status.PodIP != "", fmt.Errorf("phase %s", p.Status.Phase)
	})
	return id
}

// unassignedServiceIP is an address of the service range that no Service of the test's
// API server holds.
func unassignedServiceIP(t *testing.T, kube kubernetes.Interface) string {
	t.Helper()
	svcs, err := kube.CoreV1().Services("").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	used := map[string]bool{}
	for _, s := range svcs.Items {
		used[s.Spec.ClusterIP] = true
	}
	for i := 200; i < 250; i++ {
		ip := fmt.Sprintf("10.111.%d.%d", i, i)
		if !used[ip] {
			return ip
		}
	}
	t.Fatal("no unassigned service IP")
	return ""
}

// requireServiceRoute fails the test unless the unreachable route of the service range is
// in the proxy's routing table, with the rule that consults it.
func requireServiceRoute(t *testing.T, cfg proxy.Config) {
	t.Helper()
	routes, err := netlink.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: cfg.RouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range routes {
		if r.Type == unix.RTN_UNREACHABLE && r.Dst != nil && r.Dst.String() == cfg.ServiceCIDR.String() {
			found = true
		}
	}
	if !found {
		t.Fatalf("no unreachable route for %s in table %d: %v", cfg.ServiceCIDR, cfg.RouteTable, routes)
	}
	rules, err := netlink.RuleListFiltered(unix.AF_INET, &netlink.Rule{Table: cfg.RouteTable}, netlink.RT_FILTER_TABLE)
	if err != nil || len(rules) == 0 {
		t.Fatalf("no routing rule for table %d: %v", cfg.RouteTable, err)
	}
}
