// Package broken is a deliberately broken scheduler plugin, built on berth's SDK, for the
// tests of berth's plugin conformance suite (conformance/plugin): each Defect breaks one
// part of the contract, and the suite must fail the tests of that part. Its Filter keeps
// pods off nodes labelled example.berth.dev/full=true, and its Score gives every node 50;
// the defects change that.
package broken

import (
	"context"
	"math/rand/v2"
	"time"

	corev1 "k8s.io/api/core/v1"

	"berth.dev/berth/plugins/scheduler"
)

// Defect is what the plugin breaks.
type Defect int

const (
	// BadScore scores nodes 150, above MaxNodeScore, without NormalizeScore.
	BadScore Defect = iota + 1
	// Hang never answers Filter (it ignores its deadline).
	Hang
	// Random scores nodes at random, so that the same input gets other answers.
	Random
	// Crash panics, taking its process down, on a pod without a name.
	Crash
)

// Plugin is a Filter and Score plugin with one defect.
type Plugin struct{ defect Defect }

// Name returns the plugin's name.
func (p *Plugin) Name() string { return "broken" }

// Version returns the plugin's version.
func (p *Plugin) Version() string { return "0.0.1" }

// Filter rejects nodes labelled full.
func (p *Plugin) Filter(_ context.Context, pod *corev1.Pod, node *corev1.Node) *scheduler.Status {
	switch {
	case p.defect == Hang:
		time.Sleep(time.Hour)
	case p.defect == Crash && pod.Name == "":
		panic("a pod without a name")
	}
	if node.Labels["example.berth.dev/full"] == "true" {
		return scheduler.NewStatus(scheduler.Unschedulable, "node(s) full")
	}
	return nil
}

// Score gives every node 50, or what the defect says.
func (p *Plugin) Score(_ context.Context, _ *corev1.Pod, _ *corev1.Node) (int64, *scheduler.Status) {
	switch p.defect {
	case BadScore:
		return 150, nil
	case Random:
		return rand.Int64N(scheduler.MaxNodeScore + 1), nil
	}
	return 50, nil
}

// Main serves the plugin with the defect d.
func Main(d Defect) { scheduler.Serve(&Plugin{defect: d}) }
