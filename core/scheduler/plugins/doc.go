// Package plugins holds berth's in-tree scheduler plugins, each with Kubernetes 1.33's
// semantics and wording, and the default profile that strings them together.
package plugins

import (
	"context"

	"k8s.io/client-go/util/workqueue"

	"berth.dev/berth/core/scheduler/framework"
)

// normalize rescales scores to [0, MaxNodeScore] against the highest one; reverse turns a
// count of bad things into a score (fewest gets the most). All zero scores stay zero, or
// become the maximum when reversed.
func normalize(scores []framework.NodeScore, reverse bool) {
	var highest int64
	for _, s := range scores {
		highest = max(highest, s.Score)
	}
	for i := range scores {
		if highest == 0 {
			if reverse {
				scores[i].Score = framework.MaxNodeScore
			}
			continue
		}
		v := framework.MaxNodeScore * scores[i].Score / highest
		if reverse {
			v = framework.MaxNodeScore - v
		}
		scores[i].Score = v
	}
}

// parallelize runs fn(i) for i in [0, n) on workers goroutines, in chunks, until done or
// ctx ends; the plugins' PreFilter and PreScore use it to walk every node.
func parallelize(ctx context.Context, workers, n int, fn func(i int)) {
	chunk := max(1, n/(workers*4))
	workqueue.ParallelizeUntil(ctx, workers, n, fn, workqueue.WithChunkSize(chunk))
}
