package podaddr

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestFindPort(t *testing.T) {
	always := corev1.ContainerRestartPolicyAlways
	pod := &corev1.Pod{Spec: corev1.PodSpec{
		Containers: []corev1.Container{{Ports: []corev1.ContainerPort{
			{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP},
			{Name: "dns", ContainerPort: 5353, Protocol: corev1.ProtocolUDP},
		}}},
		InitContainers: []corev1.Container{
			{Ports: []corev1.ContainerPort{{Name: "once", ContainerPort: 1, Protocol: corev1.ProtocolTCP}}},
			{RestartPolicy: &always, Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 15001, Protocol: corev1.ProtocolTCP}}},
		},
	}}
	tests := []struct {
		name   string
		target intstr.IntOrString
		proto  corev1.Protocol
		want   int32
		err    bool
	}{
		{"number", intstr.FromInt32(9000), corev1.ProtocolTCP, 9000, false},
		{"name", intstr.FromString("http"), corev1.ProtocolTCP, 8080, false},
		{"name of another protocol", intstr.FromString("http"), corev1.ProtocolUDP, 0, true},
		{"udp name", intstr.FromString("dns"), corev1.ProtocolUDP, 5353, false},
		{"sidecar", intstr.FromString("proxy"), corev1.ProtocolTCP, 15001, false},
		{"plain init container", intstr.FromString("once"), corev1.ProtocolTCP, 0, true},
		{"unknown name", intstr.FromString("nope"), corev1.ProtocolTCP, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := FindPort(pod, &corev1.ServicePort{Port: 80, TargetPort: tt.target, Protocol: tt.proto})
			if (err != nil) != tt.err || got != tt.want {
				t.Errorf("got %d, %v; want %d, error %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestIP(t *testing.T) {
	pod := &corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.1", PodIPs: []corev1.PodIP{{IP: "10.0.0.1"}, {IP: "fd00::1"}}}}
	if got := IP(pod, corev1.IPv4Protocol); got != "10.0.0.1" {
		t.Errorf("IPv4: %q", got)
	}
	if got := IP(pod, corev1.IPv6Protocol); got != "fd00::1" {
		t.Errorf("IPv6: %q", got)
	}
	if got := IP(&corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.2"}}, corev1.IPv6Protocol); got != "" {
		t.Errorf("IPv6 of a single-stack pod: %q", got)
	}
}
