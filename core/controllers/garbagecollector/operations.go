package garbagecollector

import (
	"context"
	"encoding/json"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/util/retry"

	"berth.dev/berth/core/controllers/reconcile"
)

// clientFor returns the metadata client for the object ref names.
func (c *Controller) clientFor(ref objectRef) (metadata.ResourceInterface, error) {
	res, err := c.resource(ref.APIVersion, ref.Kind)
	if err != nil {
		return nil, err
	}
	if !res.Namespaced {
		return c.client.Resource(res.GVR()), nil
	}
	if ref.Namespace == "" {
		// Only a cluster-scoped object can name a namespaced owner without a namespace; such a
		// reference is invalid and stays so.
		return nil, reconcile.Terminal(fmt.Errorf("%s is namespaced but was referenced from a cluster-scoped object", ref))
	}
	return c.client.Resource(res.GVR()).Namespace(ref.Namespace), nil
}

// get reads the object ref names from the API server; nil means it does not exist (a
// namesake with another UID does not count).
func (c *Controller) get(ctx context.Context, ref objectRef) (*metav1.PartialObjectMetadata, error) {
	client, err := c.clientFor(ref)
	if err != nil {
		return nil, err
	}
	obj, err := client.Get(ctx, ref.Name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("get %s: %w", ref, err)
	case obj.UID != ref.UID:
		return nil, nil
	}
	return obj, nil
}

// owner reads the owner an ownerReference of dep names, from the API server unless it is
// already known to be gone; nil means it does not exist.
func (c *Controller) owner(ctx context.Context, ref metav1.OwnerReference, dep objectRef) (*metav1.PartialObjectMetadata, error) {
	res, err := c.resource(ref.APIVersion, ref.Kind)
	if err != nil {
		return nil, fmt.Errorf("owner of %s: %w", dep, err)
	}
	key := coordinates(ref)
	if res.Namespaced {
		if dep.Namespace == "" {
			return nil, reconcile.Terminal(fmt.Errorf("cluster-scoped %s names a namespaced owner %s", dep, key))
		}
		key.Namespace = dep.Namespace
	}
	if c.absent.has(key) {
		return nil, nil
	}
	owner, err := c.get(ctx, key)
	if err != nil {
		return nil, err
	}
	if owner == nil {
		c.absent.add(key)
	}
	return owner, nil
}

// delete deletes the object ref names, if it still has ref's UID.
func (c *Controller) delete(ctx context.Context, ref objectRef, policy metav1.DeletionPropagation) error {
	client, err := c.clientFor(ref)
	if err != nil {
		return err
	}
	uid := ref.UID
	err = client.Delete(ctx, ref.Name, metav1.DeleteOptions{
		Preconditions:     &metav1.Preconditions{UID: &uid},
		PropagationPolicy: &policy,
	})
	if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		// Gone already, or replaced by a namesake (the UID precondition failed).
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete %s: %w", ref, err)
	}
	return nil
}

// deleteDirective is a strategic merge patch element that removes the list entry with uid.
type deleteDirective struct {
	Patch string    `json:"$patch"`
	UID   types.UID `json:"uid"`
}

// removeOwnerReferences removes the ownerReferences to owners from the object ref names.
func (c *Controller) removeOwnerReferences(ctx context.Context, ref objectRef, owners []types.UID) error {
	dirs := make([]deleteDirective, len(owners))
	for i, u := range owners {
		dirs[i] = deleteDirective{Patch: "delete", UID: u}
	}
	smp, err := json.Marshal(map[string]any{"metadata": map[string]any{"ownerReferences": dirs, "uid": ref.UID}})
	if err != nil {
		return err
	}
	drop := make(map[types.UID]bool, len(owners))
	for _, u := range owners {
		drop[u] = true
	}
	return c.patchOwnerReferences(ctx, ref, smp, func(refs []metav1.OwnerReference) []metav1.OwnerReference {
		var out []metav1.OwnerReference
		for _, r := range refs {
			if !drop[r.UID] {
				out = append(out, r)
			}
		}
		return out
	})
}

// unblockOwnerReferences sets blockOwnerDeletion=false on the object's blocking references.
func (c *Controller) unblockOwnerReferences(ctx context.Context, ref objectRef) error {
	no := false
	var refs []metav1.OwnerReference
	for _, o := range c.graph.owners(ref.UID) {
		if isBlocking(o) {
			o.BlockOwnerDeletion = &no
			refs = append(refs, o)
		}
	}
	if len(refs) == 0 {
		return nil
	}
	smp, err := json.Marshal(map[string]any{"metadata": map[string]any{"ownerReferences": refs, "uid": ref.UID}})
	if err != nil {
		return err
	}
	return c.patchOwnerReferences(ctx, ref, smp, func(refs []metav1.OwnerReference) []metav1.OwnerReference {
		out := make([]metav1.OwnerReference, len(refs))
		for i, r := range refs {
			r.BlockOwnerDeletion = &no
			out[i] = r
		}
		return out
	})
}

// patchOwnerReferences sends a strategic merge patch (whose metadata.uid makes it apply only
// to this object), falling back, as Kubernetes does, to a JSON merge patch of the whole
// list guarded by the resourceVersion when the server does not take strategic merge patches.
func (c *Controller) patchOwnerReferences(ctx context.Context, ref objectRef, smp []byte, edit func([]metav1.OwnerReference) []metav1.OwnerReference) error {
	client, err := c.clientFor(ref)
	if err != nil {
		return err
	}
	_, err = client.Patch(ctx, ref.Name, types.StrategicMergePatchType, smp, metav1.PatchOptions{})
	if apierrors.IsUnsupportedMediaType(err) {
		err = retry.RetryOnConflict(retry.DefaultBackoff, func() error {
			latest, err := c.get(ctx, ref)
			if err != nil || latest == nil {
				return err
			}
			type meta struct {
				ResourceVersion string                  `json:"resourceVersion"`
				OwnerReferences []metav1.OwnerReference `json:"ownerReferences"`
			}
			jmp, err := json.Marshal(map[string]meta{"metadata": {latest.ResourceVersion, edit(latest.OwnerReferences)}})
			if err != nil {
				return err
			}
			_, err = client.Patch(ctx, ref.Name, types.MergePatchType, jmp, metav1.PatchOptions{})
			return err
		})
	}
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("patch the ownerReferences of %s: %w", ref, err)
	}
	return nil
}

// removeFinalizer removes finalizer f from the object ref names, guarded by its
// resourceVersion and retried on conflict.
func (c *Controller) removeFinalizer(ctx context.Context, ref objectRef, f string) error {
	client, err := c.clientFor(ref)
	if err != nil {
		return err
	}
	err = retry.RetryOnConflict(retry.DefaultBackoff, func() error {
		latest, err := c.get(ctx, ref)
		if err != nil || latest == nil || !hasFinalizer(latest, f) {
			return err
		}
		keep := []string{}
		for _, x := range latest.Finalizers {
			if x != f {
				keep = append(keep, x)
			}
		}
		type meta struct {
			ResourceVersion string   `json:"resourceVersion"`
			Finalizers      []string `json:"finalizers"`
		}
		patch, err := json.Marshal(map[string]meta{"metadata": {latest.ResourceVersion, keep}})
		if err != nil {
			return err
		}
		_, err = client.Patch(ctx, ref.Name, types.MergePatchType, patch, metav1.PatchOptions{})
		return err
	})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove finalizer %s from %s: %w", f, ref, err)
	}
	return nil
}
