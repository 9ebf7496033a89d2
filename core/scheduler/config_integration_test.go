package scheduler_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"berth.dev/berth/core/scheduler"
	"berth.dev/berth/core/scheduler/config"
)

const twoProfiles = `apiVersion: scheduler.berth.dev/v1
kind: SchedulerConfiguration
profiles:
- schedulerName: default-scheduler
- schedulerName: packer
  plugins:
    score:
      enabled:
      - name: NodeResourcesFit
        weight: 5
  pluginConfig:
  - name: NodeResourcesFit
    args:
      scoringStrategy:
        type: MostAllocated
`

// TestSchedulerConfigAgainstServer runs the scheduler with a configuration file of two
// profiles against the real API server: pods pick their profile by schedulerName (the
// default spreads, the MostAllocated one packs), and the new plugins place pods: six pods
// spread over three zones with maxSkew 1, and pods with anti-affinity on the hostname one
// per node, the one too many explained in kube-scheduler's words.
func TestSchedulerConfigAgainstServer(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an API server with embedded etcd")
	}
	file := filepath.Join(t.TempDir(), "scheduler.yaml")
	if err := os.WriteFile(file, []byte(twoProfiles), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(file)
	if err != nil {
		t.Fatal(err)
	}
	kube := startClusterWith(t, scheduler.Options{Config: cfg})
	ctx := context.Background()
	ns := "cfg"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("profiles by schedulerName", func(t *testing.T) {
		for i := range 3 {
			poolNode(t, kube, fmt.Sprintf("p%d", i), map[string]string{"pool": "p"})
		}
		spreadNodes := map[string]bool{}
		for i := range 3 {
			name := fmt.Sprintf("spread-%d", i)
			poolPod(t, kube, ns, name, "p", "", nil)
			spreadNodes[waitBound(t, kube, ns, name).Spec.NodeName] = true
		}
		if len(spreadNodes) != 3 {
			t.Errorf("default-scheduler (LeastAllocated) put 3 pods on %d nodes, want 3", len(spreadNodes))
		}
		packed := map[string]bool{}
		for i := range 3 {
			name := fmt.Sprintf("packed-%d", i)
			poolPod(t, kube, ns, name, "p", "packer", nil)
			p := waitBound(t, kube, ns, name)
			packed[p.Spec.NodeName] = true
			waitEvent(t, kube, ns, name, "Scheduled", "Successfully assigned "+ns+"/"+name+" to "+p.Spec.NodeName)
		}
		if len(packed) != 1 {
			t.Errorf("packer (MostAllocated) put 3 pods on %v, want one node", packed)
		}
	})

	t.Run("six pods spread over three zones", func(t *testing.T) {
		for _, z := range []string{"a", "b", "c"} {
			for i := range 2 {
				poolNode(t, kube, fmt.Sprintf("s%s%d", z, i), map[string]string{"pool": "s", corev1.LabelTopologyZone: z})
			}
		}
		for i := range 6 {
			poolPod(t, kube, ns, fmt.Sprintf("zonal-%d", i), "s", "", func(p *corev1.Pod) {
				p.Labels = map[string]string{"app": "zonal"}
				p.Spec.TopologySpreadConstraints = []corev1.TopologySpreadConstraint{{
					MaxSkew: 1, TopologyKey: corev1.LabelTopologyZone, WhenUnsatisfiable: corev1.DoNotSchedule,
					LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "zonal"}},
				}}
			})
		}
		perZone := map[string]int{}
		for i := range 6 {
			p := waitBound(t, kube, ns, fmt.Sprintf("zonal-%d", i))
			perZone[p.Spec.NodeName[1:2]]++
		}
		if perZone["a"] != 2 || perZone["b"] != 2 || perZone["c"] != 2 {
			t.Errorf("pods per zone %v, want 2 in each", perZone)
		}
	})

	t.Run("anti-affinity: one per node", func(t *testing.T) {
		for i := range 3 {
			name := fmt.Sprintf("a%d", i)
			poolNode(t, kube, name, map[string]string{"pool": "a", corev1.LabelHostname: name})
		}
		lonely := func(p *corev1.Pod) {
			p.Labels = map[string]string{"app": "lonely"}
			p.Spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
				RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
					LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "lonely"}},
					TopologyKey:   corev1.LabelHostname,
				}},
			}}
		}
		for i := range 4 {
			poolPod(t, kube, ns, fmt.Sprintf("lonely-%d", i), "a", "", lonely)
		}
		nodes := map[string]bool{}
		var pending string
		waitFor(t, "three lonely pods bound, one pending", func() (bool, error) {
			nodes, pending = map[string]bool{}, ""
			for i := range 4 {
				p, err := kube.CoreV1().Pods(ns).Get(ctx, fmt.Sprintf("lonely-%d", i), metav1.GetOptions{})
				if err != nil {
					return false, err
				}
				if p.Spec.NodeName == "" {
					pending = p.Name
				} else {
					nodes[p.Spec.NodeName] = true
				}
			}
			return len(nodes) == 3 && pending != "", nil
		})
		want := "0/12 nodes are available: 3 node(s) didn't match pod anti-affinity rules, 9 node(s) didn't match Pod's node affinity/selector."
		waitFor(t, "the pending pod's message", func() (bool, error) {
			p, err := kube.CoreV1().Pods(ns).Get(ctx, pending, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			for _, c := range p.Status.Conditions {
				if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse {
					if strings.HasPrefix(c.Message, want) {
						return true, nil
					}
					t.Logf("PodScheduled: %q", c.Message)
				}
			}
			return false, nil
		})
	})
}

// poolNode creates a Ready node with 4 cpu, 8Gi and 110 pods, and labels.
func poolNode(t *testing.T, kube kubernetes.Interface, name string, labels map[string]string) {
	t.Helper()
	ctx := context.Background()
	n, err := kube.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("4"),
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

// poolPod creates a pod asking 1 cpu, kept to the nodes of a pool, for a scheduler.
func poolPod(t *testing.T, kube kubernetes.Interface, ns, name, pool, schedulerName string, mutate func(*corev1.Pod)) {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{
			SchedulerName: schedulerName,
			NodeSelector:  map[string]string{"pool": pool},
			Containers: []corev1.Container{{Name: "c", Image: "busybox", Resources: corev1.ResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("64Mi")},
			}}},
		},
	}
	if mutate != nil {
		mutate(p)
	}
	if _, err := kube.CoreV1().Pods(ns).Create(context.Background(), p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
