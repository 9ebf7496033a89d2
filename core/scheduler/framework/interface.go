package framework

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/client-go/kubernetes"
)

// The interfaces below are the contract between the framework and a plugin, one per
// extension point. They take and return only plain data (API objects, NodeInfo, Status),
// never the framework itself, so that an out-of-process plugin can implement them behind a
// go-plugin client; what a plugin needs of the scheduler it gets from the Handle it is
// built with.

// MaxNodeScore and MinNodeScore bound what a Score plugin returns after NormalizeScore.
const (
	MaxNodeScore int64 = 100
	MinNodeScore int64 = 0
)

// Plugin is what every plugin is: a name, unique in a profile.
type Plugin interface {
	Name() string
}

// Signer is implemented by plugins that let the scheduler batch alike pods (opportunistic
// batching, as Kubernetes 1.35 has it): consecutive pods with the same signature reuse
// the previous pod's filtering and scoring, checked again on the nodes they are placed
// on. The framework's base signature covers the pod's scheduling fields (namespace,
// labels, node selector and affinity, tolerations, resource requests, host ports,
// priority, volumes); a plugin returns what else of the pod its answers depend on (""
// when nothing), and ok false when it cannot treat the pod's answers as reusable at all
// (inter-pod affinity terms, topology spread constraints, claims to bind). A profile with
// a Filter or Score plugin that is not a Signer never batches.
type Signer interface {
	SignPod(pod *corev1.Pod) (fragment string, ok bool)
}

// RelativeScorer is a Score plugin without ScoreExtensions whose scores are nevertheless
// relative to the other nodes scored with them (an out-of-process plugin normalizes in its
// batched Score call). A batch keeps such scores rather than scoring one node again.
type RelativeScorer interface {
	ScoresAreRelative() bool
}

// QueuedPodInfo is a pod waiting in the scheduling queue, with the queue's bookkeeping.
type QueuedPodInfo struct {
	*PodInfo
	// Timestamp is when the pod last entered the queue; it orders pods of equal priority.
	Timestamp time.Time
	// InitialAttemptTimestamp is when the pod was first taken off the queue.
	InitialAttemptTimestamp time.Time
	// Attempts counts scheduling attempts; the backoff doubles with each.
	Attempts int
	// UnschedulablePlugins are the plugins that rejected the pod in its last attempt.
	UnschedulablePlugins sets.Set[string]
}

// QueueSortPlugin orders the active queue: the pod for which Less is true goes first.
type QueueSortPlugin interface {
	Plugin
	Less(a, b *QueuedPodInfo) bool
}

// PreFilterResult narrows the nodes Filter sees; nil NodeNames means every node.
type PreFilterResult struct {
	NodeNames sets.Set[string]
	// narrowedBy names the plugins that narrowed the nodes, for the message of the rest.
	narrowedBy []string
}

// AllNodes reports whether the result leaves every node in.
func (r *PreFilterResult) AllNodes() bool { return r == nil || r.NodeNames == nil }

// PreFilterPlugin computes, once per pod, what its Filter needs, or rejects the pod
// outright (the rejection then stands for every node).
type PreFilterPlugin interface {
	Plugin
	PreFilter(ctx context.Context, state *CycleState, pod *corev1.Pod) (*PreFilterResult, *Status)
}

// PreFilterExtensions let preemption tell a PreFilter plugin that a pod was added to or
// removed from a node in a dry run, so that its precomputed state follows.
type PreFilterExtensions interface {
	AddPod(ctx context.Context, state *CycleState, pod *corev1.Pod, add *PodInfo, node *NodeInfo) *Status
	RemovePod(ctx context.Context, state *CycleState, pod *corev1.Pod, remove *PodInfo, node *NodeInfo) *Status
}

// FilterPlugin says whether the pod fits one node. It runs for many nodes in parallel and
// must not change the NodeInfo.
type FilterPlugin interface {
	Plugin
	Filter(ctx context.Context, state *CycleState, pod *corev1.Pod, node *NodeInfo) *Status
}

