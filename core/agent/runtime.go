package agent

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/cache"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// removeLogs removes the log directory of a pod that is gone, as the kubelet cleans
// /var/log/pods.
func (a *Agent) removeLogs(namespace, name string, uid types.UID) {
	dir := filepath.Join(a.cfg.DataDir, "pods", namespace+"_"+name+"_"+string(uid))
	if err := os.RemoveAll(dir); err != nil {
		a.log.Error("remove pod logs", "dir", dir, "err", err)
	}
}

// grpcMessage is the runtime's own message of a CRI error, without gRPC's decoration, as
// users see it in `kubectl describe pod`.
func grpcMessage(err error) string {
	if s, ok := status.FromError(err); ok {
		return s.Message()
	}
	return err.Error()
}

func (a *Agent) listSandboxes(ctx context.Context, labels map[string]string) ([]*runtimeapi.PodSandbox, error) {
	ctx, cancel := context.WithTimeout(ctx, criTimeout)
	defer cancel()
	resp, err := a.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{
		Filter: &runtimeapi.PodSandboxFilter{LabelSelector: labels},
	})
	if err != nil {
		return nil, err
	}
	return resp.Items, nil
}

func (a *Agent) listContainers(ctx context.Context, sandboxID string) ([]*runtimeapi.Container, error) {
	ctx, cancel := context.WithTimeout(ctx, criTimeout)
	defer cancel()
	resp, err := a.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{
		Filter: &runtimeapi.ContainerFilter{PodSandboxId: sandboxID},
	})
	if err != nil {
		return nil, fmt.Errorf("list containers of sandbox %s: %w", sandboxID, err)
	}
	return resp.Containers, nil
}

// podRuntime reads a sandbox's status and its containers' statuses.
func (a *Agent) podRuntime(ctx context.Context, sandboxID string) (podRuntime, error) {
	rt := podRuntime{containers: map[string][]*runtimeapi.ContainerStatus{}}
	cctx, cancel := context.WithTimeout(ctx, criTimeout)
	sb, err := a.runtime.PodSandboxStatus(cctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sandboxID})
	cancel()
	if err != nil {
		return rt, fmt.Errorf("status of sandbox %s: %w", sandboxID, err)
	}
	rt.sandbox = sb.Status
	containers, err := a.listContainers(ctx, sandboxID)
	if err != nil {
		return rt, err
	}
	for _, c := range containers {
		cctx, cancel := context.WithTimeout(ctx, criTimeout)
		st, err := a.runtime.ContainerStatus(cctx, &runtimeapi.ContainerStatusRequest{ContainerId: c.Id})
		cancel()
		if err != nil {
			return rt, fmt.Errorf("status of container %s: %w", c.Id, err)
		}
		name := st.Status.GetMetadata().GetName()
		rt.containers[name] = append(rt.containers[name], st.Status)
	}
	for _, list := range rt.containers {
		sort.Slice(list, func(i, j int) bool {
			if ai, aj := list[i].GetMetadata().GetAttempt(), list[j].GetMetadata().GetAttempt(); ai != aj {
				return ai > aj
			}
			return list[i].CreatedAt > list[j].CreatedAt
		})
	}
	return rt, nil
}

func (a *Agent) runSandbox(ctx context.Context, pod *corev1.Pod, cfg *runtimeapi.PodSandboxConfig) (string, error) {
	if err := mkdirLog(cfg.LogDirectory); err != nil {
		return "", err
	}
	// Sandbox creation includes the CNI ADD, which can take a while on a busy node.
	ctx, cancel := context.WithTimeout(ctx, 2*criTimeout)
	defer cancel()
	resp, err := a.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return "", fmt.Errorf("run sandbox: %s", grpcMessage(err))
	}
	return resp.PodSandboxId, nil
}

func (a *Agent) stopSandbox(ctx context.Context, id string) error {
	ctx, cancel := context.WithTimeout(ctx, criTimeout)
	defer cancel()
	if _, err := a.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id}); err != nil && !gone(err) {
		return fmt.Errorf("stop sandbox %s: %w", id, err)
	}
	return nil
}

