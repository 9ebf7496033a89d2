package apiserver

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"berth.dev/berth/core/registry"
	"berth.dev/berth/core/storage"
)

// Service address allocation: every ClusterIP and NodePort a Service holds is claimed by a
// key of its own in etcd (/berth/claims/serviceips/<ip>, /berth/claims/nodeports/<port>),
// created before the Service is stored. etcd's create-if-absent makes a claim atomic across
// several API servers; the keys survive restarts, so nothing needs rebuilding. A claim is
// given back when its Service goes or stops using it (followed from the Services' watch),
// at once when the create that made it fails, and by a repair pass for claims left by a
// server that died between claiming and storing.
const (
	claimPrefixIPs   = "/berth/claims/serviceips/"
	claimPrefixPorts = "/berth/claims/nodeports/"
	// claimGrace is how old a claim without its Service must be before repair frees it: an
	// in-flight create claims first and stores the Service a moment later.
	claimGrace = time.Minute
)

// ServiceRanges are the address ranges Services are given addresses from.
type ServiceRanges struct {
	// ClusterIPs is the service CIDR (10.96.0.0/12 by default, as kubeadm's).
	ClusterIPs netip.Prefix
	// NodePortFirst and NodePortLast bound the NodePort range (30000-32767 by default).
	NodePortFirst, NodePortLast int
}

// DefaultServiceRanges are Kubernetes' usual ranges.
func DefaultServiceRanges() ServiceRanges {
	return ServiceRanges{ClusterIPs: netip.MustParsePrefix("10.96.0.0/12"), NodePortFirst: 30000, NodePortLast: 32767}
}

// ParseNodePortRange parses "30000-32767".
func ParseNodePortRange(s string) (int, int, error) {
	a, b, ok := strings.Cut(s, "-")
	first, err1 := strconv.Atoi(strings.TrimSpace(a))
	last, err2 := strconv.Atoi(strings.TrimSpace(b))
	if !ok || err1 != nil || err2 != nil || first < 1 || last > 65535 || first > last {
		return 0, 0, fmt.Errorf("node port range %q: want FIRST-LAST within 1-65535, for example 30000-32767", s)
	}
	return first, last, nil
}

// claim is what a claim key holds: who holds the address, and since when.
type claim struct {
	Namespace string    `json:"namespace"`
	Name      string    `json:"name"`
	UID       types.UID `json:"uid"`
	Since     time.Time `json:"since"`
}

// serviceAllocator hands out ClusterIPs and NodePorts.
type serviceAllocator struct {
	store  *storage.Store
	ranges ServiceRanges
	res    *registry.Resource
	// first and size describe the allocatable IPs: the CIDR without its network and
	// broadcast addresses. static is how many of the lowest are left to Services that ask
	// for a given IP (Kubernetes' ServiceIPStaticSubrange): random picks try above first.
	first  netip.Addr
	size   int
	static int
}

func newServiceAllocator(ranges ServiceRanges, store *storage.Store) (*serviceAllocator, error) {
	p := ranges.ClusterIPs.Masked()
	if !p.Addr().Is4() || p.Bits() > 28 || p.Bits() < 8 {
		return nil, fmt.Errorf("service CIDR %s: want an IPv4 prefix between /8 and /28", ranges.ClusterIPs)
	}
	size := 1<<(32-p.Bits()) - 2
	static := 0
	if size >= 16 { // as Kubernetes: no static subrange in a range smaller than 16
		static = min(max(16, size/16), 256)
	}
	res, _ := registry.Lookup("", "v1", "services")
	return &serviceAllocator{
		store: store, ranges: ranges, res: res,
		first:  p.Addr().Next(),
		size:   size,
		static: static,
	}, nil
}

// claims is what one create or update claimed, so that it can be given back if the write
// that needed them fails.
type claims struct {
	a    *serviceAllocator
	keys []string
}

// release frees the claims (best effort: repair frees what this cannot).
func (c *claims) release(ctx context.Context) {
	if c == nil {
		return
	}
	for _, k := range c.keys {
		if o, err := c.a.store.Get(ctx, k); err == nil {
			_, _ = c.a.store.Delete(ctx, k, o.Revision)
		}
	}
}

