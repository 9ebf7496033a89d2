package namespace

import (
	"fmt"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// conditionTypes are the NamespaceDeletion* conditions, set with the reasons and messages of
// Kubernetes' namespace controller (pkg/controller/namespace/deletion/
// status_condition_utils.go) so that `kubectl describe ns` reads the same. berth deletes the
// catalogue's resources without discovery, so the first two are always fine.
func conditionTypes() []corev1.NamespaceConditionType {
	return []corev1.NamespaceConditionType{
		corev1.NamespaceDeletionDiscoveryFailure,
		corev1.NamespaceDeletionGVParsingFailure,
		corev1.NamespaceDeletionContentFailure,
		corev1.NamespaceContentRemaining,
		corev1.NamespaceFinalizersRemaining,
	}
}

// okCondition is the False ("all is well") variant of a condition type.
func okCondition(t corev1.NamespaceConditionType) corev1.NamespaceCondition {
	c := corev1.NamespaceCondition{Type: t, Status: corev1.ConditionFalse, LastTransitionTime: metav1.Now()}
	switch t {
	case corev1.NamespaceDeletionDiscoveryFailure:
		c.Reason, c.Message = "ResourcesDiscovered", "All resources successfully discovered"
	case corev1.NamespaceDeletionGVParsingFailure:
		c.Reason, c.Message = "ParsedGroupVersions", "All legacy kube types successfully parsed"
	case corev1.NamespaceDeletionContentFailure:
		c.Reason, c.Message = "ContentDeleted", "All content successfully deleted, may be waiting on finalization"
	case corev1.NamespaceContentRemaining:
		c.Reason, c.Message = "ContentRemoved", "All content successfully removed"
	case corev1.NamespaceFinalizersRemaining:
		c.Reason, c.Message = "ContentHasNoFinalizers", "All content-preserving finalizers finished"
	}
	return c
}

// content is what one pass over a namespace left behind.
type content struct {
	// remaining counts the objects left per resource ("pods." , "deployments.apps").
	remaining map[string]int
	// finalizers counts the objects left per finalizer.
	finalizers map[string]int
	// estimate is how many seconds the remaining pods' grace periods still run.
	estimate int64
	// errs are the per-resource failures.
	errs []error
}

func (c *content) empty() bool { return len(c.remaining) == 0 }

// conditions computes the failing conditions of a pass (those not listed are fine).
func (c *content) conditions() []corev1.NamespaceCondition {
	var out []corev1.NamespaceCondition
	now := metav1.Now()
	if len(c.errs) > 0 {
		msgs := make([]string, len(c.errs))
		for i, e := range c.errs {
			msgs[i] = e.Error()
		}
		sort.Strings(msgs)
		out = append(out, corev1.NamespaceCondition{
			Type: corev1.NamespaceDeletionContentFailure, Status: corev1.ConditionTrue, LastTransitionTime: now,
			Reason:  "ContentDeletionFailed",
			Message: fmt.Sprintf("Failed to delete all resource types, %d remaining: %v", len(c.errs), strings.Join(msgs, ", ")),
		})
	}
	if len(c.remaining) > 0 {
		var parts []string
		for r, n := range c.remaining {
			parts = append(parts, fmt.Sprintf("%s has %d resource instances", r, n))
		}
		sort.Strings(parts)
		out = append(out, corev1.NamespaceCondition{
			Type: corev1.NamespaceContentRemaining, Status: corev1.ConditionTrue, LastTransitionTime: now,
			Reason:  "SomeResourcesRemain",
			Message: fmt.Sprintf("Some resources are remaining: %s", strings.Join(parts, ", ")),
		})
	}
	if len(c.finalizers) > 0 {
		var parts []string
		for f, n := range c.finalizers {
			parts = append(parts, fmt.Sprintf("%s in %d resource instances", f, n))
		}
		sort.Strings(parts)
		out = append(out, corev1.NamespaceCondition{
			Type: corev1.NamespaceFinalizersRemaining, Status: corev1.ConditionTrue, LastTransitionTime: now,
			Reason:  "SomeFinalizersRemain",
			Message: fmt.Sprintf("Some content in the namespace has finalizers remaining: %s", strings.Join(parts, ", ")),
		})
	}
	return out
}

// updateConditions merges the failing conditions into status, setting every other type to
// its "fine" variant; it reports whether anything changed.
func updateConditions(status *corev1.NamespaceStatus, failing []corev1.NamespaceCondition) bool {
	changed := false
	for _, t := range conditionTypes() {
		want := okCondition(t)
		for _, f := range failing {
			if f.Type == t {
				want = f
			}
		}
		old := findCondition(status.Conditions, t)
		switch {
		case old == nil:
			status.Conditions = append(status.Conditions, want)
			changed = true
		case old.Status != want.Status || old.Reason != want.Reason || old.Message != want.Message:
			if old.Status != want.Status {
				old.LastTransitionTime = want.LastTransitionTime
			}
			old.Status, old.Reason, old.Message = want.Status, want.Reason, want.Message
			changed = true
		}
	}
	return changed
}

func findCondition(conds []corev1.NamespaceCondition, t corev1.NamespaceConditionType) *corev1.NamespaceCondition {
	for i := range conds {
		if conds[i].Type == t {
			return &conds[i]
		}
	}
	return nil
}
