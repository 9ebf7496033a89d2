package csi

// Volume stats for the agent's /stats/summary, in the kubelet's summary API shape
// (k8s.io/kubelet/pkg/apis/stats/v1alpha1): the pods' CSI volumes only, from
// NodeGetVolumeStats, collected every StatsPeriod (the kubelet: every minute).

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	statsapi "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
)

// collectStats asks the drivers for the usage of every published volume.
func (m *Manager) collectStats(ctx context.Context) {
	var pubs []publication
	m.mu.Lock()
	for _, vs := range m.vols {
		for _, p := range vs.pubs {
			if p.Published {
				pubs = append(pubs, *p)
			}
		}
	}
	m.mu.Unlock()
	for _, p := range pubs {
		drv, ok := m.drivers.get(p.Driver)
		if !ok || !drv.has(csipb.NodeServiceCapability_RPC_GET_VOLUME_STATS) {
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, rpcTimeout)
		resp, err := drv.node.NodeGetVolumeStats(cctx, &csipb.NodeGetVolumeStatsRequest{
			VolumeId: p.VolumeHandle, VolumePath: p.TargetPath, StagingTargetPath: p.StagingPath,
		})
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				m.log.Debug("NodeGetVolumeStats", "driver", p.Driver, "volume", p.VolumeHandle, "err", err)
			}
			continue
		}
		st := volumeStats(&p, resp, time.Now())
		m.mu.Lock()
		// Only while the publication is still there: a pod torn down meanwhile has none.
		if vs, ok := m.vols[UniqueName(p.Driver, p.VolumeHandle)]; ok && vs.pubs[p.key()] != nil {
			m.stats[p.key()] = st
		}
		m.mu.Unlock()
	}
}

// volumeStats turns a NodeGetVolumeStats answer into the summary API's VolumeStats.
func volumeStats(p *publication, resp *csipb.NodeGetVolumeStatsResponse, now time.Time) statsapi.VolumeStats {
	st := statsapi.VolumeStats{Name: p.VolumeName, FsStats: statsapi.FsStats{Time: metav1.NewTime(now)}}
	for _, u := range resp.GetUsage() {
		avail, total, used := uint64(max(u.GetAvailable(), 0)), uint64(max(u.GetTotal(), 0)), uint64(max(u.GetUsed(), 0))
		switch u.GetUnit() {
		case csipb.VolumeUsage_BYTES:
			st.AvailableBytes, st.CapacityBytes, st.UsedBytes = &avail, &total, &used
		case csipb.VolumeUsage_INODES:
			st.InodesFree, st.Inodes, st.InodesUsed = &avail, &total, &used
		}
	}
	if p.PVCName != "" {
		st.PVCRef = &statsapi.PVCReference{Name: p.PVCName, Namespace: p.PVCNamespace}
	}
	if c := resp.GetVolumeCondition(); c != nil {
		st.VolumeHealthStats = &statsapi.VolumeHealthStats{Abnormal: c.GetAbnormal()}
	}
	return st
}

// Summary is the node's stats summary: the node's name and start, and per pod the stats
// of its CSI volumes collected so far.
func (m *Manager) Summary() statsapi.Summary {
	sum := statsapi.Summary{Node: statsapi.NodeStats{NodeName: m.cfg.NodeName, StartTime: metav1.NewTime(m.start)}}
	pods := map[types.UID]*statsapi.PodStats{}
	m.mu.Lock()
	for _, vs := range m.vols {
		for key, p := range vs.pubs {
			ps, ok := pods[p.PodUID]
			if !ok {
				ps = &statsapi.PodStats{PodRef: statsapi.PodReference{Name: p.PodName, Namespace: p.PodNamespace, UID: string(p.PodUID)}}
				pods[p.PodUID] = ps
			}
			if st, ok := m.stats[key]; ok {
				ps.VolumeStats = append(ps.VolumeStats, st)
			}
		}
	}
	m.mu.Unlock()
	for _, ps := range pods {
		sort.Slice(ps.VolumeStats, func(i, j int) bool { return ps.VolumeStats[i].Name < ps.VolumeStats[j].Name })
		sum.Pods = append(sum.Pods, *ps)
	}
	sort.Slice(sum.Pods, func(i, j int) bool {
		a, b := sum.Pods[i].PodRef, sum.Pods[j].PodRef
		return a.Namespace+"/"+a.Name < b.Namespace+"/"+b.Name
	})
	if sum.Pods == nil {
		sum.Pods = []statsapi.PodStats{}
	}
	return sum
}

// ServeSummary answers GET /stats/summary with Summary as JSON.
func (m *Manager) ServeSummary(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(m.Summary())
}
