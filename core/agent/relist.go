package agent

import (
	"context"
	"sort"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// relist lists the runtime's sandboxes and containers every RelistPeriod and wakes the
// worker of every pod whose sandboxes or containers changed (the kubelet's PLEG): CRI
// v1 on containerd 1.6 has no event stream. The first round wakes every pod the runtime
// holds, which is how a restarted agent adopts its pods and removes the orphans.
func (a *Agent) relist(ctx context.Context) {
	tick := time.NewTicker(a.cfg.RelistPeriod)
	defer tick.Stop()
	var last map[string]string
	for {
		if seen, err := a.relistOnce(ctx); err != nil {
			if ctx.Err() == nil {
				a.log.Error("relist runtime", "err", err)
			}
		} else {
			for key, fp := range seen {
				if last[key] != fp {
					a.queue.Add(key)
				}
			}
			for key := range last {
				if _, ok := seen[key]; !ok {
					a.queue.Add(key)
				}
			}
			last = seen
		}
		a.crashBackoff.GC(a.now())
		a.pullBackoff.GC(a.now())
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// relistOnce is a fingerprint (IDs and states) of each pod's runtime objects, by pod key.
func (a *Agent) relistOnce(ctx context.Context) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	sandboxes, err := a.runtime.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil, err
	}
	containers, err := a.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, err
	}
	parts := map[string][]string{}
	add := func(labels map[string]string, item string) {
		ns, name := labels[labelPodNamespace], labels[labelPodName]
		if ns == "" || name == "" {
			return // not a pod of an agent
		}
		key := ns + "/" + name
		parts[key] = append(parts[key], item)
	}
	for _, sb := range sandboxes.Items {
		add(sb.Labels, "s"+sb.Id+sb.State.String())
	}
	for _, c := range containers.Containers {
		add(c.Labels, "c"+c.Id+c.State.String())
	}
	out := make(map[string]string, len(parts))
	for key, items := range parts {
		sort.Strings(items)
		out[key] = strings.Join(items, ",")
	}
	return out, nil
}
