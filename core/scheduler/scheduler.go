// Package scheduler is berth's scheduler: it watches pending pods and binds each to a node,
// one scheduling cycle at a time and with Kubernetes 1.33's semantics. The queue orders and
// retries pods, the cache (fed by informers) is the picture of nodes and their pods, and
// framework runs a profile's plugins (plugins holds the in-tree ones).
package scheduler

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"

	"berth.dev/berth/core/scheduler/config"
	"berth.dev/berth/core/scheduler/framework"
	"berth.dev/berth/core/scheduler/plugins"
)

// ErrNoNodesAvailable is the failure when the cluster has no node at all, worded as
// Kubernetes words it.
var ErrNoNodesAvailable = errors.New("no nodes available to schedule pods")

// noteLengthLimit is the longest event message the API accepts.
const noteLengthLimit = 1024

// Options tune the scheduler; the zero value runs Kubernetes' default profile.
type Options struct {
	// Log receives the scheduler's messages (slog.Default() by default).
	Log *slog.Logger
	// Config is the parsed configuration file (config.Load): its profiles, their plugins
	// and arguments. Nil runs Profiles instead.
	Config *config.Configuration
	// ExternalPlugins starts the out-of-process plugins Config declares; nil makes a
	// profile that uses one an error.
	ExternalPlugins config.ExternalFactory
	// ExternalHooks, when set, is called once the scheduler is built, with the nodes of
	// the current cycle (to be read only from within plugin calls, which run in the
	// cycle) and a function that sends the pending pods a named plugin rejected back to
	// be scheduled (when the plugin becomes available again, say).
	ExternalHooks func(nodes func() []*framework.NodeInfo, retry func(plugin string))
	// Profiles name profiles to run with the default plugins when Config is nil; pods
	// choose one with spec.schedulerName ("default-scheduler" when empty).
	Profiles []string
	// Scoring is NodeResourcesFit's strategy (LeastAllocated by default) wherever the
	// configuration gives it no arguments.
	Scoring plugins.ScoringStrategy
	// PercentageOfNodesToScore applies when the configuration does not set it; 0 is
	// Kubernetes' adaptive sampling.
	PercentageOfNodesToScore int32
	// AssumedPodTTL is how long after the bind call an unconfirmed binding is trusted (30 s).
	AssumedPodTTL time.Duration
	// Queue tunes backoff and the unschedulable flush.
	Queue QueueOptions
}

// Scheduler binds pending pods to nodes.
type Scheduler struct {
	log       *slog.Logger
	client    kubernetes.Interface
	recorder  record.EventRecorder
	cache     *Cache
	queue     *Queue
	snapshot  *Snapshot
	profiles  map[string]*framework.Framework
	waiting   *framework.WaitingPods
	podLister corelisters.PodLister
	synced    []cache.InformerSynced
	bindings  sync.WaitGroup
}

