// Package ownership decides which objects a controller owns, as Kubernetes' ControllerRefManager
// does: an object whose controller reference names the owner is kept while the owner's
// selector matches it and released (its reference removed) when it stops matching; an orphan
// that matches is adopted (the owner's controller reference added) unless the owner is being
// deleted. Objects controlled by someone else, and orphans being deleted, are left alone.
package ownership

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// Patch applies a strategic-merge patch to the named object of the owner's namespace (for
// example a Pods(ns).Patch call with types.StrategicMergePatchType).
type Patch func(ctx context.Context, name string, data []byte) error

// Owner describes the controlling object that claims.
type Owner struct {
	Object metav1.Object
	// Kind is the owner's group, version and kind, as written into ownerReferences.
	Kind schema.GroupVersionKind
	// Selector picks the objects the owner should control.
	Selector labels.Selector
	// CanAdopt checks, with a fresh read from the API server, that the owner still exists
	// with the same UID and is not being deleted; it is called at most once per Claim and
	// only before the first adoption. Nil means adoption is always allowed.
	CanAdopt func(ctx context.Context) error
}

// Claim returns the candidates the owner controls once orphans that match its selector have
// been adopted and owned objects that no longer match have been released. Errors of single
// objects are collected and returned with the objects that were claimed successfully; an
// object that is gone (NotFound) is skipped silently.
func Claim[T metav1.Object](ctx context.Context, owner Owner, candidates []T, patch Patch) ([]T, error) {
	var claimed []T
	var errs []error
	adoptChecked := false
	var adoptErr error
	for _, obj := range candidates {
		matches := owner.Selector.Matches(labels.Set(obj.GetLabels()))
		ref := metav1.GetControllerOf(obj)
		if ref != nil {
			if ref.UID != owner.Object.GetUID() {
				continue // someone else's
			}
			if matches {
				claimed = append(claimed, obj)
				continue
			}
			// Ours but no longer selected: release it, unless the owner is going away (the
			// garbage collector then decides its fate).
			if owner.Object.GetDeletionTimestamp() != nil {
				continue
			}
			if err := patch(ctx, obj.GetName(), releasePatch(owner.Object.GetUID(), obj.GetUID())); err != nil && !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("release %s: %w", obj.GetName(), err))
			}
			continue
		}
		// An orphan.
		if !matches || obj.GetDeletionTimestamp() != nil || owner.Object.GetDeletionTimestamp() != nil ||
			obj.GetNamespace() != owner.Object.GetNamespace() {
			continue
		}
		if !adoptChecked {
			adoptChecked = true
			if owner.CanAdopt != nil {
				adoptErr = owner.CanAdopt(ctx)
			}
		}
		if adoptErr != nil {
			errs = append(errs, fmt.Errorf("adopt %s: %w", obj.GetName(), adoptErr))
			continue
		}
		data, err := adoptPatch(owner, obj.GetUID())
		if err != nil {
			return claimed, err
		}
		if err := patch(ctx, obj.GetName(), data); err != nil {
			if !apierrors.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("adopt %s: %w", obj.GetName(), err))
			}
			continue
		}
		claimed = append(claimed, obj)
	}
	if len(errs) > 0 {
		return claimed, fmt.Errorf("claim for %s %s/%s: %v", owner.Kind.Kind, owner.Object.GetNamespace(), owner.Object.GetName(), errs)
	}
	return claimed, nil
}

// ControllerRef is the ownerReference a controller puts on the objects it creates or adopts.
func ControllerRef(owner metav1.Object, kind schema.GroupVersionKind) metav1.OwnerReference {
	return *metav1.NewControllerRef(owner, kind)
}

// adoptPatch adds the owner's controller reference. The object's uid in the patch is a
// precondition: the patch fails rather than touch a namesake created since the read.
func adoptPatch(owner Owner, uid types.UID) ([]byte, error) {
	return json.Marshal(map[string]any{
		"metadata": map[string]any{
			"ownerReferences": []metav1.OwnerReference{ControllerRef(owner.Object, owner.Kind)},
			"uid":             uid,
		},
	})
}

// releasePatch removes the owner's reference (ownerReferences merge on uid).
func releasePatch(ownerUID, uid types.UID) []byte {
	data, _ := json.Marshal(map[string]any{
		"metadata": map[string]any{
			"ownerReferences": []map[string]any{{"$patch": "delete", "uid": ownerUID}},
			"uid":             uid,
		},
	})
	return data
}

// Recheck returns an Owner.CanAdopt for owner of kind: get reads the owner afresh from the
// API server (the informer's copy may lag a delete, or a delete and re-create under the same
// name), and adoption is refused when the owner is gone, has another UID or is being deleted.
func Recheck[T metav1.Object](owner metav1.Object, kind string, get func(ctx context.Context) (T, error)) func(context.Context) error {
	return func(ctx context.Context) error {
		fresh, err := get(ctx)
		if err != nil {
			return fmt.Errorf("recheck %s %s/%s: %w", kind, owner.GetNamespace(), owner.GetName(), err)
		}
		if fresh.GetUID() != owner.GetUID() {
			return fmt.Errorf("original %s %s/%s is gone: got uid %s, wanted %s", kind, owner.GetNamespace(), owner.GetName(), fresh.GetUID(), owner.GetUID())
		}
		if fresh.GetDeletionTimestamp() != nil {
			return fmt.Errorf("%s %s/%s is being deleted", kind, owner.GetNamespace(), owner.GetName())
		}
		return nil
	}
}
