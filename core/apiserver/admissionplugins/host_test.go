package admissionplugins

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"

	"berth.dev/berth/plugins/admission"
)

// The host's tests run the real plugin binaries (the require-limits example and
// testdata/misbehave) over real go-plugin connections.

var binDir string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "berth-admission-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	binDir = dir
	for name, pkg := range map[string]string{
		"berth-admission-require-limits": "berth.dev/berth/cmd/berth-admission-require-limits",
		"misbehave":                      "berth.dev/berth/core/apiserver/admissionplugins/testdata/misbehave",
	} {
		if out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), pkg).CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build %s: %v\n%s", pkg, err, out)
			return 1
		}
	}
	return m.Run()
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// startHost starts a host of the given plugins, stopped when the test ends; it restarts
// them after 50 ms.
func startHost(t *testing.T, plugins ...*PluginConfig) *Host {
	t.Helper()
	return startHostWith(t, 50*time.Millisecond, plugins...)
}

func startHostWith(t *testing.T, backoff time.Duration, plugins ...*PluginConfig) *Host {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	h, err := Start(&Configuration{Plugins: plugins}, Options{Log: log, MinBackoff: backoff, MaxBackoff: 4 * backoff})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

func misbehave(policy FailurePolicy, timeout time.Duration) *PluginConfig {
	return &PluginConfig{
		Name: "misbehave", Path: filepath.Join(binDir, "misbehave"), FailurePolicy: policy, Timeout: timeout,
		Rules: []Rule{{Operations: []admission.Operation{"*"}, APIGroups: []string{""}, Resources: []string{"configmaps"}}},
	}
}

func requireLimits(args map[string]any) *PluginConfig {
	return &PluginConfig{
		Name: "require-limits", Path: filepath.Join(binDir, "berth-admission-require-limits"), FailurePolicy: Fail, Timeout: 2 * time.Second, Args: args,
		Rules: []Rule{{Operations: []admission.Operation{admission.Create, admission.Update}, APIGroups: []string{""}, Resources: []string{"pods"}}},
	}
}

func configMap(t *testing.T, name string, op admission.Operation) *Attributes {
	t.Helper()
	b, err := json.Marshal(&corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}, ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	a := &Attributes{Request: admission.Request{
		Operation: op, Resource: schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}, Kind: schema.GroupVersionKind{Version: "v1", Kind: "ConfigMap"},
		Namespace: "default", Name: name, Object: b, UserInfo: admission.UserInfo{Username: "alice"},
	}}
	if op == admission.Update {
		a.OldObject = b
	}
	return a
}

func podAttrs(t *testing.T, ns string, limits corev1.ResourceList) *Attributes {
	t.Helper()
	pod := &corev1.Pod{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "busybox", Resources: corev1.ResourceRequirements{Limits: limits}}}},
	}
	b, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return &Attributes{Request: admission.Request{
		Operation: admission.Create, Resource: schema.GroupVersionResource{Version: "v1", Resource: "pods"}, Kind: schema.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Namespace: ns, Name: "p", Object: b,
	}}
}

