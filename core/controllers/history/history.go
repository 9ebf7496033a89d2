// Package history keeps the ControllerRevisions of StatefulSets and DaemonSets, as
// Kubernetes' pkg/controller/history does: each revision stores a strategic-merge patch that
// replaces the owner's spec.template, is named <owner>-<hash of that patch>, and is numbered
// so that `kubectl rollout history` and `kubectl rollout undo` can list and re-apply them.
package history

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"maps"
	"sort"
	"strconv"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/client-go/kubernetes"

	"berth.dev/berth/core/controllers/ownership"
)

// HashLabel labels every revision with the hash of its data, as Kubernetes does.
const HashLabel = "controller.kubernetes.io/hash"

// TemplatePatch returns the patch a revision stores for obj (a StatefulSet or DaemonSet):
// its spec.template with the "$patch: replace" directive, so that applying the patch
// replaces the template wholesale instead of merging into it. The bytes are JSON with
// sorted keys, hence stable: equal templates give equal patches (and equal hashes).
func TemplatePatch(obj any) ([]byte, error) {
	data, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode template: %w", err)
	}
	var raw map[string]any
	if err := json.Unmarshal(data, &raw); err != nil {
		return nil, fmt.Errorf("decode template: %w", err)
	}
	spec, _ := raw["spec"].(map[string]any)
	template, _ := spec["template"].(map[string]any)
	if template == nil {
		return nil, fmt.Errorf("object has no spec.template")
	}
	template["$patch"] = "replace"
	return json.Marshal(map[string]any{"spec": map[string]any{"template": template}})
}

// Hash is Kubernetes' revision hash: FNV-32 of the patch followed by the collision count,
// printed in decimal and encoded with rand.SafeEncodeString, so that berth names the
// revisions of a given template exactly as Kubernetes would.
func Hash(patch []byte, collisionCount *int32) string {
	h := fnv.New32()
	h.Write(patch)
	if collisionCount != nil {
		h.Write([]byte(strconv.FormatInt(int64(*collisionCount), 10)))
	}
	return rand.SafeEncodeString(fmt.Sprint(h.Sum32()))
}

// Name is a revision's name: the owner's name (cut to 223 characters, leaving room for the
// hash within the 253 a name may have) and the hash.
func Name(owner, hash string) string {
	if len(owner) > 223 {
		owner = owner[:223]
	}
	return owner + "-" + hash
}

// New builds (without creating) the revision of owner that stores patch.
func New(owner metav1.Object, kind schema.GroupVersionKind, templateLabels map[string]string, patch []byte, revision int64, collisionCount *int32) *appsv1.ControllerRevision {
	hash := Hash(patch, collisionCount)
	labels := maps.Clone(templateLabels)
	if labels == nil {
		labels = map[string]string{}
	}
	labels[HashLabel] = hash
	return &appsv1.ControllerRevision{
		ObjectMeta: metav1.ObjectMeta{
			Name:            Name(owner.GetName(), hash),
			Namespace:       owner.GetNamespace(),
			Labels:          labels,
			OwnerReferences: []metav1.OwnerReference{ownership.ControllerRef(owner, kind)},
		},
		Data:     runtime.RawExtension{Raw: patch},
		Revision: revision,
	}
}

// Create creates rev; when another revision already has its name but different data (a hash
// collision), it bumps *collisionCount and tries the next name, as Kubernetes does. A
// revision with the same name and data is returned as is.
func Create(ctx context.Context, kube kubernetes.Interface, owner metav1.Object, rev *appsv1.ControllerRevision, collisionCount *int32) (*appsv1.ControllerRevision, error) {
	if collisionCount == nil {
		return nil, fmt.Errorf("create revision for %s/%s: nil collision count", owner.GetNamespace(), owner.GetName())
	}
	client := kube.AppsV1().ControllerRevisions(rev.Namespace)
	for {
		clone := rev.DeepCopy()
		hash := Hash(clone.Data.Raw, collisionCount)
		clone.Name = Name(owner.GetName(), hash)
		clone.Labels[HashLabel] = hash
		created, err := client.Create(ctx, clone, metav1.CreateOptions{})
		if err == nil {
			return created, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("create revision %s/%s: %w", clone.Namespace, clone.Name, err)
		}
		existing, err := client.Get(ctx, clone.Name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("get revision %s/%s: %w", clone.Namespace, clone.Name, err)
		}
		if bytes.Equal(existing.Data.Raw, clone.Data.Raw) {
			return existing, nil
		}
		*collisionCount++
	}
}

