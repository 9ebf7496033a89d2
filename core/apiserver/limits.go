package apiserver

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apiserver/pkg/admission"
	resourcequotaadmission "k8s.io/apiserver/pkg/admission/plugin/resourcequota"
	quota "k8s.io/apiserver/pkg/quota/v1"
	"k8s.io/apiserver/pkg/quota/v1/generic"
	api "k8s.io/kubernetes/pkg/apis/core"
	quotainstall "k8s.io/kubernetes/pkg/quota/v1/install"
	"k8s.io/kubernetes/plugin/pkg/admission/limitranger"

	"berth.dev/berth/core/registry"
	"berth.dev/berth/core/storage"
)

// policies holds what berth's LimitRanger and ResourceQuota admission need: the namespaces'
// LimitRanges and ResourceQuotas, mirrored from watches, and Kubernetes' quota evaluators.
type policies struct {
	limits    *policyCache
	quotas    *policyCache
	evaluator quota.Registry
	store     *storage.Store
}

func newPolicies(ctx context.Context, store *storage.Store) (*policies, error) {
	limits, err := newPolicyCache(ctx, store, "limitranges")
	if err != nil {
		return nil, err
	}
	quotas, err := newPolicyCache(ctx, store, "resourcequotas")
	if err != nil {
		return nil, err
	}
	cfg := quotainstall.NewQuotaConfigurationForAdmission()
	return &policies{limits: limits, quotas: quotas, evaluator: generic.NewRegistry(cfg.Evaluators()), store: store}, nil
}

// mutateLimits is LimitRanger's mutating half: containers without requests or limits get
// the defaults of the namespace's LimitRanges (type Container).
func (p *policies) mutateLimits(ctx context.Context, res *registry.Resource, obj runtime.Object) error {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil
	}
	ranges, err := p.limits.lookup(ctx, pod.Namespace)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	if len(ranges) == 0 {
		return nil
	}
	in, err := res.Internal(pod)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	for _, o := range ranges {
		if err := limitranger.PodMutateLimitFunc(o.(*corev1.LimitRange), in.(*api.Pod)); err != nil {
			return forbidden(res, pod.Name, err)
		}
	}
	if err := res.SetFromInternal(pod, in); err != nil {
		return apierrors.NewInternalError(err)
	}
	return nil
}

// validateLimits is LimitRanger's validating half: min, max and limit/request ratios of the
// namespace's LimitRanges for pods, containers and claims.
func (p *policies) validateLimits(ctx context.Context, res *registry.Resource, obj runtime.Object) error {
	m, err := meta.Accessor(obj)
	if err != nil {
		return nil
	}
	var check func(lr *corev1.LimitRange, in runtime.Object) error
	switch obj.(type) {
	case *corev1.Pod:
		check = func(lr *corev1.LimitRange, in runtime.Object) error {
			return limitranger.PodValidateLimitFunc(lr, in.(*api.Pod))
		}
	case *corev1.PersistentVolumeClaim:
		check = func(lr *corev1.LimitRange, in runtime.Object) error {
			return limitranger.PersistentVolumeClaimValidateLimitFunc(lr, in.(*api.PersistentVolumeClaim))
		}
	default:
		return nil
	}
	ranges, err := p.limits.lookup(ctx, m.GetNamespace())
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	if len(ranges) == 0 {
		return nil
	}
	in, err := res.Internal(obj)
	if err != nil {
		return apierrors.NewInternalError(err)
	}
	for _, o := range ranges {
		if err := check(o.(*corev1.LimitRange), in); err != nil {
			return forbidden(res, m.GetName(), err)
		}
	}
	return nil
}