// New builds a scheduler on the informers of factory (it registers its handlers; the
// caller starts the factory) that binds through client and records events with recorder.
func New(client kubernetes.Interface, factory informers.SharedInformerFactory, recorder record.EventRecorder, o Options) (*Scheduler, error) {
	log := o.Log
	if log == nil {
		log = slog.Default()
	}
	cfg := o.Config
	if cfg == nil {
		cfg = config.Default()
		if len(o.Profiles) > 0 {
			cfg.Profiles = nil
			for _, name := range o.Profiles {
				cfg.Profiles = append(cfg.Profiles, config.Profile{SchedulerName: name})
			}
		}
	}
	if cfg.PercentageOfNodesToScore == 0 {
		// A copy: the caller's configuration stays as it was.
		c := *cfg
		c.PercentageOfNodesToScore = o.PercentageOfNodesToScore
		cfg = &c
	}
	if o.AssumedPodTTL == 0 {
		o.AssumedPodTTL = 30 * time.Second
	}
	s := &Scheduler{
		log:      log,
		client:   client,
		recorder: recorder,
		cache:    NewCache(o.AssumedPodTTL),
		snapshot: NewSnapshot(),
		profiles: map[string]*framework.Framework{},
		waiting:  framework.NewWaitingPods(),
	}
	listers := s.pluginListers(factory)
	scoring := o.Scoring
	profiles, err := cfg.Build(func(name string) plugins.DefaultOptions {
		o := listers
		o.Client = client
		o.Preemption = &preemptionHandle{s: s, profile: name}
		o.Scoring = scoring
		return o
	}, o.ExternalPlugins)
	if err != nil {
		return nil, err
	}
	var less func(a, b *framework.QueuedPodInfo) bool
	for _, p := range profiles {
		if _, dup := s.profiles[p.Name]; dup {
			return nil, fmt.Errorf("profile %q given twice", p.Name)
		}
		fwk, err := framework.New(p, s.waiting)
		if err != nil {
			return nil, err
		}
		s.profiles[p.Name] = fwk
		if less == nil {
			// One queue serves every profile, so they share the first one's QueueSort,
			// as Kubernetes requires.
			less = fwk.Less
		}
	}
	s.queue = NewQueue(less, o.Queue)
	if o.ExternalHooks != nil {
		o.ExternalHooks(s.snapshot.List, func(plugin string) { s.queue.MoveAllToActiveOrBackoff(rejectedBy(plugin)) })
	}
	if err := s.addEventHandlers(factory); err != nil {
		return nil, err
	}
	return s, nil
}

// Queue returns the scheduling queue (tests and benchmarks read its lengths).
func (s *Scheduler) Queue() *Queue { return s.queue }

// Run schedules pods until ctx ends, then waits for the bindings in flight.
func (s *Scheduler) Run(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), s.synced...) {
		return fmt.Errorf("scheduler informers did not sync: %w", context.Cause(ctx))
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(2)
	go func() { defer wg.Done(); s.queue.Run(ctx) }()
	go func() { defer wg.Done(); s.expireAssumed(ctx) }()
	s.log.Info("scheduler started", "profiles", len(s.profiles))
	for {
		err := s.scheduleOne(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, ErrQueueClosed) {
				break
			}
			s.log.Error("scheduling cycle", "err", err)
		}
	}
	s.bindings.Wait()
	return nil
}

// expireAssumed drops assumed pods whose binding was never confirmed.
func (s *Scheduler) expireAssumed(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for _, p := range s.cache.CleanupExpired(now) {
				s.log.Warn("binding never confirmed; pod forgotten", "pod", p.Namespace+"/"+p.Name, "node", p.Spec.NodeName)
			}
		}
	}
}

