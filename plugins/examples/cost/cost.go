// Package cost is an example scheduler plugin: it prefers cheap nodes. A node labelled
// example.berth.dev/cost=<integer> scores higher the lower its cost; nodes without the
// label (or with a label that is not an integer) score lowest. It runs out of process,
// built as bin/berth-scheduler-cost; see README.md.
package cost

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"strconv"

	corev1 "k8s.io/api/core/v1"

	"berth.dev/berth/plugins/scheduler"
)

// Label is the node label the plugin reads.
const Label = "example.berth.dev/cost"

// Name is the plugin's name in the scheduler configuration.
const Name = "cost"

// Version is the plugin's version.
const Version = "0.1.0"

// unlabelled is the raw score of a node without a usable cost; below every real cost's.
const unlabelled = math.MinInt64

// Args are the plugin's arguments (externalPlugins[].args in the scheduler configuration).
type Args struct {
	// Label overrides the label read (Label when empty).
	Label string `json:"label,omitempty"`
}

// Plugin scores nodes by their cost label. Score gives the negated cost, and
// NormalizeScore maps the cheapest node of a pod's candidates to 100, the dearest
// labelled one to 1 and unlabelled nodes to 0.
type Plugin struct {
	label string
}

// New returns the plugin with its default arguments.
func New() *Plugin { return &Plugin{label: Label} }

var (
	_ scheduler.NormalizeScorePlugin = (*Plugin)(nil)
	_ scheduler.Configurable         = (*Plugin)(nil)
	_ scheduler.PodSigner            = (*Plugin)(nil)
)

// Name returns "cost".
func (p *Plugin) Name() string { return Name }

// Version returns the plugin's version.
func (p *Plugin) Version() string { return Version }

// Configure reads the plugin's arguments.
func (p *Plugin) Configure(_ string, args []byte) error {
	if len(args) == 0 {
		return nil
	}
	var a Args
	if err := json.Unmarshal(args, &a); err != nil {
		return fmt.Errorf("parse the cost plugin's args: %w", err)
	}
	if a.Label != "" {
		p.label = a.Label
	}
	return nil
}

// PodSignature declares that the plugin's scores may be reused across alike pods, with no
// pod field beyond the scheduler's base signature: Score reads the node's label only,
// never the pod, and NormalizeScore only the scores of the nodes it is sent; the plugin
// keeps no state per pod or across pods.
func (p *Plugin) PodSignature() *scheduler.PodSignature { return &scheduler.PodSignature{} }

// Score returns the node's cost negated, so that cheaper is higher; NormalizeScore brings
// it into [0, 100].
func (p *Plugin) Score(_ context.Context, _ *corev1.Pod, node *corev1.Node) (int64, *scheduler.Status) {
	v, ok := node.Labels[p.label]
	if !ok {
		return unlabelled, nil
	}
	c, err := strconv.ParseInt(v, 10, 64)
	if err != nil || c == unlabelled {
		return unlabelled, nil
	}
	return -c, nil
}

// NormalizeScore maps the raw scores of one pod's nodes linearly onto [1, 100] (all equal:
// 100), and unlabelled nodes to 0.
func (p *Plugin) NormalizeScore(_ context.Context, _ *corev1.Pod, scores []scheduler.NodeScore) *scheduler.Status {
	lo, hi := int64(math.MaxInt64), int64(math.MinInt64)
	for _, s := range scores {
		if s.Score == unlabelled {
			continue
		}
		lo, hi = min(lo, s.Score), max(hi, s.Score)
	}
	for i := range scores {
		switch {
		case scores[i].Score == unlabelled:
			scores[i].Score = scheduler.MinNodeScore
		case hi == lo:
			scores[i].Score = scheduler.MaxNodeScore
		default:
			// In float64: the span of two int64 costs can overflow int64.
			f := (float64(scores[i].Score) - float64(lo)) / (float64(hi) - float64(lo))
			scores[i].Score = 1 + int64(math.Round(f*float64(scheduler.MaxNodeScore-1)))
		}
	}
	return nil
}

// Main serves the plugin; the binary's main calls it.
func Main() { scheduler.Serve(New()) }
