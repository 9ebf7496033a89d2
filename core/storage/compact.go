package storage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// compactRevKey is the key through which compactors agree on who compacts. It is the
// very key kube-apiserver uses, outside any prefix, because compaction is global to an
// etcd cluster: berth servers sharing one etcd (or sharing it with kube-apiservers)
// then compact once per interval between them instead of once each.
const compactRevKey = "compact_rev_key"

// DefaultCompactInterval is kube-apiserver's default --etcd-compaction-interval.
const DefaultCompactInterval = 5 * time.Minute

// Compact discards the history before rev (reads and watches at older revisions then
// get ErrGone). Compacting to a revision already compacted is not an error.
func (s *Store) Compact(ctx context.Context, rev int64) error {
	if _, err := s.client.Compact(ctx, rev); err != nil {
		if errors.Is(err, rpctypes.ErrCompacted) {
			return nil
		}
		return fmt.Errorf("compact to revision %d: %w", rev, mapErr(err))
	}
	return nil
}

// RunCompactor compacts every interval to the revision seen one interval earlier, so a
// client always has at least one interval to finish a paged list or resume a watch.
// It returns when ctx ends. Failures are logged and retried at the next tick: a missed
// compaction only lets history grow a little longer.
func (s *Store) RunCompactor(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultCompactInterval
	}
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	var version, rev int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		var err error
		version, rev, err = s.compactStep(ctx, version, rev)
		if err != nil && ctx.Err() == nil {
			slog.Warn("etcd compaction failed; retrying next interval", "interval", interval, "error", err)
		}
	}
}

// compactStep is kube-apiserver's algorithm (staging/src/k8s.io/apiserver/pkg/storage/
// etcd3/compact.go). version is the compactRevKey version this compactor last saw and
// rev the revision it saw then. If nobody bumped the key since, this compactor wins the
// interval: it bumps the key and compacts to rev. Otherwise another compactor did the
// work and this one only records the new version. Either way the current revision is
// remembered and becomes the target one interval later.
func (s *Store) compactStep(ctx context.Context, version, rev int64) (int64, int64, error) {
	resp, err := s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.Version(compactRevKey), "=", version)).
		Then(clientv3.OpPut(compactRevKey, strconv.FormatInt(rev, 10))). // bumps the key's version
		Else(clientv3.OpGet(compactRevKey)).
		Commit()
	if err != nil {
		return version, rev, fmt.Errorf("claim compaction: %w", err)
	}
	cur := resp.Header.Revision
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(kvs) == 0 {
			// Someone deleted the key; start the protocol again from version 0.
			return 0, cur, nil
		}
		return kvs[0].Version, cur, nil
	}
	if rev == 0 {
		// First tick: nothing seen an interval ago yet.
		return version + 1, cur, nil
	}
	if err := s.Compact(ctx, rev); err != nil {
		return version + 1, cur, err
	}
	return version + 1, cur, nil
}
