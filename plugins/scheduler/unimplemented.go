package scheduler

import (
	"context"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Unimplemented can be embedded in a plugin to give it every extension method, as
// Nomad's NotSupported types do, so that it keeps compiling when the SDK grows. A plugin
// that embeds it must list its real extension points with ExtensionPoints (see
// ExtensionPointLister): the scheduler never calls the others, and if it did they would
// answer Error.
type Unimplemented struct{}

func notImplemented(point string) *Status {
	return NewStatus(Error, point+" is not implemented by this plugin")
}

// ExtensionPoints announces none; a plugin embedding Unimplemented overrides it.
func (Unimplemented) ExtensionPoints() []ExtensionPoint { return nil }

// PreFilter is not implemented.
func (Unimplemented) PreFilter(context.Context, *corev1.Pod) (*PreFilterResult, *Status) {
	return nil, notImplemented("PreFilter")
}

// Filter is not implemented.
func (Unimplemented) Filter(context.Context, *corev1.Pod, *corev1.Node) *Status {
	return notImplemented("Filter")
}

// PostFilter is not implemented.
func (Unimplemented) PostFilter(context.Context, *corev1.Pod, map[string]*Status) (string, *Status) {
	return "", notImplemented("PostFilter")
}

// PreScore is not implemented.
func (Unimplemented) PreScore(context.Context, *corev1.Pod, []*corev1.Node) *Status {
	return notImplemented("PreScore")
}

// Score is not implemented.
func (Unimplemented) Score(context.Context, *corev1.Pod, *corev1.Node) (int64, *Status) {
	return 0, notImplemented("Score")
}

// NormalizeScore is not implemented.
func (Unimplemented) NormalizeScore(context.Context, *corev1.Pod, []NodeScore) *Status {
	return notImplemented("NormalizeScore")
}

// Reserve is not implemented.
func (Unimplemented) Reserve(context.Context, *corev1.Pod, string) *Status {
	return notImplemented("Reserve")
}

// Unreserve is not implemented: it does nothing.
func (Unimplemented) Unreserve(context.Context, *corev1.Pod, string) {}

// Permit is not implemented.
func (Unimplemented) Permit(context.Context, *corev1.Pod, string) (*Status, time.Duration) {
	return notImplemented("Permit"), 0
}

// PreBind is not implemented.
func (Unimplemented) PreBind(context.Context, *corev1.Pod, string) *Status {
	return notImplemented("PreBind")
}

// ExtensionPointsOf returns the extension points a plugin announces: its own list when it
// has ExtensionPoints, otherwise every extension interface it implements.
func ExtensionPointsOf(p Plugin) []ExtensionPoint {
	if l, ok := p.(ExtensionPointLister); ok {
		return l.ExtensionPoints()
	}
	var out []ExtensionPoint
	if _, ok := p.(PreFilterPlugin); ok {
		out = append(out, PreFilterPoint)
	}
	if _, ok := p.(FilterPlugin); ok {
		out = append(out, FilterPoint)
	}
	if _, ok := p.(PostFilterPlugin); ok {
		out = append(out, PostFilterPoint)
	}
	if _, ok := p.(PreScorePlugin); ok {
		out = append(out, PreScorePoint)
	}
	if _, ok := p.(ScorePlugin); ok {
		out = append(out, ScorePoint)
	}
	if _, ok := p.(NormalizeScorePlugin); ok {
		out = append(out, NormalizeScorePoint)
	}
	if _, ok := p.(ReservePlugin); ok {
		out = append(out, ReservePoint)
	}
	if _, ok := p.(PermitPlugin); ok {
		out = append(out, PermitPoint)
	}
	if _, ok := p.(PreBindPlugin); ok {
		out = append(out, PreBindPoint)
	}
	return out
}