func waitUp(t *testing.T, h *Host, name string, restarts int64) Stats {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, _ := h.Stats(name)
		if s.Up && s.Restarts >= restarts {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugin %s not back after %d restarts: %+v", name, restarts, s)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRequireLimitsDeniesWithForbidden(t *testing.T) {
	h := startHost(t, requireLimits(nil))
	ctx := context.Background()
	err := h.Validate(ctx, podAttrs(t, "default", corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1")}))
	want := `pods "p" is forbidden: admission plugin "require-limits" denied the request: container "c" has no memory limit`
	if !apierrors.IsForbidden(err) || err.Error() != want {
		t.Fatalf("Validate = %v, want Forbidden %q", err, want)
	}
	if err := h.Validate(ctx, podAttrs(t, "default", corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi")})); err != nil {
		t.Errorf("a pod with limits: %v", err)
	}
	if err := h.Validate(ctx, podAttrs(t, "kube-system", nil)); err != nil {
		t.Errorf("a pod in kube-system: %v", err)
	}
	if h.Interested(admission.Create, schema.GroupVersionResource{Version: "v1", Resource: "configmaps"}) {
		t.Error("the host is interested in configmaps, which no rule names")
	}
}

func TestRequireLimitsMutates(t *testing.T) {
	h := startHost(t, requireLimits(map[string]any{"defaultLimits": map[string]any{"cpu": "250m", "memory": "64Mi"}}))
	a := podAttrs(t, "default", nil)
	out, err := h.Mutate(context.Background(), a)
	if err != nil || out == nil {
		t.Fatalf("Mutate = %s, %v", out, err)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(out, &pod); err != nil {
		t.Fatal(err)
	}
	if l := pod.Spec.Containers[0].Resources.Limits; l.Cpu().String() != "250m" || l.Memory().String() != "64Mi" {
		t.Errorf("limits after Mutate: %v", l)
	}
	if err := h.Validate(context.Background(), a); err != nil {
		t.Errorf("the mutated pod is denied: %v", err)
	}
}

func TestMutateAndDeny(t *testing.T) {
	h := startHost(t, misbehave(Fail, 2*time.Second))
	ctx := context.Background()
	out, err := h.Mutate(ctx, configMap(t, "label-me", admission.Create))
	if err != nil || !strings.Contains(string(out), `"labels":{"mutated":"yes"}`) {
		t.Errorf("Mutate(label-me) = %s, %v", out, err)
	}
	if err := h.Validate(ctx, configMap(t, "deny-update-me", admission.Create)); err != nil {
		t.Errorf("create of deny-update-me: %v", err)
	}
	err = h.Validate(ctx, configMap(t, "deny-update-me", admission.Update))
	if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), `admission plugin "misbehave" denied the request: deny-update-me may not be updated by alice`) {
		t.Errorf("update of deny-update-me = %v", err)
	}
}

func TestFailurePolicies(t *testing.T) {
	for _, tc := range []struct {
		name, object string
		policy       FailurePolicy
		reason       string
		restarts     bool
	}{
		{"crash fail", "crash-me", Fail, "it exited (exit status 3); restarting", true},
		{"crash ignore", "crash-me", Ignore, "", true},
		{"hang fail", "hang-me", Fail, "it did not answer Validate within 300ms; restarting", true},
		{"hang ignore", "hang-me", Ignore, "", true},
		{"error fail", "error-me", Fail, "it failed: cannot decide today", false},
		{"error ignore", "error-me", Ignore, "", false},
		{"garbage fail", "garbage-me", Fail, "it answered Mutate with garbage", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := startHost(t, misbehave(tc.policy, 300*time.Millisecond))
			before, _ := h.Stats("misbehave")
			ctx := context.Background()
			a := configMap(t, tc.object, admission.Create)
			var err error
			if tc.object == "garbage-me" {
				_, err = h.Mutate(ctx, a)
			} else {
				err = h.Validate(ctx, a)
			}
			if tc.policy == Ignore {
				if err != nil {
					t.Fatalf("with failurePolicy Ignore the request is refused: %v", err)
				}
			} else {
				want := `Internal error occurred: failed calling admission plugin "misbehave": ` + tc.reason
				if !apierrors.IsInternalError(err) || !strings.HasPrefix(err.Error(), want) {
					t.Fatalf("error = %v, want an InternalError starting %q", err, want)
				}
			}
			if !tc.restarts {
				if s, _ := h.Stats("misbehave"); !s.Up || s.Pid != before.Pid {
					t.Errorf("the plugin was restarted for an error of its own: %+v", s)
				}
				return
			}
			s := waitUp(t, h, "misbehave", 1)
			if s.Pid == before.Pid {
				t.Errorf("same process %d after a restart", s.Pid)
			}
			if err := h.Validate(ctx, configMap(t, "fine", admission.Create)); err != nil {
				t.Errorf("after the restart: %v", err)
			}
		})
	}
}

func TestDownPluginFollowsPolicy(t *testing.T) {
	// The restart waits long enough for the test to see the plugin down.
	h := startHostWith(t, 2*time.Second, misbehave(Fail, time.Second))
	s, _ := h.Stats("misbehave")
	if err := syscall.Kill(s.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if st, _ := h.Stats("misbehave"); !st.Up {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the killed plugin is not seen down")
		}
		time.Sleep(10 * time.Millisecond)
	}
	err := h.Validate(context.Background(), configMap(t, "fine", admission.Create))
	want := `Internal error occurred: failed calling admission plugin "misbehave": it is down (it exited (signal: killed)); restarting`
	if !apierrors.IsInternalError(err) || err.Error() != want {
		t.Errorf("while down: %v, want %q", err, want)
	}
	waitUp(t, h, "misbehave", 1)
	if err := h.Validate(context.Background(), configMap(t, "fine", admission.Create)); err != nil {
		t.Errorf("after the restart: %v", err)
	}
}

func TestStartRefuses(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  *PluginConfig
		env  string
		want string
	}{
		{name: "wrong name", cfg: &PluginConfig{Name: "other", Path: filepath.Join(binDir, "misbehave")}, want: `is admission plugin "misbehave", but`},
		{name: "no shared version", cfg: misbehave(Fail, time.Second), env: "v7,v8", want: "admission plugin misbehave speaks admission API v7, v8; this berth speaks v1"},
		{name: "bad args", cfg: requireLimits(map[string]any{"resource": "cpu"}), want: `admission plugin require-limits refused its args`},
		{name: "not a plugin", cfg: &PluginConfig{Name: "true", Path: "/bin/true"}, want: "start admission plugin true (/bin/true)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.env != "" {
				t.Setenv("BERTH_TEST_API_VERSIONS", tc.env)
			}
			h, err := Start(&Configuration{Plugins: []*PluginConfig{tc.cfg}}, Options{Log: slog.New(slog.NewTextHandler(testWriter{t}, nil)), StartTimeout: 3 * time.Second})
			if err == nil {
				h.Close()
				t.Fatal("Start passed")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Start = %v, want %q", err, tc.want)
			}
		})
	}
}
