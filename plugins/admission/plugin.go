// Package admission is the SDK for berth's out-of-process admission (site policy)
// plugins: the Mutator and Validator interfaces a plugin implements, Serve, which a
// plugin's main calls to run it under hashicorp/go-plugin, and the gRPC glue of both sides
// of the protocol in specs/admission/v1/admission.proto (the plugin's server, and the
// Client the API server uses).
//
// A plugin is a value with Name and Version that implements Mutator, Validator or both.
// The API server calls Mutate for the creates and updates the plugin's rules match (after
// berth's own mutating admission), then Validate on the final object (after berth's own
// validation, before ResourceQuota). A denial reaches the user as a 403 Forbidden:
//
//	pods "p" is forbidden: admission plugin "require-limits" denied the request: <message>
package admission

import (
	"context"
	"encoding/json"
	"fmt"

	"k8s.io/apimachinery/pkg/runtime/schema"
)

// Plugin is what every admission plugin is: a name, as the admission configuration names
// it, and a version of its own (free-form, shown in the API server's logs).
type Plugin interface {
	Name() string
	Version() string
}

// Validator admits or denies a request; it cannot change the object. An error (rather
// than a denial) means the plugin could not decide: the request then follows the plugin's
// failurePolicy, as when the plugin is down.
type Validator interface {
	Plugin
	Validate(ctx context.Context, req *Request) (Verdict, error)
}

// Mutator may change the object of a request, or deny it. Errors are as for Validator.
type Mutator interface {
	Plugin
	Mutate(ctx context.Context, req *Request) (Mutation, error)
}

// Configurable is implemented by a plugin that takes arguments: Configure gets the API
// version the host chose and the plugin's args from the admission configuration (JSON,
// empty when none) once, before any other call. An error refuses the plugin, and the API
// server does not start.
type Configurable interface {
	Configure(apiVersion string, args []byte) error
}

// APIVersioner is implemented by a plugin that speaks other API versions than the SDK's
// APIVersions (a plugin that keeps an old behaviour, or a test of the negotiation).
type APIVersioner interface {
	APIVersions() []string
}

// Operation is what a request does to its object.
type Operation string

// The operations a plugin is called for.
const (
	Create Operation = "CREATE"
	Update Operation = "UPDATE"
)

// UserInfo is the user who made the request.
type UserInfo struct {
	Username string
	Groups   []string
}

// Request is one create or update to judge. Object and OldObject are the objects as the
// Kubernetes API encodes them in JSON (apiVersion and kind set).
type Request struct {
	// UID identifies the request (the same for its Mutate and Validate calls).
	UID       string
	Operation Operation
	// Resource is the resource addressed ("" group for the core group: pods are
	// {"", "v1", "pods"}), Kind the object's kind.
	Resource  schema.GroupVersionResource
	Kind      schema.GroupVersionKind
	Namespace string
	// Name may be empty on a create with generateName.
	Name string
	// Object is the object as it would be stored; OldObject the stored one an update
	// replaces (nil on a create).
	Object    json.RawMessage
	OldObject json.RawMessage
	UserInfo  UserInfo
	// DryRun says nothing will be stored: apply no side effects.
	DryRun bool
}

// Decode decodes the request's object into v (a *corev1.Pod, say).
func (r *Request) Decode(v any) error {
	if err := json.Unmarshal(r.Object, v); err != nil {
		return fmt.Errorf("decode %s %s: %w", r.Kind.Kind, r.describe(), err)
	}
	return nil
}

// DecodeOld decodes the object an update replaces into v; it fails on a create.
func (r *Request) DecodeOld(v any) error {
	if len(r.OldObject) == 0 {
		return fmt.Errorf("decode the old %s %s: a %s has no old object", r.Kind.Kind, r.describe(), r.Operation)
	}
	if err := json.Unmarshal(r.OldObject, v); err != nil {
		return fmt.Errorf("decode the old %s %s: %w", r.Kind.Kind, r.describe(), err)
	}
	return nil
}

func (r *Request) describe() string {
	if r.Namespace == "" {
		return r.Name
	}
	return r.Namespace + "/" + r.Name
}

// Verdict is a plugin's answer: allowed, or denied with a message for the user.
type Verdict struct {
	Allowed bool
	// Message says why a request is denied (it reaches kubectl after
	// `admission plugin "NAME" denied the request: `).
	Message string
}

// Allow admits the request.
func Allow() Verdict { return Verdict{Allowed: true} }

// Deny denies the request with a message built as fmt.Sprintf does.
func Deny(format string, args ...any) Verdict {
	return Verdict{Message: fmt.Sprintf(format, args...)}
}

// PatchType says how a Mutation changes the object.
type PatchType int

// The ways a Mutation can change the object.
const (
	// NoPatch leaves the object as it is.
	NoPatch PatchType = iota
	// JSONPatch is an RFC 6902 JSON Patch of the request's object.
	JSONPatch
	// WholeObject is the whole mutated object, as JSON.
	WholeObject
)

// Mutation is a Mutator's answer: a Verdict, and when allowed, an optional change.
type Mutation struct {
	Verdict
	PatchType PatchType
	Patch     []byte
}

// Unchanged admits the request without changing the object.
func Unchanged() Mutation { return Mutation{Verdict: Allow()} }

// DenyMutation denies the request with a message built as fmt.Sprintf does.
func DenyMutation(format string, args ...any) Mutation {
	return Mutation{Verdict: Deny(format, args...)}
}

// Patched admits the request with an RFC 6902 JSON Patch of the object.
func Patched(patch []byte) Mutation {
	return Mutation{Verdict: Allow(), PatchType: JSONPatch, Patch: patch}
}

// Replaced admits the request with obj (the whole mutated object, a *corev1.Pod say) in
// place of the request's object. obj must keep the object's kind, namespace and name.
func Replaced(obj any) (Mutation, error) {
	b, err := json.Marshal(obj)
	if err != nil {
		return Mutation{}, fmt.Errorf("encode the mutated object: %w", err)
	}
	return Mutation{Verdict: Allow(), PatchType: WholeObject, Patch: b}, nil
}
