package apiserver

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	autoscalingv1 "k8s.io/api/autoscaling/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"berth.dev/berth/core/registry"
	"berth.dev/berth/core/storage"
)

func (q *request) serveStatus() {
	switch q.info.Verb {
	case "get":
		q.get()
	case "update":
		q.update(updateStatus)
	case "patch":
		q.patch(updateStatus)
	default:
		q.methodNotSupported()
	}
}

// serveScale serves autoscaling/v1 Scale for resources with replicas, as kubectl scale uses it.
func (q *request) serveScale() {
	q.present = func(obj runtime.Object) (any, error) {
		s, err := q.res.ToScale(obj)
		if err != nil {
			return nil, apierrors.NewInternalError(err)
		}
		return s, nil
	}
	switch q.info.Verb {
	case "get":
		obj, _, err := q.load(q.info.Name)
		if err != nil {
			q.fail(err)
			return
		}
		out, err := q.present(obj)
		if err != nil {
			q.fail(err)
			return
		}
		writeJSON(q.w, http.StatusOK, out)
	case "update":
		body, err := q.readBody()
		if err != nil {
			q.fail(err)
			return
		}
		scale := &autoscalingv1.Scale{}
		if err := decodeRequest(scale, body, q.r.Header.Get("Content-Type"), "Scale", "v1", validationStrict); err != nil {
			q.fail(err)
			return
		}
		if scale.Name != q.info.Name {
			q.fail(apierrors.NewBadRequest(fmt.Sprintf("the name of the object (%s) does not match the name on the URL (%s)", scale.Name, q.info.Name)))
			return
		}
		q.applyUpdate(updateMain, scale.ResourceVersion, q.scaleTo(scale.Spec.Replicas), nil)
	case "patch":
		body, err := q.readBody()
		if err != nil {
			q.fail(err)
			return
		}
		pt, err := patchType(q.r.Header.Get("Content-Type"))
		if err != nil {
			q.fail(err)
			return
		}
		q.applyUpdate(updateMain, "", func(current runtime.Object) (runtime.Object, error) {
			s, err := q.res.ToScale(current)
			if err != nil {
				return nil, apierrors.NewInternalError(err)
			}
			original, _ := json.Marshal(s)
			patched, err := applyPatch(pt, original, body, &autoscalingv1.Scale{})
			if err != nil {
				return nil, err
			}
			next := &autoscalingv1.Scale{}
			if _, err := decodeInto(next, patched, "Scale", "v1", validationStrict); err != nil {
				return nil, err
			}
			if next.ResourceVersion != s.ResourceVersion {
				return nil, q.storageError(storage.ErrConflict, q.info.Name)
			}
			return q.scaleTo(next.Spec.Replicas)(current)
		}, nil)
	default:
		q.methodNotSupported()
	}
}

func (q *request) scaleTo(replicas int32) func(runtime.Object) (runtime.Object, error) {
	return func(current runtime.Object) (runtime.Object, error) {
		if err := q.res.SetReplicas(current, replicas); err != nil {
			return nil, apierrors.NewInternalError(err)
		}
		return current, nil
	}
}

// serveFinalize sets a namespace's spec.finalizers (the namespace controller's last step).
func (q *request) serveFinalize() {
	body, err := q.readBody()
	if err != nil {
		q.fail(err)
		return
	}
	ns := &corev1.Namespace{}
	if err := decodeRequest(ns, body, q.r.Header.Get("Content-Type"), "Namespace", "v1", validationStrict); err != nil {
		q.fail(err)
		return
	}
	q.applyUpdate(updateFinalize, ns.ResourceVersion, func(current runtime.Object) (runtime.Object, error) {
		cur := current.(*corev1.Namespace)
		cur.Spec.Finalizers = ns.Spec.Finalizers
		return cur, nil
	}, nil)
}

