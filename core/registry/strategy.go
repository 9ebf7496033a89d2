package registry

import (
	"context"
	"fmt"
	"sort"
	"sync"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	genericapirequest "k8s.io/apiserver/pkg/endpoints/request"
	"k8s.io/apiserver/pkg/registry/rest"
	"k8s.io/apiserver/pkg/warning"

	"k8s.io/kubernetes/pkg/registry/apps/controllerrevision"
	"k8s.io/kubernetes/pkg/registry/apps/daemonset"
	"k8s.io/kubernetes/pkg/registry/apps/deployment"
	"k8s.io/kubernetes/pkg/registry/apps/replicaset"
	"k8s.io/kubernetes/pkg/registry/apps/statefulset"
	"k8s.io/kubernetes/pkg/registry/autoscaling/horizontalpodautoscaler"
	"k8s.io/kubernetes/pkg/registry/batch/cronjob"
	"k8s.io/kubernetes/pkg/registry/batch/job"
	"k8s.io/kubernetes/pkg/registry/coordination/lease"
	"k8s.io/kubernetes/pkg/registry/core/configmap"
	"k8s.io/kubernetes/pkg/registry/core/endpoint"
	"k8s.io/kubernetes/pkg/registry/core/event"
	"k8s.io/kubernetes/pkg/registry/core/limitrange"
	"k8s.io/kubernetes/pkg/registry/core/namespace"
	"k8s.io/kubernetes/pkg/registry/core/node"
	"k8s.io/kubernetes/pkg/registry/core/persistentvolume"
	"k8s.io/kubernetes/pkg/registry/core/persistentvolumeclaim"
	"k8s.io/kubernetes/pkg/registry/core/pod"
	"k8s.io/kubernetes/pkg/registry/core/replicationcontroller"
	"k8s.io/kubernetes/pkg/registry/core/resourcequota"
	"k8s.io/kubernetes/pkg/registry/core/secret"
	"k8s.io/kubernetes/pkg/registry/core/service"
	"k8s.io/kubernetes/pkg/registry/core/serviceaccount"
	"k8s.io/kubernetes/pkg/registry/discovery/endpointslice"
	"k8s.io/kubernetes/pkg/registry/networking/ingress"
	"k8s.io/kubernetes/pkg/registry/networking/ingressclass"
	"k8s.io/kubernetes/pkg/registry/networking/networkpolicy"
	"k8s.io/kubernetes/pkg/registry/policy/poddisruptionbudget"
	"k8s.io/kubernetes/pkg/registry/storage/csidriver"
	"k8s.io/kubernetes/pkg/registry/storage/csinode"
	"k8s.io/kubernetes/pkg/registry/storage/storageclass"
	"k8s.io/kubernetes/pkg/registry/storage/volumeattachment"
)

// attrFunc is the shape of the strategies' GetAttrs: the labels and selectable fields of
// an internal object.
type attrFunc func(runtime.Object) (labels.Set, fields.Set, error)

// kubeRules is how kube-apiserver wires one resource in pkg/registry/<group>/<resource>/storage:
// which strategies its stores use, which AttrFunc its field selectors match against, and
// which table convertor it uses.
type kubeRules struct {
	// strategy is the store's CreateStrategy and UpdateStrategy.
	strategy rest.RESTCreateUpdateStrategy
	// status is the UpdateStrategy of the /status store, nil when there is none.
	status rest.RESTUpdateStrategy
	// subresources are the UpdateStrategies of the other stores that update the object
	// itself through a subresource (namespaces/finalize, pods/ephemeralcontainers ...).
	subresources map[string]rest.RESTUpdateStrategy
	// attrs is the store's AttrFunc; nil means the generic store's default
	// (metadata.name, plus metadata.namespace when namespaced).
	attrs attrFunc
	// selectorAliases are field labels the kind's field label conversion accepts that are
	// not keys of attrs' field set (old or external spellings); used to list them.
	selectorAliases []string
	// defaultTable is true when the store uses rest.NewDefaultTableConvertor rather than
	// the printers (limitranges).
	defaultTable bool
}

