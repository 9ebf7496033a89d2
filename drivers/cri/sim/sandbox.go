package sim

import (
	"context"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// sandbox is a simulated pod sandbox: an IP, a hostname, a log directory.
type sandbox struct {
	id          string
	cfg         *runtimeapi.PodSandboxConfig
	handler     string
	state       runtimeapi.PodSandboxState
	createdAt   time.Time
	ip          string // "" on the host's network
	hostNetwork bool
	name        string // the reserved name
}

func (s *sandbox) hostname() string {
	if h := s.cfg.GetHostname(); h != "" {
		return h
	}
	h, _ := osHostname()
	return h
}

// sandboxName is the name containerd reserves for a pod attempt.
func sandboxName(m *runtimeapi.PodSandboxMetadata) string {
	return fmt.Sprintf("%s_%s_%s_%d", m.GetName(), m.GetNamespace(), m.GetUid(), m.GetAttempt())
}

// RunPodSandbox creates a ready sandbox with an IP from the pod CIDR (none on the host's
// network).
func (r *Runtime) RunPodSandbox(_ context.Context, req *runtimeapi.RunPodSandboxRequest) (*runtimeapi.RunPodSandboxResponse, error) {
	cfg := req.GetConfig()
	if cfg.GetMetadata() == nil || cfg.Metadata.Name == "" || cfg.Metadata.Uid == "" || cfg.Metadata.Namespace == "" {
		return nil, status.Error(codes.InvalidArgument, "sandbox config must include metadata with name, namespace and uid")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	name := sandboxName(cfg.Metadata)
	if owner, ok := r.names[name]; ok {
		return nil, status.Errorf(codes.AlreadyExists, "failed to reserve sandbox name %q: name %q is reserved for %q", name, name, owner)
	}
	sb := &sandbox{
		id:          newID(),
		cfg:         cfg,
		handler:     req.RuntimeHandler,
		state:       runtimeapi.PodSandboxState_SANDBOX_READY,
		createdAt:   r.now(),
		hostNetwork: cfg.GetLinux().GetSecurityContext().GetNamespaceOptions().GetNetwork() == runtimeapi.NamespaceMode_NODE,
		name:        name,
	}
	if !sb.hostNetwork {
		ip, err := r.ipPool.allocate(sb.id)
		if err != nil {
			return nil, status.Errorf(codes.Unknown, "failed to setup network for sandbox %q: plugin type=\"host-local\" failed (add): failed to allocate for range 0: %v", sb.id, err)
		}
		sb.ip = ip
	}
	r.names[name] = sb.id
	r.sandboxes[sb.id] = sb
	return &runtimeapi.RunPodSandboxResponse{PodSandboxId: sb.id}, nil
}

// StopPodSandbox kills the sandbox's running containers and releases its IP; the status
// still shows the IP, as containerd's does. Stopping a stopped or unknown sandbox is not
// an error.
func (r *Runtime) StopPodSandbox(_ context.Context, req *runtimeapi.StopPodSandboxRequest) (*runtimeapi.StopPodSandboxResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sb, _, ok := lookup(r.sandboxes, req.PodSandboxId)
	if !ok {
		return &runtimeapi.StopPodSandboxResponse{}, r.idempotentOK("sandbox", req.PodSandboxId)
	}
	if sb.state == runtimeapi.PodSandboxState_SANDBOX_NOTREADY {
		return &runtimeapi.StopPodSandboxResponse{}, r.idempotentOK("sandbox", req.PodSandboxId)
	}
	r.stopSandboxLocked(sb)
	return &runtimeapi.StopPodSandboxResponse{}, nil
}

func (r *Runtime) stopSandboxLocked(sb *sandbox) {
	for _, c := range r.containers {
		if c.sandbox == sb && c.state == runtimeapi.ContainerState_CONTAINER_RUNNING {
			r.killLocked(c)
		}
	}
	if sb.state == runtimeapi.PodSandboxState_SANDBOX_READY && sb.ip != "" {
		r.ipPool.release(sb.ip)
	}
	sb.state = runtimeapi.PodSandboxState_SANDBOX_NOTREADY
}

// RemovePodSandbox stops the sandbox if needed and removes it with its containers.
func (r *Runtime) RemovePodSandbox(_ context.Context, req *runtimeapi.RemovePodSandboxRequest) (*runtimeapi.RemovePodSandboxResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sb, id, ok := lookup(r.sandboxes, req.PodSandboxId)
	if !ok {
		return &runtimeapi.RemovePodSandboxResponse{}, r.idempotentOK("sandbox", req.PodSandboxId)
	}
	r.stopSandboxLocked(sb)
	if r.cfg.Defect == DefectSandboxSurvivesRemoval {
		return &runtimeapi.RemovePodSandboxResponse{}, nil
	}
	for cid, c := range r.containers {
		if c.sandbox == sb {
			r.removeContainerLocked(cid, c)
		}
	}
	delete(r.names, sb.name)
	delete(r.sandboxes, id)
	return &runtimeapi.RemovePodSandboxResponse{}, nil
}

// PodSandboxStatus reports a sandbox; verbose adds its config, IP and port mappings as
// JSON under "info".
func (r *Runtime) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sb, _, ok := lookup(r.sandboxes, req.PodSandboxId)
	if !ok {
		return nil, notFound("sandbox", req.PodSandboxId)
	}
	resp := &runtimeapi.PodSandboxStatusResponse{Status: sb.status(), Timestamp: r.now().UnixNano()}
	if req.Verbose {
		info, err := json.Marshal(map[string]any{
			"config":       sb.cfg,
			"ip":           sb.ip,
			"hostname":     sb.cfg.GetHostname(),
			"portMappings": sb.cfg.GetPortMappings(),
			"runtime":      RuntimeName,
		})
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode sandbox info: %v", err)
		}
		resp.Info = map[string]string{"info": string(info)}
	}
	return resp, nil
}

