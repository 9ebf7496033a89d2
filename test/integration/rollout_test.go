package integration

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// TestKubectlRollout drives a Deployment's lifecycle with kubectl 1.27 and 1.33 against
// `berth server` and its controllers: create, rollout status, set image, history, undo
// (also --to-revision), pause and resume, restart, and scale in the middle of a rollout.
//
// No node agent runs pods yet, so the test stands in for one: markReady reports every pod
// of the namespace Running and Ready through the status subresource, as a kubelet would once
// its containers started. Everything else (ReplicaSets, scaling, revisions, conditions,
// events) is the controllers' doing.
func TestKubectlRollout(t *testing.T) {
	skipShort(t)
	srv := sharedBerth(t)
	for _, version := range kubectlVersions {
		t.Run("kubectl-"+version, func(t *testing.T) {
			t.Parallel()
			ns := nsFor("rollout", version)
			k := kubectlRun{Version: version, Kubeconfig: srv.kubeconfig, Timeout: 90 * time.Second}
			cs := clientset(t, srv.kubeconfig)
			k.mustRun(t, "create", "namespace", ns)
			ctx, stop := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); markReady(ctx, cs, ns) }()
			t.Cleanup(func() { stop(); <-done })
			kubectlRollout(t, k, ns)
		})
	}
}

func kubectlRollout(t *testing.T, k kubectlRun, ns string) {
	n := []string{"-n", ns}
	run := func(args ...string) kubectlResult { t.Helper(); return k.mustRun(t, append(args, n...)...) }
	status := func() {
		t.Helper()
		res := run("rollout", "status", "deploy/web", "--timeout=60s")
		if !strings.Contains(res.Stdout, `deployment "web" successfully rolled out`) {
			t.Fatalf("rollout status did not report success:\n%s", res)
		}
	}
	images := func() string {
		t.Helper()
		return strings.TrimSpace(run("get", "deploy/web", "-o", "jsonpath={.spec.template.spec.containers[0].image}").Stdout)
	}
	// revisions returns the REVISION column of rollout history.
	revisions := func() []string {
		t.Helper()
		var revs []string
		for _, line := range strings.Split(run("rollout", "history", "deploy/web").Stdout, "\n") {
			f := strings.Fields(line)
			if len(f) > 0 && f[0] != "REVISION" && !strings.HasPrefix(f[0], "deployment") {
				revs = append(revs, f[0])
			}
		}
		return revs
	}
	readyRS := func() int {
		t.Helper()
		count := 0
		for _, line := range strings.Split(strings.TrimSpace(run("get", "rs", "--no-headers").Stdout), "\n") {
			if f := strings.Fields(line); len(f) >= 4 && f[1] != "0" {
				count++
			}
		}
		return count
	}

	run("create", "deployment", "web", "--image=nginx:1.25", "--replicas=3")
	status()
	if got := run("get", "deploy", "web", "--no-headers").Stdout; !strings.HasPrefix(strings.Join(strings.Fields(got), " "), "web 3/3 3 3") {
		t.Errorf("get deploy after the rollout: %q, want web 3/3 3 3 ...", got)
	}

	run("set", "image", "deploy/web", "nginx=nginx:1.26")
	status()
	if got := revisions(); strings.Join(got, " ") != "1 2" {
		t.Errorf("history after set image: revisions %v, want 1 2", got)
	}
	if n := readyRS(); n != 1 {
		t.Errorf("%d ReplicaSets with pods after the rollout, want 1 (the old one scaled to 0)", n)
	}
	if res := run("describe", "deploy", "web"); !strings.Contains(res.Stdout, "ScalingReplicaSet") || !strings.Contains(res.Stdout, "NewReplicaSetAvailable") {
		t.Errorf("describe deploy lacks the ScalingReplicaSet events or the NewReplicaSetAvailable condition:\n%s", res.Stdout)
	}

	run("rollout", "undo", "deploy/web")
	status()
	if got := images(); got != "nginx:1.25" {
		t.Errorf("image after undo: %s, want nginx:1.25", got)
	}
	if got := revisions(); strings.Join(got, " ") != "2 3" {
		t.Errorf("history after undo: revisions %v, want 2 3 (revision 1 became 3)", got)
	}
	run("rollout", "undo", "deploy/web", "--to-revision=2")
	status()
	if got := images(); got != "nginx:1.26" {
		t.Errorf("image after undo --to-revision=2: %s, want nginx:1.26", got)
	}

	// Paused: a template change makes no new ReplicaSet until resume.
	run("rollout", "pause", "deploy/web")
	run("set", "image", "deploy/web", "nginx=nginx:1.27")
	time.Sleep(time.Second) // room for the controller to get it wrong
	if got := revisions(); strings.Join(got, " ") != "3 4" {
		t.Errorf("history while paused: revisions %v, want 3 4 (no new revision)", got)
	}
	run("rollout", "resume", "deploy/web")
	status()
	if got := revisions(); strings.Join(got, " ") != "3 4 5" {
		t.Errorf("history after resume: revisions %v, want 3 4 5", got)
	}

	run("rollout", "restart", "deploy/web")
	// Scale while the restart rolls out: the controller spreads the new count over both
	// ReplicaSets and the rollout still completes at the new size.
	run("scale", "deploy/web", "--replicas=5")
	status()
	if got := run("get", "deploy", "web", "--no-headers").Stdout; !strings.HasPrefix(strings.Join(strings.Fields(got), " "), "web 5/5 5 5") {
		t.Errorf("get deploy after restart and scale: %q, want web 5/5 5 5 ...", got)
	}
	if got := revisions(); len(got) != 4 || got[3] != "6" {
		t.Errorf("history after restart: revisions %v, want 6 last", got)
	}
	pods := strings.Fields(run("get", "pods", "-o", "name").Stdout)
	if len(pods) != 5 {
		t.Errorf("pods after scale to 5: %v", pods)
	}
}

// markReady stands in for the node agents until ctx ends: every pod of ns that is not yet
// Running and Ready is reported so. (It polls; the real agent follows its pods by watch.)
func markReady(ctx context.Context, cs kubernetes.Interface, ns string) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp != nil || (p.Status.Phase == corev1.PodRunning && podIsReady(p)) {
				continue
			}
			now := metav1.Now()
			p.Status.Phase = corev1.PodRunning
			p.Status.StartTime = &now
			p.Status.Conditions = []corev1.PodCondition{
				{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
				{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			}
			_, _ = cs.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
		}
	}
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
