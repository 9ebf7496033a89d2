package apiserver

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"berth.dev/berth/core/registry"
	"berth.dev/berth/plugins/admission"
)

// defaultTolerationSeconds is how long a pod stays on a node that became not-ready or
// unreachable before it is evicted, unless it says otherwise (Kubernetes' default: 300 s).
const defaultTolerationSeconds = 300

// mutateCreate applies the mutating admission berth has, as Kubernetes' plugins of the same
// name would, to an object about to be created (after defaulting, before validation):
// LimitRanger's defaults, DefaultTolerationSeconds, and DefaultStorageClass and
// StorageObjectInUseProtection (admission_storage.go).
func (h *Handler) mutateCreate(ctx context.Context, res *registry.Resource, obj runtime.Object) error {
	if err := h.policies.mutateLimits(ctx, res, obj); err != nil {
		return err
	}
	if err := h.mutateStorageCreate(ctx, obj); err != nil {
		return err
	}
	if pod, ok := obj.(*corev1.Pod); ok {
		addDefaultTolerations(pod, h.tolerationSeconds())
	}
	// Then the site's admission plugins (admission_external.go).
	return h.mutateExternal(ctx, res, admission.Create, obj, nil)
}

// validateCreate applies the validating admission to a valid object about to be created:
// LimitRanger's bounds, then ResourceQuota, which charges the object to the namespace's
// quotas and so must come last.
func (h *Handler) validateCreate(ctx context.Context, res *registry.Resource, obj runtime.Object, dry bool) error {
	if err := h.policies.validateLimits(ctx, res, obj); err != nil {
		return err
	}
	if err := h.validateExternal(ctx, res, admission.Create, obj, nil); err != nil {
		return err
	}
	return h.policies.chargeQuota(ctx, res, obj, dry)
}

func (h *Handler) tolerationSeconds() int64 {
	if h.DefaultTolerationSeconds > 0 {
		return h.DefaultTolerationSeconds
	}
	return defaultTolerationSeconds
}

// addDefaultTolerations is the DefaultTolerationSeconds admission plugin: a pod that does not
// already tolerate the node.kubernetes.io/not-ready and unreachable NoExecute taints gets
// tolerations of them for seconds, so the node lifecycle controller evicts it that long after
// its node fails rather than at once.
func addDefaultTolerations(pod *corev1.Pod, seconds int64) {
	for _, key := range []string{corev1.TaintNodeNotReady, corev1.TaintNodeUnreachable} {
		taint := &corev1.Taint{Key: key, Effect: corev1.TaintEffectNoExecute}
		tolerated := false
		for i := range pod.Spec.Tolerations {
			if pod.Spec.Tolerations[i].ToleratesTaint(taint) {
				tolerated = true
				break
			}
		}
		if !tolerated {
			s := seconds
			pod.Spec.Tolerations = append(pod.Spec.Tolerations, corev1.Toleration{
				Key: key, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: &s,
			})
		}
	}
}

// allocateService claims a Service's ClusterIP and NodePorts (see serviceips.go); other
// objects pass through. old is the stored Service on an update, nil on a create.
func (h *Handler) allocateService(ctx context.Context, obj, old runtime.Object) (*claims, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok || h.services == nil {
		return nil, nil
	}
	var prev *corev1.Service
	if old != nil {
		prev, _ = old.(*corev1.Service)
	}
	return h.services.allocate(ctx, svc, prev)
}

// released gives back, once a write is stored, the Service addresses that old held and
// now (nil after a delete) does not; the allocator's watch does the same for writes of
// other servers, so this only makes the addresses free at once.
func (h *Handler) released(ctx context.Context, old, now runtime.Object) {
	prev, ok := old.(*corev1.Service)
	if !ok || h.services == nil {
		return
	}
	keep := map[string]bool{}
	if svc, ok := now.(*corev1.Service); ok {
		keep = heldBy(svc)
	}
	for k := range heldBy(prev) {
		if !keep[k] {
			h.services.releaseIfOwned(context.WithoutCancel(ctx), k, prev.UID)
		}
	}
}
