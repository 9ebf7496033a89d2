package framework

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
)

// NodeToStatus holds why each rejected node was rejected. Nodes not listed explicitly
// share one status (AbsentStatus): every node when PreFilter rejected the pod, the nodes a
// PreFilterResult left out, or none.
type NodeToStatus struct {
	nodes  map[string]*Status
	absent *Status
}

// NewNodeToStatus returns an empty map whose absent nodes are UnschedulableAndUnresolvable
// without a reason (they are then not counted in messages).
func NewNodeToStatus() *NodeToStatus {
	return &NodeToStatus{nodes: map[string]*Status{}, absent: NewStatus(UnschedulableAndUnresolvable)}
}

// Set records a node's status.
func (m *NodeToStatus) Set(node string, s *Status) { m.nodes[node] = s }

// Get returns a node's status, the absent status if it was not recorded.
func (m *NodeToStatus) Get(node string) *Status {
	if s, ok := m.nodes[node]; ok {
		return s
	}
	return m.absent
}

// Len counts the explicitly recorded nodes.
func (m *NodeToStatus) Len() int { return len(m.nodes) }

// SetAbsentStatus sets the status of every node not recorded explicitly.
func (m *NodeToStatus) SetAbsentStatus(s *Status) { m.absent = s }

// AbsentStatus returns the status of the nodes not recorded explicitly.
func (m *NodeToStatus) AbsentStatus() *Status { return m.absent }

// Each calls f for every recorded node.
func (m *NodeToStatus) Each(f func(node string, s *Status)) {
	for n, s := range m.nodes {
		f(n, s)
	}
}

// NodesWithCode returns the nodes of the list whose status has the code, counting
// absent nodes as the absent status says.
func (m *NodeToStatus) NodesWithCode(nodes []*NodeInfo, code Code) []*NodeInfo {
	var out []*NodeInfo
	for _, n := range nodes {
		if m.Get(n.Name()).Code() == code {
			out = append(out, n)
		}
	}
	return out
}

// Diagnosis is what a failed scheduling attempt learned, to explain it and to know which
// cluster events may help.
type Diagnosis struct {
	NodeToStatus *NodeToStatus
	// UnschedulablePlugins rejected the pod on some node.
	UnschedulablePlugins sets.Set[string]
	// PreFilterMsg is set when a PreFilter plugin rejected the pod for every node.
	PreFilterMsg string
	// PostFilterMsg is what PostFilter (preemption) said.
	PostFilterMsg string
}

// AddPluginStatus records the plugin behind a rejection.
func (d *Diagnosis) AddPluginStatus(s *Status) {
	if s.Plugin() == "" || !s.IsRejected() {
		return
	}
	if d.UnschedulablePlugins == nil {
		d.UnschedulablePlugins = sets.New[string]()
	}
	d.UnschedulablePlugins.Insert(s.Plugin())
}

// NoNodeAvailableMsg starts every FitError message.
const NoNodeAvailableMsg = "0/%v nodes are available"

// FitError says that no node fits a pod, and why, node count by reason.
type FitError struct {
	Pod         *corev1.Pod
	NumAllNodes int
	Diagnosis   Diagnosis
}

// Error words the failure as Kubernetes 1.33 does: "0/N nodes are available:", then the
// PreFilter message, or each reason with the number of nodes it rejected, sorted as
// strings, then PostFilter's message.
func (f *FitError) Error() string {
	msg := fmt.Sprintf(NoNodeAvailableMsg+":", f.NumAllNodes)
	if f.Diagnosis.PreFilterMsg != "" {
		msg += fmt.Sprintf(" %v.", f.Diagnosis.PreFilterMsg)
	} else if m := f.Diagnosis.NodeToStatus; m != nil {
		counts := map[string]int{}
		m.Each(func(_ string, s *Status) {
			for _, r := range s.Reasons() {
				counts[r]++
			}
		})
		if m.Len() < f.NumAllNodes {
			for _, r := range m.AbsentStatus().Reasons() {
				counts[r] += f.NumAllNodes - m.Len()
			}
		}
		// Sorted as whole strings, count first, as Kubernetes does: "10 x" sorts before "2 y".
		histogram := make([]string, 0, len(counts))
		for r, n := range counts {
			histogram = append(histogram, fmt.Sprintf("%v %v", n, r))
		}
		sort.Strings(histogram)
		if len(histogram) > 0 {
			msg += fmt.Sprintf(" %v.", strings.Join(histogram, ", "))
		}
	}
	if f.Diagnosis.PostFilterMsg != "" {
		msg += " " + f.Diagnosis.PostFilterMsg
	}
	return msg
}