// rulesByResource mirrors the storage wiring of kube-apiserver 1.33 for every resource of
// the catalogue (pkg/registry/*/*/storage/storage.go, pkg/registry/events/rest).
var rulesByResource = map[schema.GroupResource]*kubeRules{
	// core
	{Resource: "namespaces"}: {strategy: namespace.Strategy, status: namespace.StatusStrategy, attrs: namespace.GetAttrs,
		subresources: map[string]rest.RESTUpdateStrategy{"finalize": namespace.FinalizeStrategy}},
	{Resource: "pods"}: {strategy: pod.Strategy, status: pod.StatusStrategy, attrs: pod.GetAttrs, selectorAliases: []string{"spec.host", "status.podIPs"},
		subresources: map[string]rest.RESTUpdateStrategy{"ephemeralcontainers": pod.EphemeralContainersStrategy, "resize": pod.ResizeStrategy}},
	{Resource: "nodes"}:                  {strategy: node.Strategy, status: node.StatusStrategy, attrs: node.GetAttrs},
	{Resource: "services"}:               {strategy: service.Strategy, status: service.StatusStrategy, attrs: service.GetAttrs},
	{Resource: "endpoints"}:              {strategy: endpoint.Strategy},
	{Resource: "configmaps"}:             {strategy: configmap.Strategy, attrs: configmap.GetAttrs},
	{Resource: "secrets"}:                {strategy: secret.Strategy, attrs: secret.GetAttrs},
	{Resource: "events"}:                 {strategy: event.Strategy, attrs: event.GetAttrs},
	{Resource: "serviceaccounts"}:        {strategy: serviceaccount.Strategy},
	{Resource: "replicationcontrollers"}: {strategy: replicationcontroller.Strategy, status: replicationcontroller.StatusStrategy, attrs: replicationcontroller.GetAttrs},
	{Resource: "persistentvolumes"}:      {strategy: persistentvolume.Strategy, status: persistentvolume.StatusStrategy, attrs: persistentvolume.GetAttrs},
	{Resource: "persistentvolumeclaims"}: {strategy: persistentvolumeclaim.Strategy, status: persistentvolumeclaim.StatusStrategy, attrs: persistentvolumeclaim.GetAttrs},
	{Resource: "resourcequotas"}:         {strategy: resourcequota.Strategy, status: resourcequota.StatusStrategy},
	{Resource: "limitranges"}:            {strategy: limitrange.Strategy, defaultTable: true},
	// apps
	{Group: "apps", Resource: "deployments"}:         {strategy: deployment.Strategy, status: deployment.StatusStrategy},
	{Group: "apps", Resource: "replicasets"}:         {strategy: replicaset.Strategy, status: replicaset.StatusStrategy, attrs: replicaset.GetAttrs},
	{Group: "apps", Resource: "statefulsets"}:        {strategy: statefulset.Strategy, status: statefulset.StatusStrategy},
	{Group: "apps", Resource: "daemonsets"}:          {strategy: daemonset.Strategy, status: daemonset.StatusStrategy},
	{Group: "apps", Resource: "controllerrevisions"}: {strategy: controllerrevision.Strategy},
	// batch
	{Group: "batch", Resource: "jobs"}:     {strategy: job.Strategy, status: job.StatusStrategy, attrs: job.GetAttrs},
	{Group: "batch", Resource: "cronjobs"}: {strategy: cronjob.Strategy, status: cronjob.StatusStrategy},
	// storage.k8s.io
	{Group: "storage.k8s.io", Resource: "storageclasses"}:    {strategy: storageclass.Strategy},
	{Group: "storage.k8s.io", Resource: "csidrivers"}:        {strategy: csidriver.Strategy},
	{Group: "storage.k8s.io", Resource: "csinodes"}:          {strategy: csinode.Strategy},
	{Group: "storage.k8s.io", Resource: "volumeattachments"}: {strategy: volumeattachment.Strategy, status: volumeattachment.StatusStrategy},
	// coordination.k8s.io
	{Group: "coordination.k8s.io", Resource: "leases"}: {strategy: lease.Strategy},
	// discovery.k8s.io
	{Group: "discovery.k8s.io", Resource: "endpointslices"}: {strategy: endpointslice.Strategy},
	// policy
	{Group: "policy", Resource: "poddisruptionbudgets"}: {strategy: poddisruptionbudget.Strategy, status: poddisruptionbudget.StatusStrategy},
	// events.k8s.io is served by the core event storage (pkg/registry/events/rest): same
	// strategy and field set, with the external field labels of events.k8s.io/v1.
	{Group: "events.k8s.io", Resource: "events"}: {strategy: event.Strategy, attrs: event.GetAttrs, selectorAliases: []string{
		"regarding.kind", "regarding.namespace", "regarding.name", "regarding.uid", "regarding.apiVersion",
		"regarding.resourceVersion", "regarding.fieldPath", "reportingController",
	}},
	// networking.k8s.io
	{Group: "networking.k8s.io", Resource: "ingresses"}:       {strategy: ingress.Strategy, status: ingress.StatusStrategy},
	{Group: "networking.k8s.io", Resource: "ingressclasses"}:  {strategy: ingressclass.Strategy},
	{Group: "networking.k8s.io", Resource: "networkpolicies"}: {strategy: networkpolicy.Strategy},
	// autoscaling
	{Group: "autoscaling", Resource: "horizontalpodautoscalers"}: {strategy: horizontalpodautoscaler.Strategy, status: horizontalpodautoscaler.StatusStrategy},
}

