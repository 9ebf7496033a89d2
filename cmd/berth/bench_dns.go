package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"berth.dev/berth/core/dns"
)

// targetDNSQPS is what the cluster DNS server must answer on loopback on a 2-core machine.
const targetDNSQPS = 20000

// dnsBenchOptions are the flags of `berth bench dns`.
type dnsBenchOptions struct {
	services, clients int
	duration          time.Duration
	network           string
}

func newBenchDNSCommand() *cobra.Command {
	var o dnsBenchOptions
	cmd := &cobra.Command{
		Use:   "dns",
		Short: "Queries per second of the cluster DNS server on loopback, answers checked",
		Long: `Start berth's cluster DNS server (core/dns) on 127.0.0.1 with --services Services
fed through informers (from a fixed list: the API server is not what is measured), then
send A queries for random Services of them from --clients concurrent clients, each with
one socket and one query in flight, for --duration. Every answer is checked to be the
Service's ClusterIP. Prints queries per second and the latency percentiles, and fails
below ` + fmt.Sprint(targetDNSQPS) + ` queries per second or on any wrong answer.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runDNSBench(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.IntVar(&o.services, "services", 1000, "how many Services the server knows")
	f.IntVar(&o.clients, "clients", 16, "concurrent clients")
	f.DurationVar(&o.duration, "duration", 10*time.Second, "how long to query")
	f.StringVar(&o.network, "network", "udp", "udp or tcp")
	return cmd
}

// staticInformer is an informer that lists objs once and then watches nothing.
func staticInformer(obj k8sruntime.Object, list k8sruntime.Object) cache.SharedIndexInformer {
	lw := &cache.ListWatch{
		ListWithContextFunc:  func(context.Context, metav1.ListOptions) (k8sruntime.Object, error) { return list, nil },
		WatchFuncWithContext: func(context.Context, metav1.ListOptions) (watch.Interface, error) { return watch.NewFake(), nil },
	}
	return cache.NewSharedIndexInformer(lw, obj, 0, cache.Indexers{})
}

func runDNSBench(ctx context.Context, o dnsBenchOptions, out io.Writer) error {
	if o.services < 1 || o.services > 60000 || o.clients < 1 || o.duration <= 0 {
		return errors.New("--services must be 1-60000, --clients and --duration positive")
	}
	if o.network != "udp" && o.network != "tcp" {
		return fmt.Errorf("--network %q: want udp or tcp", o.network)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	svcs := &corev1.ServiceList{}
	ips := make([]string, o.services)
	names := make([]string, o.services) // made up front: the clients share the CPUs with the server
	want := make([]net.IP, o.services)
	for i := range o.services {
		ips[i] = fmt.Sprintf("10.96.%d.%d", 1+i/250, 1+i%250)
		names[i] = fmt.Sprintf("svc-%05d.bench.svc.cluster.local.", i)
		want[i] = net.ParseIP(ips[i])
		svcs.Items = append(svcs.Items, corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%05d", i), Namespace: "bench"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: ips[i], ClusterIPs: []string{ips[i]},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		})
	}
	nsList := &corev1.NamespaceList{Items: []corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "bench"}}}}
	infs := []cache.SharedIndexInformer{
		staticInformer(&corev1.Service{}, svcs),
		staticInformer(&discoveryv1.EndpointSlice{}, &discoveryv1.EndpointSliceList{}),
		staticInformer(&corev1.Namespace{}, nsList),
	}
	srv, err := dns.New(dns.Config{Upstreams: []string{}})
	if err != nil {
		return err
	}
	if err := srv.Watch(infs[0], infs[1], infs[2]); err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for _, inf := range infs {
		wg.Add(1)
		go func() { defer wg.Done(); inf.Run(ctx.Done()) }()
	}
	if !cache.WaitForCacheSync(ctx.Done(), infs[0].HasSynced, infs[1].HasSynced, infs[2].HasSynced) {
		return errors.New("informers did not sync")
	}
	l, err := srv.Listen([]string{"127.0.0.1:0"})
	if err != nil {
		return err
	}
	serveDone := make(chan error, 1)
	go func() { serveDone <- l.Serve(ctx) }()
	addr := l.Addrs()[0]

	var ok, wrong, failed atomic.Int64
	lat := make([][]time.Duration, o.clients)
	deadline := time.Now().Add(o.duration)
	start := time.Now()
	var clients sync.WaitGroup
	for c := range o.clients {
		clients.Add(1)
		go func() {
			defer clients.Done()
			client := &mdns.Client{Net: o.network, Timeout: 2 * time.Second}
			conn, err := client.Dial(addr)
			if err != nil {
				failed.Add(1)
				return
			}
			defer conn.Close()
			rng := rand.New(rand.NewPCG(uint64(c), 7))
			m := new(mdns.Msg)
			for time.Now().Before(deadline) && ctx.Err() == nil {
				i := rng.IntN(o.services)
				m.SetQuestion(names[i], mdns.TypeA)
				t0 := time.Now()
				r, _, err := client.ExchangeWithConn(m, conn)
				d := time.Since(t0)
				if err != nil {
					failed.Add(1)
					// A lost datagram leaves the socket's state unknown: start a new one.
					conn.Close()
					if conn, err = client.Dial(addr); err != nil {
						return
					}
					continue
				}
				lat[c] = append(lat[c], d)
				if len(r.Answer) == 1 {
					if a, isA := r.Answer[0].(*mdns.A); isA && a.A.Equal(want[i]) {
						ok.Add(1)
						continue
					}
				}
				wrong.Add(1)
			}
		}()
	}
	clients.Wait()
	elapsed := time.Since(start)
	cancel()
	if err := <-serveDone; err != nil {
		return err
	}
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	pct := func(p float64) time.Duration {
		if len(all) == 0 {
			return 0
		}
		return all[min(len(all)-1, int(p*float64(len(all))))]
	}
	qps := float64(ok.Load()) / elapsed.Seconds()
	fmt.Fprintf(out, "dns: %d Services, %d %s clients, %d CPUs, %v\n", o.services, o.clients, o.network, runtime.NumCPU(), elapsed.Round(time.Millisecond))
	fmt.Fprintf(out, "answers: %d right, %d wrong, %d failed (timeouts, errors)\n", ok.Load(), wrong.Load(), failed.Load())
	fmt.Fprintf(out, "throughput: %.0f queries/s (target >= %d)\n", qps, targetDNSQPS)
	fmt.Fprintf(out, "latency: p50 %v, p99 %v, max %v\n", pct(0.50), pct(0.99), pct(1))
	switch {
	case wrong.Load() > 0:
		return fmt.Errorf("%d wrong answers", wrong.Load())
	case qps < targetDNSQPS:
		return fmt.Errorf("%.0f queries/s is below the target of %d", qps, targetDNSQPS)
	}
	return nil
}
