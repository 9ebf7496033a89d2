package agent

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
)

// probeKind is which of a container's three probes a worker runs.
type probeKind int

const (
	readinessProbe probeKind = iota
	livenessProbe
	startupProbe
)

var probeKinds = []probeKind{readinessProbe, livenessProbe, startupProbe}

// String is the kind as the kubelet's events spell it ("Liveness probe failed: ...").
func (k probeKind) String() string {
	switch k {
	case livenessProbe:
		return "Liveness"
	case startupProbe:
		return "Startup"
	}
	return "Readiness"
}

func (k probeKind) spec(c *corev1.Container) *corev1.Probe {
	switch k {
	case livenessProbe:
		return c.LivenessProbe
	case startupProbe:
		return c.StartupProbe
	}
	return c.ReadinessProbe
}

// initial is a kind's standing result for a container not probed yet: not ready, alive,
// not started.
func (k probeKind) initial() probeResult {
	switch k {
	case livenessProbe:
		return probeSuccess
	case startupProbe:
		return probeUnknown
	}
	return probeFailure
}

// maxProbeRetries is how often a probe that cannot be run at all (an error, not a
// failure) is tried again before it counts as failed, as in the kubelet.
const maxProbeRetries = 3

// minKillGrace is the least grace period a container killed for a failed probe gets.
const minKillGrace = 2 * time.Second

// containerProbes are the standing results of one container's probes.
type containerProbes struct{ readiness, liveness, startup probeResult }

func (r *containerProbes) get(k probeKind) probeResult {
	switch k {
	case livenessProbe:
		return r.liveness
	case startupProbe:
		return r.startup
	}
	return r.readiness
}

func (r *containerProbes) set(k probeKind, v probeResult) {
	switch k {
	case livenessProbe:
		r.liveness = v
	case startupProbe:
		r.startup = v
	default:
		r.readiness = v
	}
}

// proberConfig is what the prober needs from the agent; tests put fakes in.
type proberConfig struct {
	clock clock.WithTicker
	// run runs one probe handler (probeHandlers.run).
	run func(ctx context.Context, h *corev1.ProbeHandler, timeout time.Duration, t probeTarget) (probeResult, string, error)
	// event records an event on a container of a pod.
	event func(pod *corev1.Pod, c *corev1.Container, eventType, reason, message string)
	// wake asks the pod worker to sync the pod (namespace/name) because a result changed.
	wake func(key string)
}

// prober runs one worker goroutine per probe per container, as the kubelet's probe
// manager does, and keeps the probes' standing results by container ID. The pod worker
// hands it each pod's status (update) and reads the results back: readiness and startup
// into the status, liveness and startup failures as a reason to kill the container.
type prober struct {
	cfg    proberConfig
	ctx    context.Context
	cancel context.CancelFunc
	start  time.Time
	wg     sync.WaitGroup

	mu      sync.Mutex
	pods    map[types.UID]map[workerKey]*probeWorker
	results map[string]*containerProbes // by runtime container ID
	killing map[string]bool             // containers being stopped for a failed probe
}

type workerKey struct {
	container string
	kind      probeKind
}

func newProber(ctx context.Context, cfg proberConfig) *prober {
	ctx, cancel := context.WithCancel(ctx)
	return &prober{
		cfg: cfg, ctx: ctx, cancel: cancel, start: cfg.clock.Now(),
		pods:    map[types.UID]map[workerKey]*probeWorker{},
		results: map[string]*containerProbes{},
		killing: map[string]bool{},
	}
}

// stop ends every worker and waits for them.
func (p *prober) stop() {
	if p == nil {
		return
	}
	p.cancel()
	p.wg.Wait()
}

