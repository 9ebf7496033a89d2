package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"

	admissionv1 "berth.dev/berth/specs/admission/v1"
)

// samples returns the run's admission samples, or ends the test.
func (t *T) samples() []admissionSample {
	s, err := admissionSamples(t.Config().RunID)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return s
}

// validate calls Validate.
func (t *T) validate(ctx context.Context, sess *session, req *admissionv1.AdmissionRequest) (*admissionv1.ValidateResponse, error) {
	var r *admissionv1.ValidateResponse
	err := t.call(ctx, "Validate", func(ctx context.Context) (err error) {
		r, err = sess.adm.Validate(ctx, req)
		return err
	})
	return r, err
}

// mutate calls Mutate.
func (t *T) mutate(ctx context.Context, sess *session, req *admissionv1.AdmissionRequest) (*admissionv1.MutateResponse, error) {
	var r *admissionv1.MutateResponse
	err := t.call(ctx, "Mutate", func(ctx context.Context) (err error) {
		r, err = sess.adm.Mutate(ctx, req)
		return err
	})
	return r, err
}

func testAdmissionHooks(ctx context.Context, t *T) {
	sess := t.start(ctx, nil)
	req := t.samples()[0].req
	info := t.s.adm
	_, verr := t.validate(ctx, sess, req)
	_, merr := t.mutate(ctx, sess, req)
	for _, h := range []struct {
		name     string
		declared bool
		err      error
	}{{"Validate", info.GetValidating(), verr}, {"Mutate", info.GetMutating(), merr}} {
		var slow errDeadline
		switch {
		case h.declared && status.Code(h.err) == codes.Unimplemented:
			t.Errorf("%s is declared but answers UNIMPLEMENTED: %v", h.name, h.err)
		case h.declared && h.err != nil:
			t.Errorf("%s is declared but failed on an ordinary pod: %v", h.name, h.err)
		case !h.declared && h.err == nil:
			t.Errorf("%s is not declared but answered a call (the host would never use it: declare it, or answer UNIMPLEMENTED)", h.name)
		case !h.declared && errors.As(h.err, &slow):
			t.Errorf("%s is not declared: %v (want UNIMPLEMENTED at once)", h.name, h.err)
		case !h.declared && status.Code(h.err) != codes.Unimplemented:
			t.Logf("%s is not declared and answers %v (UNIMPLEMENTED is expected)", h.name, h.err)
		}
	}
	t.alive(ctx, sess, "Validate and Mutate")
}

func testValidateVerdict(ctx context.Context, t *T) {
	t.requireKind(Admission)
	if !t.s.adm.GetValidating() {
		t.Skipf("the plugin does not declare validating")
	}
	sess := t.start(ctx, nil)
	for _, s := range t.samples() {
		r, err := t.validate(ctx, sess, s.req)
		switch {
		case err != nil:
			t.Errorf("Validate of a %s: %v", s.name, err)
		case !r.GetAllowed() && r.GetMessage() == "":
			t.Errorf("Validate of a %s denies it without a message: the user is told nothing", s.name)
		default:
			t.Logf("Validate of a %s: allowed=%v %s", s.name, r.GetAllowed(), r.GetMessage())
		}
	}
}

