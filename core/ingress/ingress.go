// Package ingress is berth's built-in Ingress controller (networking.k8s.io/v1), which runs
// in every node agent: it watches the Ingresses of its IngressClasses (spec.controller
// berth.dev/ingress), their Services, EndpointSlices and TLS Secrets, and serves HTTP and
// HTTPS on the node itself, proxying each request straight to a ready endpoint (pod IP) of
// the backend Service, round robin, with the standard library's reverse proxy.
//
// Every change rebuilds one immutable routing Table (hosts exact and wildcard, paths Exact
// and Prefix with Kubernetes' element-wise semantics, the default backend, certificates by
// SNI) that requests read without locks; a burst of changes costs one rebuild, at most
// every MinRebuildInterval. Each node adds its own address to the Ingresses'
// status.loadBalancer.ingress, so that with several nodes the status lists them all.
// docs/ingress.md is the user's view.
package ingress

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	networkinglisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"

	"berth.dev/berth/core/kubeclient"
)

// DefaultMinRebuildInterval is the least time between two rebuilds of the routing table:
// changes arriving meanwhile are applied together, well within the second a change is
// promised to take.
const DefaultMinRebuildInterval = 20 * time.Millisecond

// Config is what a Controller is told.
type Config struct {
	Kube     kubeclient.Interface
	NodeName string
	// NodeIP is the address written into the Ingresses' status; empty: the Node's
	// InternalIP, once the agent has published it.
	NodeIP string
	// HTTPAddr and HTTPSAddr are where to listen (":80", ":443"; host:0 is not useful, as
	// nobody would know the port); empty: not at all.
	HTTPAddr, HTTPSAddr string
	// MinRebuildInterval: DefaultMinRebuildInterval when zero.
	MinRebuildInterval time.Duration
	// NoStatus leaves the Ingresses' status alone (for tests running several controllers).
	NoStatus bool
	Log      *slog.Logger
}

// Controller is one node's Ingress controller.
type Controller struct {
	cfg     Config
	table   atomic.Pointer[Table]
	defCert *tls.Certificate // served when no Ingress has a certificate for the name
	proxy   http.Handler
	trigger chan struct{}

	mu       sync.Mutex
	problems map[string]bool // logged already, so that each is logged once
}

// New checks cfg; Run starts the work.
func New(cfg Config) (*Controller, error) {
	if cfg.Kube == nil || cfg.NodeName == "" {
		return nil, errors.New("ingress: a client and a node name are required")
	}
	if cfg.MinRebuildInterval == 0 {
		cfg.MinRebuildInterval = DefaultMinRebuildInterval
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	def, err := selfSignedCertificate()
	if err != nil {
		return nil, fmt.Errorf("ingress: %w", err)
	}
	c := &Controller{cfg: cfg, defCert: def, trigger: make(chan struct{}, 1), problems: map[string]bool{}}
	c.table.Store(newTable())
	c.proxy = newReverseProxy(cfg.Log)
	return c, nil
}

// Table returns the routing table in use (for tests and debugging).
func (c *Controller) Table() *Table { return c.table.Load() }

func (c *Controller) kick() {
	select {
	case c.trigger <- struct{}{}:
	default:
	}
}

// Run serves and keeps the routing table current until ctx ends. The listeners start at
// once (answering 404 until the caches have synced); an address that cannot be bound (in
// use) is retried every few seconds, logged, without stopping the rest.
func (c *Controller) Run(ctx context.Context) error {
	factory := kubeclient.NewInformers(c.cfg.Kube, 0, nil)
	// Only TLS Secrets: the others are none of the controller's business.
	secretFactory := kubeclient.NewInformers(c.cfg.Kube, 0, func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("type", string(corev1.SecretTypeTLS)).String()
	})
	ingInformer := factory.Ingresses()
	classInformer := factory.IngressClasses()
	svcInformer := factory.Services()
	sliceInformer := factory.EndpointSlices()
	secretInformer := secretFactory.Secrets()
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.kick() },
		UpdateFunc: func(any, any) { c.kick() },
		DeleteFunc: func(any) { c.kick() },
	}
	for what, inf := range map[string]cache.SharedIndexInformer{
		"ingresses": ingInformer, "ingressclasses": classInformer,
		"services": svcInformer, "endpointslices": sliceInformer,
		"secrets": secretInformer,
	} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			return fmt.Errorf("ingress: %s informer: %w", what, err)
		}
	}
	ictx, stopInformers := context.WithCancel(ctx)
	factory.Start(ictx.Done())
	secretFactory.Start(ictx.Done())
	defer func() {
		stopInformers()
		factory.Shutdown()
		secretFactory.Shutdown()
	}()

	var wg sync.WaitGroup
	defer wg.Wait()
	sctx, stopServers := context.WithCancel(ctx)
	defer stopServers()
	if c.cfg.HTTPAddr != "" {
		srv := &http.Server{Handler: c, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
		wg.Go(func() { c.serve(sctx, srv, c.cfg.HTTPAddr, false) })
	}
	if c.cfg.HTTPSAddr != "" {
		srv := &http.Server{Handler: c, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
			TLSConfig: &tls.Config{GetCertificate: c.getCertificate, MinVersion: tls.VersionTLS12}}
		wg.Go(func() { c.serve(sctx, srv, c.cfg.HTTPSAddr, true) })
	}

	if !cache.WaitForCacheSync(ctx.Done(), ingInformer.HasSynced, classInformer.HasSynced,
		svcInformer.HasSynced, sliceInformer.HasSynced, secretInformer.HasSynced) {
		return nil // ctx ended
	}
	c.cfg.Log.Info("ingress caches synced; serving", "http", c.cfg.HTTPAddr, "https", c.cfg.HTTPSAddr)
	w := &world{
		services: corelisters.NewServiceLister(svcInformer.GetIndexer()),
		slices:   discoverylisters.NewEndpointSliceLister(sliceInformer.GetIndexer()),
		secrets:  corelisters.NewSecretLister(secretInformer.GetIndexer()),
	}
	ingLister := networkinglisters.NewIngressLister(ingInformer.GetIndexer())
	classLister := networkinglisters.NewIngressClassLister(classInformer.GetIndexer())
	st := &statusWriter{c: c}
	var last time.Time
	statusRetry := time.NewTimer(time.Hour)
	statusRetry.Stop()
	defer statusRetry.Stop()
	c.kick()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.trigger:
		case <-statusRetry.C:
		}
		if wait := c.cfg.MinRebuildInterval - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		// Changes that came in while waiting are in the listers already.
		select {
		case <-c.trigger:
		default:
		}
		last = time.Now()
		ours, others := c.split(ingLister, classLister)
		c.table.Store(w.build(ours))
		c.logProblems(w.problems)
		if !c.cfg.NoStatus {
			if err := st.sync(ctx, ours, others); err != nil && ctx.Err() == nil {
				c.cfg.Log.Warn("ingress status", "err", err)
				statusRetry.Reset(time.Second)
			}
		}
	}
}

