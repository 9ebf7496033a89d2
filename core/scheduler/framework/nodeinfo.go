package framework

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
	resourcehelper "k8s.io/component-helpers/resource"
)

// Kubernetes scores a container that requests nothing as if it asked for 100m cpu and
// 200Mi memory, so that many "free" pods do not all pile onto one node.
const (
	// DefaultMilliCPURequest is the cpu a container without a cpu request counts for in scoring.
	DefaultMilliCPURequest int64 = 100
	// DefaultMemoryRequest is the memory a container without a memory request counts for in scoring.
	DefaultMemoryRequest int64 = 200 * 1024 * 1024
)

// Resource is an amount of each resource the scheduler accounts for.
type Resource struct {
	MilliCPU         int64
	Memory           int64
	EphemeralStorage int64
	// AllowedPodNumber is only meaningful for a node's allocatable.
	AllowedPodNumber int
	// Scalar holds extended resources (example.com/gpu, hugepages-2Mi ...).
	Scalar map[corev1.ResourceName]int64
}

// NewResource converts a ResourceList.
func NewResource(rl corev1.ResourceList) Resource {
	var r Resource
	r.Add(rl)
	return r
}

// Add adds a ResourceList to r.
func (r *Resource) Add(rl corev1.ResourceList) {
	for name, q := range rl {
		switch name {
		case corev1.ResourceCPU:
			r.MilliCPU += q.MilliValue()
		case corev1.ResourceMemory:
			r.Memory += q.Value()
		case corev1.ResourceEphemeralStorage:
			r.EphemeralStorage += q.Value()
		case corev1.ResourcePods:
			r.AllowedPodNumber += int(q.Value())
		default:
			if isScalar(name) {
				if r.Scalar == nil {
					r.Scalar = map[corev1.ResourceName]int64{}
				}
				r.Scalar[name] += q.Value()
			}
		}
	}
}

// isScalar reports whether the scheduler accounts a resource beyond cpu, memory and
// ephemeral storage: extended and prefixed resources (a "/" in the name, but not quota's
// "requests." names) and hugepages.
func isScalar(name corev1.ResourceName) bool {
	s := string(name)
	if strings.HasPrefix(s, corev1.ResourceHugePagesPrefix) {
		return true
	}
	return strings.Contains(s, "/") && !strings.HasPrefix(s, "requests.")
}

func (r *Resource) plus(o Resource, sign int64) {
	r.MilliCPU += sign * o.MilliCPU
	r.Memory += sign * o.Memory
	r.EphemeralStorage += sign * o.EphemeralStorage
	for k, v := range o.Scalar {
		if r.Scalar == nil {
			r.Scalar = map[corev1.ResourceName]int64{}
		}
		r.Scalar[k] += sign * v
	}
}

// Clone returns a deep copy.
func (r Resource) Clone() Resource {
	out := r
	if r.Scalar != nil {
		out.Scalar = make(map[corev1.ResourceName]int64, len(r.Scalar))
		for k, v := range r.Scalar {
			out.Scalar[k] = v
		}
	}
	return out
}

// PodInfo is a pod with what the scheduler computes from it once.
type PodInfo struct {
	Pod *corev1.Pod
	// Requests are the pod's effective requests: the larger of its containers' sum and
	// each init container (sidecars included), plus the pod overhead.
	Requests Resource
	// NonZeroRequests count a missing cpu or memory request as the scoring default.
	NonZeroRequests Resource
	// Affinity holds the pod's inter-pod affinity terms, parsed once when the pod joins a
	// node (nil when it has none, or when a selector does not parse, which validation
	// prevents), so that the inter-pod plugins match them without parsing.
	Affinity *PodAffinityTerms
}