// removeSandbox stops and removes a sandbox with whatever still runs in it.
func (a *Agent) removeSandbox(ctx context.Context, id string) error {
	if err := a.stopSandbox(ctx, id); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, criTimeout)
	defer cancel()
	if _, err := a.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id}); err != nil && !gone(err) {
		return fmt.Errorf("remove sandbox %s: %w", id, err)
	}
	return nil
}

// stopContainer stops one container: SIGTERM, then SIGKILL after grace.
func (a *Agent) stopContainer(ctx context.Context, id string, grace time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, grace+criTimeout)
	defer cancel()
	if _, err := a.runtime.StopContainer(ctx, &runtimeapi.StopContainerRequest{
		ContainerId: id, Timeout: int64(grace / time.Second),
	}); err != nil && !gone(err) {
		return fmt.Errorf("stop container %s: %w", id, err)
	}
	return nil
}

// gone tells whether a runtime's error says the sandbox or container is not there: what
// was to be stopped or removed is, whatever the runtime's idempotence (containerd 1.6.20
// answers NotFound to stopping something removed, which CRI says must succeed).
func gone(err error) bool { return status.Code(err) == codes.NotFound }

func (a *Agent) isKilling(uid types.UID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.terminating[uid]
}

// kill stops the pod with uid in the background, unless that is under way already: its
// running containers get SIGTERM and, after grace, SIGKILL (CRI StopContainer), then its
// sandboxes are stopped and removed. pod is nil for a pod gone from the API (no events
// then). When done, it wakes the pod's worker (key), which confirms the deletion.
func (a *Agent) kill(ctx context.Context, key string, uid types.UID, pod *corev1.Pod, sandboxes []*runtimeapi.PodSandbox, grace time.Duration) {
	a.mu.Lock()
	if a.terminating[uid] {
		a.mu.Unlock()
		return
	}
	a.terminating[uid] = true
	a.mu.Unlock()
	a.killers.Add(1)
	go func() {
		defer a.killers.Done()
		err := a.killSandboxes(ctx, pod, sandboxes, grace)
		a.mu.Lock()
		delete(a.terminating, uid)
		a.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			a.log.Error("stop pod", "pod", key, "uid", uid, "err", err)
			a.queue.AddRateLimited(key)
			return
		}
		if pod == nil {
			a.forget(uid, nil)
			if ns, name, err := cache.SplitMetaNamespaceKey(key); err == nil {
				a.removeLogs(ns, name, uid)
			}
		}
		a.queue.Add(key)
	}()
}

func (a *Agent) killSandboxes(ctx context.Context, pod *corev1.Pod, sandboxes []*runtimeapi.PodSandbox, grace time.Duration) error {
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for _, sb := range sandboxes {
		containers, err := a.listContainers(ctx, sb.Id)
		if err != nil {
			return err
		}
		for _, c := range containers {
			if c.State != runtimeapi.ContainerState_CONTAINER_RUNNING {
				continue
			}
			if pod != nil {
				a.recorder.Eventf(pod, corev1.EventTypeNormal, "Killing", "Stopping container %s", c.GetMetadata().GetName())
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				// The preStop hook runs within the grace period; what it leaves is the
				// container's to stop in.
				left := a.preStop(ctx, pod, c.GetMetadata().GetName(), c.Id, grace)
				cctx, cancel := context.WithTimeout(ctx, left+criTimeout)
				defer cancel()
				_, err := a.runtime.StopContainer(cctx, &runtimeapi.StopContainerRequest{
					ContainerId: c.Id, Timeout: int64(left / time.Second),
				})
				if err != nil && !gone(err) {
					select {
					case errs <- fmt.Errorf("stop container %s: %w", c.Id, err):
					default:
					}
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	for _, sb := range sandboxes {
		if err := a.removeSandbox(ctx, sb.Id); err != nil {
			return err
		}
	}
	return nil
}
