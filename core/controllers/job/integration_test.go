package job_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"berth.dev/berth/core/controllers/job"
	"berth.dev/berth/core/internal/testserver"
)

// TestAgainstServer runs the real API server in-process and the Job controller alone against
// it, and checks with client-go what users see. There is no node agent (kubelet) yet: the
// test stands in for it by setting the pods' phase and container exit codes through the
// status subresource. There is no scheduler either, so pods stay unassigned and the server
// deletes them at once when asked (once the tracking finalizer is off).
func TestAgainstServer(t *testing.T) {
	kube := start(t)
	ctx := context.Background()
	ns := "batch"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("completions 3, parallelism 2", func(t *testing.T) {
		j := create(t, kube, ns, "work", func(s *batchv1.JobSpec) {
			s.Completions, s.Parallelism = ptr[int32](3), ptr[int32](2)
		})
		// The server generates the selector and the template's labels, as Kubernetes does.
		uid := string(j.UID)
		if j.Spec.Selector == nil || j.Spec.Selector.MatchLabels[batchv1.ControllerUidLabel] != uid ||
			j.Spec.Template.Labels[batchv1.ControllerUidLabel] != uid || j.Spec.Template.Labels[batchv1.JobNameLabel] != "work" {
			t.Errorf("as created: selector %v, template labels %v; want controller-uid=%s", j.Spec.Selector, j.Spec.Template.Labels, uid)
		}
		pods := waitForActive(t, kube, j, 2)
		for _, p := range pods {
			if len(p.Finalizers) != 1 || p.Finalizers[0] != batchv1.JobTrackingFinalizer {
				t.Errorf("pod %s finalizers %v, want the tracking finalizer", p.Name, p.Finalizers)
			}
			exit(t, kube, p, 0)
		}
		last := waitForActive(t, kube, j, 1)
		exit(t, kube, last[0], 0)
		got := waitForCondition(t, kube, j, batchv1.JobComplete)
		if got.Status.Succeeded != 3 || got.Status.Failed != 0 || got.Status.CompletionTime == nil || got.Status.Active != 0 {
			t.Errorf("status %+v, want 3 succeeded, a completionTime", got.Status)
		}
		if c := condition(got, batchv1.JobSuccessCriteriaMet); c == nil || c.Reason != batchv1.JobReasonCompletionsReached {
			t.Errorf("SuccessCriteriaMet = %+v", c)
		}
		all, err := controlled(kube, j)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range all {
			if len(p.Finalizers) != 0 {
				t.Errorf("counted pod %s keeps finalizers %v", p.Name, p.Finalizers)
			}
		}
		if len(all) != 3 {
			t.Errorf("%d pods, want 3", len(all))
		}
		testserver.WaitFor(t, "the Completed event", func() (bool, error) {
			events, err := kube.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=work"})
			if err != nil {
				return false, err
			}
			for _, e := range events.Items {
				if e.Reason == "Completed" && e.Message == "Job completed" && e.Source.Component == "job-controller" {
					return true, nil
				}
			}
			return false, nil
		})
	})

	t.Run("ttl after finished", func(t *testing.T) {
		j := create(t, kube, ns, "brief", func(s *batchv1.JobSpec) { s.TTLSecondsAfterFinished = ptr[int32](0) })
		exit(t, kube, waitForActive(t, kube, j, 1)[0], 0)
		testserver.WaitFor(t, "the finished job is deleted", func() (bool, error) {
			_, err := kube.BatchV1().Jobs(ns).Get(ctx, j.Name, metav1.GetOptions{})
			return apierrors.IsNotFound(err), err
		})
	})

	t.Run("backoff limit", func(t *testing.T) {
		j := create(t, kube, ns, "flaky", func(s *batchv1.JobSpec) { s.BackoffLimit = ptr[int32](1) })
		// The failures are dated a minute back so that the 10 s replacement backoff has
		// already run out and the test need not wait for it.
		exit(t, kube, waitForActive(t, kube, j, 1)[0], 3)
		exit(t, kube, waitForActive(t, kube, j, 1)[0], 3)
		got := waitForCondition(t, kube, j, batchv1.JobFailed)
		if c := condition(got, batchv1.JobFailed); c.Reason != batchv1.JobReasonBackoffLimitExceeded || c.Message != "Job has reached the specified backoff limit" {
			t.Errorf("Failed = %+v, want BackoffLimitExceeded", c)
		}
		if got.Status.Failed != 2 || got.Status.Succeeded != 0 || got.Status.Active != 0 {
			t.Errorf("status %+v, want 2 failed", got.Status)
		}
		time.Sleep(200 * time.Millisecond) // room for a wrong third pod
		if all, _ := controlled(kube, j); len(all) != 2 {
			t.Errorf("%d pods, want the 2 that failed", len(all))
		}
	})
}