// rules returns r's wiring. init checks that every catalogue entry has one; the fallback
// only serves Resources built outside the catalogue.
func (r *Resource) rules() *kubeRules {
	if k, ok := rulesByResource[r.GVR().GroupResource()]; ok {
		return k
	}
	return &kubeRules{}
}

// requestContext builds the context kube-apiserver hands its strategies: the request's
// namespace and RequestInfo (some strategies read the group/version from it, e.g.
// deployments keep spec.selector immutable only for apps/v1).
func (r *Resource) requestContext(verb, subresource string, obj runtime.Object) context.Context {
	ctx := context.Background()
	info := &genericapirequest.RequestInfo{
		IsResourceRequest: true,
		Verb:              verb,
		APIPrefix:         "apis",
		APIGroup:          r.Group,
		APIVersion:        r.Version,
		Resource:          r.Resource,
		Subresource:       subresource,
	}
	if r.Group == "" {
		info.APIPrefix = "api"
	}
	if m, err := meta.Accessor(obj); err == nil {
		info.Name = m.GetName()
		if r.Namespaced {
			info.Namespace = m.GetNamespace()
		}
	}
	ctx = genericapirequest.WithNamespace(ctx, info.Namespace)
	return genericapirequest.WithRequestInfo(ctx, info)
}

// PrepareForCreate does on an external object what kube-apiserver's store does before
// validating a create: it sets uid and creationTimestamp (FillObjectMetaSystemFields,
// overwriting what the request sent), generates the name from generateName when name is
// empty, then runs the strategy's PrepareForCreate (status reset, generation 1, pod phase
// Pending and QoS class, namespace phase Active and "kubernetes" finalizer, job selector
// and labels from the uid, dropping fields of disabled features ...). The result is
// defaulted again, as kube-apiserver's answer is (it defaults what it reads back from
// etcd), so e.g. a PVC shows phase Pending. Call it after Default and before
// ValidateCreate. A conversion failure leaves obj unchanged; ValidateCreate reports it.
func (r *Resource) PrepareForCreate(obj runtime.Object) {
	s := r.rules().strategy
	if s == nil {
		return
	}
	in, err := r.toInternal(obj)
	if err != nil {
		return
	}
	m, err := meta.Accessor(in)
	if err != nil {
		return
	}
	rest.FillObjectMetaSystemFields(m)
	if len(m.GetGenerateName()) > 0 && len(m.GetName()) == 0 {
		m.SetName(s.GenerateName(m.GetGenerateName()))
	}
	s.PrepareForCreate(r.requestContext("create", "", in), in)
	r.writeBack(obj, in)
}

