package framework

import (
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/sets"
)

// AffinityTerm is a pod (anti-)affinity term with its selectors parsed once, so that
// matching it against thousands of pods per cycle costs no parsing.
type AffinityTerm struct {
	// Namespaces are the namespaces the term names; the pod's own when it names none
	// and has no namespaceSelector.
	Namespaces sets.Set[string]
	// Selector matches the pods' labels.
	Selector labels.Selector
	// TopologyKey is the node label whose value makes a topology domain.
	TopologyKey string
	// NamespaceSelector matches namespaces' labels; labels.Nothing() when absent.
	NamespaceSelector labels.Selector
}

// Matches reports whether pod, in a namespace labelled nsLabels, is one the term selects:
// in one of its namespaces (or one its namespace selector matches) and matching its selector.
func (t *AffinityTerm) Matches(pod *corev1.Pod, nsLabels labels.Set) bool {
	if t.Namespaces.Has(pod.Namespace) || t.NamespaceSelector.Matches(nsLabels) {
		return t.Selector.Matches(labels.Set(pod.Labels))
	}
	return false
}

// WeightedAffinityTerm is a preferred term with its weight.
type WeightedAffinityTerm struct {
	AffinityTerm
	Weight int32
}

// PodAffinityTerms are a pod's parsed inter-pod affinity and anti-affinity terms.
type PodAffinityTerms struct {
	RequiredAffinity      []AffinityTerm
	RequiredAntiAffinity  []AffinityTerm
	PreferredAffinity     []WeightedAffinityTerm
	PreferredAntiAffinity []WeightedAffinityTerm
}

// HasAny reports whether the pod has any inter-pod term at all.
func (t *PodAffinityTerms) HasAny() bool {
	return t != nil && (len(t.RequiredAffinity) > 0 || len(t.RequiredAntiAffinity) > 0 ||
		len(t.PreferredAffinity) > 0 || len(t.PreferredAntiAffinity) > 0)
}

// NewAffinityTerm parses one term of pod's.
func NewAffinityTerm(pod *corev1.Pod, term *corev1.PodAffinityTerm) (AffinityTerm, error) {
	sel, err := metav1.LabelSelectorAsSelector(term.LabelSelector)
	if err != nil {
		return AffinityTerm{}, fmt.Errorf("labelSelector: %w", err)
	}
	// A nil namespaceSelector selects no namespace, {} selects every one.
	nsSel, err := metav1.LabelSelectorAsSelector(term.NamespaceSelector)
	if err != nil {
		return AffinityTerm{}, fmt.Errorf("namespaceSelector: %w", err)
	}
	ns := sets.New(term.Namespaces...)
	if len(term.Namespaces) == 0 && term.NamespaceSelector == nil {
		ns.Insert(pod.Namespace)
	}
	return AffinityTerm{Namespaces: ns, Selector: sel, TopologyKey: term.TopologyKey, NamespaceSelector: nsSel}, nil
}

// NewPodAffinityTerms parses a pod's inter-pod affinity and anti-affinity; nil when it has
// none. An invalid selector (which validation refuses) is an error.
func NewPodAffinityTerms(pod *corev1.Pod) (*PodAffinityTerms, error) {
	a := pod.Spec.Affinity
	if a == nil || (a.PodAffinity == nil && a.PodAntiAffinity == nil) {
		return nil, nil
	}
	out := &PodAffinityTerms{}
	required := func(terms []corev1.PodAffinityTerm) ([]AffinityTerm, error) {
		var r []AffinityTerm
		for i := range terms {
			t, err := NewAffinityTerm(pod, &terms[i])
			if err != nil {
				return nil, err
			}
			r = append(r, t)
		}
		return r, nil
	}
	preferred := func(terms []corev1.WeightedPodAffinityTerm) ([]WeightedAffinityTerm, error) {
		var r []WeightedAffinityTerm
		for i := range terms {
			t, err := NewAffinityTerm(pod, &terms[i].PodAffinityTerm)
			if err != nil {
				return nil, err
			}
			r = append(r, WeightedAffinityTerm{AffinityTerm: t, Weight: terms[i].Weight})
		}
		return r, nil
	}
	var err error
	if pa := a.PodAffinity; pa != nil {
		if out.RequiredAffinity, err = required(pa.RequiredDuringSchedulingIgnoredDuringExecution); err != nil {
			return nil, fmt.Errorf("pod affinity: %w", err)
		}
		if out.PreferredAffinity, err = preferred(pa.PreferredDuringSchedulingIgnoredDuringExecution); err != nil {
			return nil, fmt.Errorf("preferred pod affinity: %w", err)
		}
	}
	if pa := a.PodAntiAffinity; pa != nil {
		if out.RequiredAntiAffinity, err = required(pa.RequiredDuringSchedulingIgnoredDuringExecution); err != nil {
			return nil, fmt.Errorf("pod anti-affinity: %w", err)
		}
		if out.PreferredAntiAffinity, err = preferred(pa.PreferredDuringSchedulingIgnoredDuringExecution); err != nil {
			return nil, fmt.Errorf("preferred pod anti-affinity: %w", err)
		}
	}
	return out, nil
}
