package plugin

import (
	"os"
	"strings"
	"testing"

	admissionv1 "berth.dev/berth/specs/admission/v1"
	schedulerv1 "berth.dev/berth/specs/scheduler/v1"
)

func TestPointNames(t *testing.T) {
	for pt, want := range map[schedulerv1.ExtensionPoint]string{
		schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_FILTER:      "preFilter",
		schedulerv1.ExtensionPoint_EXTENSION_POINT_FILTER:          "filter",
		schedulerv1.ExtensionPoint_EXTENSION_POINT_NORMALIZE_SCORE: "normalizeScore",
		schedulerv1.ExtensionPoint_EXTENSION_POINT_PRE_BIND:        "preBind",
	} {
		if got := pointName(pt); got != want {
			t.Errorf("pointName(%s) = %q, want %q", pt, got, want)
		}
	}
	if got := rpcName(schedulerv1.ExtensionPoint_EXTENSION_POINT_NORMALIZE_SCORE); got != "NormalizeScore" {
		t.Errorf("rpcName = %q", got)
	}
}

func TestVersionAndNamePatterns(t *testing.T) {
	for v, ok := range map[string]bool{"0.1.0": true, "v1.2.3": true, "1.0.0-rc.1+b5": true, "1.0": false, "": false, "latest": false, "01.0.0": false} {
		if semver.MatchString(v) != ok {
			t.Errorf("semver %q: %v, want %v", v, !ok, ok)
		}
	}
	for n, ok := range map[string]bool{"cost": true, "require-limits": true, "a.b": true, "Cost": false, "-x": false, "": false, "a b": false} {
		if pluginName.MatchString(n) != ok {
			t.Errorf("name %q: %v, want %v", n, !ok, ok)
		}
	}
}

func TestPodFieldPattern(t *testing.T) {
	for f, ok := range map[string]bool{"spec.runtimeClassName": true, "metadata.annotations": true, "spec.containers.image": true,
		"": false, "spec": false, "spec.": false, "status.phase": false, "spec..x": false, "spec.containers[0]": false, "metadata.labels.a/b": false} {
		if podField.MatchString(f) != ok {
			t.Errorf("pod field %q: %v, want %v", f, !ok, ok)
		}
	}
}

func TestMutated(t *testing.T) {
	obj := []byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"d"},"spec":{"containers":[{"name":"c"}]}}`)
	req := &admissionv1.AdmissionRequest{Object: obj}
	for _, tc := range []struct {
		name string
		r    *admissionv1.MutateResponse
		want string // "" when valid, else part of the error
	}{
		{"none", &admissionv1.MutateResponse{Allowed: true}, ""},
		{"none with a patch", &admissionv1.MutateResponse{Allowed: true, Patch: []byte("[]")}, "patch type NONE"},
		{"json patch", &admissionv1.MutateResponse{Allowed: true, PatchType: admissionv1.PatchType_PATCH_TYPE_JSON_PATCH,
			Patch: []byte(`[{"op":"add","path":"/metadata/labels","value":{"a":"b"}}]`)}, ""},
		{"json patch that does not apply", &admissionv1.MutateResponse{Allowed: true, PatchType: admissionv1.PatchType_PATCH_TYPE_JSON_PATCH,
			Patch: []byte(`[{"op":"replace","path":"/spec/nothing/here","value":1}]`)}, "does not apply"},
		{"json patch garbage", &admissionv1.MutateResponse{Allowed: true, PatchType: admissionv1.PatchType_PATCH_TYPE_JSON_PATCH, Patch: []byte(`{`)}, "does not parse"},
		{"renaming patch", &admissionv1.MutateResponse{Allowed: true, PatchType: admissionv1.PatchType_PATCH_TYPE_JSON_PATCH,
			Patch: []byte(`[{"op":"replace","path":"/metadata/name","value":"q"}]`)}, "changes the object's"},
		{"whole object", &admissionv1.MutateResponse{Allowed: true, PatchType: admissionv1.PatchType_PATCH_TYPE_OBJECT, Patch: obj}, ""},
		{"whole object of another kind", &admissionv1.MutateResponse{Allowed: true, PatchType: admissionv1.PatchType_PATCH_TYPE_OBJECT,
			Patch: []byte(`{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"p","namespace":"d"}}`)}, "changes the object's"},
		{"unknown type", &admissionv1.MutateResponse{Allowed: true, PatchType: 7}, "unknown patch type"},
	} {
		_, err := mutated(req, tc.r)
		if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
}

func TestChildrenOf(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("no /proc")
	}
	ppid, ok := parentOf(os.Getpid())
	if !ok || ppid != os.Getppid() {
		t.Errorf("parentOf(self) = %d, %v; want %d", ppid, ok, os.Getppid())
	}
	found := false
	for _, c := range childrenOf(os.Getppid()) {
		found = found || c == os.Getpid()
	}
	if !found {
		t.Errorf("childrenOf(parent) does not list this process")
	}
}
