package scheduler_test

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

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"berth.dev/berth/core/apiserver"
	"berth.dev/berth/core/scheduler"
)

// TestSchedulerAgainstServer runs the real API server in-process and the scheduler alone
// against it: pods land on the nodes that fit, through pods/binding, and a pod too big for
// every node is explained as Kubernetes explains it, then placed once a node fits it.
func TestSchedulerAgainstServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an API server with embedded etcd")
	}
	kube := startCluster(t)
	ctx := context.Background()

	node(t, kube, "ready", "4", false, nil)
	node(t, kube, "cordoned", "4", true, nil)
	node(t, kube, "tainted", "4", false, []corev1.Taint{{Key: "example.com/dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule}})

	ns := "sched"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("pods go to the node that fits", func(t *testing.T) {
		for i := range 3 {
			pod(t, kube, ns, fmt.Sprintf("web-%d", i), "500m", nil)
		}
		tolerant := pod(t, kube, ns, "db", "500m", []corev1.Toleration{{Key: "example.com/dedicated", Operator: corev1.TolerationOpEqual, Value: "db", Effect: corev1.TaintEffectNoSchedule}})
		for i := range 3 {
			name := fmt.Sprintf("web-%d", i)
			p := waitBound(t, kube, ns, name)
			if p.Spec.NodeName != "ready" {
				t.Errorf("pod %s bound to %q, want ready (the others are cordoned or tainted)", name, p.Spec.NodeName)
			}
			waitEvent(t, kube, ns, name, "Scheduled", "Successfully assigned "+ns+"/"+name+" to ready")
		}
		p := waitBound(t, kube, ns, tolerant.Name)
		if p.Spec.NodeName != "ready" && p.Spec.NodeName != "tainted" {
			t.Errorf("the tolerating pod went to %q, want ready or tainted", p.Spec.NodeName)
		}
	})

	t.Run("too big a pod waits and says why, then fits a new node", func(t *testing.T) {
		pod(t, kube, ns, "huge", "6", nil)
		want := "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) had untolerated taint {example.com/dedicated: db}, 1 node(s) were unschedulable. " +
			"preemption: 0/3 nodes are available: 1 No preemption victims found for incoming pod, 2 Preemption is not helpful for scheduling."
		waitFor(t, "PodScheduled=False with the FitError message", func() (bool, error) {
			p, err := kube.CoreV1().Pods(ns).Get(ctx, "huge", metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodScheduled {
					if c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable && c.Message == want {
						return true, nil
					}
					t.Logf("PodScheduled: %s %s %q", c.Status, c.Reason, c.Message)
				}
			}
			return false, nil
		})
		waitEvent(t, kube, ns, "huge", "FailedScheduling", want)

		node(t, kube, "big", "8", false, nil)
		p := waitBound(t, kube, ns, "huge")
		if p.Spec.NodeName != "big" {
			t.Errorf("the huge pod went to %q, want big", p.Spec.NodeName)
		}
	})
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startCluster(t *testing.T) kubernetes.Interface {
	t.Helper()
	return startClusterWith(t, scheduler.Options{})
}

// startClusterWith starts the API server and a scheduler with opts (its Log is set here).
func startClusterWith(t *testing.T, opts scheduler.Options) kubernetes.Interface {
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
	done := make(chan error, 1)
	opts.Log = log.With("component", "scheduler")
	go func() { done <- scheduler.Run(ctx, cfg, opts) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("scheduler.Run: %v", err)
		}
		if err := srv.Wait(); err != nil {
			t.Logf("server stopped with: %v", err)
		}
		if t.Failed() || os.Getenv("BERTH_TEST_LOG") != "" {
			t.Logf("logs:\n%s", logs.String())
		}
	})
	testCfg := rest.CopyConfig(cfg)
	testCfg.QPS, testCfg.Burst = 200, 400
	kube, err := kubernetes.NewForConfig(testCfg)
	if err != nil {
		t.Fatal(err)
	}
	return kube
}

// node creates a Ready node with cpu allocatable, 8Gi memory and 110 pods.
func node(t *testing.T, kube kubernetes.Interface, name, cpu string, cordoned bool, taints []corev1.Taint) {
	t.Helper()
	ctx := context.Background()
	n, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       corev1.NodeSpec{Unschedulable: cordoned, Taints: taints},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(cpu),
		corev1.ResourceMemory: resource.MustParse("8Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	now := metav1.Now()
	n.Status.Capacity, n.Status.Allocatable = res, res
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady", LastHeartbeatTime: now, LastTransitionTime: now}}
	if _, err := kube.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func pod(t *testing.T, kube kubernetes.Interface, ns, name, cpu string, tols []corev1.Toleration) *corev1.Pod {
	t.Helper()
	p, err := kube.CoreV1().Pods(ns).Create(context.Background(), &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			Tolerations: tols,
			Containers: []corev1.Container{{Name: "c", Image: "busybox", Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse("64Mi")},
			}}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func waitBound(t *testing.T, kube kubernetes.Interface, ns, name string) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	waitFor(t, "pod "+name+" is bound", func() (bool, error) {
		var err error
		p, err = kube.CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
		return err == nil && p.Spec.NodeName != "", err
	})
	return p
}

func waitEvent(t *testing.T, kube kubernetes.Interface, ns, pod, reason, message string) {
	t.Helper()
	waitFor(t, reason+" event for "+pod, func() (bool, error) {
		list, err := kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{
			FieldSelector: fields.OneTermEqualSelector("involvedObject.name", pod).String(),
		})
		if err != nil {
			return false, err
		}
		var seen []string
		for _, e := range list.Items {
			if e.Reason == reason && e.Message == message && e.Source.Component == "default-scheduler" {
				return true, nil
			}
			seen = append(seen, e.Reason+": "+e.Message)
		}
		if len(seen) > 0 {
			t.Logf("events of %s: %s", pod, strings.Join(seen, " | "))
		}
		return false, nil
	})
}

func waitFor(t *testing.T, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ok, err := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s (last error: %v)", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