// identity is what a mutation must keep of an object.
type identity struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"metadata"`
}

// mutated returns the object a MutateResponse makes of the request's, or why it is not a
// valid mutation.
func mutated(req *admissionv1.AdmissionRequest, r *admissionv1.MutateResponse) ([]byte, error) {
	var out []byte
	switch r.GetPatchType() {
	case admissionv1.PatchType_PATCH_TYPE_NONE:
		if len(r.GetPatch()) != 0 {
			return nil, fmt.Errorf("patch type NONE with a %d-byte patch", len(r.GetPatch()))
		}
		return req.GetObject(), nil
	case admissionv1.PatchType_PATCH_TYPE_JSON_PATCH:
		p, err := jsonpatch.DecodePatch(r.GetPatch())
		if err != nil {
			return nil, fmt.Errorf("the JSON patch %s does not parse: %w", r.GetPatch(), err)
		}
		if out, err = p.Apply(req.GetObject()); err != nil {
			return nil, fmt.Errorf("the JSON patch %s does not apply to the object: %w", r.GetPatch(), err)
		}
	case admissionv1.PatchType_PATCH_TYPE_OBJECT:
		out = r.GetPatch()
	default:
		return nil, fmt.Errorf("unknown patch type %s", r.GetPatchType())
	}
	var before, after identity
	if err := json.Unmarshal(req.GetObject(), &before); err != nil {
		return nil, fmt.Errorf("the sample object: %w", err)
	}
	if err := json.Unmarshal(out, &after); err != nil {
		return nil, fmt.Errorf("the mutated object is not a JSON object: %w", err)
	}
	if before != after {
		return nil, fmt.Errorf("the mutation changes the object's apiVersion, kind, namespace or name: %+v became %+v", before, after)
	}
	return out, nil
}

func testMutatePatch(ctx context.Context, t *T) {
	t.requireKind(Admission)
	if !t.s.adm.GetMutating() {
		t.Skipf("the plugin does not declare mutating")
	}
	sess := t.start(ctx, nil)
	for _, s := range t.samples() {
		r, err := t.mutate(ctx, sess, s.req)
		if err != nil {
			t.Errorf("Mutate of a %s: %v", s.name, err)
			continue
		}
		if !r.GetAllowed() {
			if r.GetMessage() == "" {
				t.Errorf("Mutate of a %s denies it without a message: the user is told nothing", s.name)
			}
			continue
		}
		if _, err := mutated(s.req, r); err != nil {
			t.Errorf("Mutate of a %s: %v", s.name, err)
			continue
		}
		t.Logf("Mutate of a %s: allowed, patch type %s", s.name, r.GetPatchType())
	}
}

// admissionAnswer is what a plugin answered to one request, for comparison.
type admissionAnswer struct {
	validate, mutate string
}

func (t *T) admissionAnswers(ctx context.Context, sess *session, reqs []admissionSample) []admissionAnswer {
	out := make([]admissionAnswer, len(reqs))
	for i, s := range reqs {
		if t.s.adm.GetValidating() {
			r, err := t.validate(ctx, sess, s.req)
			if err != nil {
				t.Fatalf("Validate of a %s: %v", s.name, err)
			}
			out[i].validate = fmt.Sprintf("allowed=%v message=%q", r.GetAllowed(), r.GetMessage())
		}
		if t.s.adm.GetMutating() {
			r, err := t.mutate(ctx, sess, s.req)
			if err != nil {
				t.Fatalf("Mutate of a %s: %v", s.name, err)
			}
			obj, err := mutated(s.req, r)
			if err != nil {
				obj = []byte("invalid: " + err.Error())
			}
			// Compared as decoded JSON, so that key order and spacing do not count.
			var v any
			if json.Unmarshal(obj, &v) == nil {
				obj, _ = json.Marshal(v)
			}
			out[i].mutate = fmt.Sprintf("allowed=%v message=%q object=%s", r.GetAllowed(), r.GetMessage(), bytes.TrimSpace(obj))
		}
	}
	return out
}

func testAdmissionDeterminism(ctx context.Context, t *T) {
	samples := t.samples()
	sess := t.start(ctx, nil)
	first := t.admissionAnswers(ctx, sess, samples)
	second := t.admissionAnswers(ctx, sess, samples)
	third := t.admissionAnswers(ctx, t.start(ctx, nil), samples)
	for i, s := range samples {
		for _, again := range []struct {
			where string
			a     admissionAnswer
		}{{"in the same process", second[i]}, {"in a second process", third[i]}} {
			if first[i].validate != again.a.validate {
				t.Errorf("Validate of the same %s %s: %s, then %s", s.name, again.where, first[i].validate, again.a.validate)
			}
			if first[i].mutate != again.a.mutate {
				t.Errorf("Mutate of the same %s %s: %s, then %s", s.name, again.where, first[i].mutate, again.a.mutate)
			}
		}
	}
}

func testAdmissionEmpty(ctx context.Context, t *T) {
	sess := t.start(ctx, nil)
	pod := &admissionv1.GroupVersionKind{Version: "v1", Kind: "Pod"}
	pods := &admissionv1.GroupVersionResource{Version: "v1", Resource: "pods"}
	for _, c := range []struct {
		what string
		req  *admissionv1.AdmissionRequest
	}{
		{"an empty request", &admissionv1.AdmissionRequest{}},
		{"an empty pod object", &admissionv1.AdmissionRequest{Operation: admissionv1.Operation_OPERATION_CREATE, Kind: pod, Resource: pods, Namespace: "default", Object: []byte("{}")}},
		{"an update without its old object", &admissionv1.AdmissionRequest{Operation: admissionv1.Operation_OPERATION_UPDATE, Kind: pod, Resource: pods, Namespace: "default", Object: []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"default"},"spec":{"containers":[{"name":"c"}]}}`)}},
	} {
		for _, h := range []struct {
			name     string
			declared bool
			call     func() error
		}{
			{"Validate", t.s.adm.GetValidating(), func() error { _, err := t.validate(ctx, sess, c.req); return err }},
			{"Mutate", t.s.adm.GetMutating(), func() error { _, err := t.mutate(ctx, sess, c.req); return err }},
		} {
			if !h.declared {
				continue
			}
			err := h.call()
			var slow errDeadline
			if errors.As(err, &slow) {
				t.Errorf("%s of %s: %v", h.name, c.what, err)
			} else if err != nil {
				// Refusing it is fine; crashing on it is not (alive below).
				t.Logf("%s of %s: %v", h.name, c.what, err)
			}
		}
		t.alive(ctx, sess, "calls with "+c.what)
	}
}
