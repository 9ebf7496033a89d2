package agent

import (
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestSortSandboxesNewestAttemptFirst(t *testing.T) {
	sb := func(id string, attempt uint32, created int64) *runtimeapi.PodSandbox {
		return &runtimeapi.PodSandbox{Id: id, Metadata: &runtimeapi.PodSandboxMetadata{Attempt: attempt}, CreatedAt: created}
	}
	for _, tc := range []struct {
		name string
		in   []*runtimeapi.PodSandbox
		want string
	}{
		// containerd keeps a sandbox whose creation failed half-way, not ready and with
		// no creation time: the next attempt must still count it.
		{"failed sandboxes have no creation time", []*runtimeapi.PodSandbox{sb("a0", 0, 0), sb("a1", 1, 0)}, "a1"},
		{"attempt before creation time", []*runtimeapi.PodSandbox{sb("a2", 2, 0), sb("a1", 1, 50), sb("a0", 0, 100)}, "a2"},
		{"same attempt: the newer", []*runtimeapi.PodSandbox{sb("old", 0, 10), sb("new", 0, 20)}, "new"},
	} {
		sortSandboxes(tc.in)
		if got := tc.in[0].Id; got != tc.want {
			t.Errorf("%s: newest is %s, want %s", tc.name, got, tc.want)
		}
	}
}
