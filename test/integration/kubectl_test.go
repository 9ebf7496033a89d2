package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// nsFor names a namespace per kubectl version, so the versions run side by side.
func nsFor(prefix, version string) string {
	return prefix + "-" + strings.ReplaceAll(version, ".", "")
}

// webManifest writes docs/examples/web.yaml with its namespace renamed to ns and the
// deployment's replicas set, and returns the file's path.
func webManifest(t *testing.T, dir, ns string, replicas string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "docs", "examples", "web.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, r := range []struct {
		old, new string
		count    int
	}{
		{"\n  namespace: web\n", "\n  namespace: " + ns + "\n", 5},
		{"kind: Namespace\nmetadata:\n  name: web\n", "kind: Namespace\nmetadata:\n  name: " + ns + "\n", 1},
		{"\n  replicas: 2\n", "\n  replicas: " + replicas + "\n", 1},
	} {
		if n := strings.Count(s, r.old); n != r.count {
			t.Fatalf("docs/examples/web.yaml: expected %d occurrence(s) of %q, found %d (the test rewrites them)", r.count, r.old, n)
		}
		s = strings.ReplaceAll(s, r.old, r.new)
	}
	p := filepath.Join(dir, "web-"+replicas+".yaml")
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// expectLines fails unless out's lines are exactly want, in order.
func expectLines(t *testing.T, res kubectlResult, want []string) {
	t.Helper()
	got := strings.Split(strings.TrimRight(res.Stdout, "\n"), "\n")
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("stdout lines differ\nwant:\n%s\n\ngot:\n%s", strings.Join(want, "\n"), res)
	}
}

var columnGap = regexp.MustCompile(`\s{2,}`)

// tableColumns splits a kubectl table line into its columns (columns are 2+ spaces apart).
func tableColumns(line string) []string {
	return columnGap.Split(strings.TrimSpace(line), -1)
}

// tableRow finds the row of a kubectl table whose first column is name.
func tableRow(t *testing.T, res kubectlResult, name string) []string {
	t.Helper()
	for _, line := range strings.Split(res.Stdout, "\n")[1:] {
		if cols := tableColumns(line); cols[0] == name {
			return cols
		}
	}
	t.Fatalf("no row %q in the table:\n%s", name, res)
	return nil
}

func expectColumns(t *testing.T, res kubectlResult, want ...string) {
	t.Helper()
	header := strings.SplitN(res.Stdout, "\n", 2)[0]
	if got := tableColumns(header); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("table header: want %q, got %q\n%s", want, got, res)
	}
}

// TestKubectlUserScenario is the "as a user would try it": docs/examples/web.yaml
// applied, inspected, changed and deleted with kubectl 1.27 and 1.33 against `berth server`.
func TestKubectlUserScenario(t *testing.T) {
	skipShort(t)
	srv := sharedBerth(t)
	for _, version := range kubectlVersions {
		t.Run("kubectl-"+version, func(t *testing.T) {
			t.Parallel()
			kubectlUserScenario(t, kubectlRun{Version: version, Kubeconfig: srv.kubeconfig}, nsFor("web", version), clientset(t, srv.kubeconfig))
		})
	}
}

