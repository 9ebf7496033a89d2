package cronjob

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// harness calls the controller's Reconcile by hand against client-go's fake clientset, with
// a clock the test moves, and waits for the Job informer to catch up with the fake before
// each call. The fake has no validation, defaulting or garbage collector, and sets no uid: a
// reactor gives created Jobs one.
type harness struct {
	t      *testing.T
	kube   *fake.Clientset
	c      *Controller
	events *record.FakeRecorder
	now    time.Time
}

func newHarness(t *testing.T, now time.Time, objs ...runtime.Object) *harness {
	h := &harness{t: t, kube: fake.NewClientset(objs...), now: now, events: record.NewFakeRecorder(1000)}
	h.kube.PrependReactor("create", "jobs", func(action clienttesting.Action) (bool, runtime.Object, error) {
		j := action.(clienttesting.CreateAction).GetObject().(*batchv1.Job)
		j.UID = types.UID("uid-" + j.Name)
		return false, nil, nil
	})
	factory := informers.NewSharedInformerFactory(h.kube, 0)
	c, err := New(h.kube, factory, Options{Now: func() time.Time { return h.now }, Log: slog.New(slog.DiscardHandler), Recorder: h.events})
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

// sync runs one Reconcile of the CronJob and returns its requeue delay.
func (h *harness) sync(name string) time.Duration {
	h.t.Helper()
	h.settle()
	res, err := h.c.Reconcile(context.Background(), "default/"+name)
	if err != nil {
		h.t.Fatalf("Reconcile(%s): %v", name, err)
	}
	return res.RequeueAfter
}

// settle waits until the Job informer holds exactly what the fake holds.
func (h *harness) settle() {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		want := h.jobs()
		ok := true
		for _, j := range want {
			got, err := h.c.jobs.Jobs(j.Namespace).Get(j.Name)
			ok = ok && err == nil && apiequality.Semantic.DeepEqual(got, j)
		}
		cached, _ := h.c.jobs.List(labelsEverything())
		if ok && len(cached) == len(want) {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.t.Fatal("the job informer did not catch up with the fake clientset")
}

func (h *harness) jobs() []*batchv1.Job {
	h.t.Helper()
	list, err := h.kube.BatchV1().Jobs("default").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	out := make([]*batchv1.Job, len(list.Items))
	for i := range list.Items {
		out[i] = &list.Items[i]
	}
	return out
}

func (h *harness) cronJob(name string) *batchv1.CronJob {
	h.t.Helper()
	cj, err := h.kube.BatchV1().CronJobs("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return cj
}

// finish marks a Job Complete or Failed, as the Job controller would.
func (h *harness) finish(j *batchv1.Job, ct batchv1.JobConditionType, at time.Time) {
	h.t.Helper()
	j = j.DeepCopy()
	j.Status.Conditions = append(j.Status.Conditions, batchv1.JobCondition{Type: ct, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(at)})
	if ct == batchv1.JobComplete {
		t := metav1.NewTime(at)
		j.Status.CompletionTime = &t
	}
	if _, err := h.kube.BatchV1().Jobs(j.Namespace).UpdateStatus(context.Background(), j, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

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

func newCronJob(name, schedule string, created time.Time) *batchv1.CronJob {
	return &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", UID: types.UID("uid-" + name), CreationTimestamp: metav1.NewTime(created)},
		Spec: batchv1.CronJobSpec{
			Schedule:                   schedule,
			ConcurrencyPolicy:          batchv1.AllowConcurrent,
			SuccessfulJobsHistoryLimit: ptr[int32](3),
			FailedJobsHistoryLimit:     ptr[int32](1),
			JobTemplate: batchv1.JobTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"team": "a"}, Annotations: map[string]string{"note": "b"}},
				Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
					RestartPolicy: corev1.RestartPolicyNever,
					Containers:    []corev1.Container{{Name: "main", Image: "busybox"}},
				}}},
			},
		},
	}
}

func labelsEverything() labels.Selector { return labels.Everything() }
