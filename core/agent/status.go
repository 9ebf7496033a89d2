package agent

import (
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// podRuntime is what the runtime holds for one pod: its newest sandbox and, per container
// name, that sandbox's containers, newest attempt first.
type podRuntime struct {
	sandbox    *runtimeapi.PodSandboxStatus
	containers map[string][]*runtimeapi.ContainerStatus
}

// waitingState is why a container is not running when the runtime cannot tell: an image
// that does not pull, a back-off before a restart, a configuration error.
type waitingState struct{ reason, message string }

// statusInput is everything a pod's status is computed from.
type statusInput struct {
	pod *corev1.Pod
	rt  podRuntime
	// waiting holds the agent's reasons, by container name.
	waiting map[string]waitingState
	// probes are the containers' standing probe results, by container ID.
	probes map[string]containerProbes
	// runtimeName prefixes container IDs (containerd://...).
	runtimeName string
	hostIP      string
	now         time.Time
}

// computeStatus is the pod's status as the kubelet would report it from in: phase,
// conditions, container statuses, IPs and start time. Fields the agent does not own
// (QOS class, nominated node, resize) are carried over from the pod's current status.
func computeStatus(in statusInput) corev1.PodStatus {
	old := in.pod.Status
	st := *old.DeepCopy()
	st.InitContainerStatuses = nil
	initialized, initFailed := true, false
	var pendingInit []string
	for i := range in.pod.Spec.InitContainers {
		cs := containerStatus(&in.pod.Spec.InitContainers[i], in)
		// An init container is ready, and done, once it has exited 0.
		done := cs.State.Terminated != nil && cs.State.Terminated.ExitCode == 0
		cs.Ready = done
		if !done {
			initialized = false
			pendingInit = append(pendingInit, cs.Name)
			last := cs.State.Terminated
			if last == nil {
				last = cs.LastTerminationState.Terminated
			}
			if last != nil && last.ExitCode != 0 {
				initFailed = true
			}
		}
		st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
	}
	st.ContainerStatuses = make([]corev1.ContainerStatus, 0, len(in.pod.Spec.Containers))
	for i := range in.pod.Spec.Containers {
		cs := containerStatus(&in.pod.Spec.Containers[i], in)
		if !initialized && cs.State.Waiting != nil && cs.State.Waiting.Reason == "ContainerCreating" {
			cs.State.Waiting.Reason = "PodInitializing"
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}
	switch {
	case old.Phase == corev1.PodSucceeded || old.Phase == corev1.PodFailed:
		st.Phase = old.Phase // terminal phases are final
	case !initialized && initFailed && in.pod.Spec.RestartPolicy == corev1.RestartPolicyNever:
		st.Phase = corev1.PodFailed
	case !initialized:
		st.Phase = corev1.PodPending
	default:
		st.Phase = podPhase(in.pod.Spec.RestartPolicy, st.ContainerStatuses)
	}
	if in.hostIP != "" {
		st.HostIP = in.hostIP
		st.HostIPs = []corev1.HostIP{{IP: in.hostIP}}
	}
	if ips := sandboxIPs(in.rt.sandbox); len(ips) > 0 {
		st.PodIP = ips[0]
		st.PodIPs = nil
		for _, ip := range ips {
			st.PodIPs = append(st.PodIPs, corev1.PodIP{IP: ip})
		}
	}
	if in.pod.Spec.HostNetwork && in.hostIP != "" {
		st.PodIP = in.hostIP
		st.PodIPs = []corev1.PodIP{{IP: in.hostIP}}
	}
	if st.StartTime == nil {
		t := metav1.NewTime(in.now).Rfc3339Copy()
		st.StartTime = &t
	}
	st.Conditions = podConditions(in, st, pendingInit)
	return st
}

func sandboxIPs(sb *runtimeapi.PodSandboxStatus) []string {
	if sb == nil || sb.State != runtimeapi.PodSandboxState_SANDBOX_READY || sb.Network == nil || sb.Network.Ip == "" {
		return nil
	}
	ips := []string{sb.Network.Ip}
	for _, ip := range sb.Network.AdditionalIps {
		if ip.Ip != "" {
			ips = append(ips, ip.Ip)
		}
	}
	return ips
}

func criTime(ns int64) metav1.Time {
	if ns == 0 {
		return metav1.Time{}
	}
	return metav1.NewTime(time.Unix(0, ns)).Rfc3339Copy()
}

func terminated(s *runtimeapi.ContainerStatus, runtimeName string) *corev1.ContainerStateTerminated {
	reason := s.Reason
	if reason == "" {
		reason = "Error"
		if s.ExitCode == 0 {
			reason = "Completed"
		}
	}
	return &corev1.ContainerStateTerminated{
		ExitCode:    s.ExitCode,
		Reason:      reason,
		Message:     s.Message,
		StartedAt:   criTime(s.StartedAt),
		FinishedAt:  criTime(s.FinishedAt),
		ContainerID: runtimeName + "://" + s.Id,
	}
}

// containerStatus is the status of c from its newest runtime container and the agent's
// waiting reason for it.
func containerStatus(c *corev1.Container, in statusInput) corev1.ContainerStatus {
	cs := corev1.ContainerStatus{Name: c.Name, Image: c.Image}
	started := false
	cs.Started = &started
	list := in.rt.containers[c.Name]
	var latest *runtimeapi.ContainerStatus
	if len(list) > 0 {
		latest = list[0]
		cs.RestartCount = int32(latest.GetMetadata().GetAttempt())
		cs.ContainerID = in.runtimeName + "://" + latest.Id
		cs.ImageID = latest.ImageRef
	}
	w, hasWaiting := in.waiting[c.Name]
	switch {
	case latest != nil && latest.State == runtimeapi.ContainerState_CONTAINER_RUNNING:
		cs.State.Running = &corev1.ContainerStateRunning{StartedAt: criTime(latest.StartedAt)}
		// A container with a startup probe has started once the probe succeeded; one
		// with a readiness probe is ready while the probe succeeds.
		r := in.probes[latest.Id]
		started = c.StartupProbe == nil || r.startup == probeSuccess
		cs.Ready = started && (c.ReadinessProbe == nil || r.readiness == probeSuccess)
	case hasWaiting:
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: w.reason, Message: w.message}
		if latest != nil && latest.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			// Waiting to restart: the exited container is the last termination.
			cs.LastTerminationState.Terminated = terminated(latest, in.runtimeName)
			return cs
		}
	case latest == nil || latest.State == runtimeapi.ContainerState_CONTAINER_CREATED:
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
	case latest.State == runtimeapi.ContainerState_CONTAINER_EXITED:
		cs.State.Terminated = terminated(latest, in.runtimeName)
	default:
		cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerStatusUnknown",
			Message: "The container could not be located when the pod was terminated"}
	}
	if len(list) > 1 && list[1].State == runtimeapi.ContainerState_CONTAINER_EXITED {
		cs.LastTerminationState.Terminated = terminated(list[1], in.runtimeName)
	}
	return cs
}