// allocate gives svc (a new Service, or an update of old) the ClusterIP and NodePorts it
// asks for or needs, claiming each. Errors are Kubernetes' Invalid errors on the field.
func (a *serviceAllocator) allocate(ctx context.Context, svc, old *corev1.Service) (*claims, error) {
	cl := &claims{a: a}
	owner := claim{Namespace: svc.Namespace, Name: svc.Name, UID: svc.UID, Since: time.Now()}
	fail := func(err error) (*claims, error) {
		cl.release(ctx)
		return nil, err
	}
	spec := &svc.Spec
	// ClusterIP: ExternalName Services have none; headless ones say None.
	if spec.Type != corev1.ServiceTypeExternalName && spec.ClusterIP != corev1.ClusterIPNone {
		switch {
		case old != nil && old.Spec.ClusterIP != "" && old.Spec.ClusterIP != corev1.ClusterIPNone && spec.ClusterIP == old.Spec.ClusterIP:
			// Kept: already claimed.
		case spec.ClusterIP == "":
			ip, err := a.claimRandomIP(ctx, owner)
			if err != nil {
				return fail(apierrors.NewInternalError(fmt.Errorf("allocate a ClusterIP: %w", err)))
			}
			cl.keys = append(cl.keys, claimPrefixIPs+ip.String())
			spec.ClusterIP = ip.String()
		default:
			ip, err := netip.ParseAddr(spec.ClusterIP)
			if err != nil {
				return fail(invalidService(svc, field.Invalid(field.NewPath("spec", "clusterIPs").Index(0), spec.ClusterIP, "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)")))
			}
			if !a.ranges.ClusterIPs.Contains(ip) || ip == a.ranges.ClusterIPs.Masked().Addr() {
				return fail(invalidService(svc, field.Invalid(field.NewPath("spec", "clusterIPs").Index(0), spec.ClusterIP,
					fmt.Sprintf("failed to allocate IP %s: the provided IP (%s) is not in the valid range. The range of valid IPs is %s", spec.ClusterIP, spec.ClusterIP, a.ranges.ClusterIPs))))
			}
			ok, err := a.claimKey(ctx, claimPrefixIPs+ip.String(), owner)
			if err != nil {
				return fail(apierrors.NewInternalError(err))
			}
			if !ok {
				return fail(invalidService(svc, field.Invalid(field.NewPath("spec", "clusterIPs").Index(0), spec.ClusterIP,
					fmt.Sprintf("failed to allocate IP %s: provided IP is already allocated", spec.ClusterIP))))
			}
			cl.keys = append(cl.keys, claimPrefixIPs+ip.String())
		}
		if spec.ClusterIP != "" {
			spec.ClusterIPs = []string{spec.ClusterIP}
			if len(spec.IPFamilies) == 0 {
				spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
			}
		}
	}
	if spec.ClusterIP == corev1.ClusterIPNone {
		spec.ClusterIPs = []string{corev1.ClusterIPNone}
		if len(spec.IPFamilies) == 0 && len(spec.Selector) > 0 {
			spec.IPFamilies = []corev1.IPFamily{corev1.IPv4Protocol}
		}
	}
	if len(spec.IPFamilies) > 0 && spec.IPFamilyPolicy == nil {
		single := corev1.IPFamilyPolicySingleStack
		spec.IPFamilyPolicy = &single
	}

	// NodePorts: NodePort Services, and LoadBalancer ones unless they opt out.
	wantPorts := spec.Type == corev1.ServiceTypeNodePort ||
		(spec.Type == corev1.ServiceTypeLoadBalancer && (spec.AllocateLoadBalancerNodePorts == nil || *spec.AllocateLoadBalancerNodePorts))
	held := map[int32]bool{}
	if old != nil {
		for _, p := range old.Spec.Ports {
			if p.NodePort != 0 {
				held[p.NodePort] = true
			}
		}
		if old.Spec.HealthCheckNodePort != 0 {
			held[old.Spec.HealthCheckNodePort] = true
		}
	}
	seen := map[int32]bool{}
	for i := range spec.Ports {
		p := &spec.Ports[i]
		if !wantPorts {
			if held[p.NodePort] {
				// The type changed away from NodePort: the old ports go with it, as
				// Kubernetes drops type-dependent fields the update did not change.
				p.NodePort = 0
			}
			continue // a nodePort left here is validation's to refuse
		}
		path := field.NewPath("spec", "ports").Index(i).Child("nodePort")
		switch {
		case p.NodePort != 0 && (held[p.NodePort] || seen[p.NodePort]):
			// Kept, or shared by two protocols of one port, as Kubernetes allows.
		case p.NodePort != 0:
			if int(p.NodePort) < a.ranges.NodePortFirst || int(p.NodePort) > a.ranges.NodePortLast {
				return fail(invalidService(svc, field.Invalid(path, p.NodePort,
					fmt.Sprintf("provided port is not in the valid range. The range of valid ports is %d-%d", a.ranges.NodePortFirst, a.ranges.NodePortLast))))
			}
			ok, err := a.claimKey(ctx, portKey(p.NodePort), owner)
			if err != nil {
				return fail(apierrors.NewInternalError(err))
			}
			if !ok {
				return fail(invalidService(svc, field.Invalid(path, p.NodePort, "provided port is already allocated")))
			}
			cl.keys = append(cl.keys, portKey(p.NodePort))
		case wantPorts:
			port, err := a.claimRandomPort(ctx, owner)
			if err != nil {
				return fail(apierrors.NewInternalError(fmt.Errorf("allocate a NodePort: %w", err)))
			}
			cl.keys = append(cl.keys, portKey(port))
			p.NodePort = port
		}
		seen[p.NodePort] = true
	}
	needsHealthCheck := spec.Type == corev1.ServiceTypeLoadBalancer && spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
	if !needsHealthCheck && spec.HealthCheckNodePort != 0 && held[spec.HealthCheckNodePort] {
		spec.HealthCheckNodePort = 0
	}
	// A LoadBalancer with externalTrafficPolicy Local gets a health-check port.
	if spec.Type == corev1.ServiceTypeLoadBalancer && spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal && spec.HealthCheckNodePort == 0 {
		port, err := a.claimRandomPort(ctx, owner)
		if err != nil {
			return fail(apierrors.NewInternalError(fmt.Errorf("allocate a health check NodePort: %w", err)))
		}
		cl.keys = append(cl.keys, portKey(port))
		spec.HealthCheckNodePort = port
	}
	return cl, nil
}

