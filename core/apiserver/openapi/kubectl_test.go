package openapi

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/core/registry"
)

// kubectlDir holds the kubectl releases berth supports (design.md: the reference client).
const kubectlDir = "/usr/lib/google-cloud-sdk/bin"

var kubectlVersions = []string{"1.27", "1.28", "1.29", "1.30", "1.31", "1.32", "1.33"}

// fakeAPI is the least of an API server that kubectl needs around the documents: legacy
// discovery from the registry, and deployments kept in memory. It records the writes it gets so
// the test can see what kubectl concluded from the documents. It does not apply patches: a
// PATCH answers the stored object unchanged.
type fakeAPI struct {
	mu      sync.Mutex
	objects map[string][]byte // by request path
	writes  []string          // "METHOD path?query content-type"
}

func (f *fakeAPI) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if body, ok := discoveryDocument(r.URL.Path); ok {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
		return
	}
	if !strings.HasPrefix(r.URL.Path, "/apis/apps/v1/namespaces/") {
		notFound(w, r.URL.Path)
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch r.Method {
	case http.MethodGet:
		obj, ok := f.objects[r.URL.Path]
		if !ok {
			notFound(w, r.URL.Path)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(obj)
	case http.MethodPost, http.MethodPatch:
		f.writes = append(f.writes, r.Method+" "+r.URL.Path+"?"+r.URL.RawQuery+" "+r.Header.Get("Content-Type"))
		body, _ := io.ReadAll(r.Body)
		code := http.StatusOK
		if r.Method == http.MethodPost {
			var meta struct {
				Metadata metav1.ObjectMeta `json:"metadata"`
			}
			if err := json.Unmarshal(body, &meta); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			f.objects[r.URL.Path+"/"+meta.Metadata.Name] = body
			code = http.StatusCreated
		} else {
			body = f.objects[r.URL.Path]
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		_, _ = w.Write(body)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}

func (f *fakeAPI) takeWrites() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	w := f.writes
	f.writes = nil
	return w
}

func notFound(w http.ResponseWriter, path string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusNotFound)
	_ = json.NewEncoder(w).Encode(metav1.Status{
		TypeMeta: metav1.TypeMeta{Kind: "Status", APIVersion: "v1"},
		Status:   metav1.StatusFailure, Reason: metav1.StatusReasonNotFound, Code: http.StatusNotFound,
		Message: path + " not found",
	})
}

// discoveryDocument answers /api, /apis and /api(s)/<group-version> from the registry.
func discoveryDocument(path string) ([]byte, bool) {
	verbs := metav1.Verbs{"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
	lists := map[string]*metav1.APIResourceList{}
	groups := &metav1.APIGroupList{TypeMeta: metav1.TypeMeta{Kind: "APIGroupList", APIVersion: "v1"}}
	for _, r := range registry.All() {
		l, ok := lists[r.GroupVersion()]
		if !ok {
			l = &metav1.APIResourceList{TypeMeta: metav1.TypeMeta{Kind: "APIResourceList", APIVersion: "v1"}, GroupVersion: r.GroupVersion()}
			lists[r.GroupVersion()] = l
			if r.Group != "" {
				gv := metav1.GroupVersionForDiscovery{GroupVersion: r.GroupVersion(), Version: r.Version}
				groups.Groups = append(groups.Groups, metav1.APIGroup{Name: r.Group, Versions: []metav1.GroupVersionForDiscovery{gv}, PreferredVersion: gv})
			}
		}
		l.APIResources = append(l.APIResources, metav1.APIResource{
			Name: r.Resource, SingularName: r.Singular, Namespaced: r.Namespaced, Kind: r.Kind,
			Verbs: verbs, ShortNames: r.ShortNames, Categories: r.Categories,
		})
	}
	var v interface{}
	switch {
	case path == "/api":
		v = &metav1.APIVersions{TypeMeta: metav1.TypeMeta{Kind: "APIVersions"}, Versions: []string{"v1"}}
	case path == "/apis":
		v = groups
	case strings.HasPrefix(path, "/api/"):
		v = lists[strings.TrimPrefix(path, "/api/")]
	case strings.HasPrefix(path, "/apis/"):
		v = lists[strings.TrimPrefix(path, "/apis/")]
	}
	if l, ok := v.(*metav1.APIResourceList); ok && l == nil {
		return nil, false
	}
	if v == nil {
		return nil, false
	}
	b, err := json.Marshal(v)
	return b, err == nil
}

// TestKubectl runs every supported kubectl release against the documents: explain through v3 and
// v2, apply (create, then a strategic merge patch), create and edit. The manifest has an unknown field: kubectl
// refuses it itself unless the documents say the server validates fields (fieldValidation on the
// kind's PATCH), in which case it sends it on with fieldValidation=Strict.
func TestKubectl(t *testing.T) {
	if testing.Short() {
		t.Skip("runs kubectl")
	}
	api := &fakeAPI{objects: map[string][]byte{}}
	srv := newServer(t, api)
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	manifest := func(name, image string) string {
		p := filepath.Join(dir, name+"-"+strings.ReplaceAll(image, ":", "-")+".yaml")
		y := fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: %s
  namespace: default
spec:
  selector:
    matchLabels: {app: %[1]s}
  template:
    metadata:
      labels: {app: %[1]s}
    spec:
      containers:
      - name: app
        image: %[2]s
        notAField: left to the server
      - name: side
        image: busybox
`, name, image)
		if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	found := false
	for _, v := range kubectlVersions {
		bin := filepath.Join(kubectlDir, "kubectl."+v)
		if _, err := os.Stat(bin); err != nil {
			continue
		}
		found = true
		t.Run(v, func(t *testing.T) {
			run := func(args ...string) string {
				t.Helper()
				cmd := exec.Command(bin, append([]string{"--server", srv.URL, "--cache-dir", filepath.Join(dir, "cache-"+v)}, args...)...)
				// kubectl edit "edits" with sed.
				cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig, "HOME="+dir, "KUBE_EDITOR=sed -i s/nginx:1/nginx:3/")
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
				}
				return string(out)
			}

			out := run("explain", "deployment.spec.strategy")
			if !strings.Contains(out, "DeploymentStrategy describes how to replace existing pods") || !strings.Contains(out, "rollingUpdate") {
				t.Errorf("explain deployment.spec.strategy:\n%s", out)
			}
			out = run("explain", "deployment.spec.strategy", "--output=plaintext-openapiv2")
			if !strings.Contains(out, "DeploymentStrategy describes how to replace existing pods") || !strings.Contains(out, "rollingUpdate") {
				t.Errorf("explain --output=plaintext-openapiv2 deployment.spec.strategy:\n%s", out)
			}

			name := "web-" + strings.ReplaceAll(v, ".", "-")
			run("apply", "-f", manifest(name, "nginx:1"))
			run("apply", "-f", manifest(name, "nginx:2"))
			writes := api.takeWrites()
			if len(writes) != 2 {
				t.Fatalf("kubectl apply twice made writes %q, want a POST and a PATCH", writes)
			}
			for _, w := range writes {
				if !strings.Contains(w, "fieldValidation=Strict") {
					t.Errorf("%s: kubectl did not leave validation to the server", w)
				}
			}
			if !strings.HasPrefix(writes[0], "POST /apis/apps/v1/namespaces/default/deployments?") ||
				!strings.HasPrefix(writes[1], "PATCH /apis/apps/v1/namespaces/default/deployments/"+name+"?") ||
				!strings.HasSuffix(writes[1], " application/strategic-merge-patch+json") {
				t.Errorf("writes %q, want a POST then a strategic merge PATCH", writes)
			}

			name += "-edit"
			run("create", "-f", manifest(name, "nginx:1"))
			run("edit", "deployment/"+name, "--namespace", "default")
			writes = api.takeWrites()
			if len(writes) != 2 || !strings.HasPrefix(writes[0], "POST ") || !strings.HasPrefix(writes[1], "PATCH /apis/apps/v1/namespaces/default/deployments/"+name+"?") {
				t.Fatalf("kubectl create and edit made writes %q, want a POST and a PATCH", writes)
			}
			for _, w := range writes {
				if !strings.Contains(w, "fieldValidation=Strict") {
					t.Errorf("%s: kubectl did not leave validation to the server", w)
				}
			}
		})
	}
	if !found {
		t.Skipf("no kubectl in %s", kubectlDir)
	}
}