// start runs the API server and the Job controller; both stop when the test ends.
func start(t *testing.T) kubernetes.Interface {
	t.Helper()
	srv := testserver.Start(t)
	factory := srv.Informers()
	c, err := job.New(srv.Kube, factory, job.Options{Log: srv.Log.With("component", "job"), Recorder: srv.Recorder(t, "job-controller")})
	if err != nil {
		t.Fatal(err)
	}
	srv.Run(t, factory, c)
	return srv.Kube
}

func create(t *testing.T, kube kubernetes.Interface, ns, name string, edit func(*batchv1.JobSpec)) *batchv1.Job {
	t.Helper()
	j := &batchv1.Job{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: batchv1.JobSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			RestartPolicy: corev1.RestartPolicyNever,
			Containers:    []corev1.Container{{Name: "main", Image: "busybox", Command: []string{"true"}}},
		}}},
	}
	edit(&j.Spec)
	j, err := kube.BatchV1().Jobs(ns).Create(context.Background(), j, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create job %s: %v", name, err)
	}
	return j
}

// controlled lists the pods whose controller is the Job.
func controlled(kube kubernetes.Interface, j *batchv1.Job) ([]corev1.Pod, error) {
	list, err := kube.CoreV1().Pods(j.Namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		return nil, err
	}
	var out []corev1.Pod
	for _, p := range list.Items {
		if ref := metav1.GetControllerOf(&p); ref != nil && ref.UID == j.UID {
			out = append(out, p)
		}
	}
	return out, nil
}

// waitForActive waits until exactly n of the Job's pods are neither finished nor deleted.
func waitForActive(t *testing.T, kube kubernetes.Interface, j *batchv1.Job, n int) []corev1.Pod {
	t.Helper()
	var active []corev1.Pod
	testserver.WaitFor(t, fmt.Sprintf("%d active pods of job %s", n, j.Name), func() (bool, error) {
		all, err := controlled(kube, j)
		active = nil
		for _, p := range all {
			if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed && p.DeletionTimestamp == nil {
				active = append(active, p)
			}
		}
		return err == nil && len(active) == n, err
	})
	return active
}

// exit plays the node agent: the pod's container exits with code, a minute ago.
func exit(t *testing.T, kube kubernetes.Interface, p corev1.Pod, code int32) {
	t.Helper()
	ago := metav1.NewTime(time.Now().Add(-time.Minute).Truncate(time.Second))
	p.Status.Phase = corev1.PodSucceeded
	if code != 0 {
		p.Status.Phase = corev1.PodFailed
	}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "main", Image: "busybox", State: corev1.ContainerState{
		Terminated: &corev1.ContainerStateTerminated{ExitCode: code, StartedAt: ago, FinishedAt: ago},
	}}}
	if _, err := kube.CoreV1().Pods(p.Namespace).UpdateStatus(context.Background(), &p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("set pod %s %s: %v", p.Name, p.Status.Phase, err)
	}
}

func waitForCondition(t *testing.T, kube kubernetes.Interface, j *batchv1.Job, ct batchv1.JobConditionType) *batchv1.Job {
	t.Helper()
	var got *batchv1.Job
	testserver.WaitFor(t, fmt.Sprintf("job %s %s", j.Name, ct), func() (bool, error) {
		var err error
		got, err = kube.BatchV1().Jobs(j.Namespace).Get(context.Background(), j.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		c := condition(got, ct)
		return c != nil && c.Status == corev1.ConditionTrue, fmt.Errorf("status %+v", got.Status)
	})
	return got
}

func condition(j *batchv1.Job, ct batchv1.JobConditionType) *batchv1.JobCondition {
	for i := range j.Status.Conditions {
		if j.Status.Conditions[i].Type == ct {
			return &j.Status.Conditions[i]
		}
	}
	return nil
}

func ptr[T any](v T) *T { return &v }
