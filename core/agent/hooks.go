package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// hookRunner runs containers' postStart and preStop hooks (exec, httpGet, sleep), with
// the probes' handlers: a hook is a probe that runs once and whose failure is an event.
type hookRunner struct {
	handlers *probeHandlers
	// sleep waits d or until ctx ends (time.Sleep in production; tests shorten it).
	sleep func(ctx context.Context, d time.Duration)
}

func newHookRunner(exec execSyncer) *hookRunner {
	return &hookRunner{handlers: newProbeHandlers(exec), sleep: sleepCtx}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// run runs hook h of container c (runtime ID id) of pod, within timeout, and returns
// nil or an error worded as the kubelet's hook failure messages, naming the hook, the
// container and the pod.
func (r *hookRunner) run(ctx context.Context, pod *corev1.Pod, c *corev1.Container, id string, h *corev1.LifecycleHandler, timeout time.Duration) error {
	t := probeTarget{containerID: id, container: c, host: pod.Status.PodIP}
	if pod.Spec.HostNetwork && pod.Status.HostIP != "" {
		t.host = pod.Status.HostIP
	}
	podName := fmt.Sprintf("%s_%s(%s)", pod.Name, pod.Namespace, pod.UID)
	switch {
	case h.Exec != nil:
		result, out, err := r.handlers.runExec(ctx, h.Exec, timeout, t)
		if err == nil && result != probeSuccess {
			err = fmt.Errorf("command '%s' failed", strings.Join(h.Exec.Command, " "))
		}
		if err != nil {
			return fmt.Errorf("Exec lifecycle hook (%v) for Container %q in Pod %q failed - error: %v, message: %q", h.Exec.Command, c.Name, podName, err, out) //nolint:staticcheck // the kubelet's wording
		}
	case h.HTTPGet != nil:
		result, out, err := r.handlers.runHTTP(ctx, h.HTTPGet, timeout, t)
		if err == nil && result != probeSuccess {
			err = errors.New(out)
		}
		if err != nil {
			return fmt.Errorf("HTTP lifecycle hook (%s) for Container %q in Pod %q failed - error: %v", h.HTTPGet.Path, c.Name, podName, err) //nolint:staticcheck // the kubelet's wording
		}
	case h.Sleep != nil:
		d := time.Duration(h.Sleep.Seconds) * time.Second
		if d > timeout {
			d = timeout
		}
		r.sleep(ctx, d)
	case h.TCPSocket != nil:
		// Kept in the API for old objects only; the kubelet does not run it either.
	default:
		return fmt.Errorf("cannot run handler: lifecycle hook of container %q in pod %q has no action", c.Name, podName)
	}
	return nil
}

// preStop runs the preStop hook of the container named name, if it has one, within
// grace, and returns the grace left for stopping the container. A failed hook is a
// FailedPreStopHook event; the container is stopped all the same.
func (a *Agent) preStop(ctx context.Context, pod *corev1.Pod, name, id string, grace time.Duration) time.Duration {
	if pod == nil {
		return grace
	}
	c := specContainer(pod, name)
	if c == nil || c.Lifecycle == nil || c.Lifecycle.PreStop == nil {
		return grace
	}
	start := time.Now()
	hctx, cancel := context.WithTimeout(ctx, grace)
	defer cancel()
	if err := a.hooks.run(hctx, pod, c, id, c.Lifecycle.PreStop, grace); err != nil {
		a.recorder.Event(containerRef(pod, c), corev1.EventTypeWarning, "FailedPreStopHook", err.Error())
	}
	// What the hook leaves, but never less than the kubelet's minimum grace period.
	return max(grace-time.Since(start), minKillGrace)
}

// postStart runs the postStart hook of container c, if it has one. A failure is a
// FailedPostStartHook event, and the caller kills the container, as the kubelet does.
func (a *Agent) postStart(ctx context.Context, pod *corev1.Pod, c *corev1.Container, id string) error {
	if c.Lifecycle == nil || c.Lifecycle.PostStart == nil {
		return nil
	}
	// The kubelet gives postStart no deadline of its own; berth bounds it by the pod's
	// grace period so that a hung hook cannot hold the pod's worker for ever.
	timeout := 30 * time.Second
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil && *g > 0 {
		timeout = time.Duration(*g) * time.Second
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	err := a.hooks.run(hctx, pod, c, id, c.Lifecycle.PostStart, timeout)
	if err != nil {
		a.recorder.Event(containerRef(pod, c), corev1.EventTypeWarning, "FailedPostStartHook", err.Error())
	}
	return err
}

// specContainer is the init or app container of pod named name, or nil.
func specContainer(pod *corev1.Pod, name string) *corev1.Container {
	for i := range pod.Spec.Containers {
		if pod.Spec.Containers[i].Name == name {
			return &pod.Spec.Containers[i]
		}
	}
	for i := range pod.Spec.InitContainers {
		if pod.Spec.InitContainers[i].Name == name {
			return &pod.Spec.InitContainers[i]
		}
	}
	return nil
}
