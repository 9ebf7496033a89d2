package apiserver

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"berth.dev/berth/core/storage"
)

// Finalizers the garbage collector acts on (metav1.FinalizerOrphanDependents, FinalizerDeleteDependents).
const (
	finalizerOrphan     = metav1.FinalizerOrphanDependents
	finalizerForeground = metav1.FinalizerDeleteDependents
)

// deleteOptions reads DeleteOptions from the body (client-go) or the query (kubectl, curl).
func (q *request) deleteOptions() (*metav1.DeleteOptions, error) {
	opts := &metav1.DeleteOptions{}
	body, err := q.readBody()
	if err != nil {
		return nil, err
	}
	if len(body) > 0 {
		if err := decodeRequest(opts, body, q.r.Header.Get("Content-Type"), "DeleteOptions", "v1", validationIgnore); err != nil {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("invalid DeleteOptions: %v", err))
		}
	}
	v := q.r.URL.Query()
	if s := v.Get("gracePeriodSeconds"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("gracePeriodSeconds must be an integer, not %q", s))
		}
		opts.GracePeriodSeconds = &n
	}
	if s := v.Get("propagationPolicy"); s != "" {
		p := metav1.DeletionPropagation(s)
		opts.PropagationPolicy = &p
	}
	if s := v.Get("orphanDependents"); s != "" {
		b := isTrue(s)
		//lint:ignore SA1019 deprecated but still sent by old clients, and Kubernetes honours it
		opts.OrphanDependents = &b
	}
	if v.Has("dryRun") {
		opts.DryRun = v["dryRun"]
	}
	for _, d := range opts.DryRun {
		if d != "All" {
			return nil, apierrors.NewBadRequest(fmt.Sprintf("dryRun must be All, not %q", d))
		}
	}
	if p := opts.PropagationPolicy; p != nil {
		switch *p {
		case metav1.DeletePropagationBackground, metav1.DeletePropagationForeground, metav1.DeletePropagationOrphan:
		default:
			return nil, apierrors.NewBadRequest(fmt.Sprintf("propagationPolicy must be Orphan, Background or Foreground, not %q", *p))
		}
		//lint:ignore SA1019 deprecated but still sent by old clients, and Kubernetes honours it
		if opts.OrphanDependents != nil {
			return nil, apierrors.NewBadRequest("orphanDependents and propagationPolicy cannot both be set")
		}
	}
	return opts, nil
}

func (q *request) delete() {
	opts, err := q.deleteOptions()
	if err != nil {
		q.fail(err)
		return
	}
	for attempt := 0; ; attempt++ {
		obj, code, err := q.h.deleteObject(q, q.info.Name, opts)
		if errors.Is(err, storage.ErrConflict) && attempt < maxConflictRetries {
			continue
		}
		if err != nil {
			q.fail(err)
			return
		}
		q.respond(code, obj)
		return
	}
}

