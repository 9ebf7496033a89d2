// Command faulty is a scheduler plugin for the host's tests: it filters and scores like a
// well-behaved plugin until its control file (named by its args) says otherwise:
// "hang" blocks every Score and Filter, "garbage" answers a wrong number of scores and
// scores out of range, "crash" exits in the middle of a call. Its name and API versions
// come from the args too, to test the refusals, and so does the pod signature it declares.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"berth.dev/berth/plugins/scheduler"
)

type args struct {
	Name        string   `json:"name"`
	Control     string   `json:"control"`
	APIVersions []string `json:"apiVersions"`
	// PodSignature, when set (even to []), is the pod signature it declares.
	PodSignature *[]string `json:"podSignature"`
}

type faulty struct{ a args }

func (f *faulty) Name() string    { return f.a.Name }
func (f *faulty) Version() string { return "test" }

func (f *faulty) APIVersions() []string {
	if len(f.a.APIVersions) > 0 {
		return f.a.APIVersions
	}
	return scheduler.APIVersions
}

func (f *faulty) Configure(string, []byte) error { return nil }

func (f *faulty) PodSignature() *scheduler.PodSignature {
	if f.a.PodSignature == nil {
		return nil
	}
	return &scheduler.PodSignature{Fields: *f.a.PodSignature}
}

// mode reads the control file; a missing file is "ok".
func (f *faulty) mode() string {
	b, err := os.ReadFile(f.a.Control)
	if err != nil {
		return "ok"
	}
	return strings.TrimSpace(string(b))
}

func (f *faulty) misbehave(ctx context.Context) {
	switch f.mode() {
	case "hang":
		<-ctx.Done()
		select {} // stays stuck after the caller gave up, as a real hang does
	case "crash":
		os.Exit(3)
	}
}

func (f *faulty) Filter(ctx context.Context, _ *corev1.Pod, node *corev1.Node) *scheduler.Status {
	f.misbehave(ctx)
	if node.Labels["faulty/reject"] != "" {
		return scheduler.NewStatus(scheduler.Unschedulable, "node(s) were rejected by faulty")
	}
	return nil
}

func (f *faulty) Score(ctx context.Context, _ *corev1.Pod, node *corev1.Node) (int64, *scheduler.Status) {
	f.misbehave(ctx)
	if f.mode() == "garbage" {
		return 1000, nil
	}
	return int64(len(node.Name) % 100), nil
}

func main() {
	var a args
	// The args arrive with Configure, too late to pick the name and versions that
	// PluginInfo announces: they come from the environment the test sets instead.
	if err := json.Unmarshal([]byte(os.Getenv("FAULTY_ARGS")), &a); err != nil {
		fmt.Fprintln(os.Stderr, "faulty: FAULTY_ARGS:", err)
		os.Exit(2)
	}
	scheduler.Serve(&faulty{a: a})
}
