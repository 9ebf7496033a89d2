package cronjob_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"berth.dev/berth/core/apiserver"
	"berth.dev/berth/core/controllers/cronjob"
)

// TestAgainstServer runs the real API server in-process and the CronJob controller alone
// against it. The controller's clock runs two minutes ahead of the server's, so that an
// every-minute schedule is due at once instead of up to a minute after the CronJob is
// created. No Job controller runs: the Jobs are created but start no pods.
func TestAgainstServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an API server with embedded etcd")
	}
	kube := start(t, 2*time.Minute)
	ctx := context.Background()
	ns := "cron"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cj, err := kube.BatchV1().CronJobs(ns).Create(ctx, &batchv1.CronJob{
		ObjectMeta: metav1.ObjectMeta{Name: "tick"},
		Spec: batchv1.CronJobSpec{
			Schedule: "*/1 * * * *",
			JobTemplate: batchv1.JobTemplateSpec{Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "main", Image: "busybox", Command: []string{"date"}}},
			}}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The server defaults what the controller relies on, as Kubernetes does.
	if s := cj.Spec; s.ConcurrencyPolicy != batchv1.AllowConcurrent || s.Suspend == nil || *s.Suspend ||
		s.SuccessfulJobsHistoryLimit == nil || *s.SuccessfulJobsHistoryLimit != 3 || s.FailedJobsHistoryLimit == nil || *s.FailedJobsHistoryLimit != 1 {
		t.Errorf("defaults: concurrencyPolicy %q suspend %v history %v/%v; want Allow, false, 3/1",
			s.ConcurrencyPolicy, s.Suspend, s.SuccessfulJobsHistoryLimit, s.FailedJobsHistoryLimit)
	}

	var job batchv1.Job
	waitFor(t, "the scheduled job", func() (bool, error) {
		jobs, err := kube.BatchV1().Jobs(ns).List(ctx, metav1.ListOptions{})
		if err != nil || len(jobs.Items) == 0 {
			return false, err
		}
		job = jobs.Items[0]
		return len(jobs.Items) == 1, fmt.Errorf("%d jobs", len(jobs.Items))
	})
	stamp, err := time.Parse(time.RFC3339, job.Annotations[batchv1.CronJobScheduledTimestampAnnotation])
	if err != nil {
		t.Fatalf("scheduled-timestamp annotation: %v", err)
	}
	if want := fmt.Sprintf("tick-%d", stamp.Unix()/60); job.Name != want || stamp.Second() != 0 {
		t.Errorf("job %s scheduled %v, want %s on a whole minute", job.Name, stamp, want)
	}
	if !metav1.IsControlledBy(&job, cj) {
		t.Errorf("job ownerReferences %+v", job.OwnerReferences)
	}
	waitFor(t, "the job in status.active", func() (bool, error) {
		got, err := kube.BatchV1().CronJobs(ns).Get(ctx, "tick", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return len(got.Status.Active) == 1 && got.Status.Active[0].UID == job.UID &&
			got.Status.LastScheduleTime != nil && got.Status.LastScheduleTime.Time.Equal(stamp), fmt.Errorf("status %+v", got.Status)
	})

	// kubectl create job --from=cronjob/tick: client-side, a Job the CronJob controls but did
	// not schedule. It is reported, and left alone.
	manual := job.DeepCopy()
	manual.ObjectMeta = metav1.ObjectMeta{
		Name:            "tick-manual",
		Annotations:     map[string]string{"cronjob.kubernetes.io/instantiate": "manual"},
		OwnerReferences: job.OwnerReferences,
	}
	manual.Spec.Selector, manual.Spec.ManualSelector = nil, nil
	manual.Spec.Template.Labels = nil
	manual.Status = batchv1.JobStatus{}
	if _, err := kube.BatchV1().Jobs(ns).Create(ctx, manual, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create a job from the cronjob: %v", err)
	}
	waitFor(t, "the UnexpectedJob event", func() (bool, error) {
		events, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=tick"})
		if err != nil {
			return false, err
		}
		for _, e := range events.Items {
			if e.Reason == "UnexpectedJob" && strings.HasSuffix(e.Message, "tick-manual") {
				return true, nil
			}
		}
		return false, nil
	})
	if _, err := kube.BatchV1().Jobs(ns).Get(ctx, "tick-manual", metav1.GetOptions{}); err != nil {
		t.Errorf("the manual job: %v", err)
	}
}

// start runs the API server and the CronJob controller, whose clock runs ahead by skew; both
// stop when the test ends.
func start(t *testing.T, skew time.Duration) kubernetes.Interface {
	t.Helper()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := apiserver.Start(ctx, apiserver.Config{DataDir: t.TempDir(), Port: 0, Logger: log.With("component", "apiserver")})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", srv.Kubeconfig)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst = 200, 400 // the waits poll
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: kube.CoreV1().Events("")})
	factory := informers.NewSharedInformerFactory(kube, 0)
	c, err := cronjob.New(kube, factory, cronjob.Options{
		Log:      log.With("component", "cronjob"),
		Recorder: broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "cronjob-controller"}),
		Now:      func() time.Time { return time.Now().Add(skew) },
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	factory.Start(ctx.Done())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		factory.Shutdown()
		broadcaster.Shutdown()
		if err := srv.Wait(); err != nil {
			t.Logf("server stopped with: %v", err)
		}
		if t.Failed() || os.Getenv("BERTH_TEST_LOG") != "" {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	return kube
}

// waitFor polls cond for up to 30 seconds; the last error, if any, is reported on timeout.
func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("timed out waiting: %s (last error: %v)", what, last)
}

// syncBuffer collects the logs of the server and the controller for a failing test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