func (s *sandbox) status() *runtimeapi.PodSandboxStatus {
	st := &runtimeapi.PodSandboxStatus{
		Id:             s.id,
		Metadata:       s.cfg.Metadata,
		State:          s.state,
		CreatedAt:      s.createdAt.UnixNano(),
		Network:        &runtimeapi.PodSandboxNetworkStatus{Ip: s.ip},
		Labels:         copyMap(s.cfg.Labels),
		Annotations:    copyMap(s.cfg.Annotations),
		RuntimeHandler: s.handler,
		Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{
			Options: s.cfg.GetLinux().GetSecurityContext().GetNamespaceOptions(),
		}},
	}
	return st
}

// ListPodSandbox lists the sandboxes that match the filter's ID, state and labels.
func (r *Runtime) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	f := req.GetFilter()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*runtimeapi.PodSandbox
	add := func(sb *sandbox) {
		if f.GetState() != nil && sb.state != f.State.State {
			return
		}
		if !matchLabels(sb.cfg.Labels, f.GetLabelSelector()) {
			return
		}
		out = append(out, &runtimeapi.PodSandbox{
			Id: sb.id, Metadata: sb.cfg.Metadata, State: sb.state, CreatedAt: sb.createdAt.UnixNano(),
			Labels: copyMap(sb.cfg.Labels), Annotations: copyMap(sb.cfg.Annotations), RuntimeHandler: sb.handler,
		})
	}
	if f.GetId() != "" {
		if sb, _, ok := lookup(r.sandboxes, f.Id); ok {
			add(sb)
		}
	} else {
		for _, sb := range r.sandboxes {
			add(sb)
		}
	}
	return &runtimeapi.ListPodSandboxResponse{Items: out}, nil
}

// UpdatePodSandboxResources accepts the pod's new resources: a simulated sandbox has no
// cgroup to change.
func (r *Runtime) UpdatePodSandboxResources(_ context.Context, req *runtimeapi.UpdatePodSandboxResourcesRequest) (*runtimeapi.UpdatePodSandboxResourcesResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, _, ok := lookup(r.sandboxes, req.PodSandboxId); !ok {
		return nil, notFound("sandbox", req.PodSandboxId)
	}
	return &runtimeapi.UpdatePodSandboxResourcesResponse{}, nil
}

// ipPool hands out the addresses of a CIDR round-robin, as the host-local IPAM plugin
// does, skipping the network address, the first host (the bridge's gateway) and the
// broadcast address.
type ipPool struct {
	base  *big.Int
	size  int64
	ipv6  bool
	next  int64
	inUse map[string]string // IP -> sandbox ID
	cidr  string
}

func newIPPool(cidr string) (*ipPool, error) {
	ip, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, err
	}
	ones, bits := n.Mask.Size()
	if bits-ones < 2 {
		return nil, fmt.Errorf("%s has no room for pods", cidr)
	}
	size := int64(1) << 62
	if bits-ones < 62 {
		size = int64(1) << (bits - ones)
	}
	base := n.IP
	if ip.To4() != nil {
		base = n.IP.To4()
	}
	return &ipPool{
		base: new(big.Int).SetBytes(base), size: size, ipv6: ip.To4() == nil,
		next: 2, inUse: map[string]string{}, cidr: cidr,
	}, nil
}

func (p *ipPool) allocate(owner string) (string, error) {
	// Usable offsets are 2 .. size-2 (the last one is the broadcast address in IPv4).
	last := p.size - 2
	if p.ipv6 {
		last = p.size - 1
	}
	span := last - 1
	for i := int64(0); i < span && i < 1<<20; i++ {
		off := p.next
		p.next++
		if p.next > last {
			p.next = 2
		}
		ip := p.ipAt(off)
		if _, taken := p.inUse[ip]; !taken {
			p.inUse[ip] = owner
			return ip, nil
		}
	}
	return "", fmt.Errorf("no IP addresses available in range set: %s", p.cidr)
}

func (p *ipPool) ipAt(off int64) string {
	v := new(big.Int).Add(p.base, big.NewInt(off))
	n := 4
	if p.ipv6 {
		n = 16
	}
	b := v.FillBytes(make([]byte, n))
	return net.IP(b).String()
}

func (p *ipPool) release(ip string) { delete(p.inUse, ip) }