// PrepareForUpdate does on an external object what kube-apiserver does before validating
// an update through the main endpoint (rest.BeforeUpdate): generation is taken from old,
// then the strategy's PrepareForUpdate keeps old's status (for kinds with a status
// subresource) and bumps generation when the spec changed (deployments: also the
// annotations); an empty uid is taken from old, and creationTimestamp, deletionTimestamp
// and deletionGracePeriodSeconds are old's. The result is defaulted
// as in PrepareForCreate. The caller still handles resourceVersion (see
// AllowUnconditionalUpdate) and the request's namespace.
func (r *Resource) PrepareForUpdate(obj, old runtime.Object) {
	r.prepareForUpdate(r.rules().strategy, "", obj, old)
}

// PrepareForStatusUpdate is PrepareForUpdate for the /status subresource: the status
// strategy keeps old's spec (and what else of old it keeps, e.g. deployments keep their
// labels), so only status changes. It does nothing for resources without /status.
func (r *Resource) PrepareForStatusUpdate(obj, old runtime.Object) {
	r.PrepareForSubresourceUpdate("status", obj, old)
}

// UpdateSubresources returns, sorted, the subresources other than status through which
// kube-apiserver updates r's object itself (the body is the whole object):
// namespaces/finalize, pods/ephemeralcontainers and pods/resize.
func (r *Resource) UpdateSubresources() []string {
	var out []string
	for name := range r.rules().subresources {
		out = append(out, name)
	}
	sort.Strings(out)
	return out
}

// PrepareForSubresourceUpdate is PrepareForUpdate for one of UpdateSubresources (or
// "status"), with that store's strategy: e.g. namespaces/finalize changes only
// spec.finalizers. It does nothing for an unknown subresource.
func (r *Resource) PrepareForSubresourceUpdate(subresource string, obj, old runtime.Object) {
	r.prepareForUpdate(r.subresourceStrategy(subresource), subresource, obj, old)
}

// subresourceStrategy returns the update strategy of r's subresource, nil when r has none.
func (r *Resource) subresourceStrategy(subresource string) rest.RESTUpdateStrategy {
	if subresource == "status" {
		return r.rules().status
	}
	return r.rules().subresources[subresource]
}

func (r *Resource) prepareForUpdate(s rest.RESTUpdateStrategy, subresource string, obj, old runtime.Object) {
	if s == nil {
		return
	}
	in, err := r.toInternal(obj)
	if err != nil {
		return
	}
	oldIn, err := r.toInternal(old)
	if err != nil {
		return
	}
	objMeta, err := meta.Accessor(in)
	if err != nil {
		return
	}
	oldMeta, err := meta.Accessor(oldIn)
	if err != nil {
		return
	}
	// The order and the checks are rest.BeforeUpdate's.
	objMeta.SetGeneration(oldMeta.GetGeneration())
	s.PrepareForUpdate(r.requestContext("update", subresource, obj), in, oldIn)
	if len(objMeta.GetUID()) == 0 {
		objMeta.SetUID(oldMeta.GetUID())
	}
	if t := oldMeta.GetCreationTimestamp(); !t.IsZero() {
		objMeta.SetCreationTimestamp(t)
	}
	if !oldMeta.GetDeletionTimestamp().IsZero() {
		objMeta.SetDeletionTimestamp(oldMeta.GetDeletionTimestamp())
	}
	if oldMeta.GetDeletionGracePeriodSeconds() != nil && objMeta.GetDeletionGracePeriodSeconds() == nil {
		objMeta.SetDeletionGracePeriodSeconds(oldMeta.GetDeletionGracePeriodSeconds())
	}
	r.writeBack(obj, in)
}

