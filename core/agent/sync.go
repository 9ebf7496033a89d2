package agent

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// criTimeout bounds one CRI call; pulls and stops get their own.
const (
	criTimeout  = 30 * time.Second
	pullTimeout = 5 * time.Minute
	// configRetry is how soon a container that could not be created is tried again.
	configRetry = 5 * time.Second
	// orphanGrace is the grace period of containers whose pod is gone from the API (it
	// was force-deleted, or deleted while the agent was down).
	orphanGrace = 2 * time.Second
)

// syncPod makes the runtime match the pod named key, and the pod's status match the
// runtime. It returns how soon it wants to run again (zero: on the next change).
func (a *Agent) syncPod(ctx context.Context, key string) (time.Duration, error) {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return 0, nil // not a key of ours; nothing to retry
	}
	pod, err := a.pods.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		pod = nil
	} else if err != nil {
		return 0, fmt.Errorf("get pod %s: %w", key, err)
	}
	if pod != nil && pod.Spec.NodeName != a.cfg.NodeName {
		pod = nil
	}
	sandboxes, err := a.listSandboxes(ctx, map[string]string{labelPodNamespace: ns, labelPodName: name})
	if err != nil {
		return 0, fmt.Errorf("list sandboxes of pod %s: %w", key, err)
	}
	var mine []*runtimeapi.PodSandbox
	orphans := map[types.UID][]*runtimeapi.PodSandbox{}
	for _, sb := range sandboxes {
		uid := types.UID(sb.Labels[labelPodUID])
		if pod != nil && uid == pod.UID {
			mine = append(mine, sb)
		} else {
			orphans[uid] = append(orphans[uid], sb)
		}
	}
	for uid, sbs := range orphans {
		// An earlier pod of this name, deleted from the API without us.
		a.kill(ctx, key, uid, nil, sbs, orphanGrace)
	}
	if pod == nil {
		if len(orphans) == 0 {
			// Gone from the API and from the runtime: its volumes go too (the kill of an
			// orphan above wakes this key again when it is done).
			a.sweepVolumes(ctx)
		}
		return 0, nil
	}
	if pod.DeletionTimestamp != nil {
		return 0, a.syncDeleted(ctx, key, pod, mine)
	}
	return a.syncLive(ctx, pod, mine)
}

// syncDeleted stops a pod that has a deletionTimestamp and, once its sandboxes are gone,
// confirms the deletion as the kubelet does: a delete with grace period 0.
func (a *Agent) syncDeleted(ctx context.Context, key string, pod *corev1.Pod, sandboxes []*runtimeapi.PodSandbox) error {
	// A pod on its way out is neither restarted for a failed probe nor made ready.
	a.probes.removePod(pod.UID)
	if len(sandboxes) > 0 {
		grace := time.Duration(corev1.DefaultTerminationGracePeriodSeconds) * time.Second
		if pod.DeletionGracePeriodSeconds != nil {
			grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
		}
		a.kill(ctx, key, pod.UID, pod, sandboxes, grace)
		return nil
	}
	if a.isKilling(pod.UID) {
		return nil
	}
	// Its containers are gone: unmount and remove its volumes before the pod object
	// goes, as the kubelet does, so that nothing of a deleted pod is left behind.
	if err := a.tearDownVolumes(ctx, pod.UID); err != nil {
		return fmt.Errorf("pod %s: %w", key, err)
	}
	// Its logs go before the pod object does too: once the pod is gone from the API,
	// nothing of it is left on the node.
	a.removeLogs(pod.Namespace, pod.Name, pod.UID)
	err := a.cfg.Kube.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: new(int64),
		Preconditions:      &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("confirm deletion of pod %s: %w", key, err)
	}
	a.forget(pod.UID, containerNames(pod))
	return nil
}

// sortSandboxes orders a pod's sandboxes newest first: by attempt, then by creation
// time. The attempt decides: a sandbox whose creation failed half-way has no creation
// time, and the next attempt must come after every one the runtime still holds (it
// refuses a name, pod and attempt, that it has reserved).
func sortSandboxes(sandboxes []*runtimeapi.PodSandbox) {
	sort.SliceStable(sandboxes, func(i, j int) bool {
		if ai, aj := sandboxes[i].GetMetadata().GetAttempt(), sandboxes[j].GetMetadata().GetAttempt(); ai != aj {
			return ai > aj
		}
		return sandboxes[i].CreatedAt > sandboxes[j].CreatedAt
	})
}