func invalidService(svc *corev1.Service, errs ...*field.Error) error {
	return apierrors.NewInvalid(corev1.SchemeGroupVersion.WithKind("Service").GroupKind(), svc.Name, errs)
}

func portKey(p int32) string { return claimPrefixPorts + strconv.Itoa(int(p)) }

// claimKey creates key for owner; false means someone holds it already.
func (a *serviceAllocator) claimKey(ctx context.Context, key string, owner claim) (bool, error) {
	data, err := json.Marshal(owner)
	if err != nil {
		return false, err
	}
	_, err = a.store.Create(ctx, key, data)
	if errors.Is(err, storage.ErrExists) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claim %s: %w", key, err)
	}
	return true, nil
}

// claimRandomIP claims a free IP: random ones above the static subrange first, then a scan.
func (a *serviceAllocator) claimRandomIP(ctx context.Context, owner claim) (netip.Addr, error) {
	try := func(offset int) (netip.Addr, bool, error) {
		ip := addOffset(a.first, offset)
		ok, err := a.claimKey(ctx, claimPrefixIPs+ip.String(), owner)
		return ip, ok, err
	}
	dynamic := a.size - a.static
	for range min(32, dynamic) {
		if ip, ok, err := try(a.static + rand.IntN(dynamic)); err != nil || ok {
			return ip, err
		}
	}
	// Crowded: look at what is taken and pick among the rest.
	taken, err := a.taken(ctx, claimPrefixIPs)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, start := range []int{a.static, 0} {
		for i := start; i < a.size; i++ {
			ip := addOffset(a.first, i)
			if taken[ip.String()] {
				continue
			}
			if _, ok, err := try(i); err != nil || ok {
				return ip, err
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("range is full: every IP of %s is allocated", a.ranges.ClusterIPs)
}

// claimRandomPort claims a free NodePort, random first, then by a scan.
func (a *serviceAllocator) claimRandomPort(ctx context.Context, owner claim) (int32, error) {
	n := a.ranges.NodePortLast - a.ranges.NodePortFirst + 1
	for range 32 {
		p := int32(a.ranges.NodePortFirst + rand.IntN(n))
		ok, err := a.claimKey(ctx, portKey(p), owner)
		if err != nil || ok {
			return p, err
		}
	}
	taken, err := a.taken(ctx, claimPrefixPorts)
	if err != nil {
		return 0, err
	}
	for p := a.ranges.NodePortFirst; p <= a.ranges.NodePortLast; p++ {
		if taken[strconv.Itoa(p)] {
			continue
		}
		if ok, err := a.claimKey(ctx, portKey(int32(p)), owner); err != nil || ok {
			return int32(p), err
		}
	}
	return 0, fmt.Errorf("range is full: every port of %d-%d is allocated", a.ranges.NodePortFirst, a.ranges.NodePortLast)
}

// taken lists the claimed names under prefix.
func (a *serviceAllocator) taken(ctx context.Context, prefix string) (map[string]bool, error) {
	list, err := a.store.List(ctx, prefix, storage.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", prefix, err)
	}
	out := make(map[string]bool, len(list.Items))
	for _, o := range list.Items {
		out[strings.TrimPrefix(o.Key, prefix)] = true
	}
	return out, nil
}

func addOffset(ip netip.Addr, n int) netip.Addr {
	b := ip.As4()
	v := binary.BigEndian.Uint32(b[:]) + uint32(n)
	binary.BigEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

// heldBy lists the claim keys a Service's spec holds.
func heldBy(svc *corev1.Service) map[string]bool {
	keys := map[string]bool{}
	if ip := svc.Spec.ClusterIP; ip != "" && ip != corev1.ClusterIPNone {
		keys[claimPrefixIPs+ip] = true
	}
	for _, p := range svc.Spec.Ports {
		if p.NodePort != 0 {
			keys[portKey(p.NodePort)] = true
		}
	}
	if svc.Spec.HealthCheckNodePort != 0 {
		keys[portKey(svc.Spec.HealthCheckNodePort)] = true
	}
	return keys
}

// run gives claims back as Services go or stop using them, and repairs claims left behind,
// until ctx ends.
func (a *serviceAllocator) run(ctx context.Context) {
	prefix := collectionPrefix(a.res, "")
	a.repair(ctx)
	repairs := time.NewTicker(10 * time.Minute)
	defer repairs.Stop()
	for ctx.Err() == nil {
		list, err := a.store.List(ctx, prefix, storage.ListOptions{})
		if err != nil {
			sleepCtx(ctx, time.Second)
			continue
		}
		// What each Service (by storage key) held at its last event, and its UID.
		known := map[string]heldClaims{}
		for _, o := range list.Items {
			if svc, err := a.decode(o.Value); err == nil {
				known[o.Key] = heldClaims{uid: svc.UID, keys: heldBy(svc)}
			}
		}
		events, errs := a.store.Watch(ctx, prefix, list.Revision)
	follow:
		for {
			select {
			case <-repairs.C:
				a.repair(ctx)
			case ev, ok := <-events:
				if !ok {
					break follow
				}
				a.follow(ctx, ev, known)
			}
		}
		<-errs
	}
}

type heldClaims struct {
	uid  types.UID
	keys map[string]bool
}

// follow releases what a Service no longer holds after one watch event on it.
func (a *serviceAllocator) follow(ctx context.Context, ev storage.Event, known map[string]heldClaims) {
	before := known[ev.Key]
	var after heldClaims
	if ev.Type != storage.Deleted {
		svc, err := a.decode(ev.Value)
		if err != nil {
			return
		}
		after = heldClaims{uid: svc.UID, keys: heldBy(svc)}
		known[ev.Key] = after
	} else {
		delete(known, ev.Key)
	}
	for k := range before.keys {
		if before.uid != after.uid || !after.keys[k] {
			a.releaseIfOwned(ctx, k, before.uid)
		}
	}
}

// releaseIfOwned deletes a claim key if uid still holds it.
func (a *serviceAllocator) releaseIfOwned(ctx context.Context, key string, uid types.UID) {
	o, err := a.store.Get(ctx, key)
	if err != nil {
		return
	}
	var c claim
	if json.Unmarshal(o.Value, &c) != nil || c.UID != uid {
		return
	}
	_, _ = a.store.Delete(ctx, key, o.Revision)
}

// repair frees claims older than claimGrace whose Service is gone or no longer holds them.
func (a *serviceAllocator) repair(ctx context.Context) {
	for _, prefix := range []string{claimPrefixIPs, claimPrefixPorts} {
		list, err := a.store.List(ctx, prefix, storage.ListOptions{})
		if err != nil {
			continue
		}
		for _, o := range list.Items {
			var c claim
			if json.Unmarshal(o.Value, &c) != nil || time.Since(c.Since) < claimGrace {
				continue
			}
			s, err := a.store.Get(ctx, objectKey(a.res, c.Namespace, c.Name))
			if err == nil {
				if svc, err := a.decode(s.Value); err == nil && svc.UID == c.UID && heldBy(svc)[o.Key] {
					continue
				}
			} else if !errors.Is(err, storage.ErrNotFound) {
				continue
			}
			_, _ = a.store.Delete(ctx, o.Key, o.Revision)
		}
	}
}

func (a *serviceAllocator) decode(data []byte) (*corev1.Service, error) {
	obj, err := decodeStored(a.res, data, 0)
	if err != nil {
		return nil, err
	}
	return obj.(*corev1.Service), nil
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