// serveBinding assigns a pod to a node (the scheduler's write), as pods/binding does in Kubernetes.
func (q *request) serveBinding() {
	body, err := q.readBody()
	if err != nil {
		q.fail(err)
		return
	}
	b := &corev1.Binding{}
	if err := decodeRequest(b, body, q.r.Header.Get("Content-Type"), "Binding", "v1", validationStrict); err != nil {
		q.fail(err)
		return
	}
	if b.Name == "" {
		b.Name = q.info.Name
	}
	if b.Name != q.info.Name {
		q.fail(apierrors.NewBadRequest(fmt.Sprintf("the name of the binding (%s) does not match the pod name on the URL (%s)", b.Name, q.info.Name)))
		return
	}
	if b.Target.Kind != "" && b.Target.Kind != "Node" {
		q.fail(apierrors.NewBadRequest(fmt.Sprintf("a binding's target must be a Node, not %q", b.Target.Kind)))
		return
	}
	if b.Target.Name == "" {
		q.fail(apierrors.NewInvalid(schema.GroupKind{Kind: "Binding"}, b.Name, field.ErrorList{field.Required(field.NewPath("target", "name"), "")}))
		return
	}
	q.presentCode = http.StatusCreated
	q.present = func(runtime.Object) (any, error) {
		s := successStatus(nil)
		s.Code = http.StatusCreated
		return s, nil
	}
	precondition := ""
	if b.UID != "" || b.ResourceVersion != "" {
		precondition = b.ResourceVersion
	}
	q.applyUpdate(updateRaw, precondition, func(current runtime.Object) (runtime.Object, error) {
		pod := current.(*corev1.Pod)
		if b.UID != "" && b.UID != pod.UID {
			return nil, apierrors.NewConflict(groupResource("", "pods"), pod.Name, fmt.Errorf("the UID in the binding (%s) does not match the pod's (%s)", b.UID, pod.UID))
		}
		if pod.DeletionTimestamp != nil {
			return nil, apierrors.NewConflict(groupResource("", "pods"), pod.Name, fmt.Errorf("pod %s is being deleted, cannot be assigned to a host", pod.Name))
		}
		if pod.Spec.NodeName != "" {
			return nil, apierrors.NewConflict(groupResource("", "pods"), pod.Name, fmt.Errorf("pod %s is already assigned to node %q", pod.Name, pod.Spec.NodeName))
		}
		pod.Spec.NodeName = b.Target.Name
		for k, v := range b.Annotations {
			if pod.Annotations == nil {
				pod.Annotations = map[string]string{}
			}
			pod.Annotations[k] = v
		}
		setPodCondition(pod, corev1.PodCondition{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.Now()})
		return pod, nil
	}, nil)
}

// setPodCondition adds or replaces a pod condition, keeping the transition time when the status
// does not change.
func setPodCondition(pod *corev1.Pod, c corev1.PodCondition) {
	for i, old := range pod.Status.Conditions {
		if old.Type == c.Type {
			if old.Status == c.Status {
				c.LastTransitionTime = old.LastTransitionTime
			}
			pod.Status.Conditions[i] = c
			return
		}
	}
	pod.Status.Conditions = append(pod.Status.Conditions, c)
}

// serveEviction deletes a pod unless a PodDisruptionBudget forbids it, as policy/v1 Eviction does.
func (q *request) serveEviction() {
	body, err := q.readBody()
	if err != nil {
		q.fail(err)
		return
	}
	ev := &policyv1.Eviction{}
	if err := decodeRequest(ev, body, q.r.Header.Get("Content-Type"), "Eviction", "v1", validationStrict); err != nil {
		q.fail(err)
		return
	}
	if ev.Name != "" && ev.Name != q.info.Name {
		q.fail(apierrors.NewBadRequest("name in URL does not match name in Eviction object"))
		return
	}
	obj, _, err := q.load(q.info.Name)
	if err != nil {
		q.fail(err)
		return
	}
	pod := obj.(*corev1.Pod)
	if err := q.checkDisruptionBudgets(pod); err != nil {
		q.fail(err)
		return
	}
	opts := ev.DeleteOptions
	if opts == nil {
		opts = &metav1.DeleteOptions{}
	}
	if _, _, err := q.h.deleteObject(q, q.info.Name, opts); err != nil {
		q.fail(err)
		return
	}
	s := successStatus(nil)
	s.Code = http.StatusCreated
	writeJSON(q.w, http.StatusCreated, s)
}