// scheduleOne runs one scheduling cycle, and starts the pod's binding cycle on success.
func (s *Scheduler) scheduleOne(ctx context.Context) error {
	pi, err := s.queue.Pop(ctx)
	if err != nil {
		return err
	}
	pod := pi.Pod
	fwk := s.profiles[pod.Spec.SchedulerName]
	if fwk == nil || pod.DeletionTimestamp != nil || s.cache.IsAssumed(pod.UID) {
		s.queue.Done(pod.UID)
		return nil
	}
	cycle := s.queue.SchedulingCycle()
	state := framework.NewCycleState()
	s.cache.UpdateSnapshot(s.snapshot)
	start := time.Now()

	if len(s.snapshot.List()) == 0 {
		s.fail(ctx, pi, cycle, corev1.PodReasonUnschedulable, ErrNoNodesAvailable.Error(), false, nil)
		return nil
	}
	// A pod alike to the previous one reuses its filtering and scoring (opportunistic
	// batching, framework/batch.go).
	result, err := fwk.ScheduleInCycle(ctx, state, pod, s.snapshot, cycle, s.snapshot.Changes())
	if err != nil {
		var fit *framework.FitError
		if !errors.As(err, &fit) {
			s.fail(ctx, pi, cycle, corev1.PodReasonSchedulerError, err.Error(), true, nil)
			return nil
		}
		pf, st := fwk.RunPostFilter(ctx, state, pod, fit.Diagnosis.NodeToStatus)
		if !st.IsSuccess() && !st.IsRejected() {
			s.log.Error("preemption failed", "pod", pod.Namespace+"/"+pod.Name, "err", st.AsError())
		}
		fit.Diagnosis.PostFilterMsg = st.Message()
		var nominated *string
		if pf != nil {
			nominated = &pf.NominatedNodeName
		}
		pi.UnschedulablePlugins = fit.Diagnosis.UnschedulablePlugins
		s.fail(ctx, pi, cycle, corev1.PodReasonUnschedulable, fit.Error(), false, nominated)
		return nil
	}
	s.log.Debug("pod placed", "pod", pod.Namespace+"/"+pod.Name, "node", result.SuggestedHost,
		"evaluated", result.EvaluatedNodes, "feasible", result.FeasibleNodes, "took", time.Since(start))

	// Assume: the next cycles see the pod on its node before the API confirms it.
	assumed := pod.DeepCopy()
	assumed.Spec.NodeName = result.SuggestedHost
	if err := s.cache.AssumePod(assumed); err != nil {
		fwk.ForgetBatch()
		s.fail(ctx, pi, cycle, corev1.PodReasonSchedulerError, err.Error(), true, nil)
		return nil
	}
	host := result.SuggestedHost
	if st := fwk.RunReserve(ctx, state, assumed, host); !st.IsSuccess() {
		fwk.ForgetBatch()
		s.cache.ForgetPod(assumed)
		s.failStatus(ctx, pi, cycle, st)
		return nil
	}
	if st := fwk.RunPermit(ctx, state, assumed, host); !st.IsSuccess() && !st.IsWait() {
		fwk.ForgetBatch()
		fwk.RunUnreserve(ctx, state, assumed, host)
		s.cache.ForgetPod(assumed)
		s.failStatus(ctx, pi, cycle, st)
		return nil
	}
	s.bindings.Add(1)
	go func() {
		defer s.bindings.Done()
		s.bind(ctx, fwk, state, pi, assumed, host, cycle)
	}()
	return nil
}

// bind is the binding cycle: wait for Permit, PreBind, Bind, then confirm or undo.
func (s *Scheduler) bind(ctx context.Context, fwk *framework.Framework, state *framework.CycleState, pi *framework.QueuedPodInfo, assumed *corev1.Pod, host string, cycle int64) {
	st := fwk.WaitOnPermit(ctx, assumed)
	if st.IsSuccess() {
		st = fwk.RunPreBind(ctx, state, assumed, host)
	}
	if st.IsSuccess() {
		st = fwk.RunBind(ctx, state, assumed, host)
	}
	if !st.IsSuccess() {
		fwk.RunUnreserve(ctx, state, assumed, host)
		s.cache.ForgetPod(assumed)
		// The room the pod held is free again: pods waiting for room may fit.
		s.queue.MoveAllToActiveOrBackoff(nil)
		if ctx.Err() != nil {
			s.queue.Done(assumed.UID)
			return
		}
		s.failStatus(ctx, pi, cycle, st)
		return
	}
	s.cache.FinishBinding(assumed, time.Now())
	s.queue.Done(assumed.UID)
	s.recorder.Eventf(assumed, corev1.EventTypeNormal, "Scheduled", "Successfully assigned %v/%v to %v", assumed.Namespace, assumed.Name, host)
}

// failStatus reports a failed Reserve, Permit or binding step.
func (s *Scheduler) failStatus(ctx context.Context, pi *framework.QueuedPodInfo, cycle int64, st *framework.Status) {
	if st.IsRejected() {
		s.fail(ctx, pi, cycle, corev1.PodReasonUnschedulable, st.Message(), false, nil)
		return
	}
	s.fail(ctx, pi, cycle, corev1.PodReasonSchedulerError, st.AsError().Error(), true, nil)
}