// chargeQuota is the ResourceQuota admission for a create: with Kubernetes' evaluators it
// refuses an object that would take a namespace over a quota (naming the quota and the
// resource) and otherwise records the object's usage in the quotas' status.used, with an
// optimistic write per quota, before the object is stored. The quota controller recomputes
// usage from the objects themselves, so a create that fails after this is corrected later.
func (p *policies) chargeQuota(ctx context.Context, res *registry.Resource, obj runtime.Object, dry bool) error {
	m, err := meta.Accessor(obj)
	if err != nil || !res.Namespaced {
		return nil
	}
	ns := m.GetNamespace()
	refreshed := false
	for attempt := 0; ; attempt++ {
		cached, err := p.quotas.lookup(ctx, ns)
		if err != nil {
			return apierrors.NewInternalError(err)
		}
		if len(cached) == 0 {
			return nil
		}
		gr := res.GVR().GroupResource()
		evaluator := p.evaluator.Get(gr)
		if evaluator == nil {
			// Any other resource is counted only when a quota names count/<resource>.<group>.
			evaluator = generic.NewObjectCountEvaluator(gr, nil, "")
		}
		quotas := make([]corev1.ResourceQuota, len(cached))
		unprocessed := false
		for i, o := range cached {
			quotas[i] = *o.(*corev1.ResourceQuota)
			if len(quotas[i].Status.Hard) == 0 && len(quotas[i].Spec.Hard) > 0 {
				// Kubernetes' evaluators ignore a quota whose status the controller has not
				// filled in yet, so a create would go uncharged: take the spec's limits, which
				// makes CheckRequest refuse with "status unknown for quota" until it has.
				quotas[i].Status.Hard = quotas[i].Spec.Hard
				unprocessed = true
			}
		}
		if unprocessed && !refreshed {
			refreshed = true // the cache may lag the controller's status write
			if err := p.quotas.refresh(ctx, ns); err != nil {
				return apierrors.NewInternalError(err)
			}
			continue
		}
		attrs := admission.NewAttributesRecord(obj, nil, res.GVK(), ns, m.GetName(), res.GVR(), "", admission.Create, nil, dry, nil)
		charged, err := resourcequotaadmission.CheckRequest(quotas, attrs, evaluator, nil)
		if err != nil {
			if apierrors.IsForbidden(err) && !refreshed {
				// The cache may lag a usage the quota controller just gave back: refuse only
				// on what etcd holds.
				refreshed = true
				if rerr := p.quotas.refresh(ctx, ns); rerr != nil {
					return apierrors.NewInternalError(rerr)
				}
				continue
			}
			if apierrors.IsForbidden(err) {
				return err
			}
			return apierrors.NewInternalError(fmt.Errorf("check quota: %w", err))
		}
		if dry {
			return nil
		}
		conflict, err := p.writeUsage(ctx, quotas, charged)
		if err != nil {
			return err
		}
		if !conflict {
			return nil
		}
		if attempt == 3 {
			return apierrors.NewConflict(gr, m.GetName(), fmt.Errorf("the namespace's quotas changed while this create was charged to them; try again"))
		}
		// Another writer charged the quota meanwhile: wait for its watch event and retry.
		time.Sleep(time.Duration(attempt+1) * 20 * time.Millisecond)
	}
}

// writeUsage stores the charged quotas' status.used, each only if it is unchanged since it
// was read; conflict reports that one was not.
func (p *policies) writeUsage(ctx context.Context, before, after []corev1.ResourceQuota) (bool, error) {
	res, _ := registry.Lookup("", "v1", "resourcequotas")
	for i := range after {
		if quota.Equals(before[i].Status.Used, after[i].Status.Used) {
			continue
		}
		q := after[i].DeepCopy()
		rev, err := strconv.ParseInt(q.ResourceVersion, 10, 64)
		if err != nil {
			return false, apierrors.NewInternalError(fmt.Errorf("quota %s has resourceVersion %q: %w", q.Name, q.ResourceVersion, err))
		}
		data, err := encodeForStore(res, q)
		if err != nil {
			return false, apierrors.NewInternalError(err)
		}
		newRev, err := p.store.Update(ctx, objectKey(res, q.Namespace, q.Name), data, rev)
		if err != nil {
			if errors.Is(err, storage.ErrConflict) {
				return true, nil
			}
			return false, apierrors.NewInternalError(fmt.Errorf("charge quota %s: %w", q.Name, err))
		}
		q.ResourceVersion = formatRV(newRev)
		p.quotas.put(q.Namespace, q.Name, q)
	}
	return false, nil
}

// forbidden is how admission refuses an object: `pods "web" is forbidden: <why>`.
func forbidden(res *registry.Resource, name string, err error) error {
	return apierrors.NewForbidden(res.GVR().GroupResource(), name, err)
}