// checkDisruptionBudgets refuses an eviction that the pod's budget has no room for and
// otherwise charges it to the budget, as Kubernetes' eviction does: disruptionsAllowed goes
// down by one and the pod is listed in disruptedPods (the disruption controller takes it
// off again once the pod is being deleted, or after two minutes). A pod that is not
// running does not count against a budget.
func (q *request) checkDisruptionBudgets(pod *corev1.Pod) error {
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodPending {
		return nil
	}
	pdbRes, _ := registry.Lookup("policy", "v1", "poddisruptionbudgets")
	for attempt := 0; ; attempt++ {
		sub := &request{h: q.h, w: q.w, r: q.r, info: requestInfo{Namespace: pod.Namespace}, res: pdbRes}
		list, err := q.h.listObjects(sub, collectionPrefix(pdbRes, pod.Namespace), listOptions{sel: selector{labels: labels.Everything(), fields: everythingFields()}})
		if err != nil {
			return err
		}
		var matching []*policyv1.PodDisruptionBudget
		for _, o := range list.items {
			pdb := o.(*policyv1.PodDisruptionBudget)
			sel, err := metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
			if err != nil || sel.Empty() || !sel.Matches(labels.Set(pod.Labels)) {
				continue
			}
			matching = append(matching, pdb)
		}
		switch {
		case len(matching) == 0:
			return nil
		case len(matching) > 1:
			return apierrors.NewInternalError(errors.New("this pod has more than one PodDisruptionBudget, which the eviction subresource does not support"))
		}
		pdb := matching[0]
		if pdb.Status.ObservedGeneration < pdb.Generation || pdb.Status.DisruptionsAllowed <= 0 {
			return &apierrors.StatusError{ErrStatus: metav1.Status{
				Status: metav1.StatusFailure, Code: http.StatusTooManyRequests, Reason: metav1.StatusReasonTooManyRequests,
				Message: "Cannot evict pod as it would violate the pod's disruption budget.",
				Details: &metav1.StatusDetails{Causes: []metav1.StatusCause{{Type: "DisruptionBudget",
					Message: fmt.Sprintf("The disruption budget %s needs %d healthy pods and has %d currently", pdb.Name, pdb.Status.DesiredHealthy, pdb.Status.CurrentHealthy)}}},
			}}
		}
		pdb.Status.DisruptionsAllowed--
		if pdb.Status.DisruptedPods == nil {
			pdb.Status.DisruptedPods = map[string]metav1.Time{}
		}
		pdb.Status.DisruptedPods[pod.Name] = metav1.Now()
		rev, err := strconv.ParseInt(pdb.ResourceVersion, 10, 64)
		if err != nil {
			return apierrors.NewInternalError(err)
		}
		data, err := encodeForStore(pdbRes, pdb)
		if err != nil {
			return apierrors.NewInternalError(err)
		}
		_, err = q.h.store.Update(q.ctx(), objectKey(pdbRes, pdb.Namespace, pdb.Name), data, rev)
		if err == nil {
			return nil
		}
		if !errors.Is(err, storage.ErrConflict) || attempt >= maxConflictRetries {
			return q.storageError(err, pdb.Name)
		}
	}
}

// serveStreaming answers log, exec, attach and port-forward by proxying them to the agent
// of the pod's node (nodeproxy.go): log is a GET; exec, attach and port-forward are
// connections upgraded with GET or POST, as kubectl makes them.
func (q *request) serveStreaming() {
	switch {
	case q.info.Subresource == "log" && q.info.Verb == "get":
	case q.info.Subresource != "log" && (q.info.Verb == "get" || q.info.Verb == "create"):
	default:
		q.methodNotSupported()
		return
	}
	obj, _, err := q.load(q.info.Name)
	if err != nil {
		q.fail(err)
		return
	}
	pod := obj.(*corev1.Pod)
	switch q.info.Subresource {
	case "log":
		q.serveLog(pod)
	case "portforward":
		q.servePortForward(pod)
	default:
		q.serveRemoteCommand(pod)
	}
}