func kubectlUserScenario(t *testing.T, k kubectlRun, ns string, cs kubernetes.Interface) {
	dir := t.TempDir()
	manifest := webManifest(t, dir, ns, "2")
	objects := []string{"namespace/" + ns, "configmap/web-config", "secret/web-credentials", "deployment.apps/web", "service/web", "persistentvolumeclaim/web-data"}
	with := func(verbs ...string) []string {
		out := make([]string, len(objects))
		for i, o := range objects {
			out[i] = o + " " + verbs[i]
		}
		return out
	}
	// resourceVersions reads every object of the manifest (a failed read fails the test).
	resourceVersions := func(t *testing.T) map[string]string {
		t.Helper()
		ctx := testContext(t)
		rvs := map[string]string{}
		get := func(name string, f func() (metav1.Object, error)) {
			o, err := f()
			if err != nil {
				t.Fatalf("get %s: %v", name, err)
			}
			rvs[name] = o.GetResourceVersion()
		}
		get(objects[0], func() (metav1.Object, error) { return cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}) })
		get(objects[1], func() (metav1.Object, error) {
			return cs.CoreV1().ConfigMaps(ns).Get(ctx, "web-config", metav1.GetOptions{})
		})
		get(objects[2], func() (metav1.Object, error) {
			return cs.CoreV1().Secrets(ns).Get(ctx, "web-credentials", metav1.GetOptions{})
		})
		// The deployment controller writes the Deployment's status whenever it likes, so its
		// resourceVersion moves by itself: what an apply must leave alone is its spec
		// (generation) and its metadata.
		d, err := cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get %s: %v", objects[3], err)
		}
		rvs[objects[3]] = fmt.Sprintf("generation %d, labels %v, annotations %v", d.Generation, d.Labels, d.Annotations)
		get(objects[4], func() (metav1.Object, error) { return cs.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{}) })
		get(objects[5], func() (metav1.Object, error) {
			return cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "web-data", metav1.GetOptions{})
		})
		return rvs
	}
	deployment := func(t *testing.T) *appsv1.Deployment {
		t.Helper()
		d, err := cs.AppsV1().Deployments(ns).Get(testContext(t), "web", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("get deployment web: %v", err)
		}
		return d
	}

	if !t.Run("apply creates each object", func(t *testing.T) {
		expectLines(t, k.mustRun(t, "apply", "-f", manifest), with("created", "created", "created", "created", "created", "created"))
	}) {
		return
	}

	t.Run("apply again changes nothing", func(t *testing.T) {
		before := resourceVersions(t)
		res := k.mustRun(t, "apply", "-f", manifest)
		// web.yaml gives the Secret as data: with stringData, kubectl reports `configured` on
		// every apply, on Kubernetes too (kubernetes/kubernetes#87736).
		expectLines(t, res, with("unchanged", "unchanged", "unchanged", "unchanged", "unchanged", "unchanged"))
		after := resourceVersions(t)
		for _, o := range objects {
			if before[o] != after[o] {
				t.Errorf("%s was rewritten by an identical apply: %s -> %s", o, before[o], after[o])
			}
		}
	})

	t.Run("apply with changed replicas configures the deployment", func(t *testing.T) {
		gen := deployment(t).Generation
		res := k.mustRun(t, "apply", "-f", webManifest(t, dir, ns, "3"))
		expectLines(t, res, with("unchanged", "unchanged", "unchanged", "configured", "unchanged", "unchanged"))
		d := deployment(t)
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 {
			t.Errorf("spec.replicas = %v after apply, want 3", d.Spec.Replicas)
		}
		if d.Generation != gen+1 {
			t.Errorf("metadata.generation = %d after a spec change, want %d", d.Generation, gen+1)
		}
	})

	t.Run("get -o yaml", func(t *testing.T) {
		res := k.mustRun(t, "get", "deploy", "web", "-n", ns, "-o", "yaml")
		var d appsv1.Deployment
		if err := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(res.Stdout), 4096).Decode(&d); err != nil {
			t.Fatalf("decode the YAML: %v\n%s", err, res)
		}
		stored := deployment(t)
		if d.APIVersion != "apps/v1" || d.Kind != "Deployment" {
			t.Errorf("apiVersion/kind = %s/%s, want apps/v1/Deployment", d.APIVersion, d.Kind)
		}
		if d.Name != "web" || d.Namespace != ns || d.UID != stored.UID || d.ResourceVersion != stored.ResourceVersion {
			t.Errorf("metadata = %s/%s uid %s rv %s, want %s/web uid %s rv %s", d.Namespace, d.Name, d.UID, d.ResourceVersion, ns, stored.UID, stored.ResourceVersion)
		}
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 3 || len(d.Spec.Template.Spec.Containers) != 1 || d.Spec.Template.Spec.Containers[0].Image != "nginx:1.27" {
			t.Errorf("spec differs from the manifest: %+v", d.Spec)
		}
		if d.Annotations["kubectl.kubernetes.io/last-applied-configuration"] == "" {
			t.Errorf("no last-applied-configuration annotation:\n%s", res.Stdout)
		}
	})

	t.Run("get deploy,svc", func(t *testing.T) {
		res := k.mustRun(t, "get", "deploy,svc", "-n", ns)
		tables := strings.Split(strings.TrimSpace(res.Stdout), "\n\n")
		if len(tables) != 2 {
			t.Fatalf("want two tables (deployments, services):\n%s", res)
		}
		expectColumns(t, kubectlResult{Stdout: tables[0]}, "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE")
		tableRow(t, kubectlResult{Stdout: tables[0]}, "deployment.apps/web")
		expectColumns(t, kubectlResult{Stdout: tables[1]}, "NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE")
		row := tableRow(t, kubectlResult{Stdout: tables[1]}, "service/web")
		if row[1] != "ClusterIP" || row[4] != "80/TCP" {
			t.Errorf("service row = %q, want TYPE ClusterIP and PORT(S) 80/TCP", row)
		}
	})

	t.Run("get all", func(t *testing.T) {
		res := k.mustRun(t, "get", "all", "-n", ns)
		for _, name := range []string{"service/web", "deployment.apps/web"} {
			if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + `\s`).MatchString(res.Stdout) {
				t.Errorf("`get all` does not list %s:\n%s", name, res)
			}
		}
	})

	t.Run("describe deploy", func(t *testing.T) {
		res := k.mustRun(t, "describe", "deploy", "web", "-n", ns)
		for _, re := range []string{`(?m)^Name:\s+web$`, `(?m)^Namespace:\s+` + ns + `$`, `(?m)^Selector:\s+app=web$`,
			`(?m)^Replicas:\s+3 desired`, `(?m)^StrategyType:\s+RollingUpdate$`, `(?m)^\s+Image:\s+nginx:1\.27$`} {
			if !regexp.MustCompile(re).MatchString(res.Stdout) {
				t.Errorf("describe output does not match %s:\n%s", re, res)
			}
		}
	})

	t.Run("scale", func(t *testing.T) {
		expectLines(t, k.mustRun(t, "scale", "deploy/web", "--replicas=5", "-n", ns), []string{"deployment.apps/web scaled"})
		if r := deployment(t).Spec.Replicas; r == nil || *r != 5 {
			t.Errorf("spec.replicas = %v after scale, want 5", r)
		}
	})

	t.Run("label and annotate", func(t *testing.T) {
		gen := deployment(t).Generation
		expectLines(t, k.mustRun(t, "label", "deploy", "web", "tier=frontend", "-n", ns), []string{"deployment.apps/web labeled"})
		d := deployment(t)
		if d.Labels["tier"] != "frontend" || d.Labels["app"] != "web" {
			t.Errorf("labels = %v, want app=web and tier=frontend", d.Labels)
		}
		if d.Generation != gen {
			t.Errorf("metadata.generation went %d -> %d on a label change", gen, d.Generation)
		}
		res := k.mustRun(t, "annotate", "deploy", "web", "example.com/note=hello", "-n", ns)
		// kubectl 1.27 prints "annotate", later versions "annotated".
		if !regexp.MustCompile(`^deployment\.apps/web annotated?\n$`).MatchString(res.Stdout) {
			t.Errorf("want `deployment.apps/web annotated`:\n%s", res)
		}
		d = deployment(t)
		if d.Annotations["example.com/note"] != "hello" {
			t.Errorf("annotations = %v, want example.com/note=hello", d.Annotations)
		}
		// Kubernetes bumps a Deployment's generation on annotation changes too (they are
		// copied to its ReplicaSets): apps/deployment's PrepareForUpdate.
		if d.Generation != gen+1 {
			t.Errorf("metadata.generation went %d -> %d on an annotation change, want %d", gen, d.Generation, gen+1)
		}
	})

	t.Run("edit", func(t *testing.T) {
		editor := filepath.Join(dir, "editor.sh")
		// Changes the first `  replicas:` line, spec's (status comes after spec).
		script := "#!/bin/sh\nsed -i '0,/^  replicas: [0-9]*$/s//  replicas: 7/' \"$1\"\n"
		if err := os.WriteFile(editor, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		ke := k
		ke.Env = []string{"KUBE_EDITOR=" + editor}
		expectLines(t, ke.mustRun(t, "edit", "deploy/web", "-n", ns), []string{"deployment.apps/web edited"})
		if r := deployment(t).Spec.Replicas; r == nil || *r != 7 {
			t.Errorf("spec.replicas = %v after edit, want 7", r)
		}
	})

	t.Run("get -w shows a change", func(t *testing.T) {
		const requestTimeout = 8 * time.Second
		ctx := testContext(t)
		cmd := k.cmd(t, ctx, "get", "deploy", "web", "-n", ns, "-w", "--request-timeout="+requestTimeout.String())
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		var stderr syncBuffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		started := time.Now()
		lines := lineReader(stdout)
		var seen []string
		waitFor := func(ready string) {
			t.Helper()
			timeout := time.After(requestTimeout)
			for {
				select {
				case line, ok := <-lines:
					if !ok {
						t.Fatalf("kubectl get -w ended before a row with READY %s; output:\n%s\nstderr:\n%s", ready, strings.Join(seen, "\n"), stderr.String())
					}
					seen = append(seen, line)
					if cols := tableColumns(line); cols[0] == "web" && len(cols) > 1 && cols[1] == ready {
						return
					}
				case <-timeout:
					t.Fatalf("no row with READY %s from kubectl get -w; output:\n%s\nstderr:\n%s", ready, strings.Join(seen, "\n"), stderr.String())
				}
			}
		}
		waitFor("0/7")
		k.mustRun(t, "scale", "deploy/web", "--replicas=2", "-n", ns)
		waitFor("0/2")
		for range lines {
		}
		err = cmd.Wait()
		if took := time.Since(started); took > requestTimeout+10*time.Second {
			t.Errorf("kubectl get -w --request-timeout=%s ran %s", requestTimeout, took)
		}
		if err != nil {
			t.Errorf("kubectl get -w ended with %v after its request timeout; stderr:\n%s", err, stderr.String())
		}
	})

	t.Run("tables", func(t *testing.T) {
		expectLines(t, k.mustRun(t, "run", "p1", "--image=busybox:1.36", "--restart=Never", "-n", ns), []string{"pod/p1 created"})

		res := k.mustRun(t, "get", "pods", "-n", ns)
		expectColumns(t, res, "NAME", "READY", "STATUS", "RESTARTS", "AGE")
		if row := tableRow(t, res, "p1"); strings.Join(row[:4], " ") != "p1 0/1 Pending 0" {
			t.Errorf("pod row = %q, want p1 0/1 Pending 0 ...", row)
		}
		res = k.mustRun(t, "get", "pods", "-n", ns, "-o", "wide")
		expectColumns(t, res, "NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED NODE", "READINESS GATES")
		if row := tableRow(t, res, "p1"); len(row) != 9 || row[6] != "<none>" {
			t.Errorf("wide pod row = %q, want 9 columns and NODE <none>", row)
		}

		// The deployment controller has rolled the template out to a ReplicaSet; no pod is
		// ready (no node agent runs them), so none is available.
		replicas := *deployment(t).Spec.Replicas
		k.mustRun(t, "wait", "-n", ns, "deploy/web", "--timeout=30s", fmt.Sprintf("--for=jsonpath={.status.updatedReplicas}=%d", replicas))
		res = k.mustRun(t, "get", "deploy", "-n", ns)
		expectColumns(t, res, "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE")
		want := fmt.Sprintf("web 0/%d %d 0", replicas, replicas)
		if row := tableRow(t, res, "web"); strings.Join(row[:4], " ") != want {
			t.Errorf("deployment row = %q, want %s ...", row, want)
		}
		res = k.mustRun(t, "get", "deploy", "-n", ns, "-o", "wide")
		expectColumns(t, res, "NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR")
		if row := tableRow(t, res, "web"); len(row) != 8 || strings.Join(row[5:], " ") != "web nginx:1.27 app=web" {
			t.Errorf("wide deployment row = %q, want CONTAINERS web, IMAGES nginx:1.27, SELECTOR app=web", row)
		}
	})

	t.Run("short names", func(t *testing.T) {
		for _, c := range []struct {
			short string
			want  string // a name `get -o name` must list (a trailing * matches a prefix); "" when there is none to list
		}{
			{"po", "pod/p1"}, {"svc", "service/web"}, {"deploy", "deployment.apps/web"}, {"rs", "replicaset.apps/web-*"},
			{"rc", ""}, {"ns", "namespace/" + ns}, {"cm", "configmap/web-config"}, {"ds", ""},
			{"sts", ""}, {"pv", ""}, {"pvc", "persistentvolumeclaim/web-data"}, {"ing", ""},
		} {
			if c.want == "" {
				// An empty list of a known resource, not "the server doesn't have a resource type".
				res := k.run(t, "get", c.short, "-n", ns)
				if res.Code != 0 || !strings.Contains(res.Stderr, "No resources found") {
					t.Errorf("get %s: want exit 0 and `No resources found`:\n%s", c.short, res)
				}
				continue
			}
			res := k.run(t, "get", c.short, "-n", ns, "-o", "name")
			listed := contains(strings.Fields(res.Stdout), c.want)
			if prefix, ok := strings.CutSuffix(c.want, "*"); ok {
				// The deployment's ReplicaSet: web-<pod-template-hash>.
				listed = strings.HasPrefix(strings.TrimSpace(res.Stdout), prefix)
			}
			if res.Code != 0 || !listed {
				t.Errorf("get %s does not list %s:\n%s", c.short, c.want, res)
			}
		}
	})

	t.Run("delete -f removes everything", func(t *testing.T) {
		res := k.run(t, "delete", "-f", manifest, "--timeout=30s")
		want := []string{`namespace "` + ns + `" deleted`, `configmap "web-config" deleted`, `secret "web-credentials" deleted`,
			`deployment.apps "web" deleted`, `service "web" deleted`, `persistentvolumeclaim "web-data" deleted`}
		expectLines(t, res, want)
		if res.Code != 0 {
			t.Errorf("delete -f did not finish (kubectl waits until the objects are gone; the namespace must be emptied and removed):\n%s", res)
		}
		ctx := testContext(t)
		checks := map[string]error{}
		_, checks["namespace"] = cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
		_, checks["configmap"] = cs.CoreV1().ConfigMaps(ns).Get(ctx, "web-config", metav1.GetOptions{})
		_, checks["secret"] = cs.CoreV1().Secrets(ns).Get(ctx, "web-credentials", metav1.GetOptions{})
		_, checks["deployment"] = cs.AppsV1().Deployments(ns).Get(ctx, "web", metav1.GetOptions{})
		_, checks["service"] = cs.CoreV1().Services(ns).Get(ctx, "web", metav1.GetOptions{})
		_, checks["pvc"] = cs.CoreV1().PersistentVolumeClaims(ns).Get(ctx, "web-data", metav1.GetOptions{})
		_, checks["pod p1 (not in the manifest: namespace deletion removes it)"] = cs.CoreV1().Pods(ns).Get(ctx, "p1", metav1.GetOptions{})
		for what, err := range checks {
			if !apierrors.IsNotFound(err) {
				t.Errorf("%s after delete -f: want NotFound, got %v", what, err)
			}
		}
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestKubectlRejectsBadInput: a manifest with a missing image, a bad name or an unknown field is
// refused with Kubernetes' message and nothing is stored.
func TestKubectlRejectsBadInput(t *testing.T) {
	skipShort(t)
	srv := sharedBerth(t)
	cases := []struct {
		name     string
		manifest string
		resource string // what `kubectl get` looks for afterwards
		object   string
		stderr   []string
	}{
		{
			name: "missing image",
			manifest: `apiVersion: apps/v1
kind: Deployment
metadata:
  name: no-image
spec:
  selector:
    matchLabels: {app: no-image}
  template:
    metadata:
      labels: {app: no-image}
    spec:
      containers:
      - name: c
`,
			resource: "deployment", object: "no-image",
			stderr: []string{`The Deployment "no-image" is invalid: spec.template.spec.containers[0].image: Required value`},
		},
		{
			name: "bad name",
			manifest: `apiVersion: v1
kind: ConfigMap
metadata:
  name: Bad_Name
data:
  a: b
`,
			resource: "configmap", object: "Bad_Name",
			stderr: []string{`The ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 subdomain`},
		},
		{
			name: "unknown field",
			manifest: `apiVersion: apps/v1
kind: Deployment
metadata:
  name: unknown-field
spec:
  foo: bar
  selector:
    matchLabels: {app: unknown-field}
  template:
    metadata:
      labels: {app: unknown-field}
    spec:
      containers:
      - name: c
        image: busybox:1.36
`,
			resource: "deployment", object: "unknown-field",
			stderr: []string{`strict decoding error: unknown field "spec.foo"`},
		},
	}
	for _, version := range kubectlVersions {
		t.Run("kubectl-"+version, func(t *testing.T) {
			t.Parallel()
			k := kubectlRun{Version: version, Kubeconfig: srv.kubeconfig}
			ns := nsFor("bad", version)
			k.mustRun(t, "create", "namespace", ns)
			dir := t.TempDir()
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					p := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".yaml")
					if err := os.WriteFile(p, []byte(c.manifest), 0o644); err != nil {
						t.Fatal(err)
					}
					res := k.run(t, "apply", "-n", ns, "-f", p)
					if res.Code == 0 {
						t.Errorf("apply accepted the manifest:\n%s", res)
					}
					for _, want := range c.stderr {
						if !strings.Contains(res.Stderr, want) {
							t.Errorf("stderr lacks %q:\n%s", want, res)
						}
					}
					get := k.run(t, "get", c.resource, c.object, "-n", ns)
					if get.Code == 0 || !strings.Contains(get.Stderr, "NotFound") {
						t.Errorf("the refused object was stored (want NotFound):\n%s", get)
					}
				})
			}
		})
	}
}

