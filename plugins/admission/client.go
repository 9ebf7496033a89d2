package admission

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"

	"google.golang.org/grpc"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"

	admissionv1 "berth.dev/berth/specs/admission/v1"
)

// Client is the API server's side of the protocol: typed calls to one plugin process,
// which check that the answers are well formed and apply a mutation's patch. The host
// (process launching, deadlines, restarts, failure policies) is built on it.
type Client struct {
	rpc admissionv1.AdmissionClient
}

// NewClient returns a Client over a gRPC connection to a plugin.
func NewClient(conn grpc.ClientConnInterface) *Client {
	return &Client{rpc: admissionv1.NewAdmissionClient(conn)}
}

// ProtocolError is a malformed answer from a plugin (an unknown patch type, a patch that
// does not apply, a mutated object of another kind or name): the plugin cannot be trusted
// any more.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "malformed answer: " + e.Msg }

func garbage(format string, args ...any) error {
	return &ProtocolError{Msg: fmt.Sprintf(format, args...)}
}

// Info is what a plugin says of itself.
type Info struct {
	Name        string
	Version     string
	APIVersions []string
	Mutating    bool
	Validating  bool
}

// Info asks the plugin who it is.
func (c *Client) Info(ctx context.Context) (Info, error) {
	r, err := c.rpc.PluginInfo(ctx, &admissionv1.PluginInfoRequest{HostApiVersions: APIVersions})
	if err != nil {
		return Info{}, fmt.Errorf("PluginInfo: %w", err)
	}
	if !r.Mutating && !r.Validating {
		return Info{}, garbage("plugin %s announces neither mutating nor validating", r.Name)
	}
	return Info{Name: r.Name, Version: r.Version, APIVersions: r.ApiVersions, Mutating: r.Mutating, Validating: r.Validating}, nil
}

// Configure gives the plugin the chosen API version and its arguments.
func (c *Client) Configure(ctx context.Context, apiVersion string, args []byte) error {
	if _, err := c.rpc.Configure(ctx, &admissionv1.ConfigureRequest{ApiVersion: apiVersion, Args: args}); err != nil {
		return fmt.Errorf("Configure: %w", err)
	}
	return nil
}

// MutateResult is a Mutate answer, checked: the verdict and, when the plugin changed the
// object, the new object as JSON (nil when unchanged or denied).
type MutateResult struct {
	Verdict
	Object []byte
}

// Mutate asks the plugin to mutate req's object, and applies its patch.
func (c *Client) Mutate(ctx context.Context, req *Request) (MutateResult, error) {
	w, err := toWire(req)
	if err != nil {
		return MutateResult{}, err
	}
	r, err := c.rpc.Mutate(ctx, w)
	if err != nil {
		return MutateResult{}, fmt.Errorf("Mutate: %w", err)
	}
	res := MutateResult{Verdict: Verdict{Allowed: r.Allowed, Message: r.Message}}
	if !r.Allowed {
		return res, nil
	}
	var obj []byte
	switch r.PatchType {
	case admissionv1.PatchType_PATCH_TYPE_NONE:
		if len(r.Patch) > 0 {
			return MutateResult{}, garbage("Mutate sent a patch of type NONE")
		}
		return res, nil
	case admissionv1.PatchType_PATCH_TYPE_JSON_PATCH:
		p, err := jsonpatch.DecodePatch(r.Patch)
		if err != nil {
			return MutateResult{}, garbage("Mutate sent a JSON patch that does not parse: %v", err)
		}
		if obj, err = p.Apply(req.Object); err != nil {
			return MutateResult{}, garbage("Mutate sent a JSON patch that does not apply: %v", err)
		}
	case admissionv1.PatchType_PATCH_TYPE_OBJECT:
		obj = r.Patch
	default:
		return MutateResult{}, garbage("Mutate sent unknown patch type %d", r.PatchType)
	}
	if err := sameIdentity(req.Object, obj); err != nil {
		return MutateResult{}, garbage("Mutate %v", err)
	}
	if !bytes.Equal(obj, req.Object) {
		res.Object = obj
	}
	return res, nil
}

// Validate asks the plugin to admit or deny req.
func (c *Client) Validate(ctx context.Context, req *Request) (Verdict, error) {
	w, err := toWire(req)
	if err != nil {
		return Verdict{}, err
	}
	r, err := c.rpc.Validate(ctx, w)
	if err != nil {
		return Verdict{}, fmt.Errorf("Validate: %w", err)
	}
	return Verdict{Allowed: r.Allowed, Message: r.Message}, nil
}

// identity is what a mutation must not change.
type identity struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Namespace    string `json:"namespace"`
		Name         string `json:"name"`
		GenerateName string `json:"generateName"`
	} `json:"metadata"`
}

// sameIdentity checks that the mutated object is a JSON object of the original's
// apiVersion, kind, namespace and name.
func sameIdentity(original, mutated []byte) error {
	var a, b identity
	if err := json.Unmarshal(original, &a); err != nil {
		return fmt.Errorf("cannot be checked: the request's object does not decode: %v", err)
	}
	if err := json.Unmarshal(mutated, &b); err != nil {
		return fmt.Errorf("made an object that is not a JSON object: %v", err)
	}
	switch {
	case a.APIVersion != b.APIVersion || a.Kind != b.Kind:
		return fmt.Errorf("changed the object's type from %s %s to %s %s", a.APIVersion, a.Kind, b.APIVersion, b.Kind)
	case a.Metadata.Namespace != b.Metadata.Namespace:
		return fmt.Errorf("changed the object's namespace from %q to %q", a.Metadata.Namespace, b.Metadata.Namespace)
	case a.Metadata.Name != b.Metadata.Name || a.Metadata.GenerateName != b.Metadata.GenerateName:
		return fmt.Errorf("changed the object's name from %q to %q", a.Metadata.Name, b.Metadata.Name)
	}
	return nil
}