// SetRevision renumbers rev (a rollback to an older template makes it the newest again).
func SetRevision(ctx context.Context, kube kubernetes.Interface, rev *appsv1.ControllerRevision, revision int64) (*appsv1.ControllerRevision, error) {
	if rev.Revision == revision {
		return rev, nil
	}
	clone := rev.DeepCopy()
	clone.Revision = revision
	updated, err := kube.AppsV1().ControllerRevisions(clone.Namespace).Update(ctx, clone, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("renumber revision %s/%s to %d: %w", clone.Namespace, clone.Name, revision, err)
	}
	return updated, nil
}

// Sort orders revisions oldest first: by number, then creation time, then name.
func Sort(revs []*appsv1.ControllerRevision) {
	sort.SliceStable(revs, func(i, j int) bool {
		a, b := revs[i], revs[j]
		if a.Revision != b.Revision {
			return a.Revision < b.Revision
		}
		if !a.CreationTimestamp.Equal(&b.CreationTimestamp) {
			return a.CreationTimestamp.Before(&b.CreationTimestamp)
		}
		return a.Name < b.Name
	})
}

// Next is the number the next revision gets: one more than the highest.
func Next(revs []*appsv1.ControllerRevision) int64 {
	var highest int64
	for _, r := range revs {
		highest = max(highest, r.Revision)
	}
	return highest + 1
}

// Equal reports whether two revisions store the same template.
func Equal(a, b *appsv1.ControllerRevision) bool {
	// Not the hash label: after a collision bump equal data can carry different hashes.
	if a == nil || b == nil {
		return a == b
	}
	return bytes.Equal(a.Data.Raw, b.Data.Raw)
}

// FindEqual returns the revisions of revs that store the same template as needle, in the
// order of revs.
func FindEqual(revs []*appsv1.ControllerRevision, needle *appsv1.ControllerRevision) []*appsv1.ControllerRevision {
	var out []*appsv1.ControllerRevision
	for _, r := range revs {
		if Equal(r, needle) {
			out = append(out, r)
		}
	}
	return out
}

// Apply returns a copy of obj with rev's patch applied: the object as it was at that
// revision (the revision stores only the template, so the rest is obj's).
func Apply[T any](obj *T, rev *appsv1.ControllerRevision) (*T, error) {
	original, err := json.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode object: %w", err)
	}
	var schemaObj T
	patched, err := strategicpatch.StrategicMergePatch(original, rev.Data.Raw, &schemaObj)
	if err != nil {
		return nil, fmt.Errorf("apply revision %s: %w", rev.Name, err)
	}
	out := new(T)
	if err := json.Unmarshal(patched, out); err != nil {
		return nil, fmt.Errorf("decode object at revision %s: %w", rev.Name, err)
	}
	return out, nil
}

// Truncate deletes the oldest revisions that are not live (live: named in the set) until
// at most limit non-live revisions remain. revs must be sorted oldest first.
func Truncate(ctx context.Context, kube kubernetes.Interface, revs []*appsv1.ControllerRevision, live map[string]bool, limit int) error {
	var old []*appsv1.ControllerRevision
	for _, r := range revs {
		if !live[r.Name] {
			old = append(old, r)
		}
	}
	excess := len(old) - max(limit, 0)
	for i := 0; i < excess; i++ {
		r := old[i]
		err := kube.AppsV1().ControllerRevisions(r.Namespace).Delete(ctx, r.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete old revision %s/%s: %w", r.Namespace, r.Name, err)
		}
	}
	return nil
}

// Claim returns the revisions owner controls among candidates, adopting orphans that match
// its selector and releasing owned ones that no longer do.
func Claim(ctx context.Context, kube kubernetes.Interface, owner ownership.Owner, candidates []*appsv1.ControllerRevision) ([]*appsv1.ControllerRevision, error) {
	ns := owner.Object.GetNamespace()
	return ownership.Claim(ctx, owner, candidates, func(ctx context.Context, name string, data []byte) error {
		_, err := kube.AppsV1().ControllerRevisions(ns).Patch(ctx, name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
		return err
	})
}
