// Package requirelimits is an example validating admission plugin: it denies pods, and
// workloads (Deployments, ReplicaSets, StatefulSets, DaemonSets, Jobs, CronJobs) whose
// pod template has a container (init containers included) without resource limits, cpu
// and memory by default, naming the container and the limits it lacks. Which namespaces
// it judges is the admission configuration's namespaceSelector (the example's:
// namespaces labelled example.berth.dev/require-limits=true). With defaultLimits in its
// args it also mutates: a container created without a limit it has a default for gets
// that default, before the check. It runs out of process, built as
// bin/berth-admission-require-limits; see README.md.
package requirelimits

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"berth.dev/berth/plugins/admission"
)

// Name is the plugin's name in the admission configuration.
const Name = "require-limits"

// Version is the plugin's version.
const Version = "0.2.0"

// NamespaceLabel is the label of the namespaces the example configuration
// (admission-config.yaml) has the plugin judge, with the value "true".
const NamespaceLabel = "example.berth.dev/require-limits"

// Args are the plugin's arguments (plugins[].args in the admission configuration).
type Args struct {
	// Resources are the resources every container must limit (cpu and memory when empty).
	Resources []corev1.ResourceName `json:"resources,omitempty"`
	// ExemptNamespaces are namespaces whose objects are not checked ([kube-system] when
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

// subject is the object of a request the plugin judges, decoded, and the pod spec in it
// (the pod's own, or the workload's pod template's).
type subject struct {
	obj any
	// what prefixes the denial: "" for a pod, "pod template: " for a workload, so that
	// the user knows to fix the template rather than look for a pod.
	what string
	spec *corev1.PodSpec
}

// decode returns the subject of a request's object (old: its old object), or nil when the
// request is of a kind the plugin does not judge or in an exempt namespace.
func (p *Plugin) decode(req *admission.Request, old bool) (*subject, error) {
	if slices.Contains(p.exempt, req.Namespace) {
		return nil, nil
	}
	dec := req.Decode
	if old {
		dec = req.DecodeOld
	}
	gk := req.Kind.Group + "/" + req.Kind.Kind
	var s subject
	switch gk {
	case "/Pod":
		o := &corev1.Pod{}
		s = subject{obj: o, spec: &o.Spec}
	case "apps/Deployment":
		o := &appsv1.Deployment{}
		s = subject{obj: o, spec: &o.Spec.Template.Spec}
	case "apps/ReplicaSet":
		o := &appsv1.ReplicaSet{}
		s = subject{obj: o, spec: &o.Spec.Template.Spec}
	case "apps/StatefulSet":
		o := &appsv1.StatefulSet{}
		s = subject{obj: o, spec: &o.Spec.Template.Spec}
	case "apps/DaemonSet":
		o := &appsv1.DaemonSet{}
		s = subject{obj: o, spec: &o.Spec.Template.Spec}
	case "batch/Job":
		o := &batchv1.Job{}
		s = subject{obj: o, spec: &o.Spec.Template.Spec}
	case "batch/CronJob":
		o := &batchv1.CronJob{}
		s = subject{obj: o, spec: &o.Spec.JobTemplate.Spec.Template.Spec}
	default:
		return nil, nil
	}
	if gk != "/Pod" {
		s.what = "pod template: "
	}
	if err := dec(s.obj); err != nil {
		return nil, err
	}
	return &s, nil
}

// Mutate gives the containers of a new pod or workload the default limits they lack,
// when args set defaultLimits. Updates are left alone: a pod's resources do not change in
// place, and a workload's template keeps what its owner wrote.
func (p *Plugin) Mutate(_ context.Context, req *admission.Request) (admission.Mutation, error) {
	if len(p.defaults) == 0 || req.Operation != admission.Create {
		return admission.Unchanged(), nil
	}
	s, err := p.decode(req, false)
	if err != nil || s == nil {
		return admission.Unchanged(), err
	}
	changed := false
	for _, list := range [][]corev1.Container{s.spec.InitContainers, s.spec.Containers} {
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
	return admission.Replaced(s.obj)
}

// Validate denies a pod or workload with a container that lacks a required limit. On an
// update only what the update breaks is denied, so that objects created before the
// policy can still be labelled, annotated, scaled or finalized.
func (p *Plugin) Validate(_ context.Context, req *admission.Request) (admission.Verdict, error) {
	s, err := p.decode(req, false)
	if err != nil || s == nil {
		return admission.Allow(), err
	}
	problems := p.missing(s.spec)
	if req.Operation == admission.Update && len(problems) > 0 && len(req.OldObject) > 0 {
		old, err := p.decode(req, true)
		if err != nil {
			return admission.Verdict{}, err
		}
		had := p.missing(old.spec)
		problems = slices.DeleteFunc(problems, func(s string) bool { return slices.Contains(had, s) })
	}
	if len(problems) == 0 {
		return admission.Allow(), nil
	}
	return admission.Deny("%s%s", s.what, strings.Join(problems, "; ")), nil
}

// missing lists, one line per container, the required limits it lacks.
func (p *Plugin) missing(spec *corev1.PodSpec) []string {
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
	check("init container", spec.InitContainers)
	check("container", spec.Containers)
	return out
}
