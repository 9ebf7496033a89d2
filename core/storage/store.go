// Package storage is berth's object store: opaque values kept in etcd v3 under one
// key prefix, with the revision semantics the Kubernetes API relies on (an object's
// resourceVersion is its etcd mod revision, lists are consistent snapshots, watches
// resume from a revision and fail with "gone" once it was compacted).
package storage

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Sentinel errors; callers test them with errors.Is and map them to HTTP statuses.
var (
	// ErrNotFound: the key does not exist (404).
	ErrNotFound = errors.New("not found")
	// ErrExists: Create found the key already there (409 AlreadyExists).
	ErrExists = errors.New("already exists")
	// ErrConflict: the expected revision did not match the stored one (409 Conflict).
	ErrConflict = errors.New("conflict")
	// ErrGone: the requested revision is older than the compacted one (410 Gone).
	ErrGone = errors.New("revision compacted")
	// ErrFutureRevision: the requested revision is newer than the store's (504 "too large resource version").
	ErrFutureRevision = errors.New("revision is in the future")
	// ErrBadContinue: a List continue token that this package did not produce (400).
	ErrBadContinue = errors.New("invalid continue token")
)

// Object is one stored value.
type Object struct {
	// Key is relative to the store's prefix, as the caller passed it.
	Key   string
	Value []byte
	// Revision is the etcd mod revision: the object's resourceVersion.
	Revision int64
}

// EventType says what happened to a key in a watch event.
type EventType string

// The event types, spelled as in the Kubernetes watch protocol.
const (
	Added    EventType = "ADDED"
	Modified EventType = "MODIFIED"
	Deleted  EventType = "DELETED"
)

// Event is one change seen by Watch.
type Event struct {
	Type EventType
	// Key is relative to the store's prefix.
	Key string
	// Value is the new value; for DELETED, the last value before deletion
	// (nil if etcd no longer had it, which happens only when that revision was compacted).
	Value []byte
	// PrevValue is, for MODIFIED, the value before the change (nil if compacted), so a
	// watcher can tell an object that stopped matching a selector from one that changed.
	PrevValue []byte
	// Revision is the mod revision of the change; for DELETED, the revision of the delete.
	Revision int64
}

// Store reads and writes opaque values in etcd, every key under one prefix, so that
// several berth clusters (or a berth and something else) can share one etcd.
type Store struct {
	client *clientv3.Client
	prefix string
}

// New returns a Store that keeps every key under prefix (e.g. "/registry").
// A trailing "/" on prefix is dropped, because keys passed in already start with "/".
func New(client *clientv3.Client, prefix string) *Store {
	return &Store{client: client, prefix: strings.TrimSuffix(prefix, "/")}
}

// Create stores value at key only if key does not exist yet; it returns the new revision.
func (s *Store) Create(ctx context.Context, key string, value []byte) (int64, error) {
	full, err := s.fullKey(key)
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", key, err)
	}
	// One txn, no read first: CreateRevision is 0 exactly when the key is absent.
	resp, err := s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(full), "=", 0)).
		Then(clientv3.OpPut(full, string(value))).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", key, mapErr(err))
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("create %s: %w", key, ErrExists)
	}
	return resp.Header.Revision, nil
}

// Get returns the current value of key.
func (s *Store) Get(ctx context.Context, key string) (Object, error) {
	full, err := s.fullKey(key)
	if err != nil {
		return Object{}, fmt.Errorf("get %s: %w", key, err)
	}
	resp, err := s.client.Get(ctx, full)
	if err != nil {
		return Object{}, fmt.Errorf("get %s: %w", key, mapErr(err))
	}
	if len(resp.Kvs) == 0 {
		return Object{}, fmt.Errorf("get %s: %w", key, ErrNotFound)
	}
	kv := resp.Kvs[0]
	return Object{Key: key, Value: kv.Value, Revision: kv.ModRevision}, nil
}