func containerNames(pod *corev1.Pod) []string {
	var names []string
	for _, c := range pod.Spec.InitContainers {
		names = append(names, c.Name)
	}
	for _, c := range pod.Spec.Containers {
		names = append(names, c.Name)
	}
	return names
}

// syncLive runs a pod that is not being deleted: its sandbox, then its containers in
// order, restarting exited ones as its restartPolicy says, and reports its status.
func (a *Agent) syncLive(ctx context.Context, pod *corev1.Pod, sandboxes []*runtimeapi.PodSandbox) (time.Duration, error) {
	sortSandboxes(sandboxes)
	var sb *runtimeapi.PodSandbox
	if len(sandboxes) > 0 {
		sb = sandboxes[0]
	}
	terminal := pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
	if terminal {
		// A finished pod runs nothing again; its sandbox only holds an IP.
		for _, s := range sandboxes {
			if s.State == runtimeapi.PodSandboxState_SANDBOX_READY {
				if err := a.stopSandbox(ctx, s.Id); err != nil {
					return 0, err
				}
			}
		}
		// Nothing runs in it any more: its volumes go, as the kubelet unmounts those of
		// terminated pods.
		if err := a.tearDownVolumes(ctx, pod.UID); err != nil {
			return 0, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		return 0, nil
	}
	var requeue time.Duration
	later := func(d time.Duration) {
		if d > 0 && (requeue == 0 || d < requeue) {
			requeue = d
		}
	}
	// Volumes first: no sandbox or container starts before every volume is ready. Every
	// sync also brings configMap, secret, downwardAPI and projected files up to date.
	vols, ready, retry, refresh := a.setUpPodVolumes(ctx, pod, sb != nil && sb.State == runtimeapi.PodSandboxState_SANDBOX_READY)
	if refresh {
		later(volumeRefresh)
	}
	if !ready {
		// ContainerCreating, with FailedMount events, until the volumes can be set up.
		var rt *podRuntime
		if sb != nil {
			if r, err := a.podRuntime(ctx, sb.Id); err == nil {
				rt = &r
			}
		}
		if err := a.writeStatus(ctx, pod, rt); err != nil {
			return 0, err
		}
		return retry, nil
	}
	sbConfig := sandboxConfig(pod, 0, podLogDir(a.cfg.DataDir, pod))
	sbConfig.DnsConfig = a.podDNS(pod)
	if sb == nil || sb.State != runtimeapi.PodSandboxState_SANDBOX_READY {
		recreate := true
		if sb != nil && pod.Spec.RestartPolicy == corev1.RestartPolicyNever {
			// Its containers ran and ended with the sandbox: the pod is finished.
			if cs, err := a.listContainers(ctx, sb.Id); err == nil && len(cs) > 0 {
				recreate = false
			}
		}
		if recreate {
			if sb != nil {
				// The pod's network and processes go with its old sandboxes before a new
				// one starts, as the kubelet kills a pod whose sandbox must change. A
				// sandbox whose creation failed half-way (containerd keeps it, not ready,
				// when its clean-up fails) is cleaned up this way too.
				for _, old := range sandboxes {
					if old.State != runtimeapi.PodSandboxState_SANDBOX_READY {
						if err := a.stopSandbox(ctx, old.Id); err != nil {
							a.log.Error("stop old sandbox", "pod", pod.Namespace+"/"+pod.Name, "sandbox", old.Id, "err", err)
						}
					}
				}
				sbConfig.Metadata.Attempt = sb.Metadata.GetAttempt() + 1
			}
			id, err := a.runSandbox(ctx, pod, sbConfig)
			if err != nil {
				a.recorder.Eventf(pod, corev1.EventTypeWarning, "FailedCreatePodSandBox", "Failed to create pod sandbox: %v", err)
				_ = a.writeStatus(ctx, pod, nil)
				return 0, fmt.Errorf("pod %s/%s: %w", pod.Namespace, pod.Name, err)
			}
			for _, old := range sandboxes {
				if err := a.removeSandbox(ctx, old.Id); err != nil {
					a.log.Error("remove old sandbox", "pod", pod.Namespace+"/"+pod.Name, "sandbox", old.Id, "err", err)
				}
			}
			sb = &runtimeapi.PodSandbox{Id: id, Metadata: sbConfig.Metadata, State: runtimeapi.PodSandboxState_SANDBOX_READY}
		}
	} else {
		sbConfig.Metadata.Attempt = sb.Metadata.GetAttempt()
	}

	rt, err := a.podRuntime(ctx, sb.Id)
	if err != nil {
		return 0, err
	}
	if sb.State == runtimeapi.PodSandboxState_SANDBOX_READY {
		net := podNetwork{PodIPs: sandboxIPs(rt.sandbox), HostIP: a.hostIP}
		// Init containers run one at a time, in order, each to success, before the
		// app containers start.
		initialized := true
		for i := range pod.Spec.InitContainers {
			c := &pod.Spec.InitContainers[i]
			history := rt.containers[c.Name]
			if len(history) > 0 && history[0].State == runtimeapi.ContainerState_CONTAINER_EXITED && history[0].ExitCode == 0 {
				a.setWaiting(pod.UID, c.Name, nil)
				continue
			}
			initialized = false
			later(a.syncContainer(ctx, pod, c, sb.Id, sbConfig, history, net, vols))
			break
		}
		if initialized {
			for i := range pod.Spec.Containers {
				c := &pod.Spec.Containers[i]
				later(a.syncContainer(ctx, pod, c, sb.Id, sbConfig, rt.containers[c.Name], net, vols))
			}
		}
		if rt, err = a.podRuntime(ctx, sb.Id); err != nil {
			return 0, err
		}
	}
	if err := a.writeStatus(ctx, pod, &rt); err != nil {
		return 0, err
	}
	return requeue, nil
}

// syncContainer starts c when it has no container yet, or restarts its exited container
// when the restart policy says so and its back-off has passed. It returns how soon it
// wants to look again.
func (a *Agent) syncContainer(ctx context.Context, pod *corev1.Pod, c *corev1.Container, sandboxID string, sbConfig *runtimeapi.PodSandboxConfig, history []*runtimeapi.ContainerStatus, net podNetwork, vols podVolumes) time.Duration {
	if len(history) == 0 {
		return a.startContainer(ctx, pod, c, sandboxID, sbConfig, 0, net, vols)
	}
	latest := history[0]
	switch latest.State {
	case runtimeapi.ContainerState_CONTAINER_RUNNING:
		a.setWaiting(pod.UID, c.Name, nil)
		if kind, failed := a.probes.failed(latest.Id); failed {
			a.killUnhealthy(ctx, pod, c, latest.Id, kind)
		}
		return 0
	case runtimeapi.ContainerState_CONTAINER_CREATED:
		// Created by an earlier run that stopped before starting it.
		return a.runContainer(ctx, pod, c, latest.Id)
	case runtimeapi.ContainerState_CONTAINER_EXITED:
	default:
		return 0
	}
	if !shouldRestart(pod.Spec.RestartPolicy, latest.ExitCode) {
		a.setWaiting(pod.UID, c.Name, nil)
		return 0
	}
	key := string(pod.UID) + "/" + c.Name
	now := a.now()
	if wait := a.crashBackoff.Remaining(key, time.Unix(0, latest.FinishedAt), now); wait > 0 {
		msg := fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)",
			a.crashBackoff.Delay(key), c.Name, pod.Name, pod.Namespace, pod.UID)
		a.setWaiting(pod.UID, c.Name, &waitingState{reason: "CrashLoopBackOff", message: msg})
		a.recorder.Eventf(pod, corev1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s in pod %s_%s(%s)",
			c.Name, pod.Name, pod.Namespace, pod.UID)
		return wait
	}
	a.crashBackoff.Next(key, now)
	after := a.startContainer(ctx, pod, c, sandboxID, sbConfig, latest.GetMetadata().GetAttempt()+1, net, vols)
	// Keep the container that just exited, for lastState and `logs --previous`; older
	// ones go, as the kubelet's container GC would.
	for _, old := range history[1:] {
		cctx, cancel := context.WithTimeout(ctx, criTimeout)
		if _, err := a.runtime.RemoveContainer(cctx, &runtimeapi.RemoveContainerRequest{ContainerId: old.Id}); err != nil {
			a.log.Error("remove dead container", "pod", pod.Namespace+"/"+pod.Name, "container", old.Id, "err", err)
		}
		cancel()
	}
	return after
}

