package sim

import (
	"context"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// writableLayerBytes is what each container's writable layer reports using.
const writableLayerBytes = 4096

// statsLocked is c's resource use at now: the figures of its annotations (or the
// defaults) while it runs, CPU time growing at that rate; nothing but the layer once it
// has exited, as a runtime reads nothing from a gone cgroup.
func (r *Runtime) statsLocked(c *container, now time.Time) *runtimeapi.ContainerStats {
	ts := now.UnixNano()
	st := &runtimeapi.ContainerStats{
		Attributes: &runtimeapi.ContainerAttributes{
			Id: c.id, Metadata: c.cfg.Metadata, Labels: copyMap(c.cfg.Labels), Annotations: copyMap(c.cfg.Annotations),
		},
		WritableLayer: &runtimeapi.FilesystemUsage{
			Timestamp:  ts,
			FsId:       &runtimeapi.FilesystemIdentifier{Mountpoint: "/var/lib/berth-sim/containers"},
			UsedBytes:  &runtimeapi.UInt64Value{Value: writableLayerBytes},
			InodesUsed: &runtimeapi.UInt64Value{Value: 1},
		},
	}
	if c.state != runtimeapi.ContainerState_CONTAINER_RUNNING {
		return st
	}
	nanoCores := c.cpuMilli * 1_000_000
	ran := uint64(now.Sub(c.startedAt).Seconds() * float64(nanoCores))
	st.Cpu = &runtimeapi.CpuUsage{
		Timestamp:            ts,
		UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: ran},
		UsageNanoCores:       &runtimeapi.UInt64Value{Value: nanoCores},
	}
	st.Memory = &runtimeapi.MemoryUsage{
		Timestamp:       ts,
		WorkingSetBytes: &runtimeapi.UInt64Value{Value: c.memory},
		UsageBytes:      &runtimeapi.UInt64Value{Value: c.memory},
		RssBytes:        &runtimeapi.UInt64Value{Value: c.memory},
		PageFaults:      &runtimeapi.UInt64Value{},
		MajorPageFaults: &runtimeapi.UInt64Value{},
	}
	if limit := c.resources.GetMemoryLimitInBytes(); limit > 0 && uint64(limit) > c.memory {
		st.Memory.AvailableBytes = &runtimeapi.UInt64Value{Value: uint64(limit) - c.memory}
	}
	return st
}

// ContainerStats reports one container's resource use.
func (r *Runtime) ContainerStats(_ context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, _, ok := lookup(r.containers, req.ContainerId)
	if !ok {
		return nil, notFound("container", req.ContainerId)
	}
	return &runtimeapi.ContainerStatsResponse{Stats: r.statsLocked(c, r.now())}, nil
}

// ListContainerStats reports the resource use of the containers that match the filter.
func (r *Runtime) ListContainerStats(_ context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	f := req.GetFilter()
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	var out []*runtimeapi.ContainerStats
	for _, c := range r.filterContainersLocked(f.GetId(), f.GetPodSandboxId(), f.GetLabelSelector()) {
		out = append(out, r.statsLocked(c, now))
	}
	return &runtimeapi.ListContainerStatsResponse{Stats: out}, nil
}

// sandboxStatsLocked adds up the use of the sandbox's containers.
func (r *Runtime) sandboxStatsLocked(sb *sandbox, now time.Time) *runtimeapi.PodSandboxStats {
	ts := now.UnixNano()
	linux := &runtimeapi.LinuxPodSandboxStats{
		Cpu:     &runtimeapi.CpuUsage{Timestamp: ts, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{}, UsageNanoCores: &runtimeapi.UInt64Value{}},
		Memory:  &runtimeapi.MemoryUsage{Timestamp: ts, WorkingSetBytes: &runtimeapi.UInt64Value{}, UsageBytes: &runtimeapi.UInt64Value{}, RssBytes: &runtimeapi.UInt64Value{}},
		Process: &runtimeapi.ProcessUsage{Timestamp: ts, ProcessCount: &runtimeapi.UInt64Value{}},
	}
	if sb.ip != "" {
		linux.Network = &runtimeapi.NetworkUsage{Timestamp: ts, DefaultInterface: &runtimeapi.NetworkInterfaceUsage{
			Name: "eth0", RxBytes: &runtimeapi.UInt64Value{}, RxErrors: &runtimeapi.UInt64Value{},
			TxBytes: &runtimeapi.UInt64Value{}, TxErrors: &runtimeapi.UInt64Value{},
		}}
	}
	for _, c := range r.containers {
		if c.sandbox != sb {
			continue
		}
		cs := r.statsLocked(c, now)
		linux.Containers = append(linux.Containers, cs)
		if cs.Cpu != nil {
			linux.Cpu.UsageCoreNanoSeconds.Value += cs.Cpu.UsageCoreNanoSeconds.Value
			linux.Cpu.UsageNanoCores.Value += cs.Cpu.UsageNanoCores.Value
			linux.Memory.WorkingSetBytes.Value += cs.Memory.WorkingSetBytes.Value
			linux.Memory.UsageBytes.Value += cs.Memory.UsageBytes.Value
			linux.Memory.RssBytes.Value += cs.Memory.RssBytes.Value
			linux.Process.ProcessCount.Value++
		}
	}
	return &runtimeapi.PodSandboxStats{
		Attributes: &runtimeapi.PodSandboxAttributes{
			Id: sb.id, Metadata: sb.cfg.Metadata, Labels: copyMap(sb.cfg.Labels), Annotations: copyMap(sb.cfg.Annotations),
		},
		Linux: linux,
	}
}

// PodSandboxStats reports one sandbox's resource use.
func (r *Runtime) PodSandboxStats(_ context.Context, req *runtimeapi.PodSandboxStatsRequest) (*runtimeapi.PodSandboxStatsResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sb, _, ok := lookup(r.sandboxes, req.PodSandboxId)
	if !ok {
		return nil, notFound("sandbox", req.PodSandboxId)
	}
	return &runtimeapi.PodSandboxStatsResponse{Stats: r.sandboxStatsLocked(sb, r.now())}, nil
}

// ListPodSandboxStats reports the resource use of the sandboxes that match the filter.
func (r *Runtime) ListPodSandboxStats(_ context.Context, req *runtimeapi.ListPodSandboxStatsRequest) (*runtimeapi.ListPodSandboxStatsResponse, error) {
	f := req.GetFilter()
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	var out []*runtimeapi.PodSandboxStats
	add := func(sb *sandbox) {
		if matchLabels(sb.cfg.Labels, f.GetLabelSelector()) {
			out = append(out, r.sandboxStatsLocked(sb, now))
		}
	}
	if f.GetId() != "" {
		if sb, _, ok := lookup(r.sandboxes, f.Id); ok {
			add(sb)
		}
	} else {
		for _, sb := range r.sandboxes {
			add(sb)
		}
	}
	return &runtimeapi.ListPodSandboxStatsResponse{Stats: out}, nil
}