// Update replaces the value of an existing key and returns the new revision.
// With expectRev != 0 the write happens only if the key's mod revision is expectRev
// (optimistic concurrency, ErrConflict otherwise); with 0 it is unconditional, but the
// key must exist either way (ErrNotFound), since an update never creates.
func (s *Store) Update(ctx context.Context, key string, value []byte, expectRev int64) (int64, error) {
	full, err := s.fullKey(key)
	if err != nil {
		return 0, fmt.Errorf("update %s: %w", key, err)
	}
	var cmp clientv3.Cmp
	if expectRev == 0 {
		cmp = clientv3.Compare(clientv3.CreateRevision(full), ">", 0)
	} else {
		cmp = clientv3.Compare(clientv3.ModRevision(full), "=", expectRev)
	}
	// The Else branch reads the key inside the same txn, so telling "missing" from
	// "changed" costs nothing on the success path and no second round trip on failure.
	resp, err := s.client.Txn(ctx).
		If(cmp).
		Then(clientv3.OpPut(full, string(value))).
		Else(clientv3.OpGet(full, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("update %s: %w", key, mapErr(err))
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("update %s at revision %d: %w", key, expectRev, missingOrConflict(resp))
	}
	return resp.Header.Revision, nil
}

// Delete removes key and returns what it held, with Revision set to the revision of the
// delete (what a DELETED watch event carries). expectRev != 0 makes it conditional on
// the key's mod revision (ErrConflict).
func (s *Store) Delete(ctx context.Context, key string, expectRev int64) (Object, error) {
	full, err := s.fullKey(key)
	if err != nil {
		return Object{}, fmt.Errorf("delete %s: %w", key, err)
	}
	if expectRev == 0 {
		// A plain delete with the previous value: one request, and an empty PrevKvs
		// means there was nothing to delete.
		resp, err := s.client.Delete(ctx, full, clientv3.WithPrevKV())
		if err != nil {
			return Object{}, fmt.Errorf("delete %s: %w", key, mapErr(err))
		}
		if len(resp.PrevKvs) == 0 {
			return Object{}, fmt.Errorf("delete %s: %w", key, ErrNotFound)
		}
		return Object{Key: key, Value: resp.PrevKvs[0].Value, Revision: resp.Header.Revision}, nil
	}
	resp, err := s.client.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(full), "=", expectRev)).
		Then(clientv3.OpDelete(full, clientv3.WithPrevKV())).
		Else(clientv3.OpGet(full, clientv3.WithCountOnly())).
		Commit()
	if err != nil {
		return Object{}, fmt.Errorf("delete %s: %w", key, mapErr(err))
	}
	if !resp.Succeeded {
		return Object{}, fmt.Errorf("delete %s at revision %d: %w", key, expectRev, missingOrConflict(resp))
	}
	del := resp.Responses[0].GetResponseDeleteRange()
	if del == nil || len(del.PrevKvs) == 0 {
		// Cannot happen: the compare proved the key existed at this revision.
		return Object{}, fmt.Errorf("delete %s: etcd returned no previous value", key)
	}
	return Object{Key: key, Value: del.PrevKvs[0].Value, Revision: resp.Header.Revision}, nil
}

// Revision returns the store's current revision (linearizable, so it is at least
// the revision of every write that completed before the call).
func (s *Store) Revision(ctx context.Context) (int64, error) {
	// Any linearizable range carries the current revision in its header; a count-only
	// read of the prefix key transfers nothing.
	resp, err := s.client.Get(ctx, s.prefix+"/", clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("read current revision: %w", mapErr(err))
	}
	return resp.Header.Revision, nil
}

// Count returns how many keys are under prefix.
func (s *Store) Count(ctx context.Context, prefix string) (int64, error) {
	full, err := s.fullKey(prefix)
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", prefix, err)
	}
	resp, err := s.client.Get(ctx, full, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, fmt.Errorf("count %s: %w", prefix, mapErr(err))
	}
	return resp.Count, nil
}

// fullKey puts the store prefix before key. An empty key is refused because, with an
// empty store prefix, it would become etcd's invalid empty key (or "every key" for a range).
func (s *Store) fullKey(key string) (string, error) {
	if key == "" {
		return "", errors.New("empty key")
	}
	return s.prefix + key, nil
}

// relKey strips the store prefix from a key etcd returned.
func (s *Store) relKey(full []byte) string {
	return strings.TrimPrefix(string(full), s.prefix)
}

// missingOrConflict reads the Else branch (a count-only get) of a failed conditional txn.
func missingOrConflict(resp *clientv3.TxnResponse) error {
	if len(resp.Responses) > 0 {
		if r := resp.Responses[0].GetResponseRange(); r != nil && r.Count == 0 {
			return ErrNotFound
		}
	}
	return ErrConflict
}

// mapErr turns etcd's revision errors into this package's sentinels, keeping the
// original text for the log.
func mapErr(err error) error {
	switch {
	case errors.Is(err, rpctypes.ErrCompacted):
		return fmt.Errorf("%w: %v", ErrGone, err)
	case errors.Is(err, rpctypes.ErrFutureRev):
		return fmt.Errorf("%w: %v", ErrFutureRevision, err)
	}
	return err
}
