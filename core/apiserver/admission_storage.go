package apiserver

import (
	"context"
	"errors"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	storagehelpers "k8s.io/component-helpers/storage/volume"

	"berth.dev/berth/core/internal/storageclass"
	"berth.dev/berth/core/registry"
	"berth.dev/berth/core/storage"
)

// The finalizers of Kubernetes' StorageObjectInUseProtection admission plugin; the
// persistentvolume controller removes them once the object is no longer in use.
const (
	pvcProtectionFinalizer = "kubernetes.io/pvc-protection"
	pvProtectionFinalizer  = "kubernetes.io/pv-protection"
)

// resizeForbidden is Kubernetes' PersistentVolumeClaimResize refusal.
const resizeForbidden = "only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize"

// mutateStorageCreate is the storage part of the mutating admission on create, as
// Kubernetes' plugins of the same names:
//   - DefaultStorageClass: a claim that names no class (storageClassName unset, not "") gets
//     the default class. When there is none it stays unset, and the persistentvolume
//     controller assigns the default class later if one appears (the retroactive default of
//     Kubernetes 1.28+).
//   - StorageObjectInUseProtection: claims get kubernetes.io/pvc-protection and volumes
//     kubernetes.io/pv-protection, so that neither goes while in use.
func (h *Handler) mutateStorageCreate(ctx context.Context, obj runtime.Object) error {
	switch o := obj.(type) {
	case *corev1.PersistentVolumeClaim:
		if storageclass.TakesDefault(o) {
			classes, err := h.storageClasses(ctx)
			if err != nil {
				return apierrors.NewInternalError(fmt.Errorf("DefaultStorageClass admission: %w", err))
			}
			if def := storageclass.Default(classes); def != nil {
				name := def.Name
				o.Spec.StorageClassName = &name
			}
		}
		if !slices.Contains(o.Finalizers, pvcProtectionFinalizer) {
			o.Finalizers = append(o.Finalizers, pvcProtectionFinalizer)
		}
	case *corev1.PersistentVolume:
		if !slices.Contains(o.Finalizers, pvProtectionFinalizer) {
			o.Finalizers = append(o.Finalizers, pvProtectionFinalizer)
		}
	}
	return nil
}

// validateStorageUpdate is the storage part of the validating admission on update (not on
// the status subresource): PersistentVolumeClaimResize. Shrinking a claim is refused by
// validation before this runs.
func (h *Handler) validateStorageUpdate(ctx context.Context, res *registry.Resource, obj, old runtime.Object) error {
	pvc, ok := obj.(*corev1.PersistentVolumeClaim)
	if !ok {
		return nil
	}
	oldPVC, ok := old.(*corev1.PersistentVolumeClaim)
	if !ok {
		return nil
	}
	err := admitClaimResize(pvc, oldPVC, func(name string) (*storagev1.StorageClass, error) {
		return h.storageClass(ctx, name)
	})
	if err != nil {
		return forbidden(res, pvc.Name, err)
	}
	return nil
}

// admitClaimResize is PersistentVolumeClaimResize: a claim may grow only when it is bound and
// its class (unchanged by the update) allows volume expansion. getClass returns nil, nil for
// a class that does not exist.
func admitClaimResize(pvc, old *corev1.PersistentVolumeClaim, getClass func(string) (*storagev1.StorageClass, error)) error {
	newSize := pvc.Spec.Resources.Requests[corev1.ResourceStorage]
	oldSize := old.Spec.Resources.Requests[corev1.ResourceStorage]
	if newSize.Cmp(oldSize) <= 0 {
		return nil
	}
	if old.Status.Phase != corev1.ClaimBound {
		return errors.New("Only bound persistent volume claims can be expanded")
	}
	class := storagehelpers.GetPersistentVolumeClaimClass(pvc)
	if class == "" || class != storagehelpers.GetPersistentVolumeClaimClass(old) {
		return errors.New(resizeForbidden)
	}
	sc, err := getClass(class)
	if err != nil || sc == nil || sc.AllowVolumeExpansion == nil || !*sc.AllowVolumeExpansion {
		return errors.New(resizeForbidden)
	}
	return nil
}

// storageClasses reads every StorageClass from the store. Claims are created rarely enough
// that a read per create costs less than a cache would.
func (h *Handler) storageClasses(ctx context.Context) ([]*storagev1.StorageClass, error) {
	res, ok := registry.Lookup("storage.k8s.io", "v1", "storageclasses")
	if !ok {
		return nil, errors.New("no resource storage.k8s.io/v1 storageclasses")
	}
	list, err := h.store.List(ctx, collectionPrefix(res, ""), storage.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list storage classes: %w", err)
	}
	out := make([]*storagev1.StorageClass, 0, len(list.Items))
	for _, o := range list.Items {
		obj, err := decodeStored(res, o.Value, o.Revision)
		if err != nil {
			return nil, err
		}
		if sc, ok := obj.(*storagev1.StorageClass); ok {
			out = append(out, sc)
		}
	}
	return out, nil
}

// storageClass reads one StorageClass from the store; nil, nil when it does not exist.
func (h *Handler) storageClass(ctx context.Context, name string) (*storagev1.StorageClass, error) {
	res, ok := registry.Lookup("storage.k8s.io", "v1", "storageclasses")
	if !ok {
		return nil, errors.New("no resource storage.k8s.io/v1 storageclasses")
	}
	o, err := h.store.Get(ctx, objectKey(res, "", name))
	if errors.Is(err, storage.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read storage class %q: %w", name, err)
	}
	obj, err := decodeStored(res, o.Value, o.Revision)
	if err != nil {
		return nil, err
	}
	sc, _ := obj.(*storagev1.StorageClass)
	return sc, nil
}