// update hands the prober the status just computed for pod: it starts the workers of
// containers with probes that have none yet, gives every worker of the pod the new
// status, and, as the kubelet does, asks a readiness probe that has not succeeded to run
// now rather than at its next period.
func (p *prober) update(pod *corev1.Pod, st *corev1.PodStatus) {
	if p == nil {
		return
	}
	terminal := st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed
	p.mu.Lock()
	defer p.mu.Unlock()
	workers := p.pods[pod.UID]
	if workers == nil && !terminal {
		for i := range pod.Spec.Containers {
			c := &pod.Spec.Containers[i]
			for _, k := range probeKinds {
				if k.spec(c) == nil {
					continue
				}
				if workers == nil {
					workers = map[workerKey]*probeWorker{}
					p.pods[pod.UID] = workers
				}
				w := newProbeWorker(p, pod, c, k)
				workers[workerKey{c.Name, k}] = w
				p.wg.Add(1)
				go w.run()
			}
		}
	}
	for _, w := range workers {
		w.pod, w.status = pod, st.DeepCopy()
		if w.kind == readinessProbe && w.containerID != "" && p.resultLocked(w.containerID, readinessProbe) != probeSuccess {
			select {
			case w.trigger <- struct{}{}:
			default:
			}
		}
	}
}

// removePod stops the workers of a pod that is gone or going, and drops their results.
func (p *prober) removePod(uid types.UID) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, w := range p.pods[uid] {
		close(w.stopCh)
		if w.containerID != "" {
			delete(p.results, w.containerID)
		}
	}
	delete(p.pods, uid)
}

// resultsOf are the standing results of pod's containers, by container ID, for its status.
func (p *prober) resultsOf(uid types.UID) map[string]containerProbes {
	if p == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]containerProbes{}
	for _, w := range p.pods[uid] {
		if r, ok := p.results[w.containerID]; ok && w.containerID != "" {
			out[w.containerID] = *r
		}
	}
	return out
}

// failed tells whether container id failed its liveness or startup probe, and which.
func (p *prober) failed(id string) (probeKind, bool) {
	if p == nil {
		return 0, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.results[id]
	switch {
	case !ok:
		return 0, false
	case r.liveness == probeFailure:
		return livenessProbe, true
	case r.startup == probeFailure:
		return startupProbe, true
	}
	return 0, false
}

func (p *prober) resultLocked(id string, k probeKind) probeResult {
	if r, ok := p.results[id]; ok {
		return r.get(k)
	}
	return probeUnknown
}

// setResult records a standing result; it tells whether it changed.
func (p *prober) setResult(id string, k probeKind, v probeResult) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	r, ok := p.results[id]
	if !ok {
		r = &containerProbes{}
		p.results[id] = r
	}
	changed := r.get(k) != v
	r.set(k, v)
	return changed
}

// beginKill marks container id as being stopped for a failed probe; false when it
// already is.
func (p *prober) beginKill(id string) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.killing[id] {
		return false
	}
	p.killing[id] = true
	return true
}

func (p *prober) endKill(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.killing, id)
}

// probeWorker runs one probe of one container, every periodSeconds, for as long as the
// pod runs, following the container across restarts.
type probeWorker struct {
	p         *prober
	kind      probeKind
	spec      *corev1.Probe
	container *corev1.Container
	podKey    string
	stopCh    chan struct{} // closed by removePod
	trigger   chan struct{} // a probe now, please

	// Guarded by p.mu: the pod and its last computed status, and the container the
	// results are for.
	pod         *corev1.Pod
	status      *corev1.PodStatus
	containerID string

	// Owned by the worker's goroutine.
	lastResult probeResult
	resultRun  int
	// onHold stops probing a container that failed its liveness probe, or whose startup
	// probe decided, until the container is replaced.
	onHold bool
}

