// Package proxy is berth's node proxy (kube-proxy's job): it watches Services and
// EndpointSlices and programs the node's kernel with nftables, through netlink, so that
// ClusterIPs, NodePorts, LoadBalancer ingress IPs and external IPs reach ready endpoints.
//
// Everything lives in one table of its own, `ip berth-proxy` (TableName), which no other
// table is touched by; docs/proxy.md describes its chains. The rules are computed as a
// model (Ruleset, rendered in nft's syntax for tests), and each sync sends only the
// difference from what was applied last, as one netlink batch, at most every
// MinSyncInterval, so that a burst of endpoint changes costs one batch.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"

	"berth.dev/berth/core/kubeclient"
)

// DefaultServiceCIDR is the API server's range of ClusterIPs.
const DefaultServiceCIDR = "10.96.0.0/12"

// DefaultMinSyncInterval is the least time between two syncs: changes arriving meanwhile
// are applied together.
const DefaultMinSyncInterval = 50 * time.Millisecond

// Config is what a Proxy is told.
type Config struct {
	Kube     kubeclient.Interface
	NodeName string
	// ServiceCIDR is the range of ClusterIPs (required).
	ServiceCIDR netip.Prefix
	// ClusterCIDR is the pod network of the cluster, for masquerade decisions (optional:
	// without it ClusterIP traffic is not masqueraded, except hairpin and NodePorts).
	ClusterCIDR netip.Prefix
	// MinSyncInterval: DefaultMinSyncInterval when zero.
	MinSyncInterval time.Duration
	// TableName is the nftables table (TableName when empty); tests use their own.
	TableName string
	// RouteTable and RulePriority place the unreachable route of the service range
	// (DefaultRouteTable, DefaultRulePriority when zero). NoRoute leaves routing alone.
	RouteTable, RulePriority int
	NoRoute                  bool
	// NoLocalhostNodePorts leaves route_localnet alone: NodePorts then answer on the
	// node's addresses but not on 127.0.0.1.
	NoLocalhostNodePorts bool
	// OnSync, when set, is called after every sync (for benchmarks and tests).
	OnSync func(SyncResult)
	Log    *slog.Logger
}

// SyncResult tells what one sync did.
type SyncResult struct {
	Start    time.Time
	Duration time.Duration
	Changes  int // objects of the table added, changed or deleted
	Err      error
}

// Proxy is a running node proxy.
type Proxy struct {
	cfg     Config
	rules   RuleConfig
	route   serviceRoute
	kernel  *kernel
	trigger chan struct{} // a sync is wanted

	mu    sync.Mutex
	dirty map[string]bool // Services (namespace/name) whose rules may have changed
}