// NewPodInfo computes a pod's requests.
func NewPodInfo(pod *corev1.Pod) *PodInfo {
	nonZero := corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewMilliQuantity(DefaultMilliCPURequest, resource.DecimalSI),
		corev1.ResourceMemory: *resource.NewQuantity(DefaultMemoryRequest, resource.BinarySI),
	}
	req := resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{})
	nz := resourcehelper.PodRequests(pod, resourcehelper.PodResourcesOptions{NonMissingContainerRequests: nonZero})
	pi := &PodInfo{Pod: pod, Requests: NewResource(req)}
	nzr := NewResource(nz)
	pi.NonZeroRequests = Resource{MilliCPU: nzr.MilliCPU, Memory: nzr.Memory}
	pi.Affinity, _ = NewPodAffinityTerms(pod)
	return pi
}

// ProtocolPort is a host port with its protocol.
type ProtocolPort struct {
	Protocol string
	Port     int32
}

// bindAll is the host IP that means every address of the node.
const bindAll = "0.0.0.0"

// HostPortInfo is the set of host ports in use on a node, by host IP.
type HostPortInfo map[string]map[ProtocolPort]struct{}

func sanitizePort(ip, protocol string) (string, string) {
	if ip == "" {
		ip = bindAll
	}
	if protocol == "" {
		protocol = string(corev1.ProtocolTCP)
	}
	return ip, protocol
}

// Add records a used host port; port 0 (no host port) is ignored.
func (h HostPortInfo) Add(ip, protocol string, port int32) {
	if port <= 0 {
		return
	}
	ip, protocol = sanitizePort(ip, protocol)
	m := h[ip]
	if m == nil {
		m = map[ProtocolPort]struct{}{}
		h[ip] = m
	}
	m[ProtocolPort{protocol, port}] = struct{}{}
}

// Remove forgets a used host port.
func (h HostPortInfo) Remove(ip, protocol string, port int32) {
	if port <= 0 {
		return
	}
	ip, protocol = sanitizePort(ip, protocol)
	if m := h[ip]; m != nil {
		delete(m, ProtocolPort{protocol, port})
		if len(m) == 0 {
			delete(h, ip)
		}
	}
}

// Conflicts reports whether a host port is taken: by the same IP, or because either side
// binds every address (0.0.0.0).
func (h HostPortInfo) Conflicts(ip, protocol string, port int32) bool {
	if port <= 0 {
		return false
	}
	ip, protocol = sanitizePort(ip, protocol)
	pp := ProtocolPort{protocol, port}
	if ip == bindAll {
		for _, m := range h {
			if _, ok := m[pp]; ok {
				return true
			}
		}
		return false
	}
	for _, key := range []string{bindAll, ip} {
		if _, ok := h[key][pp]; ok {
			return true
		}
	}
	return false
}

// NodeInfo is the scheduler's view of one node: the Node, the pods bound or assumed on it,
// and what they use. Plugins read it; only the cache changes it.
type NodeInfo struct {
	node             *corev1.Node
	Pods             []*PodInfo
	Allocatable      Resource
	Requested        Resource
	NonZeroRequested Resource
	UsedPorts        HostPortInfo
	// PodsWithAffinity and PodsWithRequiredAntiAffinity count pods with such terms, so the
	// inter-pod plugins can skip nodes quickly.
	PodsWithAffinity             int
	PodsWithRequiredAntiAffinity int
	// Generation rises on every change, so that a snapshot copies only changed nodes.
	Generation int64
}

// NewNodeInfo returns a NodeInfo holding the given pods and no node yet.
func NewNodeInfo(pods ...*corev1.Pod) *NodeInfo {
	n := &NodeInfo{UsedPorts: HostPortInfo{}}
	for _, p := range pods {
		n.AddPod(p)
	}
	return n
}

// Node returns the node, nil while only pods are known (a pod's node can arrive first).
func (n *NodeInfo) Node() *corev1.Node {
	if n == nil {
		return nil
	}
	return n.node
}

// Name returns the node's name, "" without a node.
func (n *NodeInfo) Name() string {
	if n.Node() == nil {
		return ""
	}
	return n.node.Name
}