// shouldRestart is the restart policy's verdict on a container that exited with code.
func shouldRestart(policy corev1.RestartPolicy, code int32) bool {
	switch policy {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return code != 0
	}
	return true
}

// startContainer pulls c's image if needed, creates the container and starts it. Failures
// become the container's waiting reason and an event; the returned duration is when to try
// again.
func (a *Agent) startContainer(ctx context.Context, pod *corev1.Pod, c *corev1.Container, sandboxID string, sbConfig *runtimeapi.PodSandboxConfig, attempt uint32, net podNetwork, vols podVolumes) time.Duration {
	image, retry, ok := a.ensureImage(ctx, pod, c, sbConfig)
	if !ok {
		return retry
	}
	cfg, err := containerConfig(pod, c, attempt, image, net, &apiObjects{ctx: ctx, a: a}, vols)
	if err != nil {
		reason := "CreateContainerError"
		var ce *configError
		if errors.As(err, &ce) {
			reason = "CreateContainerConfigError"
		}
		a.setWaiting(pod.UID, c.Name, &waitingState{reason: reason, message: err.Error()})
		a.recorder.Eventf(pod, corev1.EventTypeWarning, "Failed", "Error: %v", err)
		return configRetry
	}
	cctx, cancel := context.WithTimeout(ctx, criTimeout)
	resp, err := a.runtime.CreateContainer(cctx, &runtimeapi.CreateContainerRequest{
		PodSandboxId: sandboxID, Config: cfg, SandboxConfig: sbConfig,
	})
	cancel()
	if err != nil {
		msg := grpcMessage(err)
		a.setWaiting(pod.UID, c.Name, &waitingState{reason: "CreateContainerError", message: msg})
		a.recorder.Eventf(pod, corev1.EventTypeWarning, "Failed", "Error: %s", msg)
		return configRetry
	}
	a.recorder.Eventf(pod, corev1.EventTypeNormal, "Created", "Created container: %s", c.Name)
	return a.runContainer(ctx, pod, c, resp.ContainerId)
}

