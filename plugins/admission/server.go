package admission

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/runtime/schema"

	admissionv1 "berth.dev/berth/specs/admission/v1"
)

// server serves one plugin over the protocol. It embeds the generated Unimplemented
// server, so a host that calls a hook the plugin did not announce gets UNIMPLEMENTED.
type server struct {
	admissionv1.UnimplementedAdmissionServer
	plugin    Plugin
	mutator   Mutator
	validator Validator

	mu         sync.Mutex
	apiVersion string
}

// newServer checks what the plugin announces and returns its server.
func newServer(p Plugin) (*server, error) {
	if p == nil {
		return nil, errors.New("admission plugin is nil")
	}
	if p.Name() == "" {
		return nil, errors.New("admission plugin has an empty Name()")
	}
	s := &server{plugin: p}
	s.mutator, _ = p.(Mutator)
	s.validator, _ = p.(Validator)
	if s.mutator == nil && s.validator == nil {
		return nil, fmt.Errorf("admission plugin %s implements neither Mutate nor Validate", p.Name())
	}
	return s, nil
}

func (s *server) PluginInfo(context.Context, *admissionv1.PluginInfoRequest) (*admissionv1.PluginInfoResponse, error) {
	versions := APIVersions
	if v, ok := s.plugin.(APIVersioner); ok {
		versions = v.APIVersions()
	}
	return &admissionv1.PluginInfoResponse{
		Name:        s.plugin.Name(),
		Version:     s.plugin.Version(),
		ApiVersions: versions,
		Mutating:    s.mutator != nil,
		Validating:  s.validator != nil,
	}, nil
}

func (s *server) Configure(_ context.Context, req *admissionv1.ConfigureRequest) (*admissionv1.ConfigureResponse, error) {
	s.mu.Lock()
	s.apiVersion = req.ApiVersion
	s.mu.Unlock()
	if c, ok := s.plugin.(Configurable); ok {
		if err := c.Configure(req.ApiVersion, req.Args); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "%v", err)
		}
	}
	return &admissionv1.ConfigureResponse{}, nil
}

func (s *server) Mutate(ctx context.Context, req *admissionv1.AdmissionRequest) (*admissionv1.MutateResponse, error) {
	if s.mutator == nil {
		return nil, status.Errorf(codes.Unimplemented, "admission plugin %s does not mutate", s.plugin.Name())
	}
	r, err := fromWire(req)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	m, err := s.mutator.Mutate(ctx, r)
	if err != nil {
		return nil, status.Errorf(codes.Unknown, "%v", err)
	}
	out := &admissionv1.MutateResponse{Allowed: m.Allowed, Message: m.Message, Patch: m.Patch}
	switch m.PatchType {
	case NoPatch:
		out.PatchType = admissionv1.PatchType_PATCH_TYPE_NONE
	case JSONPatch:
		out.PatchType = admissionv1.PatchType_PATCH_TYPE_JSON_PATCH
	case WholeObject:
		out.PatchType = admissionv1.PatchType_PATCH_TYPE_OBJECT
	default:
		return nil, status.Errorf(codes.Unknown, "admission plugin %s returned unknown patch type %d", s.plugin.Name(), m.PatchType)
	}
	return out, nil
}

func (s *server) Validate(ctx context.Context, req *admissionv1.AdmissionRequest) (*admissionv1.ValidateResponse, error) {
	if s.validator == nil {
		return nil, status.Errorf(codes.Unimplemented, "admission plugin %s does not validate", s.plugin.Name())
	}
	r, err := fromWire(req)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	v, err := s.validator.Validate(ctx, r)
	if err != nil {
		return nil, status.Errorf(codes.Unknown, "%v", err)
	}
	return &admissionv1.ValidateResponse{Allowed: v.Allowed, Message: v.Message}, nil
}

// fromWire turns the protocol's request into the SDK's.
func fromWire(req *admissionv1.AdmissionRequest) (*Request, error) {
	r := &Request{
		UID:       req.Uid,
		Namespace: req.Namespace,
		Name:      req.Name,
		Object:    req.Object,
		OldObject: req.OldObject,
		DryRun:    req.DryRun,
	}
	switch req.Operation {
	case admissionv1.Operation_OPERATION_CREATE:
		r.Operation = Create
	case admissionv1.Operation_OPERATION_UPDATE:
		r.Operation = Update
	default:
		return nil, fmt.Errorf("unknown operation %s", req.Operation)
	}
	if g := req.Resource; g != nil {
		r.Resource = schema.GroupVersionResource{Group: g.Group, Version: g.Version, Resource: g.Resource}
	}
	if k := req.Kind; k != nil {
		r.Kind = schema.GroupVersionKind{Group: k.Group, Version: k.Version, Kind: k.Kind}
	}
	if u := req.UserInfo; u != nil {
		r.UserInfo = UserInfo{Username: u.Username, Groups: u.Groups}
	}
	return r, nil
}

// toWire turns the SDK's request into the protocol's.
func toWire(r *Request) (*admissionv1.AdmissionRequest, error) {
	req := &admissionv1.AdmissionRequest{
		Uid:       r.UID,
		Resource:  &admissionv1.GroupVersionResource{Group: r.Resource.Group, Version: r.Resource.Version, Resource: r.Resource.Resource},
		Kind:      &admissionv1.GroupVersionKind{Group: r.Kind.Group, Version: r.Kind.Version, Kind: r.Kind.Kind},
		Namespace: r.Namespace,
		Name:      r.Name,
		Object:    r.Object,
		OldObject: r.OldObject,
		UserInfo:  &admissionv1.UserInfo{Username: r.UserInfo.Username, Groups: r.UserInfo.Groups},
		DryRun:    r.DryRun,
	}
	switch r.Operation {
	case Create:
		req.Operation = admissionv1.Operation_OPERATION_CREATE
	case Update:
		req.Operation = admissionv1.Operation_OPERATION_UPDATE
	default:
		return nil, fmt.Errorf("unknown operation %q", r.Operation)
	}
	return req, nil
}
