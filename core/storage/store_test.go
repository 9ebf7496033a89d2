package storage

import (
	"errors"
	"fmt"
	"testing"
)

func TestCreateGet(t *testing.T) {
	s, c := newStore(t)
	ctx := testCtx(t)
	rev := mustCreate(t, s, "/pods/ns1/a", "v1")

	// The value really lands under the store prefix.
	raw, err := c.Get(ctx, "/registry/pods/ns1/a")
	if err != nil || len(raw.Kvs) != 1 || string(raw.Kvs[0].Value) != "v1" {
		t.Fatalf("raw etcd read of /registry/pods/ns1/a = %v, %v; want one kv \"v1\"", raw, err)
	}

	tests := []struct {
		name    string
		op      func() (Object, error)
		want    Object
		wantErr error
	}{
		{
			name: "get existing",
			op:   func() (Object, error) { return s.Get(ctx, "/pods/ns1/a") },
			want: Object{Key: "/pods/ns1/a", Value: []byte("v1"), Revision: rev},
		},
		{
			name:    "get missing",
			op:      func() (Object, error) { return s.Get(ctx, "/pods/ns1/b") },
			wantErr: ErrNotFound,
		},
		{
			name: "create existing",
			op: func() (Object, error) {
				_, err := s.Create(ctx, "/pods/ns1/a", []byte("v2"))
				return Object{}, err
			},
			wantErr: ErrExists,
		},
		{
			name: "value unchanged after failed create",
			op:   func() (Object, error) { return s.Get(ctx, "/pods/ns1/a") },
			want: Object{Key: "/pods/ns1/a", Value: []byte("v1"), Revision: rev},
		},
		{
			name: "empty key",
			op: func() (Object, error) {
				_, err := s.Create(ctx, "", []byte("x"))
				if err == nil {
					return Object{}, errors.New("created an empty key")
				}
				return Object{}, nil
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.op()
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if tt.wantErr == nil && !objEqual(got, tt.want) {
				t.Fatalf("got %s, want %s", fmtObj(got), fmtObj(tt.want))
			}
		})
	}
}

func TestUpdate(t *testing.T) {
	s, _ := newStore(t)
	ctx := testCtx(t)
	rev1 := mustCreate(t, s, "/cm/a", "v1")
	rev2 := mustUpdate(t, s, "/cm/a", "v2")
	if rev2 <= rev1 {
		t.Fatalf("update revision %d not after create revision %d", rev2, rev1)
	}

	tests := []struct {
		name      string
		key       string
		expectRev int64
		wantErr   error
		wantValue string // the value afterwards
	}{
		{name: "stale revision", key: "/cm/a", expectRev: rev1, wantErr: ErrConflict, wantValue: "v2"},
		{name: "future revision", key: "/cm/a", expectRev: rev2 + 100, wantErr: ErrConflict, wantValue: "v2"},
		{name: "current revision", key: "/cm/a", expectRev: rev2, wantValue: "new"},
		{name: "unconditional", key: "/cm/a", expectRev: 0, wantValue: "new"},
		{name: "missing unconditional", key: "/cm/missing", expectRev: 0, wantErr: ErrNotFound},
		{name: "missing conditional", key: "/cm/missing", expectRev: rev2, wantErr: ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rev, err := s.Update(ctx, tt.key, []byte("new"), tt.expectRev)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Update err = %v, want %v", err, tt.wantErr)
			}
			got, gerr := s.Get(ctx, tt.key)
			if tt.wantValue == "" {
				if !errors.Is(gerr, ErrNotFound) {
					t.Fatalf("Get after failed update of missing key: %v, want ErrNotFound (an update must never create)", gerr)
				}
				return
			}
			if gerr != nil {
				t.Fatalf("Get: %v", gerr)
			}
			if string(got.Value) != tt.wantValue {
				t.Fatalf("value = %q, want %q", got.Value, tt.wantValue)
			}
			if err == nil && got.Revision != rev {
				t.Fatalf("Get revision %d != Update's returned revision %d", got.Revision, rev)
			}
		})
	}
}