func newProbeWorker(p *prober, pod *corev1.Pod, c *corev1.Container, k probeKind) *probeWorker {
	spec := k.spec(c).DeepCopy()
	// The API server defaults these; a pod from elsewhere (a test) may lack them.
	if spec.PeriodSeconds <= 0 {
		spec.PeriodSeconds = 10
	}
	if spec.TimeoutSeconds <= 0 {
		spec.TimeoutSeconds = 1
	}
	if spec.SuccessThreshold <= 0 {
		spec.SuccessThreshold = 1
	}
	if spec.FailureThreshold <= 0 {
		spec.FailureThreshold = 3
	}
	return &probeWorker{
		p: p, kind: k, spec: spec, container: c.DeepCopy(),
		podKey: pod.Namespace + "/" + pod.Name,
		stopCh: make(chan struct{}), trigger: make(chan struct{}, 1),
		pod: pod,
	}
}

func (w *probeWorker) period() time.Duration {
	return time.Duration(w.spec.PeriodSeconds) * time.Second
}

func (w *probeWorker) run() {
	defer w.p.wg.Done()
	clk := w.p.cfg.clock
	// Right after the agent starts, spread the probes of the pods it adopts over a
	// period instead of running them all at once.
	if period := w.period(); clk.Since(w.p.start) < period {
		select {
		case <-clk.After(time.Duration(rand.Float64() * float64(period))):
		case <-w.stopCh:
			return
		case <-w.p.ctx.Done():
			return
		}
	}
	ticker := clk.NewTicker(w.period())
	defer ticker.Stop()
	for w.probeOnce(w.p.ctx) {
		select {
		case <-ticker.C():
		case <-w.trigger:
		case <-w.stopCh:
			return
		case <-w.p.ctx.Done():
			return
		}
	}
}

// probeOnce is one round of the worker, the kubelet's doProbe: it returns false when the
// worker is done (the pod finished, or a container that will not restart ended).
func (w *probeWorker) probeOnce(ctx context.Context) bool {
	p := w.p
	p.mu.Lock()
	pod, st := w.pod, w.status
	p.mu.Unlock()
	if st == nil {
		return true // no status yet
	}
	if st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed {
		return false
	}
	var cs *corev1.ContainerStatus
	for i := range st.ContainerStatuses {
		if st.ContainerStatuses[i].Name == w.container.Name {
			cs = &st.ContainerStatuses[i]
		}
	}
	if cs == nil || cs.ContainerID == "" {
		return true // not created yet
	}
	id := cs.ContainerID
	if i := strings.Index(id, "://"); i >= 0 {
		id = id[i+3:]
	}
	p.mu.Lock()
	old := w.containerID
	if old != id {
		w.containerID = id
	}
	p.mu.Unlock()
	if old != id {
		// A new container: start from the kind's initial result.
		if old != "" {
			p.mu.Lock()
			if r, ok := p.results[old]; ok {
				r.set(w.kind, probeUnknown)
				if *r == (containerProbes{}) {
					delete(p.results, old)
				}
			}
			p.mu.Unlock()
		}
		p.setResult(id, w.kind, w.kind.initial())
		w.onHold = false
	}
	if w.onHold {
		return true
	}
	if cs.State.Running == nil {
		p.setResult(id, w.kind, probeFailure)
		// Keep going while the container may come back.
		return cs.State.Terminated == nil || pod.Spec.RestartPolicy != corev1.RestartPolicyNever
	}
	if pod.DeletionTimestamp != nil && w.kind != readinessProbe {
		// A pod on its way out is not killed for a failed probe.
		p.setResult(id, w.kind, probeSuccess)
		return false
	}
	if int32(p.cfg.clock.Since(cs.State.Running.StartedAt.Time)/time.Second) < w.spec.InitialDelaySeconds {
		return true
	}
	started := cs.Started != nil && *cs.Started
	if started == (w.kind == startupProbe) {
		// Startup probes run until the container started; the others only after.
		return true
	}

	result := w.probe(ctx, pod, id, st.PodIP)
	if w.lastResult == result {
		w.resultRun++
	} else {
		w.lastResult, w.resultRun = result, 1
	}
	if (result == probeFailure && w.resultRun < int(w.spec.FailureThreshold)) ||
		(result == probeSuccess && w.resultRun < int(w.spec.SuccessThreshold)) {
		return true
	}
	if p.setResult(id, w.kind, result) && p.cfg.wake != nil {
		p.cfg.wake(w.podKey)
	}
	if (w.kind == livenessProbe && result == probeFailure) || w.kind == startupProbe {
		w.onHold = true
		w.resultRun = 0
	}
	return true
}