// SetNode sets the node and its allocatable resources.
func (n *NodeInfo) SetNode(node *corev1.Node) {
	n.node = node
	n.Allocatable = NewResource(node.Status.Allocatable)
}

// RemoveNode forgets the node but keeps its pods (their deletions may still come).
func (n *NodeInfo) RemoveNode() { n.node = nil }

// AddPod adds a pod to the node's accounting.
func (n *NodeInfo) AddPod(pod *corev1.Pod) { n.AddPodInfo(NewPodInfo(pod)) }

// AddPodInfo adds a pod whose requests are already computed.
func (n *NodeInfo) AddPodInfo(pi *PodInfo) {
	n.Pods = append(n.Pods, pi)
	n.update(pi, 1)
}

// RemovePod removes a pod (matched by UID) and reports whether it was there.
func (n *NodeInfo) RemovePod(pod *corev1.Pod) bool {
	for i, pi := range n.Pods {
		if pi.Pod.UID == pod.UID {
			last := len(n.Pods) - 1
			n.Pods[i] = n.Pods[last]
			n.Pods[last] = nil
			n.Pods = n.Pods[:last]
			n.update(pi, -1)
			return true
		}
	}
	return false
}

// HasPod reports whether a pod with this UID is on the node.
func (n *NodeInfo) HasPod(uid types.UID) bool {
	for _, pi := range n.Pods {
		if pi.Pod.UID == uid {
			return true
		}
	}
	return false
}

func (n *NodeInfo) update(pi *PodInfo, sign int64) {
	n.Requested.plus(pi.Requests, sign)
	n.NonZeroRequested.plus(pi.NonZeroRequests, sign)
	if a := pi.Pod.Spec.Affinity; a != nil {
		if a.PodAffinity != nil || a.PodAntiAffinity != nil {
			n.PodsWithAffinity += int(sign)
		}
		if a.PodAntiAffinity != nil && len(a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution) > 0 {
			n.PodsWithRequiredAntiAffinity += int(sign)
		}
	}
	for _, p := range HostPorts(pi.Pod) {
		if sign > 0 {
			n.UsedPorts.Add(p.HostIP, string(p.Protocol), p.HostPort)
		} else {
			n.UsedPorts.Remove(p.HostIP, string(p.Protocol), p.HostPort)
		}
	}
}

// HostPorts lists the host ports a pod takes on its node: its containers' and its
// sidecars' (init containers that keep running).
func HostPorts(pod *corev1.Pod) []corev1.ContainerPort {
	var out []corev1.ContainerPort
	for _, c := range pod.Spec.InitContainers {
		if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
			continue
		}
		for _, p := range c.Ports {
			if p.HostPort > 0 {
				out = append(out, p)
			}
		}
	}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.HostPort > 0 {
				out = append(out, p)
			}
		}
	}
	return out
}

// Clone returns a copy that can be changed (a preemption dry run, a snapshot) without
// touching n. The pods themselves are shared: they are never changed in place.
func (n *NodeInfo) Clone() *NodeInfo {
	out := &NodeInfo{
		node:                         n.node,
		Pods:                         append([]*PodInfo(nil), n.Pods...),
		Allocatable:                  n.Allocatable.Clone(),
		Requested:                    n.Requested.Clone(),
		NonZeroRequested:             n.NonZeroRequested.Clone(),
		UsedPorts:                    make(HostPortInfo, len(n.UsedPorts)),
		PodsWithAffinity:             n.PodsWithAffinity,
		PodsWithRequiredAntiAffinity: n.PodsWithRequiredAntiAffinity,
		Generation:                   n.Generation,
	}
	for ip, m := range n.UsedPorts {
		c := make(map[ProtocolPort]struct{}, len(m))
		for k := range m {
			c[k] = struct{}{}
		}
		out.UsedPorts[ip] = c
	}
	return out
}