// runContainer starts a created container.
func (a *Agent) runContainer(ctx context.Context, pod *corev1.Pod, c *corev1.Container, id string) time.Duration {
	cctx, cancel := context.WithTimeout(ctx, criTimeout)
	_, err := a.runtime.StartContainer(cctx, &runtimeapi.StartContainerRequest{ContainerId: id})
	cancel()
	if err != nil {
		msg := grpcMessage(err)
		// The container is left exited (StartError); the restart policy takes it from there.
		a.setWaiting(pod.UID, c.Name, nil)
		a.recorder.Eventf(pod, corev1.EventTypeWarning, "Failed", "Error: %s", msg)
		return 0
	}
	a.setWaiting(pod.UID, c.Name, nil)
	a.recorder.Eventf(pod, corev1.EventTypeNormal, "Started", "Started container %s", c.Name)
	// As the kubelet, the postStart hook holds the pod's worker until it is done; a
	// container whose hook failed is killed and the restart policy takes it from there.
	if err := a.postStart(ctx, pod, c, id); err != nil {
		grace := time.Duration(corev1.DefaultTerminationGracePeriodSeconds) * time.Second
		if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
			grace = max(time.Duration(*g)*time.Second, minKillGrace)
		}
		if err := a.stopContainer(ctx, id, a.preStop(ctx, pod, c.Name, id, grace)); err != nil && ctx.Err() == nil {
			a.log.Error("stop container after its postStart hook failed", "pod", pod.Namespace+"/"+pod.Name, "container", c.Name, "err", err)
		}
	}
	return 0
}

// pullPolicy is c's imagePullPolicy, defaulted as the API server does when it is empty.
func pullPolicy(c *corev1.Container) corev1.PullPolicy {
	if c.ImagePullPolicy != "" {
		return c.ImagePullPolicy
	}
	ref := c.Image
	if i := strings.LastIndex(ref, "@"); i >= 0 {
		return corev1.PullIfNotPresent
	}
	if i := strings.LastIndex(ref, ":"); i < 0 || strings.Contains(ref[i:], "/") || ref[i+1:] == "latest" {
		return corev1.PullAlways
	}
	return corev1.PullIfNotPresent
}

