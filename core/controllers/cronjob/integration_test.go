package cronjob_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"berth.dev/berth/core/controllers/cronjob"
	"berth.dev/berth/core/internal/testserver"
)

// TestAgainstServer runs the real API server in-process and the CronJob controller alone
// against it. The controller's clock runs two minutes ahead of the server's, so that an
// every-minute schedule is due at once instead of up to a minute after the CronJob is
// created. No Job controller runs: the Jobs are created but start no pods.
func TestAgainstServer(t *testing.T) {
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
	testserver.WaitFor(t, "the scheduled job", func() (bool, error) {
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
	testserver.WaitFor(t, "the job in status.active", func() (bool, error) {
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
	testserver.WaitFor(t, "the UnexpectedJob event", func() (bool, error) {
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
	srv := testserver.Start(t)
	factory := srv.Informers()
	c, err := cronjob.New(srv.Kube, factory, cronjob.Options{
		Log:      srv.Log.With("component", "cronjob"),
		Recorder: srv.Recorder(t, "cronjob-controller"),
		Now:      func() time.Time { return time.Now().Add(skew) },
	})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, factory, c)
	return srv.Kube
}
