package openapi

import (
	"encoding/json"

	"k8s.io/kube-openapi/pkg/spec3"
)

// sharer keeps one copy of each distinct parameter, request body and response across the v3
// documents. builder3 gives every operation its own copies, yet the operations of all resources
// repeat the same few (pretty, dryRun, fieldManager, the 401 response ...); sharing them roughly
// halves what the built documents hold.
type sharer struct {
	params    map[string]*spec3.Parameter
	bodies    map[string]*spec3.RequestBody
	responses map[string]*spec3.Response
}

func newSharer() *sharer {
	return &sharer{
		params:    map[string]*spec3.Parameter{},
		bodies:    map[string]*spec3.RequestBody{},
		responses: map[string]*spec3.Response{},
	}
}

// share replaces the parts of doc's operations by equal ones seen before.
func (s *sharer) share(doc *spec3.OpenAPI) error {
	if doc.Paths == nil {
		return nil
	}
	for _, p := range doc.Paths.Paths {
		if err := shareAll(s.params, p.Parameters); err != nil {
			return err
		}
		for _, op := range []*spec3.Operation{p.Get, p.Put, p.Post, p.Delete, p.Options, p.Head, p.Patch, p.Trace} {
			if op == nil {
				continue
			}
			if err := shareAll(s.params, op.Parameters); err != nil {
				return err
			}
			if op.RequestBody != nil {
				b, err := shareOne(s.bodies, op.RequestBody)
				if err != nil {
					return err
				}
				op.RequestBody = b
			}
			if op.Responses == nil {
				continue
			}
			for code, r := range op.Responses.StatusCodeResponses {
				shared, err := shareOne(s.responses, r)
				if err != nil {
					return err
				}
				op.Responses.StatusCodeResponses[code] = shared
			}
		}
	}
	return nil
}

func shareAll[T any](seen map[string]*T, list []*T) error {
	for i, v := range list {
		shared, err := shareOne(seen, v)
		if err != nil {
			return err
		}
		list[i] = shared
	}
	return nil
}

// shareOne returns the first value seen whose JSON form equals v's, or v.
func shareOne[T any](seen map[string]*T, v *T) (*T, error) {
	if v == nil {
		return nil, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if shared, ok := seen[string(b)]; ok {
		return shared, nil
	}
	seen[string(b)] = v
	return v, nil
}