// ensureImage makes c's image present as its pull policy says and returns the image
// reference to create the container from. When it cannot (ErrImagePull, ImagePullBackOff,
// ErrImageNeverPull), it records why and returns when to try again.
func (a *Agent) ensureImage(ctx context.Context, pod *corev1.Pod, c *corev1.Container, sbConfig *runtimeapi.PodSandboxConfig) (string, time.Duration, bool) {
	spec := &runtimeapi.ImageSpec{Image: c.Image, UserSpecifiedImage: c.Image}
	cctx, cancel := context.WithTimeout(ctx, criTimeout)
	st, err := a.images.ImageStatus(cctx, &runtimeapi.ImageStatusRequest{Image: spec})
	cancel()
	present := err == nil && st.Image != nil
	policy := pullPolicy(c)
	switch {
	case present && policy != corev1.PullAlways:
		a.recorder.Eventf(pod, corev1.EventTypeNormal, "Pulled", "Container image %q already present on machine", c.Image)
		return st.Image.Id, 0, true
	case !present && policy == corev1.PullNever:
		msg := fmt.Sprintf("Container image %q is not present with pull policy of Never", c.Image)
		a.setWaiting(pod.UID, c.Name, &waitingState{reason: "ErrImageNeverPull", message: msg})
		a.recorder.Event(pod, corev1.EventTypeWarning, "ErrImageNeverPull", msg)
		return "", configRetry, false
	}
	key := string(pod.UID) + "/" + c.Image
	now := a.now()
	if wait := a.pullBackoff.RemainingSinceLast(key, now); wait > 0 {
		msg := fmt.Sprintf("Back-off pulling image %q", c.Image)
		if w, ok := a.waitingCopy(pod.UID)[c.Name]; ok && w.reason == "ErrImagePull" {
			msg += ": ErrImagePull: " + w.message
		} else if ok && w.reason == "ImagePullBackOff" {
			msg = w.message
		}
		a.setWaiting(pod.UID, c.Name, &waitingState{reason: "ImagePullBackOff", message: msg})
		a.recorder.Eventf(pod, corev1.EventTypeNormal, "BackOff", "Back-off pulling image %q", c.Image)
		return "", wait, false
	}
	a.recorder.Eventf(pod, corev1.EventTypeNormal, "Pulling", "Pulling image %q", c.Image)
	start := a.now()
	cctx, cancel = context.WithTimeout(ctx, pullTimeout)
	resp, err := a.images.PullImage(cctx, &runtimeapi.PullImageRequest{Image: spec, SandboxConfig: sbConfig})
	cancel()
	if err != nil {
		msg := grpcMessage(err)
		delay := a.pullBackoff.Next(key, a.now())
		a.setWaiting(pod.UID, c.Name, &waitingState{reason: "ErrImagePull", message: msg})
		a.recorder.Eventf(pod, corev1.EventTypeWarning, "Failed", "Failed to pull image %q: %s", c.Image, msg)
		a.recorder.Eventf(pod, corev1.EventTypeWarning, "Failed", "Error: ErrImagePull")
		return "", delay, false
	}
	a.pullBackoff.Forget(key)
	a.recorder.Eventf(pod, corev1.EventTypeNormal, "Pulled", "Successfully pulled image %q in %s", c.Image, a.now().Sub(start).Round(time.Millisecond))
	return resp.ImageRef, 0, true
}

// writeStatus computes the pod's status from rt (nil: no sandbox yet) and writes it when
// it changed.
func (a *Agent) writeStatus(ctx context.Context, pod *corev1.Pod, rt *podRuntime) error {
	in := statusInput{pod: pod, waiting: a.waitingCopy(pod.UID), probes: a.probes.resultsOf(pod.UID),
		runtimeName: a.runtimeName, hostIP: a.hostIP, now: a.now()}
	if rt != nil {
		in.rt = *rt
	}
	st := computeStatus(in)
	a.probes.update(pod, &st)
	if apiequality.Semantic.DeepEqual(st, pod.Status) {
		return nil
	}
	updated := pod.DeepCopy()
	updated.Status = st
	_, err := a.cfg.Kube.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, updated, metav1.UpdateOptions{})
	if err != nil {
		return fmt.Errorf("update status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// apiObjects reads ConfigMaps and Secrets for env from the API server.
type apiObjects struct {
	ctx context.Context
	a   *Agent
}

func (o *apiObjects) ConfigMap(namespace, name string) (*corev1.ConfigMap, error) {
	return o.a.cfg.Kube.CoreV1().ConfigMaps(namespace).Get(o.ctx, name, metav1.GetOptions{})
}

func (o *apiObjects) Secret(namespace, name string) (*corev1.Secret, error) {
	return o.a.cfg.Kube.CoreV1().Secrets(namespace).Get(o.ctx, name, metav1.GetOptions{})
}