// TestKubectlWithoutCredentials: kubeconfigs that trust the CA but carry no credential the server
// accepts are turned away with Unauthorized. (A user entry with no credential at all makes
// kubectl itself prompt for a basic-auth username before sending anything, on Kubernetes too;
// TestUnauthenticatedRequest sends such requests over plain HTTPS.)
func TestKubectlWithoutCredentials(t *testing.T) {
	skipShort(t)
	srv := sharedBerth(t)
	foreignCert, foreignKey := foreignClientCert(t)
	kubeconfigs := map[string]string{}
	for name, set := range map[string]func(a *clientcmdapi.AuthInfo){
		"bearer token berth never issued": func(a *clientcmdapi.AuthInfo) { a.Token = "not-a-berth-token" },
		"client certificate of another CA": func(a *clientcmdapi.AuthInfo) {
			a.ClientCertificateData, a.ClientKeyData = foreignCert, foreignKey
		},
	} {
		cfg, err := clientcmd.LoadFromFile(srv.kubeconfig)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range cfg.AuthInfos {
			a.ClientCertificate, a.ClientCertificateData, a.ClientKey, a.ClientKeyData = "", nil, "", nil
			set(a)
		}
		p := filepath.Join(t.TempDir(), "kubeconfig")
		if err := clientcmd.WriteToFile(*cfg, p); err != nil {
			t.Fatal(err)
		}
		kubeconfigs[name] = p
	}
	for _, version := range kubectlVersions {
		t.Run("kubectl-"+version, func(t *testing.T) {
			t.Parallel()
			for name, kubeconfig := range kubeconfigs {
				res := kubectlRun{Version: version, Kubeconfig: kubeconfig}.run(t, "get", "namespaces")
				if res.Code != 1 || !strings.Contains(res.Stderr, "error: You must be logged in to the server (Unauthorized)") {
					t.Errorf("%s: want exit code 1 and `error: You must be logged in to the server (Unauthorized)`:\n%s", name, res)
				}
				if strings.Contains(res.Stdout, "default") {
					t.Errorf("%s: namespaces were listed:\n%s", name, res)
				}
			}
		})
	}
}

// TestKubectlExplain: the OpenAPI documents are complete enough for kubectl explain.
func TestKubectlExplain(t *testing.T) {
	skipShort(t)
	srv := sharedBerth(t)
	for _, version := range kubectlVersions {
		t.Run("kubectl-"+version, func(t *testing.T) {
			t.Parallel()
			res := kubectlRun{Version: version, Kubeconfig: srv.kubeconfig}.mustRun(t, "explain", "deployment.spec.strategy")
			for _, re := range []string{`(?m)^KIND:\s+Deployment$`, `(?m)^VERSION:\s+(apps/)?v1$`, `(?m)^\s+rollingUpdate\s+<`, `(?m)^\s+type\s+<string>`} {
				if !regexp.MustCompile(re).MatchString(res.Stdout) {
					t.Errorf("explain output does not match %s:\n%s", re, res)
				}
			}
		})
	}
}
