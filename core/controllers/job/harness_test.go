package job

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

var start = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// harness calls the controller's Reconcile by hand against client-go's fake clientset, with
// a clock the test moves. The fake has no admission, validation, resourceVersion checks or
// garbage collector, deletes at once whatever finalizers an object has, and does not fill in
// generateName or uid: a reactor here does the last two, as the API server would.
type harness struct {
	t      *testing.T
	kube   *fake.Clientset
	c      *Controller
	events *record.FakeRecorder
	now    time.Time
}

func newHarness(t *testing.T, objs ...runtime.Object) *harness {
	h := &harness{t: t, kube: fake.NewClientset(objs...), now: start, events: record.NewFakeRecorder(1000)}
	created := 0
	h.kube.PrependReactor("create", "pods", func(action clienttesting.Action) (bool, runtime.Object, error) {
		pod := action.(clienttesting.CreateAction).GetObject().(*corev1.Pod)
		created++
		if pod.Name == "" {
			pod.Name = fmt.Sprintf("%s%05d", pod.GenerateName, created)
		}
		pod.UID = types.UID(fmt.Sprintf("pod-uid-%d", created))
		pod.CreationTimestamp = metav1.NewTime(h.now)
		return false, nil, nil // on to the object tracker
	})
	factory := informers.NewSharedInformerFactory(h.kube, 0)
	c, err := New(h.kube, factory, Options{
		Now: func() time.Time { return h.now }, Log: slog.New(slog.DiscardHandler), Recorder: h.events,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.c = c
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		t.Fatal("caches did not sync")
	}
	return h
}

// sync runs one Reconcile of the Job and returns its requeue delay.
func (h *harness) sync(job *batchv1.Job) time.Duration {
	h.t.Helper()
	res, err := h.c.Reconcile(context.Background(), job.Namespace+"/"+job.Name)
	if err != nil {
		h.t.Fatalf("Reconcile(%s): %v", job.Name, err)
	}
	return res.RequeueAfter
}

func (h *harness) job(name string) *batchv1.Job {
	h.t.Helper()
	j, err := h.kube.BatchV1().Jobs("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatalf("get job %s: %v", name, err)
	}
	return j
}

func (h *harness) pods() []*corev1.Pod {
	h.t.Helper()
	list, err := h.kube.CoreV1().Pods("default").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	out := make([]*corev1.Pod, len(list.Items))
	for i := range list.Items {
		out[i] = &list.Items[i]
	}
	return out
}

func (h *harness) active() []*corev1.Pod {
	var out []*corev1.Pod
	for _, p := range h.pods() {
		if isActive(p) {
			out = append(out, p)
		}
	}
	return out
}

// finish plays the node agent: the pod's one container exits with code, now.
func (h *harness) finish(p *corev1.Pod, code int32) {
	h.t.Helper()
	p = p.DeepCopy()
	p.Status.Phase = corev1.PodSucceeded
	if code != 0 {
		p.Status.Phase = corev1.PodFailed
	}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "main", State: corev1.ContainerState{
		Terminated: &corev1.ContainerStateTerminated{ExitCode: code, FinishedAt: metav1.NewTime(h.now)},
	}}}
	if _, err := h.kube.CoreV1().Pods(p.Namespace).UpdateStatus(context.Background(), p, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

// drainEvents returns the events recorded so far ("Normal Completed Job completed").
func (h *harness) drainEvents() []string {
	var out []string
	for {
		select {
		case e := <-h.events.Events:
			out = append(out, e)
		default:
			return out
		}
	}
}

func (h *harness) wantEvent(want string) {
	h.t.Helper()
	events := h.drainEvents()
	for _, e := range events {
		if strings.HasPrefix(e, want) {
			return
		}
	}
	h.t.Errorf("no event %q among %q", want, events)
}

func newJob(name string, completions, parallelism *int32) *batchv1.Job {
	six := int32(6)
	return &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name), CreationTimestamp: metav1.NewTime(start)},
		Spec: batchv1.JobSpec{
			Completions: completions, Parallelism: parallelism, BackoffLimit: &six,
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec: corev1.PodSpec{
					RestartPolicy: corev1.RestartPolicyNever,
					Containers:    []corev1.Container{{Name: "main", Image: "busybox"}},
				},
			},
		},
	}
}

func ptr[T any](v T) *T { return &v }

func condition(job *batchv1.Job, t batchv1.JobConditionType) *batchv1.JobCondition {
	for i := range job.Status.Conditions {
		if job.Status.Conditions[i].Type == t {
			return &job.Status.Conditions[i]
		}
	}
	return nil
}
