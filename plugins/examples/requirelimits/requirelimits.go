// Package requirelimits is an example admission plugin: it denies pods whose containers
// (init containers included) lack resource limits, cpu and memory by default. With
// defaultLimits in its args it also mutates: a container created without a limit it
// has a default for gets that default, before the check. It runs out of process, built as
// bin/berth-admission-require-limits; see README.md.
package requirelimits

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"berth.dev/berth/plugins/admission"
)

// Name is the plugin's name in the admission configuration.
const Name = "require-limits"

// Version is the plugin's version.
const Version = "0.1.0"

// Args are the plugin's arguments (plugins[].args in the admission configuration).
type Args struct {
	// Resources are the resources every container must limit (cpu and memory when empty).
	Resources []corev1.ResourceName `json:"resources,omitempty"`
	// ExemptNamespaces are namespaces whose pods are not checked ([kube-system] when
	// unset; an empty list exempts none).
	ExemptNamespaces *[]string `json:"exemptNamespaces,omitempty"`
	// DefaultLimits, when set, are the limits a container created without them gets
	// (Mutate), e.g. {"cpu": "500m", "memory": "256Mi"}.
	DefaultLimits map[corev1.ResourceName]string `json:"defaultLimits,omitempty"`
}

// Plugin checks, and optionally defaults, containers' limits.
type Plugin struct {
	resources []corev1.ResourceName
	exempt    []string
	defaults  corev1.ResourceList
}

var (
	_ admission.Validator    = (*Plugin)(nil)
	_ admission.Mutator      = (*Plugin)(nil)
	_ admission.Configurable = (*Plugin)(nil)
)

// New returns the plugin with its default arguments.
func New() *Plugin {
	return &Plugin{resources: []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory}, exempt: []string{"kube-system"}}
}

// Main runs the plugin; the main of bin/berth-admission-require-limits calls it.
func Main() { admission.Serve(New()) }

// Name returns "require-limits".
func (p *Plugin) Name() string { return Name }

// Version returns the plugin's version.
func (p *Plugin) Version() string { return Version }

// Configure reads the plugin's arguments; unknown fields are refused, so that a typo in
// the configuration stops the server rather than weaken the policy.
func (p *Plugin) Configure(_ string, args []byte) error {
	if len(args) == 0 {
		return nil
	}
	var a Args
	dec := json.NewDecoder(strings.NewReader(string(args)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&a); err != nil {
		return fmt.Errorf("args of %s: %w", Name, err)
	}
	if len(a.Resources) > 0 {
		p.resources = a.Resources
	}
	if a.ExemptNamespaces != nil {
		p.exempt = *a.ExemptNamespaces
	}
	if len(a.DefaultLimits) > 0 {
		p.defaults = corev1.ResourceList{}
		for name, v := range a.DefaultLimits {
			q, err := resource.ParseQuantity(v)
			if err != nil {
				return fmt.Errorf("args of %s: defaultLimits.%s %q: %w", Name, name, v, err)
			}
			p.defaults[name] = q
		}
	}
	return nil
}

// applies reports whether the plugin judges the request: pods outside exempt namespaces.
func (p *Plugin) applies(req *admission.Request) bool {
	return req.Kind.Group == "" && req.Kind.Kind == "Pod" && !slices.Contains(p.exempt, req.Namespace)
}

// Mutate gives containers of a new pod the default limits they lack, when args set
// defaultLimits. Updates are left alone: a pod's resources do not change in place here.
func (p *Plugin) Mutate(_ context.Context, req *admission.Request) (admission.Mutation, error) {
	if len(p.defaults) == 0 || req.Operation != admission.Create || !p.applies(req) {
		return admission.Unchanged(), nil
	}
	var pod corev1.Pod
	if err := req.Decode(&pod); err != nil {
		return admission.Mutation{}, err
	}
	changed := false
	for _, list := range [][]corev1.Container{pod.Spec.InitContainers, pod.Spec.Containers} {
		for i := range list {
			c := &list[i]
			for name, q := range p.defaults {
				if _, ok := c.Resources.Limits[name]; ok {
					continue
				}
				if c.Resources.Limits == nil {
					c.Resources.Limits = corev1.ResourceList{}
				}
				c.Resources.Limits[name] = q
				changed = true
			}
		}
	}
	if !changed {
		return admission.Unchanged(), nil
	}
	return admission.Replaced(&pod)
}

// Validate denies a pod with a container that lacks a required limit. On an update only
// what the update breaks is denied, so that pods created before the policy can still be
// labelled, annotated or finalized.
func (p *Plugin) Validate(_ context.Context, req *admission.Request) (admission.Verdict, error) {
	if !p.applies(req) {
		return admission.Allow(), nil
	}
	var pod corev1.Pod
	if err := req.Decode(&pod); err != nil {
		return admission.Verdict{}, err
	}
	problems := p.missing(&pod)
	if req.Operation == admission.Update && len(problems) > 0 {
		var old corev1.Pod
		if err := req.DecodeOld(&old); err != nil {
			return admission.Verdict{}, err
		}
		had := p.missing(&old)
		problems = slices.DeleteFunc(problems, func(s string) bool { return slices.Contains(had, s) })
	}
	if len(problems) == 0 {
		return admission.Allow(), nil
	}
	return admission.Deny("%s", strings.Join(problems, "; ")), nil
}

// missing lists, one line per container, the required limits it lacks.
func (p *Plugin) missing(pod *corev1.Pod) []string {
	var out []string
	check := func(what string, cs []corev1.Container) {
		for _, c := range cs {
			var lack []string
			for _, r := range p.resources {
				if _, ok := c.Resources.Limits[r]; !ok {
					lack = append(lack, string(r))
				}
			}
			sort.Strings(lack)
			switch len(lack) {
			case 0:
			case 1:
				out = append(out, fmt.Sprintf("%s %q has no %s limit", what, c.Name, lack[0]))
			default:
				out = append(out, fmt.Sprintf("%s %q has no %s limits", what, c.Name, strings.Join(lack, " or ")))
			}
		}
	}
	check("init container", pod.Spec.InitContainers)
	check("container", pod.Spec.Containers)
	return out
}