// PostFilterResult is what a PostFilter plugin (preemption) proposes: a node to nominate.
type PostFilterResult struct {
	NominatedNodeName string
}

// PostFilterPlugin runs when no node fits, to make room (preemption). It gets each
// rejected node's status.
type PostFilterPlugin interface {
	Plugin
	PostFilter(ctx context.Context, state *CycleState, pod *corev1.Pod, statuses *NodeToStatus) (*PostFilterResult, *Status)
}

// PreScorePlugin computes, once per pod, what Score needs for the feasible nodes. An
// out-of-process plugin can use it to receive every candidate node in one call.
type PreScorePlugin interface {
	Plugin
	PreScore(ctx context.Context, state *CycleState, pod *corev1.Pod, nodes []*NodeInfo) *Status
}

// NodeScore is one node's score from one plugin.
type NodeScore struct {
	Name  string
	Score int64
}

// ScorePlugin ranks a feasible node; scores are brought into [MinNodeScore, MaxNodeScore]
// by NormalizeScore when the plugin has ScoreExtensions.
type ScorePlugin interface {
	Plugin
	Score(ctx context.Context, state *CycleState, pod *corev1.Pod, node *NodeInfo) (int64, *Status)
	// ScoreExtensions returns nil when the plugin's scores need no normalizing.
	ScoreExtensions() ScoreExtensions
}

// ScoreExtensions rescale one plugin's scores across all the nodes it scored.
type ScoreExtensions interface {
	NormalizeScore(ctx context.Context, state *CycleState, pod *corev1.Pod, scores []NodeScore) *Status
}

// ReservePlugin keeps its own accounting of the chosen node before the bind is done;
// Unreserve undoes it when a later step fails and must be idempotent.
type ReservePlugin interface {
	Plugin
	Reserve(ctx context.Context, state *CycleState, pod *corev1.Pod, nodeName string) *Status
	Unreserve(ctx context.Context, state *CycleState, pod *corev1.Pod, nodeName string)
}

// PermitPlugin approves, rejects or holds (Wait, up to the returned timeout) a pod before it
// is bound; a held pod is released through the Handle's WaitingPod.
type PermitPlugin interface {
	Plugin
	Permit(ctx context.Context, state *CycleState, pod *corev1.Pod, nodeName string) (*Status, time.Duration)
}

// PreBindPlugin does what must happen before the bind (attach a volume ...).
type PreBindPlugin interface {
	Plugin
	PreBind(ctx context.Context, state *CycleState, pod *corev1.Pod, nodeName string) *Status
}

// BindPlugin binds the pod to the node; it returns Skip to leave the pod to the next one.
type BindPlugin interface {
	Plugin
	Bind(ctx context.Context, state *CycleState, pod *corev1.Pod, nodeName string) *Status
}

// NodeLister lists the nodes of the cycle's snapshot.
type NodeLister interface {
	// List returns every node with a Node object, in a stable order.
	List() []*NodeInfo
	// Get returns one node, or nil.
	Get(name string) *NodeInfo
}

// AffinityCounter is what a NodeLister may also offer: the number of pods with
// inter-pod terms over all its nodes, so that the inter-pod plugins can skip a pod at once
// when no existing pod's terms can concern it, instead of looking at every node.
type AffinityCounter interface {
	NumPodsWithAffinity() int
	NumPodsWithRequiredAntiAffinity() int
}

// WaitingPod is a pod a Permit plugin holds.
type WaitingPod interface {
	Pod() *corev1.Pod
	// Allow lets the named plugin's hold go; the pod binds once no plugin holds it.
	Allow(plugin string)
	// Reject fails the pod's binding cycle with the message.
	Reject(plugin, msg string)
}

// Handle is what the scheduler offers plugins: the cycle's snapshot, the API client, the
// pods that Permit holds.
type Handle interface {
	Snapshot() NodeLister
	Client() kubernetes.Interface
	GetWaitingPod(uid string) WaitingPod
}
