// Package registry is berth's catalogue of served resources: for each one its
// group/version/kind, names, subresources, and the Kubernetes rules that apply to it
// (defaulting, validation, field selectors, table columns), taken from k8s.io/kubernetes'
// own packages so that behaviour matches Kubernetes.
package registry

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Resource describes one served resource (for example apps/v1 deployments).
type Resource struct {
	Group    string // "" for the core group
	Version  string // "v1"
	Resource string // plural, lower case: "deployments"
	Singular string // "deployment"
	Kind     string // "Deployment"
	// Namespaced is false for cluster-scoped resources (nodes, namespaces, persistentvolumes ...).
	Namespaced bool
	ShortNames []string // "deploy"
	Categories []string // "all"
	// Status is true when the resource has a status subresource: the main endpoint then
	// ignores status changes and /status changes only status.
	Status bool
	// Scale is true when the resource has a scale subresource (autoscaling/v1 Scale).
	Scale bool
	// Generation is true when metadata.generation is set on create and bumped on every
	// change outside metadata and status, as the kind's Kubernetes strategy does (a test
	// checks the flag against the strategy).
	Generation bool
}

// GVR returns the resource's group, version and resource.
func (r *Resource) GVR() schema.GroupVersionResource {
	return schema.GroupVersionResource{Group: r.Group, Version: r.Version, Resource: r.Resource}
}

// GVK returns the resource's group, version and kind.
func (r *Resource) GVK() schema.GroupVersionKind {
	return schema.GroupVersionKind{Group: r.Group, Version: r.Version, Kind: r.Kind}
}

// GroupVersion returns "v1" for the core group and "group/version" otherwise.
func (r *Resource) GroupVersion() string {
	return r.GVR().GroupVersion().String()
}