func TestDelete(t *testing.T) {
	s, _ := newStore(t)
	ctx := testCtx(t)
	revA := mustCreate(t, s, "/svc/a", "a1")
	revA2 := mustUpdate(t, s, "/svc/a", "a2")
	mustCreate(t, s, "/svc/b", "b1")

	tests := []struct {
		name      string
		key       string
		expectRev int64
		wantErr   error
		wantValue string
	}{
		{name: "stale revision", key: "/svc/a", expectRev: revA, wantErr: ErrConflict},
		{name: "missing conditional", key: "/svc/none", expectRev: revA, wantErr: ErrNotFound},
		{name: "missing unconditional", key: "/svc/none", wantErr: ErrNotFound},
		{name: "current revision", key: "/svc/a", expectRev: revA2, wantValue: "a2"},
		{name: "again after delete", key: "/svc/a", expectRev: revA2, wantErr: ErrNotFound},
		{name: "unconditional", key: "/svc/b", wantValue: "b1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, _ := s.Revision(ctx)
			obj, err := s.Delete(ctx, tt.key, tt.expectRev)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Delete err = %v, want %v", err, tt.wantErr)
			}
			_, gerr := s.Get(ctx, tt.key)
			if tt.wantErr != nil {
				if errors.Is(tt.wantErr, ErrConflict) && gerr != nil {
					t.Fatalf("key gone after a conflicting delete: %v", gerr)
				}
				return
			}
			if obj.Key != tt.key || string(obj.Value) != tt.wantValue {
				t.Fatalf("deleted object = %s, want key %s value %q", fmtObj(obj), tt.key, tt.wantValue)
			}
			if obj.Revision != before+1 {
				t.Fatalf("deleted object revision = %d, want the delete's revision %d", obj.Revision, before+1)
			}
			if !errors.Is(gerr, ErrNotFound) {
				t.Fatalf("Get after delete: %v, want ErrNotFound", gerr)
			}
		})
	}
}

func TestRevisionAndCount(t *testing.T) {
	s, _ := newStore(t)
	ctx := testCtx(t)
	for i := range 3 {
		mustCreate(t, s, fmt.Sprintf("/pods/ns1/p%d", i), "x")
	}
	mustCreate(t, s, "/pods/ns10/p", "x")
	last := mustCreate(t, s, "/pods/ns2/p", "x")

	rev, err := s.Revision(ctx)
	if err != nil || rev != last {
		t.Fatalf("Revision = %d, %v; want %d", rev, err, last)
	}
	for prefix, want := range map[string]int64{"/pods/": 5, "/pods/ns1/": 3, "/pods/ns10/": 1, "/pods/ns3/": 0} {
		got, err := s.Count(ctx, prefix)
		if err != nil || got != want {
			t.Errorf("Count(%q) = %d, %v; want %d", prefix, got, err, want)
		}
	}
}

// TestStorePrefix checks that two stores on one etcd do not see each other's keys.
func TestStorePrefix(t *testing.T) {
	a, c := newStore(t)
	b := New(c, "/other/") // trailing slash dropped: keys are "/other/..."
	ctx := testCtx(t)
	mustCreate(t, a, "/pods/ns1/x", "from a")
	mustCreate(t, b, "/pods/ns1/x", "from b")

	for _, tc := range []struct {
		s    *Store
		want string
	}{{a, "from a"}, {b, "from b"}} {
		obj, err := tc.s.Get(ctx, "/pods/ns1/x")
		if err != nil || string(obj.Value) != tc.want {
			t.Errorf("store %s: Get = %q, %v; want %q", tc.s.prefix, obj.Value, err, tc.want)
		}
		list, err := tc.s.List(ctx, "/", ListOptions{})
		if err != nil || len(list.Items) != 1 {
			t.Errorf("store %s: List(/) = %v, %v; want one item", tc.s.prefix, list.Items, err)
		}
	}
	raw, err := c.Get(ctx, "/other/pods/ns1/x")
	if err != nil || len(raw.Kvs) != 1 {
		t.Fatalf("raw key /other/pods/ns1/x: %v, %v", raw, err)
	}
}

func objEqual(a, b Object) bool {
	return a.Key == b.Key && string(a.Value) == string(b.Value) && a.Revision == b.Revision
}

func fmtObj(o Object) string {
	return fmt.Sprintf("{%s %q rev %d}", o.Key, o.Value, o.Revision)
}