// probe runs the handler, retrying a probe that could not run, and records an Unhealthy
// event for a failure. An error counts as a failure.
func (w *probeWorker) probe(ctx context.Context, pod *corev1.Pod, id, podIP string) probeResult {
	timeout := time.Duration(w.spec.TimeoutSeconds) * time.Second
	target := probeTarget{containerID: id, container: w.container, host: podIP}
	var (
		result probeResult
		output string
		err    error
	)
	for range maxProbeRetries {
		result, output, err = w.p.cfg.run(ctx, &w.spec.ProbeHandler, timeout, target)
		if err == nil || ctx.Err() != nil {
			break
		}
	}
	event := w.p.cfg.event
	if event == nil {
		event = func(*corev1.Pod, *corev1.Container, string, string, string) {}
	}
	switch {
	case ctx.Err() != nil:
		return probeUnknown // the agent is stopping: no verdict
	case err != nil:
		event(pod, w.container, corev1.EventTypeWarning, "Unhealthy",
			fmt.Sprintf("%s probe errored and resulted in %s state: %v", w.kind, probeFailure, err))
		return probeFailure
	case result == probeFailure:
		event(pod, w.container, corev1.EventTypeWarning, "Unhealthy", fmt.Sprintf("%s probe failed: %s", w.kind, output))
		return probeFailure
	case result == probeSuccess:
		return probeSuccess
	}
	return probeFailure
}

// containerRef is a container of pod as an event's object, as the kubelet refers to it.
func containerRef(pod *corev1.Pod, c *corev1.Container) *corev1.ObjectReference {
	return &corev1.ObjectReference{
		Kind: "Pod", APIVersion: "v1", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID,
		ResourceVersion: pod.ResourceVersion, FieldPath: fmt.Sprintf("spec.containers{%s}", c.Name),
	}
}

// killUnhealthy stops container id of pod, which failed its liveness or startup probe,
// in the background; the restart policy then decides, on the pod's next sync, whether
// it runs again. It is the kubelet's kill for a failed probe: a Killing event, and the
// probe's terminationGracePeriodSeconds when it has one, else the pod's.
func (a *Agent) killUnhealthy(ctx context.Context, pod *corev1.Pod, c *corev1.Container, id string, kind probeKind) {
	if !a.probes.beginKill(id) {
		return
	}
	msg := fmt.Sprintf("Container %s failed %s probe", c.Name, strings.ToLower(kind.String()))
	if pod.Spec.RestartPolicy != corev1.RestartPolicyNever {
		msg += ", will be restarted"
	}
	a.recorder.Event(containerRef(pod, c), corev1.EventTypeNormal, "Killing", msg)
	grace := time.Duration(corev1.DefaultTerminationGracePeriodSeconds) * time.Second
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*pod.Spec.TerminationGracePeriodSeconds) * time.Second
	}
	if spec := kind.spec(c); spec != nil && spec.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	}
	grace = max(grace, minKillGrace)
	key := pod.Namespace + "/" + pod.Name
	a.killers.Add(1)
	go func() {
		defer a.killers.Done()
		defer a.probes.endKill(id)
		left := a.preStop(ctx, pod, c.Name, id, grace)
		if err := a.stopContainer(ctx, id, left); err != nil && ctx.Err() == nil {
			a.log.Error("stop unhealthy container", "pod", key, "container", c.Name, "err", err)
		}
		if ctx.Err() == nil {
			a.queue.Add(key)
		}
	}()
}