// fail requeues a pod that could not be scheduled, records a FailedScheduling event and
// sets its PodScheduled condition to False with the reason and message (and the node
// preemption nominated, when it ran).
func (s *Scheduler) fail(ctx context.Context, pi *framework.QueuedPodInfo, cycle int64, reason, msg string, errored bool, nominated *string) {
	pod := pi.Pod
	latest, err := s.podLister.Pods(pod.Namespace).Get(pod.Name)
	if err != nil || latest.UID != pod.UID || latest.Spec.NodeName != "" || latest.DeletionTimestamp != nil {
		// Gone, replaced or bound meanwhile: nothing to retry.
		s.queue.Done(pod.UID)
		return
	}
	pi.PodInfo = &framework.PodInfo{Pod: latest}
	s.queue.AddUnschedulable(pi, cycle, errored)
	s.log.Debug("pod not scheduled", "pod", pod.Namespace+"/"+pod.Name, "reason", reason, "message", msg)

	note := msg
	if len(note) > noteLengthLimit {
		note = note[:noteLengthLimit-3] + "..."
	}
	s.recorder.Eventf(latest, corev1.EventTypeWarning, "FailedScheduling", "%s", note)
	if err := s.setUnschedulable(ctx, latest, reason, msg, nominated); err != nil && ctx.Err() == nil {
		s.log.Error("set PodScheduled condition", "pod", pod.Namespace+"/"+pod.Name, "err", err)
	}
}

// setUnschedulable writes the PodScheduled=False condition unless it already says so.
func (s *Scheduler) setUnschedulable(ctx context.Context, pod *corev1.Pod, reason, msg string, nominated *string) error {
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur := pod
		if cur == nil {
			var err error
			if cur, err = s.client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{}); err != nil {
				return err
			}
		}
		pod = nil // on a conflict, read the pod again
		updated := cur.DeepCopy()
		changed := setCondition(&updated.Status, corev1.PodCondition{
			Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: reason, Message: msg,
		})
		if nominated != nil && updated.Status.NominatedNodeName != *nominated {
			updated.Status.NominatedNodeName = *nominated
			changed = true
		}
		if !changed || updated.Spec.NodeName != "" {
			return nil
		}
		_, err := s.client.CoreV1().Pods(updated.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return err
	})
}

// setCondition sets a condition and reports whether it changed; the transition time moves
// only when the status does, as Kubernetes does.
func setCondition(status *corev1.PodStatus, c corev1.PodCondition) bool {
	now := metav1.Now()
	for i := range status.Conditions {
		old := &status.Conditions[i]
		if old.Type != c.Type {
			continue
		}
		if old.Status == c.Status && old.Reason == c.Reason && old.Message == c.Message {
			return false
		}
		c.LastTransitionTime = old.LastTransitionTime
		if old.Status != c.Status {
			c.LastTransitionTime = now
		}
		c.LastProbeTime = now
		*old = c
		return true
	}
	c.LastTransitionTime = now
	c.LastProbeTime = now
	status.Conditions = append(status.Conditions, c)
	return true
}

// preemptionHandle is what DefaultPreemption sees of the scheduler for one profile.
type preemptionHandle struct {
	s       *Scheduler
	profile string
}

func (h *preemptionHandle) Snapshot() framework.NodeLister { return h.s.snapshot }

func (h *preemptionHandle) RunFilter(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, node *framework.NodeInfo) *framework.Status {
	return h.s.profiles[h.profile].RunFilter(ctx, state, pod, node)
}

func (h *preemptionHandle) RunPreFilterExtensionAddPod(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, add *framework.PodInfo, node *framework.NodeInfo) *framework.Status {
	return h.s.profiles[h.profile].RunPreFilterExtensionAddPod(ctx, state, pod, add, node)
}

func (h *preemptionHandle) RunPreFilterExtensionRemovePod(ctx context.Context, state *framework.CycleState, pod *corev1.Pod, remove *framework.PodInfo, node *framework.NodeInfo) *framework.Status {
	return h.s.profiles[h.profile].RunPreFilterExtensionRemovePod(ctx, state, pod, remove, node)
}

func (h *preemptionHandle) Evict(ctx context.Context, victim, preemptor *corev1.Pod, node string) error {
	uid := victim.UID
	err := h.s.client.CoreV1().Pods(victim.Namespace).Delete(ctx, victim.Name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
	if err != nil {
		return fmt.Errorf("delete pod %s/%s: %w", victim.Namespace, victim.Name, err)
	}
	h.s.recorder.Eventf(victim, corev1.EventTypeNormal, "Preempted", "Preempted by pod %v on node %v", preemptor.UID, node)
	return nil
}
