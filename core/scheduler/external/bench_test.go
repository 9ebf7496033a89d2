package external

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"berth.dev/berth/core/scheduler/framework"
)

// BenchmarkCostCycle is what the cost plugin costs one scheduling cycle at 5,000 nodes, over
// a real go-plugin connection: the framework runs PreFilter (which checks the plugin's copy
// of every node), Filter over Kubernetes' adaptive sample (10% at that size, 500 feasible
// nodes), then PreScore with the batched Score and NormalizeScore, and Score for every
// feasible node from the batch, on the framework's 16 workers. Run:
// go test -run '^$' -bench CostCycle ./core/scheduler/external/
func BenchmarkCostCycle(b *testing.B) {
	f := NewFactory(Options{MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	b.Cleanup(func() { _ = f.Close() })
	nodes := nodeInfos(5000)
	f.SetNodeLister(func() []*framework.NodeInfo { return nodes })
	p, err := f.Launch("cost", filepath.Join(binDir, "berth-scheduler-cost"), nil, 0)
	if err != nil {
		b.Fatal(err)
	}
	fw, err := framework.New(framework.ProfileFromPlugins("cost-aware", []framework.Plugin{sortPlugin{}, p, bindPlugin{}}, map[string]int64{p.Name(): 5}), nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for i := 0; b.Loop(); i++ {
		r, err := fw.SchedulePod(ctx, framework.NewCycleState(), testPod(fmt.Sprintf("p%d", i)), nodes)
		if err != nil {
			b.Fatal(err)
		}
		if r.FeasibleNodes != 500 {
			b.Fatalf("%d feasible nodes, want 500", r.FeasibleNodes)
		}
	}
}
