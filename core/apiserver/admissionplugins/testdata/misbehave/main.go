// Command misbehave is an admission plugin for the host's tests: it misbehaves on
// request, by the name of the object it judges. On Validate: "crash-me" exits,
// "hang-me" never answers, "error-me" fails, "deny-me" is denied, "deny-update-me" is denied its updates. On Mutate:
// "garbage-me" gets a patch that is not JSON, "label-me" gets the label mutated=yes.
// BERTH_TEST_API_VERSIONS (comma-separated) overrides the API versions it announces.
package main

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"berth.dev/berth/plugins/admission"
)

type plugin struct{}

func (plugin) Name() string    { return "misbehave" }
func (plugin) Version() string { return "0.0.1" }

func (plugin) APIVersions() []string {
	if v := os.Getenv("BERTH_TEST_API_VERSIONS"); v != "" {
		return strings.Split(v, ",")
	}
	return admission.APIVersions
}

func (plugin) Validate(ctx context.Context, req *admission.Request) (admission.Verdict, error) {
	switch req.Name {
	case "crash-me":
		os.Exit(3)
	case "hang-me":
		time.Sleep(time.Hour)
	case "error-me":
		return admission.Verdict{}, errors.New("cannot decide today")
	case "deny-update-me":
		if req.Operation != admission.Update {
			break
		}
		fallthrough
	case "deny-me":
		return admission.Deny("%s may not be %s by %s", req.Name, strings.ToLower(string(req.Operation))+"d", req.UserInfo.Username), nil
	}
	return admission.Allow(), nil
}

func (plugin) Mutate(ctx context.Context, req *admission.Request) (admission.Mutation, error) {
	switch req.Name {
	case "garbage-me":
		return admission.Patched([]byte("not json")), nil
	case "label-me":
		return admission.Patched([]byte(`[{"op":"add","path":"/metadata/labels","value":{"mutated":"yes"}}]`)), nil
	}
	return admission.Unchanged(), nil
}

func main() { admission.Serve(plugin{}) }
