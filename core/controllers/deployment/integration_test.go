package deployment_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/util/retry"

	"berth.dev/berth/core/controllers/deployment"
	"berth.dev/berth/core/internal/testserver"
)

// TestRolloutAgainstServer runs the real API server in-process and the Deployment
// controller alone against it, and follows a deployment through a rolling update, a
// rollback and a scale in the middle of a rollout, as kubectl would see them.
func TestRolloutAgainstServer(t *testing.T) {
	ctx := t.Context()
	kube := start(t)
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "roll"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	fake := &replicaSetStandIn{kube: kube, ns: "roll"}
	go fake.run(ctx)

	deploys := kube.AppsV1().Deployments("roll")
	replicas := int32(3)
	_, err := deploys.Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "web"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "web", Image: "nginx:1"}}},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The server's defaults (25% surge and unavailability) make 3 replicas roll with one
	// surge pod and none unavailable.

	first := waitRollout(t, kube, 3)
	if first.Annotations["deployment.kubernetes.io/revision"] != "1" {
		t.Errorf("first replica set revision %q, want 1", first.Annotations["deployment.kubernetes.io/revision"])
	}
	checkConditions(t, kube)

	// Availability, counted from the ReplicaSets as min(spec, available) per set, may never
	// drop below replicas - maxUnavailable = 3, nor the ReplicaSets' sizes add up to more
	// than replicas + maxSurge = 4.
	guard := watchAvailability(t, kube, "roll", 3, 4)

	setImage(t, kube, "nginx:2")
	second := waitRollout(t, kube, 3)
	if second.Name == first.Name || second.Annotations["deployment.kubernetes.io/revision"] != "2" {
		t.Errorf("after the image change: replica set %s revision %q, want a new one at 2", second.Name, second.Annotations["deployment.kubernetes.io/revision"])
	}

	// kubectl rollout undo sets the template back to the old ReplicaSet's.
	setImage(t, kube, "nginx:1")
	back := waitRollout(t, kube, 3)
	if back.Name != first.Name || back.Annotations["deployment.kubernetes.io/revision"] != "3" ||
		back.Annotations["deployment.kubernetes.io/revision-history"] != "1" {
		t.Errorf("after the rollback: replica set %s revision %q history %q, want %s at 3 with history 1",
			back.Name, back.Annotations["deployment.kubernetes.io/revision"], back.Annotations["deployment.kubernetes.io/revision-history"], first.Name)
	}
	guard.stop()

	// Hold the stand-in so that the next rollout stalls at one new pod, then scale to 5: the
	// 5+2 allowed replicas are shared by size (old 3 -> 5, new 1 -> 2).
	fake.pause(true)
	sizes := recordSizes(t, kube, "roll")
	setImage(t, kube, "nginx:3")
	testserver.WaitFor(t, "the third replica set is created with one replica", func() (bool, error) {
		now, err := sizesOf(ctx, kube)
		return err == nil && len(now) == 3 && now[first.Name] == 3 && sum(now) == 4, err
	})
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		scale, err := deploys.GetScale(ctx, "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		scale.Spec.Replicas = 5
		_, err = deploys.UpdateScale(ctx, "web", scale, metav1.UpdateOptions{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// The stand-in is held, so the rollout moves on from there (old pods that never become
	// available are cleaned up, too many events get aggregated): the proportional step is
	// looked for in the sizes the ReplicaSets went through.
	testserver.WaitFor(t, "proportional scaling: old 3 -> 5, new 1 -> 2", func() (bool, error) {
		third := sizes.newest(first.Name, second.Name)
		old, cur := sizes.of(first.Name), sizes.of(third)
		return slices.Contains(old, 5) && len(cur) >= 2 && cur[0] == 1 && cur[1] == 2,
			fmt.Errorf("%s went through %v, %s through %v", first.Name, old, third, cur)
	})
	third := sizes.newest(first.Name, second.Name)
	fake.pause(false)
	last := waitRollout(t, kube, 5)
	if last.Name != third || last.Annotations["deployment.kubernetes.io/revision"] != "4" {
		t.Errorf("final replica set %s revision %q, want %s at 4", last.Name, last.Annotations["deployment.kubernetes.io/revision"], third)
	}

	testserver.WaitFor(t, "ScalingReplicaSet events in the API", func() (bool, error) {
		return hasEvents(ctx, kube, fmt.Sprintf("Scaled up replica set %s from 0 to 3", first.Name),
			fmt.Sprintf("Scaled down replica set %s from 3 to 2", first.Name),
			fmt.Sprintf("Scaled up replica set %s from 0 to 1", second.Name))
	})
}

// hasEvents reports whether the namespace has a ScalingReplicaSet event of the deployment
// controller for each message. Past ten similar events the recorder's aggregator prefixes
// messages with "(combined from similar events): ", as on Kubernetes.
func hasEvents(ctx context.Context, kube kubernetes.Interface, messages ...string) (bool, error) {
	events, err := kube.CoreV1().Events("roll").List(ctx, metav1.ListOptions{})
	if err != nil {
		return false, err
	}
	for _, want := range messages {
		found := false
		for _, e := range events.Items {
			if e.Reason == "ScalingReplicaSet" && strings.HasSuffix(e.Message, want) && e.InvolvedObject.Name == "web" &&
				e.InvolvedObject.Kind == "Deployment" && e.Source.Component == "deployment-controller" {
				found = true
			}
		}
		if !found {
			return false, fmt.Errorf("%d events, none %q", len(events.Items), want)
		}
	}
	return true, nil
}

// start runs the API server and the Deployment controller (with events recorded to the
// API) until the test ends, and returns a client with client-go's default content type.
func start(t *testing.T) kubernetes.Interface {
	t.Helper()
	srv := testserver.Start(t)
	factory := srv.Informers()
	c, err := deployment.New(srv.Kube, factory, deployment.Options{Log: srv.Log.With("component", "deployment"), Recorder: srv.Recorder(t, "deployment-controller")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, factory, c)
	return srv.Kube
}

// replicaSetStandIn stands in for the ReplicaSet controller and the kubelet, neither of
// which runs in this test: it sets every ReplicaSet's status as if all its pods were
// created, ready and available at once (replicas = readyReplicas = availableReplicas =
// spec.replicas, observedGeneration = generation). No pods exist, so the test cannot see
// pod-level behaviour (Recreate's wait for terminated pods, minReadySeconds).
type replicaSetStandIn struct {
	kube   kubernetes.Interface
	ns     string
	mu     sync.Mutex
	paused bool
}

func (s *replicaSetStandIn) pause(p bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paused = p
}

func (s *replicaSetStandIn) run(ctx context.Context) {
	for ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
		s.mu.Lock()
		paused := s.paused
		s.mu.Unlock()
		if paused {
			continue
		}
		list, err := s.kube.AppsV1().ReplicaSets(s.ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			continue
		}
		for _, rs := range list.Items {
			n := *rs.Spec.Replicas
			st := rs.Status
			if st.Replicas == n && st.ReadyReplicas == n && st.AvailableReplicas == n && st.FullyLabeledReplicas == n && st.ObservedGeneration == rs.Generation {
				continue
			}
			rs.Status = appsv1.ReplicaSetStatus{Replicas: n, FullyLabeledReplicas: n, ReadyReplicas: n, AvailableReplicas: n, ObservedGeneration: rs.Generation}
			_, _ = s.kube.AppsV1().ReplicaSets(s.ns).UpdateStatus(ctx, &rs, metav1.UpdateOptions{}) // conflicts retry next round
		}
	}
}

// waitRollout waits until the deployment is rolled out as kubectl rollout status decides
// (observed generation, all replicas updated and available, no old ones) with every old
// ReplicaSet at 0, and returns the new ReplicaSet.
func waitRollout(t *testing.T, kube kubernetes.Interface, replicas int32) *appsv1.ReplicaSet {
	t.Helper()
	var current *appsv1.ReplicaSet
	testserver.WaitFor(t, fmt.Sprintf("rollout to %d replicas", replicas), func() (bool, error) {
		d, err := kube.AppsV1().Deployments("roll").Get(context.Background(), "web", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		s := d.Status
		if s.ObservedGeneration < d.Generation || s.UpdatedReplicas != replicas || s.Replicas != replicas || s.AvailableReplicas != replicas || *d.Spec.Replicas != replicas {
			return false, fmt.Errorf("generation %d status %+v", d.Generation, s)
		}
		list, err := kube.AppsV1().ReplicaSets("roll").List(context.Background(), metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		current = nil
		for i, rs := range list.Items {
			switch {
			case rs.Annotations["deployment.kubernetes.io/revision"] == d.Annotations["deployment.kubernetes.io/revision"]:
				current = &list.Items[i]
			case *rs.Spec.Replicas != 0:
				return false, fmt.Errorf("old replica set %s still has %d replicas", rs.Name, *rs.Spec.Replicas)
			}
		}
		if current == nil || *current.Spec.Replicas != replicas {
			return false, fmt.Errorf("no replica set of revision %s with %d replicas", d.Annotations["deployment.kubernetes.io/revision"], replicas)
		}
		return true, nil
	})
	return current
}

// checkConditions checks the conditions of a complete deployment.
func checkConditions(t *testing.T, kube kubernetes.Interface) {
	t.Helper()
	testserver.WaitFor(t, "Available and NewReplicaSetAvailable", func() (bool, error) {
		d, err := kube.AppsV1().Deployments("roll").Get(context.Background(), "web", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		var available, progressing bool
		for _, c := range d.Status.Conditions {
			available = available || (c.Type == appsv1.DeploymentAvailable && c.Status == corev1.ConditionTrue && c.Reason == "MinimumReplicasAvailable")
			progressing = progressing || (c.Type == appsv1.DeploymentProgressing && c.Status == corev1.ConditionTrue && c.Reason == "NewReplicaSetAvailable")
		}
		return available && progressing, fmt.Errorf("conditions %+v", d.Status.Conditions)
	})
}

func setImage(t *testing.T, kube kubernetes.Interface, image string) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		d, err := kube.AppsV1().Deployments("roll").Get(context.Background(), "web", metav1.GetOptions{})
		if err != nil {
			return err
		}
		d.Spec.Template.Spec.Containers[0].Image = image
		_, err = kube.AppsV1().Deployments("roll").Update(context.Background(), d, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("set image %s: %v", image, err)
	}
}

// availabilityGuard watches ReplicaSets and records any moment that breaks the bounds.
type availabilityGuard struct {
	stop func()
}

func watchAvailability(t *testing.T, kube kubernetes.Interface, ns string, minAvailable, maxPods int32) *availabilityGuard {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := kube.AppsV1().ReplicaSets(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan struct{})
	var violations []string
	go func() {
		defer close(done)
		seen := map[string]*appsv1.ReplicaSet{}
		for ev := range w.ResultChan() {
			rs, ok := ev.Object.(*appsv1.ReplicaSet)
			if !ok {
				continue
			}
			if ev.Type == watch.Deleted {
				delete(seen, rs.Name)
			} else {
				seen[rs.Name] = rs
			}
			var available, pods int32
			for _, s := range seen {
				available += min(*s.Spec.Replicas, s.Status.AvailableReplicas)
				pods += *s.Spec.Replicas
			}
			if available < minAvailable || pods > maxPods {
				violations = append(violations, fmt.Sprintf("after %s %s: available %d, pods %d", ev.Type, rs.Name, available, pods))
			}
		}
	}()
	g := &availabilityGuard{}
	g.stop = func() {
		cancel()
		w.Stop()
		<-done
		if len(violations) > 0 {
			t.Errorf("availability bounds broken:\n%s", strings.Join(violations, "\n"))
		}
	}
	t.Cleanup(func() { cancel(); w.Stop() })
	return g
}

// sizeHistory records the sizes each ReplicaSet went through, in order.
type sizeHistory struct {
	mu    sync.Mutex
	sizes map[string][]int32
	order []string // names, first seen first
}

func recordSizes(t *testing.T, kube kubernetes.Interface, ns string) *sizeHistory {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := kube.AppsV1().ReplicaSets(ns).Watch(ctx, metav1.ListOptions{})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	h := &sizeHistory{sizes: map[string][]int32{}}
	go func() {
		for ev := range w.ResultChan() {
			rs, ok := ev.Object.(*appsv1.ReplicaSet)
			if !ok {
				continue
			}
			h.mu.Lock()
			seen := h.sizes[rs.Name]
			if _, known := h.sizes[rs.Name]; !known {
				h.order = append(h.order, rs.Name)
			}
			if len(seen) == 0 || seen[len(seen)-1] != *rs.Spec.Replicas {
				h.sizes[rs.Name] = append(seen, *rs.Spec.Replicas)
			}
			h.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); w.Stop() })
	return h
}

func (h *sizeHistory) of(name string) []int32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.sizes[name])
}

// newest is the last ReplicaSet seen that is none of except.
func (h *sizeHistory) newest(except ...string) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := len(h.order) - 1; i >= 0; i-- {
		if !slices.Contains(except, h.order[i]) {
			return h.order[i]
		}
	}
	return ""
}

func sizesOf(ctx context.Context, kube kubernetes.Interface) (map[string]int32, error) {
	list, err := kube.AppsV1().ReplicaSets("roll").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	out := map[string]int32{}
	for _, rs := range list.Items {
		out[rs.Name] = *rs.Spec.Replicas
	}
	return out, nil
}

func sum(m map[string]int32) int32 {
	var n int32
	for _, v := range m {
		n += v
	}
	return n
}
