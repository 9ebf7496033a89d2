package storage

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ListOptions select a page of a List.
type ListOptions struct {
	// Limit is the most items to return; 0 means no limit.
	Limit int64
	// Continue is the opaque token from a previous page's ListResult.Continue.
	Continue string
	// Revision reads at exactly this revision (ErrGone if compacted); 0 means latest.
	Revision int64
}

// ListResult is one page of a List.
type ListResult struct {
	Items []Object
	// Revision is the revision the list was read at: every page of one list has the same.
	Revision int64
	// Continue fetches the next page; "" when this page is the last.
	Continue string
	// Remaining is how many items come after this page (only counted when Limit is set).
	Remaining int64
}

// continueToken is the decoded form of ListResult.Continue. It uses the same JSON
// shape as Kubernetes' etcd3 store ({"v","rv","start"}), so a token looks familiar to
// anyone who has debugged one, and start is relative to the listed prefix so a token
// can never walk outside it.
type continueToken struct {
	APIVersion string `json:"v"`
	Revision   int64  `json:"rv"`
	StartKey   string `json:"start"`
}

const continueTokenVersion = "meta.k8s.io/v1"

// List returns the keys under prefix in key order. Paging follows Kubernetes: the first
// page fixes a revision, the continue token carries it, and later pages read at that
// revision, so the pages together form one consistent snapshot (ErrGone once that
// revision is compacted; the client must then start over).
func (s *Store) List(ctx context.Context, prefix string, opts ListOptions) (ListResult, error) {
	full, err := s.fullKey(prefix)
	if err != nil {
		return ListResult{}, fmt.Errorf("list %s: %w", prefix, err)
	}
	if opts.Limit < 0 {
		return ListResult{}, fmt.Errorf("list %s: negative limit %d", prefix, opts.Limit)
	}
	start, rev := full, opts.Revision
	if opts.Continue != "" {
		tok, err := decodeContinue(opts.Continue)
		if err != nil {
			return ListResult{}, fmt.Errorf("list %s: %w", prefix, err)
		}
		if rev != 0 && rev != tok.Revision {
			return ListResult{}, fmt.Errorf("list %s: revision %d differs from the continue token's %d: %w",
				prefix, rev, tok.Revision, ErrBadContinue)
		}
		start, rev = full+tok.StartKey, tok.Revision
	}

	// An explicit range end (not WithPrefix) because a continued page starts past the prefix.
	ops := []clientv3.OpOption{clientv3.WithRange(clientv3.GetPrefixRangeEnd(full))}
	if opts.Limit > 0 {
		ops = append(ops, clientv3.WithLimit(opts.Limit))
	}
	if rev > 0 {
		ops = append(ops, clientv3.WithRev(rev))
	}
	resp, err := s.client.Get(ctx, start, ops...)
	if err != nil {
		return ListResult{}, fmt.Errorf("list %s at revision %d: %w", prefix, rev, mapErr(err))
	}

	res := ListResult{Revision: rev, Items: make([]Object, 0, len(resp.Kvs))}
	if rev == 0 {
		// Only for a latest read is the header revision the read revision; with WithRev
		// the header carries the store's current revision instead.
		res.Revision = resp.Header.Revision
	}
	for _, kv := range resp.Kvs {
		res.Items = append(res.Items, Object{Key: s.relKey(kv.Key), Value: kv.Value, Revision: kv.ModRevision})
	}
	if resp.More && len(resp.Kvs) > 0 {
		// The next page starts just after the last key: appending "\x00" gives the
		// smallest key greater than it.
		last := string(resp.Kvs[len(resp.Kvs)-1].Key)
		res.Continue = encodeContinue(res.Revision, last[len(full):]+"\x00")
		// Count is the number of keys in [start, end) at the read revision.
		res.Remaining = resp.Count - int64(len(resp.Kvs))
	}
	return res, nil
}

// ContinueAfter returns the continue token of a list of prefix, read at rev, that resumes
// right after key (a key that list returned). A caller that filters a page uses it to stop
// in the middle of the page.
func (s *Store) ContinueAfter(prefix, key string, rev int64) string {
	return encodeContinue(rev, strings.TrimPrefix(key, prefix)+"\x00")
}

func encodeContinue(rev int64, start string) string {
	b, _ := json.Marshal(continueToken{APIVersion: continueTokenVersion, Revision: rev, StartKey: start})
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeContinue(token string) (continueToken, error) {
	var tok continueToken
	b, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return tok, fmt.Errorf("%w: not base64: %v", ErrBadContinue, err)
	}
	if err := json.Unmarshal(b, &tok); err != nil {
		return tok, fmt.Errorf("%w: %v", ErrBadContinue, err)
	}
	switch {
	case tok.APIVersion != continueTokenVersion:
		return tok, fmt.Errorf("%w: version %q, want %q", ErrBadContinue, tok.APIVersion, continueTokenVersion)
	case tok.Revision <= 0:
		return tok, fmt.Errorf("%w: revision %d", ErrBadContinue, tok.Revision)
	case tok.StartKey == "":
		return tok, fmt.Errorf("%w: empty start key", ErrBadContinue)
	}
	return tok, nil
}