// split splits the Ingresses into the controller's and the others.
func (c *Controller) split(ings networkinglisters.IngressLister, cls networkinglisters.IngressClassLister) (ours, others []*networkingv1.Ingress) {
	all, _ := ings.List(labels.Everything())
	classList, _ := cls.List(labels.Everything())
	ourCls := ourClasses(classList)
	for _, ing := range all {
		if ing.DeletionTimestamp == nil && ourCls.serves(ing) {
			ours = append(ours, ing)
		} else {
			others = append(others, ing)
		}
	}
	return ours, others
}

// logProblems logs each new problem once, and forgets those that went away.
func (c *Controller) logProblems(problems []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := map[string]bool{}
	for _, p := range problems {
		now[p] = true
		if !c.problems[p] {
			c.cfg.Log.Warn("ingress", "problem", p)
		}
	}
	c.problems = now
}

// getCertificate picks the certificate for a TLS client's server name.
func (c *Controller) getCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	if cert := c.table.Load().certs.lookup(hello.ServerName); cert != nil {
		return cert, nil
	}
	return c.defCert, nil
}

// statusWriter keeps this node's address in status.loadBalancer.ingress of the
// controller's Ingresses, and out of the others'.
type statusWriter struct {
	c      *Controller
	nodeIP string
}

// sync adds the node's address where it is missing and removes it where the Ingress is no
// longer the controller's. Each write merges into the Ingress as read from the server, so
// that nodes writing at once keep each other's addresses.
func (s *statusWriter) sync(ctx context.Context, ours, others []*networkingv1.Ingress) error {
	if s.nodeIP == "" {
		ip, err := s.lookupNodeIP(ctx)
		if err != nil {
			return err
		}
		s.nodeIP = ip
	}
	var errs []error
	for _, ing := range ours {
		if !hasIP(ing, s.nodeIP) {
			errs = append(errs, s.update(ctx, ing, true))
		}
	}
	for _, ing := range others {
		if hasIP(ing, s.nodeIP) && ing.DeletionTimestamp == nil {
			errs = append(errs, s.update(ctx, ing, false))
		}
	}
	return errors.Join(errs...)
}

func (s *statusWriter) lookupNodeIP(ctx context.Context) (string, error) {
	if s.c.cfg.NodeIP != "" {
		return s.c.cfg.NodeIP, nil
	}
	n, err := s.c.cfg.Kube.CoreV1().Nodes().Get(ctx, s.c.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("node %s, for its address: %w", s.c.cfg.NodeName, err)
	}
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return a.Address, nil
		}
	}
	return "", fmt.Errorf("node %s has no InternalIP yet", s.c.cfg.NodeName)
}

func hasIP(ing *networkingv1.Ingress, ip string) bool {
	return slices.ContainsFunc(ing.Status.LoadBalancer.Ingress, func(i networkingv1.IngressLoadBalancerIngress) bool { return i.IP == ip })
}

// update adds (or removes) the node's address in ing's status.
func (s *statusWriter) update(ctx context.Context, ing *networkingv1.Ingress, add bool) error {
	api := s.c.cfg.Kube.NetworkingV1().Ingresses(ing.Namespace)
	cur := ing.DeepCopy()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		lb := cur.Status.LoadBalancer.Ingress
		if add == hasIP(cur, s.nodeIP) {
			return nil
		}
		if add {
			lb = append(slices.Clone(lb), networkingv1.IngressLoadBalancerIngress{IP: s.nodeIP})
			slices.SortFunc(lb, func(a, b networkingv1.IngressLoadBalancerIngress) int {
				return strings.Compare(a.IP+a.Hostname, b.IP+b.Hostname)
			})
		} else {
			lb = slices.DeleteFunc(slices.Clone(lb), func(i networkingv1.IngressLoadBalancerIngress) bool { return i.IP == s.nodeIP })
		}
		cur.Status.LoadBalancer.Ingress = lb
		_, err := api.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			fresh, gerr := api.Get(ctx, ing.Name, metav1.GetOptions{})
			if gerr != nil {
				return gerr
			}
			cur = fresh
		}
		return err
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("status of ingress %s/%s: %w", ing.Namespace, ing.Name, err)
	}
	return nil
}