// writeBack converts the internal object the strategy prepared back into the caller's
// external object, defaulted as kube-apiserver defaults every object it reads back.
func (r *Resource) writeBack(obj, in runtime.Object) {
	out, err := r.fromInternal(in)
	if err != nil {
		return
	}
	Scheme.Default(out)
	_ = overwrite(obj, out)
}

// AllowUnconditionalUpdate reports whether an update without metadata.resourceVersion is
// accepted (kube then takes the stored object's resourceVersion before validating);
// when false kube answers such an update with 409 Conflict.
func (r *Resource) AllowUnconditionalUpdate() bool {
	s := r.rules().strategy
	return s != nil && s.AllowUnconditionalUpdate()
}

// WarningsOnCreate returns the warnings kube-apiserver sends with a create of obj (for
// example a pod name that is not a DNS label, deprecated fields); call after ValidateCreate passed.
func (r *Resource) WarningsOnCreate(obj runtime.Object) []string {
	s := r.rules().strategy
	if s == nil {
		return nil
	}
	in, err := r.toInternal(obj)
	if err != nil {
		return nil
	}
	ctx, rec := withWarnings(r.requestContext("create", "", obj))
	ws := s.WarningsOnCreate(ctx, in)
	return append(rec.list(), ws...)
}

// WarningsOnUpdate returns the warnings kube-apiserver sends with an update of old to obj
// through the main endpoint; call after ValidateUpdate passed.
func (r *Resource) WarningsOnUpdate(obj, old runtime.Object) []string {
	s := r.rules().strategy
	if s == nil {
		return nil
	}
	in, err := r.toInternal(obj)
	if err != nil {
		return nil
	}
	oldIn, err := r.toInternal(old)
	if err != nil {
		return nil
	}
	ctx, rec := withWarnings(r.requestContext("update", "", obj))
	ws := s.WarningsOnUpdate(ctx, in, oldIn)
	return append(rec.list(), ws...)
}

// warningRecorder collects the warnings that helpers add to the context with
// warning.AddWarning rather than return.
type warningRecorder struct {
	mu sync.Mutex
	ws []string
}

func (w *warningRecorder) AddWarning(agent, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.ws = append(w.ws, text)
}

func (w *warningRecorder) list() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.ws...)
}

func withWarnings(ctx context.Context) (context.Context, *warningRecorder) {
	rec := &warningRecorder{}
	return warning.WithWarningRecorder(ctx, rec), rec
}

func init() {
	// Like the install packages' utilruntime.Must: a catalogue entry without wiring is a
	// programming error that must stop the binary at start, not fail a request later.
	utilruntime.Must(checkRules())
}

// checkRules reports catalogue entries that have no kube wiring or whose kinds are not
// registered in Scheme.
func checkRules() error {
	for _, r := range catalogue {
		if _, ok := rulesByResource[r.GVR().GroupResource()]; !ok {
			return fmt.Errorf("registry: no kube rules for %s", r.GVR())
		}
		for _, kind := range []string{r.Kind, r.Kind + "List"} {
			if !Scheme.Recognizes(r.GVK().GroupVersion().WithKind(kind)) {
				return fmt.Errorf("registry: %s %s is not registered in the scheme", r.GroupVersion(), kind)
			}
		}
	}
	return nil
}

// errNoRules is returned when r has no strategy for the asked operation, e.g. a status
// update of a resource without /status.
func errNoRules(r *Resource) error {
	return fmt.Errorf("registry: no Kubernetes strategy for this operation on %s", r.GVR())
}
