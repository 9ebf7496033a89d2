package scheduler

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"berth.dev/berth/core/scheduler/config"
	"berth.dev/berth/core/scheduler/framework"
	"berth.dev/berth/core/scheduler/plugins"
)

// BenchmarkSchedulePod measures one scheduling cycle (filter and score, no bind) on 5,000
// nodes holding 10,000 pods, for a pod without affinity or spread constraints: with the
// default profile, and without InterPodAffinity and PodTopologySpread, to show what the
// two cost such pods. Run: go test -run '^$' -bench SchedulePod ./core/scheduler/
func BenchmarkSchedulePod(b *testing.B) {
	c, snap := NewCache(time.Minute), NewSnapshot()
	for i := range 5000 {
		name := fmt.Sprintf("node-%d", i)
		n := cacheNode(name)
		n.Labels = map[string]string{corev1.LabelHostname: name, corev1.LabelTopologyZone: fmt.Sprintf("zone-%d", i%3)}
		c.AddNode(n)
		for j := range 2 {
			c.AddPod(boundPod(fmt.Sprintf("p-%d-%d", i, j), name, "100m"))
		}
	}
	c.UpdateSnapshot(snap)
	pod := boundPod("incoming", "", "100m")
	pod.Labels = map[string]string{"app": "web"}
	for _, tc := range []struct{ name, plugins string }{
		{"default", ""},
		{"without-InterPodAffinity-PodTopologySpread", "  plugins:\n    multiPoint:\n      disabled:\n      - name: InterPodAffinity\n      - name: PodTopologySpread\n"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			cfg, err := config.Parse("bench.yaml", []byte("apiVersion: scheduler.berth.dev/v1\nkind: SchedulerConfiguration\nprofiles:\n- schedulerName: default-scheduler\n"+tc.plugins))
			if err != nil {
				b.Fatal(err)
			}
			profiles, err := cfg.Build(func(string) plugins.DefaultOptions { return plugins.DefaultOptions{Snapshot: snap} }, nil)
			if err != nil {
				b.Fatal(err)
			}
			fwk, err := framework.New(profiles[0], nil)
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			for i := 0; b.Loop(); i++ {
				pod.UID = types.UID(fmt.Sprint(i))
				if _, err := fwk.SchedulePod(ctx, framework.NewCycleState(), pod, snap.List()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
