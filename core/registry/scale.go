package registry

import (
	"fmt"

	appsv1 "k8s.io/api/apps/v1"
	autoscalingv1 "k8s.io/api/autoscaling/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/kubernetes/pkg/apis/apps"
	"k8s.io/kubernetes/pkg/apis/autoscaling"
	autoscalingvalidation "k8s.io/kubernetes/pkg/apis/autoscaling/validation"
	api "k8s.io/kubernetes/pkg/apis/core"
)

// ToScale returns the autoscaling/v1 Scale of an object of a resource with a scale
// subresource, as kube's scale REST builds it (scaleFromDeployment, scaleFromRC ... in
// pkg/registry/*/*/storage, which are unexported): spec.replicas, status.replicas,
// status.selector as a label selector string, and the object's name, namespace, uid,
// resourceVersion and creationTimestamp.
func (r *Resource) ToScale(obj runtime.Object) (*autoscalingv1.Scale, error) {
	if !r.Scale {
		return nil, fmt.Errorf("%s has no scale subresource", r.GVR())
	}
	in, err := r.toInternal(obj)
	if err != nil {
		return nil, err
	}
	var (
		om               *metav1.ObjectMeta
		spec, status     int32
		selector         string
		internalSelector *metav1.LabelSelector
	)
	switch o := in.(type) {
	case *apps.Deployment:
		om, spec, status, internalSelector = &o.ObjectMeta, o.Spec.Replicas, o.Status.Replicas, o.Spec.Selector
	case *apps.ReplicaSet:
		om, spec, status, internalSelector = &o.ObjectMeta, o.Spec.Replicas, o.Status.Replicas, o.Spec.Selector
	case *apps.StatefulSet:
		om, spec, status, internalSelector = &o.ObjectMeta, o.Spec.Replicas, o.Status.Replicas, o.Spec.Selector
	case *api.ReplicationController:
		om, status = &o.ObjectMeta, o.Status.Replicas
		if o.Spec.Replicas != nil {
			spec = *o.Spec.Replicas
		}
		selector = labels.SelectorFromSet(o.Spec.Selector).String()
	default:
		return nil, fmt.Errorf("%s: no scale for %T", r.GVR(), in)
	}
	if _, ok := in.(*api.ReplicationController); !ok {
		sel, err := metav1.LabelSelectorAsSelector(internalSelector)
		if err != nil {
			return nil, err
		}
		selector = sel.String()
	}
	internal := &autoscaling.Scale{
		ObjectMeta: metav1.ObjectMeta{
			Name:              om.Name,
			Namespace:         om.Namespace,
			UID:               om.UID,
			ResourceVersion:   om.ResourceVersion,
			CreationTimestamp: om.CreationTimestamp,
		},
		Spec:   autoscaling.ScaleSpec{Replicas: spec},
		Status: autoscaling.ScaleStatus{Replicas: status, Selector: selector},
	}
	out := &autoscalingv1.Scale{}
	if err := Scheme.Convert(internal, out, nil); err != nil {
		return nil, fmt.Errorf("convert scale of %s: %w", r.GVR(), err)
	}
	out.APIVersion, out.Kind = autoscalingv1.SchemeGroupVersion.String(), "Scale"
	return out, nil
}

// SetReplicas sets spec.replicas of an external object of a resource with a scale
// subresource.
func (r *Resource) SetReplicas(obj runtime.Object, replicas int32) error {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		o.Spec.Replicas = &replicas
	case *appsv1.ReplicaSet:
		o.Spec.Replicas = &replicas
	case *appsv1.StatefulSet:
		o.Spec.Replicas = &replicas
	case *corev1.ReplicationController:
		o.Spec.Replicas = &replicas
	default:
		return fmt.Errorf("%s: cannot scale %T", r.GVR(), obj)
	}
	return nil
}

// ValidateScale validates a Scale sent to /scale with Kubernetes' ValidateScale
// (metadata, spec.replicas >= 0).
func ValidateScale(scale *autoscalingv1.Scale) field.ErrorList {
	internal := &autoscaling.Scale{}
	if err := Scheme.Convert(scale, internal, nil); err != nil {
		return field.ErrorList{field.InternalError(nil, err)}
	}
	return autoscalingvalidation.ValidateScale(internal)
}

// ApplyScale moves a Scale sent to /scale onto the current object, as kube's
// scaleUpdatedObjectInfo does: validate it (422 Invalid), check its uid precondition (409
// Conflict), then copy spec.replicas and resourceVersion onto obj. Run the result through
// PrepareForUpdate and ValidateUpdate like any update. Managed fields are not translated.
func (r *Resource) ApplyScale(obj runtime.Object, scale *autoscalingv1.Scale) error {
	if !r.Scale {
		return apierrors.NewNotFound(r.GVR().GroupResource(), scale.Name)
	}
	if errs := ValidateScale(scale); len(errs) > 0 {
		return apierrors.NewInvalid(autoscaling.Kind("Scale"), scale.Name, errs)
	}
	m, err := meta.Accessor(obj)
	if err != nil {
		return err
	}
	if len(scale.UID) > 0 && scale.UID != m.GetUID() {
		gr := r.GVR().GroupResource()
		gr.Resource += "/scale"
		return apierrors.NewConflict(gr, m.GetName(),
			fmt.Errorf("Precondition failed: UID in precondition: %v, UID in object meta: %v", scale.UID, m.GetUID()))
	}
	if err := r.SetReplicas(obj, scale.Spec.Replicas); err != nil {
		return err
	}
	m.SetResourceVersion(scale.ResourceVersion)
	return nil
}

// Selector returns the pod selector of an external object that has one (deployments,
// replica sets, stateful sets, daemon sets, jobs, replication controllers, services,
// pod disruption budgets), nil for other kinds and for an unset selector.
func (r *Resource) Selector(obj runtime.Object) (labels.Selector, error) {
	var ls *metav1.LabelSelector
	switch o := obj.(type) {
	case *appsv1.Deployment:
		ls = o.Spec.Selector
	case *appsv1.ReplicaSet:
		ls = o.Spec.Selector
	case *appsv1.StatefulSet:
		ls = o.Spec.Selector
	case *appsv1.DaemonSet:
		ls = o.Spec.Selector
	case *batchv1.Job:
		ls = o.Spec.Selector
	case *policyv1.PodDisruptionBudget:
		ls = o.Spec.Selector
	case *corev1.ReplicationController:
		if len(o.Spec.Selector) == 0 {
			return nil, nil
		}
		return labels.SelectorFromSet(o.Spec.Selector), nil
	case *corev1.Service:
		if len(o.Spec.Selector) == 0 {
			return nil, nil
		}
		return labels.SelectorFromSet(o.Spec.Selector), nil
	default:
		return nil, nil
	}
	if ls == nil {
		return nil, nil
	}
	return metav1.LabelSelectorAsSelector(ls)
}