// New checks cfg and opens the netlink socket; Run starts the work.
func New(cfg Config) (*Proxy, error) {
	if cfg.Kube == nil || cfg.NodeName == "" {
		return nil, errors.New("proxy: a client and a node name are required")
	}
	if !cfg.ServiceCIDR.IsValid() || !cfg.ServiceCIDR.Addr().Is4() {
		return nil, fmt.Errorf("proxy: service CIDR %v is not an IPv4 prefix", cfg.ServiceCIDR)
	}
	if cfg.ClusterCIDR.IsValid() && !cfg.ClusterCIDR.Addr().Is4() {
		return nil, fmt.Errorf("proxy: cluster CIDR %v is not an IPv4 prefix", cfg.ClusterCIDR)
	}
	if cfg.MinSyncInterval == 0 {
		cfg.MinSyncInterval = DefaultMinSyncInterval
	}
	if cfg.TableName == "" {
		cfg.TableName = TableName
	}
	if cfg.RouteTable == 0 {
		cfg.RouteTable = DefaultRouteTable
	}
	if cfg.RulePriority == 0 {
		cfg.RulePriority = DefaultRulePriority
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	k, err := newKernel(cfg.TableName)
	if err != nil {
		return nil, err
	}
	return &Proxy{
		cfg:     cfg,
		rules:   RuleConfig{NodeName: cfg.NodeName, ServiceCIDR: cfg.ServiceCIDR.Masked(), ClusterCIDR: cfg.ClusterCIDR.Masked()},
		route:   serviceRoute{cidr: cfg.ServiceCIDR.Masked(), table: cfg.RouteTable, priority: cfg.RulePriority},
		kernel:  k,
		trigger: make(chan struct{}, 1),
		dirty:   map[string]bool{},
	}, nil
}

// Run programs the node until ctx ends: a full sync once the informers have synced
// (replacing whatever an earlier run left), then one sync per burst of changes. The rules
// stay in place when it returns, as kube-proxy leaves them: connections keep working
// while the proxy restarts. Cleanup removes them.
func (p *Proxy) Run(ctx context.Context) error {
	defer func() { _ = p.kernel.close() }()
	if !p.cfg.NoRoute {
		if err := p.route.ensure(); err != nil {
			return err
		}
	}
	if !p.cfg.NoLocalhostNodePorts {
		if err := enableRouteLocalnet(); err != nil {
			return err
		}
	}
	factory := kubeclient.NewInformers(p.cfg.Kube, 0, nil)
	svcInformer := factory.Services()
	sliceInformer := factory.EndpointSlices()
	onService := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			p.markDirty(key)
		}
	}
	onSlice := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		if s, ok := obj.(*discoveryv1.EndpointSlice); ok && s.Labels[discoveryv1.LabelServiceName] != "" {
			p.markDirty(s.Namespace + "/" + s.Labels[discoveryv1.LabelServiceName])
		}
	}
	if _, err := svcInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onService, UpdateFunc: func(_, o any) { onService(o) }, DeleteFunc: onService,
	}); err != nil {
		return fmt.Errorf("proxy: service informer: %w", err)
	}
	if _, err := sliceInformer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onSlice, UpdateFunc: func(old, o any) { onSlice(old); onSlice(o) }, DeleteFunc: onSlice,
	}); err != nil {
		return fmt.Errorf("proxy: endpointslice informer: %w", err)
	}
	ictx, stopInformers := context.WithCancel(ctx)
	factory.Start(ictx.Done())
	defer func() {
		stopInformers()
		factory.Shutdown()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), svcInformer.HasSynced, sliceInformer.HasSynced) {
		return nil // ctx ended
	}
	p.cfg.Log.Info("proxy caches synced; programming the table", "table", p.cfg.TableName, "serviceCIDR", p.cfg.ServiceCIDR)

	svcLister := corelisters.NewServiceLister(svcInformer.GetIndexer())
	sliceLister := discoverylisters.NewEndpointSliceLister(sliceInformer.GetIndexer())
	// owned is the part of the table each Service owns, as last applied; nil until the
	// first full sync, and again after a failed sync (the next one is full).
	var owned map[string]*Ruleset
	retry := time.NewTimer(0)
	defer retry.Stop()
	var last time.Time
	backoff := time.Second
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.trigger:
		case <-retry.C:
		}
		if wait := p.cfg.MinSyncInterval - time.Since(last); wait > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
		// Changes that came in while waiting are in the listers already.
		select {
		case <-p.trigger:
		default:
		}
		last = time.Now()
		dirty := p.takeDirty()
		var n int
		var err error
		if owned == nil {
			owned, n, err = p.fullSync(svcLister, sliceLister)
		} else {
			n, err = p.partialSync(owned, dirty, svcLister, sliceLister)
		}
		res := SyncResult{Start: last, Duration: time.Since(last), Changes: n, Err: err}
		if p.cfg.OnSync != nil {
			p.cfg.OnSync(res)
		}
		if err != nil {
			owned = nil
			p.cfg.Log.Error("proxy sync failed; retrying with a full sync", "err", err, "retryIn", backoff)
			retry.Reset(backoff)
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		p.cfg.Log.Debug("proxy synced", "services", len(dirty), "changes", n, "took", res.Duration)
	}
}

