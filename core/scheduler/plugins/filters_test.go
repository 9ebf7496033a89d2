package plugins

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"berth.dev/berth/core/scheduler/framework"
)

func TestPrioritySort(t *testing.T) {
	at := func(name string, prio int32, sec int64) *framework.QueuedPodInfo {
		p := newPod(name, func(p *corev1.Pod) { p.Spec.Priority = &prio })
		return &framework.QueuedPodInfo{PodInfo: &framework.PodInfo{Pod: p}, Timestamp: time.Unix(sec, 0)}
	}
	for _, tc := range []struct {
		name string
		a, b *framework.QueuedPodInfo
		want bool
	}{
		{"higher priority first", at("a", 10, 5), at("b", 1, 1), true},
		{"lower priority later", at("a", 1, 1), at("b", 10, 5), false},
		{"equal priority: older first", at("a", 5, 1), at("b", 5, 2), true},
		{"equal priority: newer later", at("a", 5, 3), at("b", 5, 2), false},
	} {
		if got := (PrioritySort{}).Less(tc.a, tc.b); got != tc.want {
			t.Errorf("%s: Less = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFilters(t *testing.T) {
	unreachable := corev1.Taint{Key: corev1.TaintNodeUnreachable, Effect: corev1.TaintEffectNoExecute}
	dedicated := corev1.Taint{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule}
	soft := corev1.Taint{Key: "soft", Effect: corev1.TaintEffectPreferNoSchedule}
	fit, _ := NewNodeResourcesFit("")
	small := allocatable("2", "4Gi", "2")
	hostPort := func(port int32) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 80, HostPort: port}}
		}
	}
	for _, tc := range []struct {
		name   string
		plugin framework.FilterPlugin
		pod    *corev1.Pod
		node   *framework.NodeInfo
		want   *framework.Status
	}{
		{"NodeName: no name", NodeName{}, newPod("p"), nodeInfo(newNode("n")), nil},
		{"NodeName: match", NodeName{}, newPod("p", func(p *corev1.Pod) { p.Spec.NodeName = "n" }), nodeInfo(newNode("n")), nil},
		{"NodeName: other", NodeName{}, newPod("p", func(p *corev1.Pod) { p.Spec.NodeName = "m" }), nodeInfo(newNode("n")),
			framework.NewStatus(framework.UnschedulableAndUnresolvable, "node(s) didn't match the requested node name")},

		{"NodeUnschedulable: schedulable", NodeUnschedulable{}, newPod("p"), nodeInfo(newNode("n")), nil},
		{"NodeUnschedulable: cordoned", NodeUnschedulable{}, newPod("p"), nodeInfo(newNode("n", func(n *corev1.Node) { n.Spec.Unschedulable = true })),
			framework.NewStatus(framework.UnschedulableAndUnresolvable, "node(s) were unschedulable")},
		{"NodeUnschedulable: cordoned but tolerated", NodeUnschedulable{},
			newPod("p", func(p *corev1.Pod) {
				p.Spec.Tolerations = []corev1.Toleration{{Key: corev1.TaintNodeUnschedulable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
			}),
			nodeInfo(newNode("n", func(n *corev1.Node) { n.Spec.Unschedulable = true })), nil},

		{"TaintToleration: untolerated NoExecute", TaintToleration{}, newPod("p"),
			nodeInfo(newNode("n", func(n *corev1.Node) { n.Spec.Taints = []corev1.Taint{unreachable} })),
			framework.NewStatus(framework.UnschedulableAndUnresolvable, "node(s) had untolerated taint {node.kubernetes.io/unreachable: }")},
		{"TaintToleration: untolerated NoSchedule with value", TaintToleration{}, newPod("p"),
			nodeInfo(newNode("n", func(n *corev1.Node) { n.Spec.Taints = []corev1.Taint{soft, dedicated} })),
			framework.NewStatus(framework.UnschedulableAndUnresolvable, "node(s) had untolerated taint {dedicated: db}")},
		{"TaintToleration: PreferNoSchedule does not filter", TaintToleration{}, newPod("p"),
			nodeInfo(newNode("n", func(n *corev1.Node) { n.Spec.Taints = []corev1.Taint{soft} })), nil},
		{"TaintToleration: tolerated", TaintToleration{},
			newPod("p", func(p *corev1.Pod) {
				p.Spec.Tolerations = []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "db"}}
			}),
			nodeInfo(newNode("n", func(n *corev1.Node) { n.Spec.Taints = []corev1.Taint{dedicated} })), nil},

		{"NodeAffinity: no selector", NodeAffinity{}, newPod("p"), nodeInfo(newNode("n")), nil},
		{"NodeAffinity: selector matches", NodeAffinity{},
			newPod("p", func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{"disk": "ssd"} }),
			nodeInfo(newNode("n", func(n *corev1.Node) { n.Labels["disk"] = "ssd" })), nil},
		{"NodeAffinity: selector does not match", NodeAffinity{},
			newPod("p", func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{"disk": "ssd"} }),
			nodeInfo(newNode("n")),
			framework.NewStatus(framework.UnschedulableAndUnresolvable, "node(s) didn't match Pod's node affinity/selector")},
		{"NodeAffinity: required term does not match", NodeAffinity{},
			newPod("p", func(p *corev1.Pod) {
				p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
					NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"a"}}}}},
				}}}
			}),
			nodeInfo(newNode("n", func(n *corev1.Node) { n.Labels["zone"] = "b" })),
			framework.NewStatus(framework.UnschedulableAndUnresolvable, "node(s) didn't match Pod's node affinity/selector")},

		{"NodePorts: free", NodePorts{}, newPod("p", hostPort(8080)), nodeInfo(newNode("n"), newPod("q", hostPort(8081))), nil},
		{"NodePorts: taken", NodePorts{}, newPod("p", hostPort(8080)), nodeInfo(newNode("n"), newPod("q", hostPort(8080))),
			framework.NewStatus(framework.Unschedulable, "node(s) didn't have free ports for the requested pod ports")},

		{"NodeResourcesFit: fits", fit, newPod("p", requests("1", "1Gi")), nodeInfo(newNode("n", small), newPod("q", requests("1", "1Gi"))), nil},
		{"NodeResourcesFit: cpu and memory short", fit, newPod("p", requests("1500m", "3500Mi")),
			nodeInfo(newNode("n", small), newPod("q", requests("1", "1Gi"))),
			framework.NewStatus(framework.Unschedulable, "Insufficient cpu", "Insufficient memory")},
		{"NodeResourcesFit: too many pods", fit, newPod("p"),
			nodeInfo(newNode("n", small), newPod("q"), newPod("r")),
			framework.NewStatus(framework.Unschedulable, "Too many pods")},
		{"NodeResourcesFit: init container is the floor", fit,
			newPod("p", requests("100m", ""), func(p *corev1.Pod) {
				p.Spec.InitContainers = []corev1.Container{{Name: "init", Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: *mustQ("3")}}}}
			}),
			nodeInfo(newNode("n", small)),
			framework.NewStatus(framework.Unschedulable, "Insufficient cpu")},
		{"NodeResourcesFit: overhead counts", fit,
			newPod("p", requests("1900m", ""), func(p *corev1.Pod) { p.Spec.Overhead = corev1.ResourceList{corev1.ResourceCPU: *mustQ("200m")} }),
			nodeInfo(newNode("n", small)),
			framework.NewStatus(framework.Unschedulable, "Insufficient cpu")},
		{"NodeResourcesFit: extended resource", fit,
			newPod("p", func(p *corev1.Pod) {
				p.Spec.Containers[0].Resources.Requests = corev1.ResourceList{"example.com/gpu": *mustQ("1")}
			}),
			nodeInfo(newNode("n", small)),
			framework.NewStatus(framework.Unschedulable, "Insufficient example.com/gpu")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := runFilter(t, tc.plugin, tc.pod, tc.node); !sameStatus(got, tc.want) {
				t.Errorf("status %v, want %v", got, tc.want)
			}
		})
	}
}

func TestNodeAffinityPreFilterNarrowsByName(t *testing.T) {
	pod := newPod("p", func(p *corev1.Pod) {
		p.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
			NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchFields: []corev1.NodeSelectorRequirement{{Key: metav1.ObjectNameField, Operator: corev1.NodeSelectorOpIn, Values: []string{"n1", "n2"}}}}},
		}}}
	})
	res, s := NodeAffinity{}.PreFilter(t.Context(), framework.NewCycleState(), pod)
	if !s.IsSuccess() || res.AllNodes() || res.NodeNames.Len() != 2 || !res.NodeNames.Has("n1") {
		t.Errorf("PreFilter = %v, %v; want n1 and n2", res, s)
	}
}