// podPhase is the kubelet's phase rule for a pod without init containers.
func podPhase(policy corev1.RestartPolicy, statuses []corev1.ContainerStatus) corev1.PodPhase {
	var running, waiting, stopped, succeeded int
	for _, cs := range statuses {
		switch {
		case cs.State.Running != nil:
			running++
		case cs.State.Terminated != nil:
			stopped++
			if cs.State.Terminated.ExitCode == 0 {
				succeeded++
			}
		case cs.State.Waiting != nil:
			if cs.LastTerminationState.Terminated != nil {
				stopped++ // ran before and waits to restart
			} else {
				waiting++
			}
		}
	}
	switch {
	case waiting > 0:
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	case stopped > 0:
		if policy == corev1.RestartPolicyAlways {
			return corev1.PodRunning // restarting
		}
		if stopped == succeeded {
			return corev1.PodSucceeded
		}
		if policy == corev1.RestartPolicyNever {
			return corev1.PodFailed
		}
		return corev1.PodRunning
	}
	return corev1.PodPending
}

// podConditions are PodReadyToStartContainers, Initialized, Ready, ContainersReady and
// PodScheduled; a condition keeps its last transition time while its status holds.
func podConditions(in statusInput, st corev1.PodStatus, pendingInit []string) []corev1.PodCondition {
	var unready []string
	for _, cs := range st.ContainerStatuses {
		if !cs.Ready {
			unready = append(unready, cs.Name)
		}
	}
	sort.Strings(unready)
	terminal := st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed
	ready := corev1.PodCondition{Status: corev1.ConditionTrue}
	switch {
	case terminal:
		ready = corev1.PodCondition{Status: corev1.ConditionFalse, Reason: "PodCompleted"}
	case len(unready) > 0:
		ready = corev1.PodCondition{Status: corev1.ConditionFalse, Reason: "ContainersNotReady",
			Message: fmt.Sprintf("containers with unready status: [%s]", strings.Join(unready, " "))}
	}
	sandboxReady := corev1.ConditionFalse
	if in.rt.sandbox != nil && in.rt.sandbox.State == runtimeapi.PodSandboxState_SANDBOX_READY {
		sandboxReady = corev1.ConditionTrue
	}
	initialized := corev1.PodCondition{Status: corev1.ConditionTrue}
	switch {
	case len(pendingInit) > 0:
		initialized = corev1.PodCondition{Status: corev1.ConditionFalse, Reason: "ContainersNotInitialized",
			Message: fmt.Sprintf("containers with incomplete status: [%s]", strings.Join(pendingInit, " "))}
	case terminal:
		initialized.Reason = "PodCompleted"
	}
	want := []corev1.PodCondition{
		{Type: corev1.PodReadyToStartContainers, Status: sandboxReady},
		{Type: corev1.PodInitialized, Status: initialized.Status, Reason: initialized.Reason, Message: initialized.Message},
		{Type: corev1.PodReady, Status: ready.Status, Reason: ready.Reason, Message: ready.Message},
		{Type: corev1.ContainersReady, Status: ready.Status, Reason: ready.Reason, Message: ready.Message},
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
	}
	old := map[corev1.PodConditionType]corev1.PodCondition{}
	for _, c := range in.pod.Status.Conditions {
		old[c.Type] = c
	}
	now := metav1.NewTime(in.now).Rfc3339Copy()
	out := make([]corev1.PodCondition, 0, len(want)+len(old))
	for _, c := range want {
		c.LastTransitionTime = now
		if prev, ok := old[c.Type]; ok {
			if prev.Status == c.Status {
				c.LastTransitionTime = prev.LastTransitionTime
			}
			if c.Type == corev1.PodScheduled {
				c = prev // the scheduler's
			}
			delete(old, c.Type)
		}
		out = append(out, c)
	}
	// Conditions the agent does not own (readiness gates, disruption) stay.
	for _, c := range in.pod.Status.Conditions {
		if _, ok := old[c.Type]; ok {
			out = append(out, c)
		}
	}
	return out
}
