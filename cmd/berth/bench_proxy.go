package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/ptr"

	"berth.dev/berth/core/proxy"
)

// Targets of issue 6 for the proxy.
const (
	targetProxyP99      = 200 * time.Millisecond
	targetProxyAddedP50 = 50 * time.Microsecond
)

// The bench's own address range (RFC 2544's benchmarking range): endpoints of the 1,000
// Services are fake addresses of 198.18.0.0/16, which no packet is sent to; the latency
// endpoint lives in a network namespace of the bench's own, on a veth of 198.19.255.0/30.
const (
	benchProxyHostAddr = "198.19.255.1/30"
	benchProxyNSAddr   = "198.19.255.2"
)

type proxyBenchOptions struct {
	services, endpoints, changes, roundTrips int
	binary                                   string
	startTimeout                             time.Duration
}

func newBenchProxyCommand() *cobra.Command {
	var o proxyBenchOptions
	cmd := &cobra.Command{
		Use:   "proxy",
		Short: "Measure the node proxy: EndpointSlice change to kernel rules (p99), and the latency the ClusterIP path adds",
		Long: `Start "berth server" (no controllers) on a temporary data dir as a child process, create
--services ClusterIP Services with --endpoints endpoints in all (fake addresses of
198.18.0.0/16: rules are programmed, no packet goes there) and run the node proxy in this
process on a table of its own (berth-proxy-bench). Then change one EndpointSlice at a
time (--changes times: one endpoint replaced by a new address) and measure the time from
the update call to the new endpoint's chain being in the kernel, read back through netlink
(polled every 0.5 ms); the proxy's own sync times are printed too.

Then measure the latency the ClusterIP path adds: a TCP echo server in a network namespace
of the bench's own (veth 198.19.255.1 <-> 198.19.255.2), reached --round-trips times over a
new connection each (connect, 1 byte each way, close), once at its address and once
through a ClusterIP Service; the difference of the medians is what DNAT and masquerade
add. Needs root. The table, the namespace and the veth are removed at the end.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return errors.New("bench proxy programs nftables and creates a network namespace: run it as root")
			}
			if o.binary == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find the berth binary to start (use --binary): %w", err)
				}
				o.binary = exe
			}
			if o.services < 1 || o.endpoints < o.services || o.changes < 1 {
				return errors.New("--services must be at least 1, --endpoints at least --services, --changes at least 1")
			}
			return runProxyBench(cmd.Context(), o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.services, "services", 1000, "how many Services")
	f.IntVar(&o.endpoints, "endpoints", 10000, "how many endpoints over all Services")
	f.IntVar(&o.changes, "changes", 200, "how many EndpointSlice changes to time")
	f.IntVar(&o.roundTrips, "round-trips", 2000, "connections per path for the latency figure")
	f.StringVar(&o.binary, "binary", "", "berth binary whose server command is started (default: this binary)")
	f.DurationVar(&o.startTimeout, "start-timeout", time.Minute, "how long to wait for the API server to answer")
	return cmd
}

func runProxyBench(ctx context.Context, o proxyBenchOptions, out, logw io.Writer) (err error) {
	dir, err := os.MkdirTemp("", "berth-bench-proxy-")
	if err != nil {
		return fmt.Errorf("create temp data dir: %w", err)
	}
	defer os.RemoveAll(dir)
	machine := readMachineInfo()
	srv, err := startBenchServer(ctx, o.binary, dir, []string{"--controllers=false", "--scheduler=false"}, o.startTimeout)
	if err != nil {
		return err
	}
	defer func() {
		if serr := srv.stop(time.Minute); serr != nil && err == nil {
			err = serr
		}
		if err != nil {
			fmt.Fprintf(logw, "the end of the server's log:\n%s", srv.logTail(30))
		}
	}()
	kube, err := kubernetes.NewForConfig(srv.restConfig)
	if err != nil {
		return fmt.Errorf("build client: %w", err)
	}
	const ns = "default"

	fmt.Fprintf(logw, "creating %d Services with %d endpoints\n", o.services, o.endpoints)
	per := o.endpoints / o.services
	next := 0 // the next fake endpoint address
	fakeAddr := func() string {
		next++
		return fmt.Sprintf("198.18.%d.%d", next/250, 1+next%250)
	}
	slicesByName := make([]*discoveryv1.EndpointSlice, o.services)
	if err := parallel(ctx, o.services, func(i int) error {
		name := fmt.Sprintf("svc-%04d", i)
		svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}
		if _, err := kube.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create service %s: %w", name, err)
		}
		return nil
	}); err != nil {
		return err
	}
	for i := range o.services {
		var addrs []string
		for range per {
			addrs = append(addrs, fakeAddr())
		}
		slicesByName[i] = benchSlice(fmt.Sprintf("svc-%04d", i), 80, addrs...)
	}
	if err := parallel(ctx, o.services, func(i int) error {
		s, err := kube.DiscoveryV1().EndpointSlices(ns).Create(ctx, slicesByName[i], metav1.CreateOptions{})
		if err == nil {
			slicesByName[i] = s
		}
		return err
	}); err != nil {
		return fmt.Errorf("create endpointslices: %w", err)
	}

	// The proxy, on a table of the bench's own; routing and route_localnet left alone.
	syncs := make(chan proxy.SyncResult, 10000)
	pcfg := proxy.Config{
		Kube: kube, NodeName: "bench-node", ServiceCIDR: netip.MustParsePrefix(proxy.DefaultServiceCIDR),
		ClusterCIDR: netip.MustParsePrefix("10.244.0.0/16"), TableName: "berth-proxy-bench",
		NoRoute: true, NoLocalhostNodePorts: true, Log: slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelWarn})),
		OnSync: func(r proxy.SyncResult) {
			select {
			case syncs <- r:
			default:
			}
		},
	}
	_ = proxy.Cleanup(pcfg)
	p, err := proxy.New(pcfg)
	if err != nil {
		return err
	}
	pctx, stopProxy := context.WithCancel(ctx)
	proxyDone := make(chan error, 1)
	go func() { proxyDone <- p.Run(pctx) }()
	defer func() {
		stopProxy()
		err = errors.Join(err, <-proxyDone, proxy.Cleanup(pcfg))
	}()
	nft, err := nftables.New(nftables.AsLasting())
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer nft.CloseLasting()
	table := &nftables.Table{Name: pcfg.TableName, Family: nftables.TableFamilyIPv4}
	inKernel := func(chain string, limit time.Duration) (time.Duration, error) {
		start := time.Now()
		for {
			if _, err := nft.ListChain(table, chain); err == nil {
				return time.Since(start), nil
			}
			if time.Since(start) > limit {
				return 0, fmt.Errorf("chain %s not in the kernel after %v", chain, limit)
			}
			time.Sleep(500 * time.Microsecond)
		}
	}
	lastSlice := slicesByName[o.services-1]
	full, err := inKernel(fmt.Sprintf("ep-%s/%s/tcp/http__%s:80", ns, lastSlice.Labels[discoveryv1.LabelServiceName], lastSlice.Endpoints[per-1].Addresses[0]), 2*time.Minute)
	if err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	// The proxy reports its sync just after the batch is in; wait for that report.
	var fullSync proxy.SyncResult
	for fullSync.Changes == 0 {
		select {
		case fullSync = <-syncs:
		case <-time.After(10 * time.Second):
			return errors.New("the proxy reported no initial sync")
		}
	}
	time.Sleep(100 * time.Millisecond)
	for len(syncs) > 0 {
		<-syncs // syncs of the initial burst, not timed
	}
	fmt.Fprintf(logw, "initial sync in the kernel (%v after the proxy started); timing %d changes\n", full.Round(time.Millisecond), o.changes)

	var lat []time.Duration
	for i := range o.changes {
		s := slicesByName[(i*7919)%o.services]
		addr := fakeAddr()
		s.Endpoints[i%per].Addresses = []string{addr}
		start := time.Now()
		upd, err := kube.DiscoveryV1().EndpointSlices(ns).Update(ctx, s, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("update endpointslice %s: %w", s.Name, err)
		}
		slicesByName[(i*7919)%o.services] = upd
		if _, err := inKernel(fmt.Sprintf("ep-%s/%s/tcp/http__%s:80", ns, s.Labels[discoveryv1.LabelServiceName], addr), 10*time.Second); err != nil {
			return err
		}
		lat = append(lat, time.Since(start))
		time.Sleep(10 * time.Millisecond) // changes apart, so that each is timed on its own
	}
	var syncTimes []time.Duration
	for len(syncs) > 0 {
		if r := <-syncs; r.Changes > 0 {
			syncTimes = append(syncTimes, r.Duration)
		}
	}

	added, direct, viaService, err := proxyPathLatency(ctx, kube, nft, table, o.roundTrips)
	if err != nil {
		return err
	}

	line := func(k, v, tgt string) { fmt.Fprintf(out, "%-30s %-44s %s\n", k+":", v, tgt) }
	line("machine", fmt.Sprintf("%d CPUs, %s, %s memory, Linux %s", machine.CPUs, machine.CPUModel, gib(machine.MemoryBytes), machine.Kernel), "")
	line("load average", machine.LoadAvg+" (before the run)", "")
	line("cluster", fmt.Sprintf("%d Services, %d endpoints (berth server, no controllers)", o.services, per*o.services), "")
	line("initial full sync", fmt.Sprintf("%v in the kernel; the sync itself %v, %d objects", full.Round(time.Millisecond), fullSync.Duration.Round(time.Millisecond), fullSync.Changes), "")
	p50, p99 := proxyPercentile(lat, 50), proxyPercentile(lat, 99)
	line("slice change -> kernel", fmt.Sprintf("p50 %v, p90 %v, p99 %v, max %v (%d changes, read back via netlink)", p50.Round(100*time.Microsecond),
		proxyPercentile(lat, 90).Round(100*time.Microsecond), p99.Round(100*time.Microsecond), slices.Max(lat).Round(100*time.Microsecond), len(lat)),
		fmt.Sprintf("target p99 <= 200 ms  %s", passMiss(p99 <= targetProxyP99)))
	if len(syncTimes) > 0 {
		line("proxy sync (instrumented)", fmt.Sprintf("p50 %v, p99 %v (%d syncs)", proxyPercentile(syncTimes, 50).Round(10*time.Microsecond), proxyPercentile(syncTimes, 99).Round(10*time.Microsecond), len(syncTimes)), "")
	}
	line("connection, pod IP direct", fmt.Sprintf("p50 %v, p99 %v", proxyPercentile(direct, 50).Round(time.Microsecond), proxyPercentile(direct, 99).Round(time.Microsecond)), "")
	line("connection, via ClusterIP", fmt.Sprintf("p50 %v, p99 %v", proxyPercentile(viaService, 50).Round(time.Microsecond), proxyPercentile(viaService, 99).Round(time.Microsecond)), "")
	line("added by the ClusterIP path", fmt.Sprintf("p50 %v (%d connections each)", added, o.roundTrips),
		fmt.Sprintf("target < 50 us p50  %s", passMiss(added < targetProxyAddedP50)))
	return nil
}

func benchSlice(svc string, port int32, addrs ...string) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: svc + "-bench", Labels: map[string]string{discoveryv1.LabelServiceName: svc}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Protocol: ptr.To(corev1.ProtocolTCP), Port: ptr.To(port)}},
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}})
	}
	return s
}

// proxyPercentile is the p-th percentile of ds (nearest rank).
func proxyPercentile(ds []time.Duration, p int) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[max(0, min(len(s)-1, i-1))]
}

// proxyPathLatency sets up the echo server in a namespace of its own, a Service to it,
// and times connections both ways. It removes the namespace and veth at the end.
func proxyPathLatency(ctx context.Context, kube kubernetes.Interface, nft *nftables.Conn, table *nftables.Table, n int) (added time.Duration, direct, via []time.Duration, err error) {
	nsName := fmt.Sprintf("berthbench%d", os.Getpid())
	veth := fmt.Sprintf("bbench%d", os.Getpid()%100000)
	run := func(args ...string) error {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	defer func() {
		_ = run("link", "del", veth)
		_ = run("netns", "del", nsName)
	}()
	for _, args := range [][]string{
		{"netns", "add", nsName},
		{"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", nsName},
		{"addr", "add", benchProxyHostAddr, "dev", veth},
		{"link", "set", veth, "up"},
		{"-n", nsName, "addr", "add", benchProxyNSAddr + "/30", "dev", "eth0"},
		{"-n", nsName, "link", "set", "eth0", "up"},
		{"-n", nsName, "link", "set", "lo", "up"},
		{"-n", nsName, "route", "add", "default", "via", strings.Split(benchProxyHostAddr, "/")[0]},
	} {
		if err := run(args...); err != nil {
			return 0, nil, nil, err
		}
	}
	ln, err := listenInNetns("/var/run/netns/"+nsName, benchProxyNSAddr+":0")
	if err != nil {
		return 0, nil, nil, err
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, 1)
				for {
					if _, err := c.Read(b); err != nil {
						return
					}
					if _, err := c.Write(b); err != nil {
						return
					}
				}
			}()
		}
	}()
	port := int32(ln.Addr().(*net.TCPAddr).Port)
	svc, err := kube.CoreV1().Services("default").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "latency"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}}}, metav1.CreateOptions{})
	if err != nil {
		return 0, nil, nil, fmt.Errorf("create service latency: %w", err)
	}
	if _, err := kube.DiscoveryV1().EndpointSlices("default").Create(ctx, benchSlice("latency", port, benchProxyNSAddr), metav1.CreateOptions{}); err != nil {
		return 0, nil, nil, fmt.Errorf("create endpointslice latency: %w", err)
	}
	// Only once the Service's rules are in the kernel does a packet go to its address, so
	// that none leaves the machine.
	chain := fmt.Sprintf("ep-default/latency/tcp/http__%s:%d", benchProxyNSAddr, port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := nft.ListChain(table, chain); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return 0, nil, nil, fmt.Errorf("chain %s not in the kernel", chain)
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // the svc chain and map element come in the same batch; margin for the slower of two syncs
	roundTrip := func(addr string) (time.Duration, error) {
		start := time.Now()
		c, err := net.DialTimeout("tcp", addr, 2*time.Second)
		if err != nil {
			return 0, err
		}
		defer c.Close()
		b := []byte{'x'}
		if _, err := c.Write(b); err != nil {
			return 0, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return 0, err
		}
		return time.Since(start), nil
	}
	directAddr := net.JoinHostPort(benchProxyNSAddr, fmt.Sprint(port))
	svcAddr := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	for i := range 2 * n {
		// Alternate, so that both paths see the same machine load.
		addr, dst := directAddr, &direct
		if i%2 == 1 {
			addr, dst = svcAddr, &via
		}
		d, err := roundTrip(addr)
		if err != nil {
			return 0, nil, nil, fmt.Errorf("connection to %s: %w", addr, err)
		}
		*dst = append(*dst, d)
	}
	return proxyPercentile(via, 50) - proxyPercentile(direct, 50), direct, via, nil
}

// listenInNetns opens a TCP listener inside the network namespace at nsPath; the socket
// stays in that namespace after the thread returns to its own.
func listenInNetns(nsPath, addr string) (net.Listener, error) {
	target, err := os.Open(nsPath)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", nsPath, err)
	}
	defer target.Close()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	self, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
	if err != nil {
		return nil, fmt.Errorf("open own netns: %w", err)
	}
	defer self.Close()
	if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
		return nil, fmt.Errorf("enter %s: %w", nsPath, err)
	}
	ln, lerr := net.Listen("tcp", addr)
	if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
		// The thread is in the wrong namespace: keep it locked so that it dies with
		// the goroutine rather than serve others.
		runtime.LockOSThread()
		return nil, fmt.Errorf("return to own netns: %w", err)
	}
	if lerr != nil {
		return nil, fmt.Errorf("listen in %s: %w", nsPath, lerr)
	}
	return ln, nil
}