// fullSync rebuilds the whole table from the caches.
func (p *Proxy) fullSync(svcLister corelisters.ServiceLister, sliceLister discoverylisters.EndpointSliceLister) (map[string]*Ruleset, int, error) {
	svcs, err := svcLister.List(labels.Everything())
	if err != nil {
		return nil, 0, fmt.Errorf("proxy: list services: %w", err)
	}
	slices, err := sliceLister.List(labels.Everything())
	if err != nil {
		return nil, 0, fmt.Errorf("proxy: list endpointslices: %w", err)
	}
	bySvc := map[string][]*discoveryv1.EndpointSlice{}
	for _, s := range slices {
		if name := s.Labels[discoveryv1.LabelServiceName]; name != "" {
			bySvc[s.Namespace+"/"+name] = append(bySvc[s.Namespace+"/"+name], s)
		}
	}
	want := baseRuleset(p.rules)
	owned := make(map[string]*Ruleset, len(svcs))
	for _, svc := range svcs {
		key := svc.Namespace + "/" + svc.Name
		part := serviceRuleset(p.rules, svc, bySvc[key])
		owned[key] = part
		want.merge(part)
	}
	n, err := p.kernel.applyChanges(nil, want)
	if err != nil {
		return nil, n, err
	}
	return owned, n, nil
}

// partialSync sends the changes of the dirty Services only, in one batch.
func (p *Proxy) partialSync(owned map[string]*Ruleset, dirty []string, svcLister corelisters.ServiceLister, sliceLister discoverylisters.EndpointSliceLister) (int, error) {
	old, want := emptyRuleset(), emptyRuleset()
	parts := map[string]*Ruleset{}
	for _, key := range dirty {
		ns, name, err := cache.SplitMetaNamespaceKey(key)
		if err != nil {
			continue
		}
		svc, err := svcLister.Services(ns).Get(name)
		if err != nil && !apierrors.IsNotFound(err) {
			return 0, fmt.Errorf("proxy: get service %s: %w", key, err)
		}
		var slices []*discoveryv1.EndpointSlice
		if svc != nil {
			sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: name})
			if slices, err = sliceLister.EndpointSlices(ns).List(sel); err != nil {
				return 0, fmt.Errorf("proxy: list endpointslices of %s: %w", key, err)
			}
		}
		part := serviceRuleset(p.rules, svc, slices)
		parts[key] = part
		if prev := owned[key]; prev != nil {
			old.merge(prev)
		}
		want.merge(part)
	}
	n, err := p.kernel.applyChanges(old, want)
	if err != nil {
		return n, err
	}
	for key, part := range parts {
		if len(part.Chains) == 0 && part.elems() == 0 {
			delete(owned, key)
		} else {
			owned[key] = part
		}
	}
	return n, nil
}

// markDirty records that a Service's rules must be recomputed, and asks for a sync.
func (p *Proxy) markDirty(key string) {
	p.mu.Lock()
	p.dirty[key] = true
	p.mu.Unlock()
	p.kick()
}

// takeDirty returns the Services marked since the last call, and forgets them.
func (p *Proxy) takeDirty() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := make([]string, 0, len(p.dirty))
	for k := range p.dirty {
		keys = append(keys, k)
	}
	clear(p.dirty)
	return keys
}

// kick asks for a sync; kicks coalesce.
func (p *Proxy) kick() {
	select {
	case p.trigger <- struct{}{}:
	default:
	}
}

// Cleanup removes what a proxy with cfg programs: its table and the service range's
// route and rule. route_localnet is left as it is.
func Cleanup(cfg Config) error {
	if cfg.TableName == "" {
		cfg.TableName = TableName
	}
	if cfg.RouteTable == 0 {
		cfg.RouteTable = DefaultRouteTable
	}
	if cfg.RulePriority == 0 {
		cfg.RulePriority = DefaultRulePriority
	}
	k, err := newKernel(cfg.TableName)
	if err != nil {
		return err
	}
	defer func() { _ = k.close() }()
	errs := k.deleteTable()
	if !cfg.NoRoute && cfg.ServiceCIDR.IsValid() {
		r := serviceRoute{cidr: cfg.ServiceCIDR.Masked(), table: cfg.RouteTable, priority: cfg.RulePriority}
		errs = errors.Join(errs, r.remove())
	}
	return errs
}
