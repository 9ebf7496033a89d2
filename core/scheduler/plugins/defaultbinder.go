package plugins

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"berth.dev/berth/core/scheduler/framework"
)

// DefaultBinderName is the name of the DefaultBinder plugin.
const DefaultBinderName = "DefaultBinder"

// DefaultBinder binds a pod by creating its pods/binding subresource, the only way a
// scheduler sets spec.nodeName.
type DefaultBinder struct {
	client kubernetes.Interface
}

// NewDefaultBinder returns a binder that writes through client.
func NewDefaultBinder(client kubernetes.Interface) *DefaultBinder {
	return &DefaultBinder{client: client}
}

// Name returns DefaultBinderName.
func (*DefaultBinder) Name() string { return DefaultBinderName }

// Bind POSTs the Binding; the UID guards against binding a pod recreated under the name.
func (b *DefaultBinder) Bind(ctx context.Context, _ *framework.CycleState, pod *corev1.Pod, node string) *framework.Status {
	binding := &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}
	if err := b.client.CoreV1().Pods(pod.Namespace).Bind(ctx, binding, metav1.CreateOptions{}); err != nil {
		return framework.AsStatus(fmt.Errorf("bind pod %s/%s to node %s: %w", pod.Namespace, pod.Name, node, err))
	}
	return nil
}