// deleteObject deletes one object, or starts its deletion when finalizers or a grace period
// stand in the way: it then gets a deletionTimestamp and stays until they are done.
func (h *Handler) deleteObject(q *request, name string, opts *metav1.DeleteOptions) (runtime.Object, int, error) {
	obj, rev, err := q.load(name)
	if err != nil {
		return nil, 0, err
	}
	m, _ := meta.Accessor(obj)
	gr := groupResource(q.res.Group, q.res.Resource)
	if p := opts.Preconditions; p != nil {
		if p.UID != nil && *p.UID != m.GetUID() {
			return nil, 0, apierrors.NewConflict(gr, name, fmt.Errorf("Precondition failed: UID in precondition: %v, UID in object meta: %v", *p.UID, m.GetUID()))
		}
		if p.ResourceVersion != nil && *p.ResourceVersion != m.GetResourceVersion() {
			return nil, 0, apierrors.NewConflict(gr, name, fmt.Errorf("Precondition failed: ResourceVersion in precondition: %v, ResourceVersion in object meta: %v", *p.ResourceVersion, m.GetResourceVersion()))
		}
	}
	finalizers := append([]string(nil), m.GetFinalizers()...)
	switch propagation(opts) {
	case metav1.DeletePropagationOrphan:
		finalizers = addOnce(removeString(finalizers, finalizerForeground), finalizerOrphan)
	case metav1.DeletePropagationForeground:
		finalizers = addOnce(removeString(finalizers, finalizerOrphan), finalizerForeground)
	}
	grace := gracePeriod(obj, opts)
	pending := len(finalizers) > 0 || grace > 0 || namespacePending(obj)
	dry := len(opts.DryRun) > 0
	if !pending {
		if dry {
			return obj, http.StatusOK, nil
		}
		if _, err := h.store.Delete(q.ctx(), q.key(name), rev); err != nil {
			if errors.Is(err, storage.ErrConflict) {
				return nil, 0, err
			}
			return nil, 0, q.storageError(err, name)
		}
		h.released(q.ctx(), obj, nil)
		return obj, http.StatusOK, nil
	}
	// Graceful deletion: mark the object; its finalizers, the node agent or the namespace
	// controller finish the job.
	if m.GetDeletionTimestamp() != nil {
		old := m.GetDeletionGracePeriodSeconds()
		if old != nil && grace >= *old && equalStrings(finalizers, m.GetFinalizers()) {
			return obj, http.StatusOK, nil
		}
	}
	now := metav1.NewTime(time.Now().Add(time.Duration(grace) * time.Second))
	if m.GetDeletionTimestamp() == nil || now.Before(m.GetDeletionTimestamp()) {
		m.SetDeletionTimestamp(&now)
	}
	m.SetDeletionGracePeriodSeconds(&grace)
	m.SetFinalizers(finalizers)
	if ns, ok := obj.(*corev1.Namespace); ok {
		ns.Status.Phase = corev1.NamespaceTerminating
	}
	if dry {
		return obj, http.StatusOK, nil
	}
	data, err := encodeForStore(q.res, obj)
	if err != nil {
		return nil, 0, apierrors.NewInternalError(err)
	}
	newRev, err := h.store.Update(q.ctx(), q.key(name), data, rev)
	if err != nil {
		if errors.Is(err, storage.ErrConflict) {
			return nil, 0, err
		}
		return nil, 0, q.storageError(err, name)
	}
	m.SetResourceVersion(formatRV(newRev))
	return obj, http.StatusAccepted, nil
}

// propagation returns the requested propagation policy, Background by default as for every
// apps/v1 and batch/v1 resource in Kubernetes.
func propagation(opts *metav1.DeleteOptions) metav1.DeletionPropagation {
	if opts.PropagationPolicy != nil {
		return *opts.PropagationPolicy
	}
	//lint:ignore SA1019 deprecated but still sent by old clients, and Kubernetes honours it
	if opts.OrphanDependents != nil && *opts.OrphanDependents {
		return metav1.DeletePropagationOrphan
	}
	return metav1.DeletePropagationBackground
}

// gracePeriod is how long an object's deletion waits: only pods on a node have one, as in
// Kubernetes (a pod no node runs, or one that has finished, goes at once).
func gracePeriod(obj runtime.Object, opts *metav1.DeleteOptions) int64 {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return 0
	}
	if pod.Spec.NodeName == "" || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return 0
	}
	if opts.GracePeriodSeconds != nil {
		if *opts.GracePeriodSeconds < 0 {
			return 1
		}
		return *opts.GracePeriodSeconds
	}
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		return *pod.Spec.TerminationGracePeriodSeconds
	}
	return corev1.DefaultTerminationGracePeriodSeconds
}

// namespacePending reports whether a namespace still has spec finalizers (the namespace
// controller empties it first).
func namespacePending(obj runtime.Object) bool {
	ns, ok := obj.(*corev1.Namespace)
	return ok && len(ns.Spec.Finalizers) > 0
}

func (q *request) deleteCollection() {
	opts, err := q.deleteOptions()
	if err != nil {
		q.fail(err)
		return
	}
	lopts, err := q.listOptions()
	if err != nil {
		q.fail(err)
		return
	}
	res, err := q.h.listObjects(q, collectionPrefix(q.res, q.info.Namespace), lopts)
	if err != nil {
		q.fail(err)
		return
	}
	var deleted []runtime.Object
	for _, item := range res.items {
		m, _ := meta.Accessor(item)
		sub := *q
		sub.info.Namespace = m.GetNamespace()
		var obj runtime.Object
		for attempt := 0; ; attempt++ {
			obj, _, err = q.h.deleteObject(&sub, m.GetName(), opts)
			if errors.Is(err, storage.ErrConflict) && attempt < maxConflictRetries {
				continue
			}
			break
		}
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			q.fail(err)
			return
		}
		deleted = append(deleted, obj)
	}
	res.items = deleted
	res.cont, res.remaining = "", nil
	q.respondList(res)
}

func addOnce(list []string, s string) []string {
	if contains(list, s) {
		return list
	}
	return append(list, s)
}

func removeString(list []string, s string) []string {
	out := list[:0:0]
	for _, x := range list {
		if x != s {
			out = append(out, x)
		}
	}
	return out
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
