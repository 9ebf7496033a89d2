// Package scheduler is the SDK for berth's out-of-process scheduler plugins: one Go
// interface per extension point of the scheduling framework, Serve, which a plugin's main
// calls to run it under hashicorp/go-plugin, and the gRPC glue of both sides of the
// protocol in specs/scheduler/v1/scheduler.proto (the plugin's server, and the Client the
// scheduler uses).
//
// A plugin is a value with Name and Version that implements one or more of the extension
// interfaces below (FilterPlugin, ScorePlugin ...). The SDK announces to the scheduler the
// extension points the value implements, keeps a copy of the cluster's nodes up to date
// from the scheduler's deltas, and turns the scheduler's batched calls (one pod, many
// nodes) into one call of the plugin's method per node, with full *corev1.Node values.
package scheduler

import (
	"context"
	"fmt"
	"regexp"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// MaxNodeScore and MinNodeScore bound a Score (after NormalizeScore, when the plugin
// normalizes).
const (
	MaxNodeScore int64 = 100
	MinNodeScore int64 = 0
)

// Plugin is what every scheduler plugin is: a name, as the scheduler configuration names
// it, and a version of its own (free-form, shown in the scheduler's logs).
type Plugin interface {
	Name() string
	Version() string
}

// PreFilterResult narrows the nodes Filter sees; a nil result (or nil NodeNames) keeps
// every node.
type PreFilterResult struct {
	NodeNames []string
}

// PreFilterPlugin runs once per pod before Filter; a rejection stands for every node.
// Returning Skip skips the plugin's Filter for the pod.
type PreFilterPlugin interface {
	Plugin
	PreFilter(ctx context.Context, pod *corev1.Pod) (*PreFilterResult, *Status)
}

// FilterPlugin says whether the pod fits one node: nil or Success when it does,
// Unschedulable or UnschedulableAndUnresolvable with a reason when not. The scheduler
// sends many nodes per call; the SDK calls Filter for each, in order, on one goroutine.
type FilterPlugin interface {
	Plugin
	Filter(ctx context.Context, pod *corev1.Pod, node *corev1.Node) *Status
}

// PostFilterPlugin runs when no node fits the pod (preemption-like plugins); rejected maps
// each rejected node to its status. It returns the node to nominate, if any.
type PostFilterPlugin interface {
	Plugin
	PostFilter(ctx context.Context, pod *corev1.Pod, rejected map[string]*Status) (nominatedNode string, status *Status)
}

// PreScorePlugin runs once per pod with every feasible node before Score; Skip skips the
// plugin's Score for the pod.
type PreScorePlugin interface {
	Plugin
	PreScore(ctx context.Context, pod *corev1.Pod, nodes []*corev1.Node) *Status
}

// ScorePlugin ranks one feasible node. Without NormalizeScore the score must be in
// [MinNodeScore, MaxNodeScore]; the scheduler refuses (and restarts) a plugin whose score
// is out of range.
type ScorePlugin interface {
	Plugin
	Score(ctx context.Context, pod *corev1.Pod, node *corev1.Node) (int64, *Status)
}

// NodeScore is one node's score.
type NodeScore struct {
	Name  string
	Score int64
}

// NormalizeScorePlugin rescales, in place, the scores its Score gave a pod's nodes into
// [MinNodeScore, MaxNodeScore].
type NormalizeScorePlugin interface {
	ScorePlugin
	NormalizeScore(ctx context.Context, pod *corev1.Pod, scores []NodeScore) *Status
}

// ReservePlugin counts a pod on its chosen node before the bind; Unreserve undoes it when a
// later step fails and must be idempotent.
type ReservePlugin interface {
	Plugin
	Reserve(ctx context.Context, pod *corev1.Pod, nodeName string) *Status
	Unreserve(ctx context.Context, pod *corev1.Pod, nodeName string)
}

// PermitPlugin approves (nil), rejects, or holds (Wait, up to the duration) a pod before
// it is bound. API v1 gives a plugin no way to release a held pod early: a hold ends at its
// timeout, rejecting the pod.
type PermitPlugin interface {
	Plugin
	Permit(ctx context.Context, pod *corev1.Pod, nodeName string) (*Status, time.Duration)
}

// PreBindPlugin does what must happen before the pod is bound to the node.
type PreBindPlugin interface {
	Plugin
	PreBind(ctx context.Context, pod *corev1.Pod, nodeName string) *Status
}

// ExtensionPointLister is implemented by a plugin that names its extension points itself.
// A plugin that embeds Unimplemented must: it then has every extension method, and only
// the points it lists are announced to the scheduler.
type ExtensionPointLister interface {
	ExtensionPoints() []ExtensionPoint
}

// PodSignature declares that a plugin's answers for a pod (PreFilter, Filter, PreScore,
// Score, NormalizeScore) depend only on the nodes the scheduler sent and on the pod's
// fields named in Fields, besides the scheduler's base signature of the pod (namespace,
// labels, nodeSelector, affinity, tolerations, resource requests, host ports, priority,
// volumes), which is always part of it. The scheduler may then reuse the answers it got
// for one pod for the next pods with the same signature (opportunistic batching), checking
// them again only on the node each is placed on, without calling the plugin for them.
//
// Do not declare one when the answers depend on anything else: state the plugin keeps
// per pod or across pods (placements counted in Reserve, state from its PreFilter), the
// time, or a system outside the pod and the nodes. A plugin without a signature is never
// batched: always correct, only slower for runs of alike pods.
type PodSignature struct {
	// Fields are dotted JSON paths into the Pod, with Kubernetes' JSON field names:
	// "metadata.annotations", "spec.runtimeClassName", "spec.containers". A path names a
	// whole subtree; through a list it names that field of every element
	// ("spec.containers.image"). Each starts with "metadata." or "spec." (see
	// ValidatePodField). Empty: the answers depend on the base signature alone.
	Fields []string
}

// PodSigner is implemented by a plugin that declares a pod signature (see PodSignature);
// the SDK sends it in PluginInfo. A nil signature declares none.
type PodSigner interface {
	PodSignature() *PodSignature
}

// podField is a path PodSignature.Fields may hold.
var podField = regexp.MustCompile(`^(metadata|spec)(\.[a-zA-Z0-9_]+)+$`)

// ValidatePodField checks one path of PodSignature.Fields: segments of letters, digits
// and '_' separated by dots, the first one metadata or spec, at least two.
func ValidatePodField(path string) error {
	if !podField.MatchString(path) {
		return fmt.Errorf("pod signature field %q is not a dotted path into the pod's metadata or spec (like spec.runtimeClassName: segments of letters, digits and '_', starting with metadata. or spec.)", path)
	}
	return nil
}

// Validate checks every path of the signature; a nil signature is valid (none declared).
func (s *PodSignature) Validate() error {
	if s == nil {
		return nil
	}
	for _, f := range s.Fields {
		if err := ValidatePodField(f); err != nil {
			return err
		}
	}
	return nil
}

type cycleKey struct{}

// CycleID returns the id of the scheduling attempt a call belongs to (the same from
// PreFilter to PreBind of one attempt of one pod), so that a plugin can keep state between
// its extension points; "" outside a call.
func CycleID(ctx context.Context) string {
	id, _ := ctx.Value(cycleKey{}).(string)
	return id
}
