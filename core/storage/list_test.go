package storage

import (
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"testing"
)

func TestListPaging(t *testing.T) {
	s, _ := newStore(t)
	ctx := testCtx(t)
	var want []string
	for i := range 5 {
		key := fmt.Sprintf("/pods/ns1/p%d", i)
		mustCreate(t, s, key, "v1")
		want = append(want, key)
	}
	// Siblings whose names extend the prefix without its slash must stay out.
	mustCreate(t, s, "/pods/ns10/p0", "v1")
	mustCreate(t, s, "/pods/ns1", "v1")

	first, err := s.List(ctx, "/pods/ns1/", ListOptions{Limit: 2})
	if err != nil {
		t.Fatalf("first page: %v", err)
	}
	listRev := first.Revision

	// Writes between pages must not show in later pages: they read at listRev.
	mustUpdate(t, s, "/pods/ns1/p3", "v2")
	mustCreate(t, s, "/pods/ns1/p2a", "v1")
	if _, err := s.Delete(ctx, "/pods/ns1/p4", 0); err != nil {
		t.Fatal(err)
	}

	pages := []ListResult{first}
	for res := first; res.Continue != ""; {
		if len(pages) > 5 {
			t.Fatal("paging does not end")
		}
		res, err = s.List(ctx, "/pods/ns1/", ListOptions{Limit: 2, Continue: res.Continue})
		if err != nil {
			t.Fatalf("page %d: %v", len(pages)+1, err)
		}
		pages = append(pages, res)
	}

	wantSizes, wantRemaining := []int{2, 2, 1}, []int64{3, 1, 0}
	if len(pages) != len(wantSizes) {
		t.Fatalf("got %d pages, want %d", len(pages), len(wantSizes))
	}
	var got []string
	for i, p := range pages {
		if p.Revision != listRev {
			t.Errorf("page %d revision = %d, want %d (all pages at the first page's revision)", i+1, p.Revision, listRev)
		}
		if len(p.Items) != wantSizes[i] || p.Remaining != wantRemaining[i] {
			t.Errorf("page %d: %d items, remaining %d; want %d, %d", i+1, len(p.Items), p.Remaining, wantSizes[i], wantRemaining[i])
		}
		if last := i == len(pages)-1; last != (p.Continue == "") {
			t.Errorf("page %d: continue %q, last page %v", i+1, p.Continue, last)
		}
		for _, it := range p.Items {
			got = append(got, it.Key)
			if string(it.Value) != "v1" {
				t.Errorf("%s = %q at list revision, want v1", it.Key, it.Value)
			}
			if it.Revision > listRev {
				t.Errorf("%s has revision %d after the list revision %d", it.Key, it.Revision, listRev)
			}
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("keys over all pages = %v, want %v", got, want)
	}

	// A list without limit reads the latest state, sorted by key.
	latest, err := s.List(ctx, "/pods/ns1/", ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var latestKeys []string
	for _, it := range latest.Items {
		latestKeys = append(latestKeys, it.Key)
	}
	wantLatest := []string{"/pods/ns1/p0", "/pods/ns1/p1", "/pods/ns1/p2", "/pods/ns1/p2a", "/pods/ns1/p3"}
	if !slices.Equal(latestKeys, wantLatest) || latest.Continue != "" || latest.Revision <= listRev {
		t.Fatalf("latest list = %v (continue %q, rev %d), want %v at a revision after %d",
			latestKeys, latest.Continue, latest.Revision, wantLatest, listRev)
	}

	// An explicit revision reads that snapshot.
	old, err := s.List(ctx, "/pods/ns1/", ListOptions{Revision: listRev})
	if err != nil || len(old.Items) != 5 || old.Revision != listRev {
		t.Fatalf("list at revision %d: %d items rev %d, %v; want 5 items", listRev, len(old.Items), old.Revision, err)
	}
}

func TestListBadContinue(t *testing.T) {
	s, _ := newStore(t)
	ctx := testCtx(t)
	for i := range 3 {
		mustCreate(t, s, fmt.Sprintf("/cm/c%d", i), "x")
	}
	page, err := s.List(ctx, "/cm/", ListOptions{Limit: 1})
	if err != nil || page.Continue == "" {
		t.Fatalf("first page: %+v, %v", page, err)
	}
	b64 := func(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

	tests := []struct {
		name string
		opts ListOptions
	}{
		{"not base64", ListOptions{Continue: "!!!"}},
		{"not json", ListOptions{Continue: b64("nope")}},
		{"wrong version", ListOptions{Continue: b64(`{"v":"other/v1","rv":5,"start":"c1"}`)}},
		{"zero revision", ListOptions{Continue: b64(`{"v":"meta.k8s.io/v1","rv":0,"start":"c1"}`)}},
		{"empty start", ListOptions{Continue: b64(`{"v":"meta.k8s.io/v1","rv":5,"start":""}`)}},
		{"revision differs from token", ListOptions{Continue: page.Continue, Revision: page.Revision - 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.List(ctx, "/cm/", tt.opts)
			if !errors.Is(err, ErrBadContinue) {
				t.Fatalf("err = %v, want ErrBadContinue", err)
			}
		})
	}

	// The same revision as the token's is accepted.
	if _, err := s.List(ctx, "/cm/", ListOptions{Continue: page.Continue, Revision: page.Revision}); err != nil {
		t.Fatalf("continue with matching revision: %v", err)
	}
}

func TestListCompacted(t *testing.T) {
	s, _ := newStore(t)
	ctx := testCtx(t)
	for i := range 3 {
		mustCreate(t, s, fmt.Sprintf("/cm/c%d", i), "v1")
	}
	page, err := s.List(ctx, "/cm/", ListOptions{Limit: 1})
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, s, "/cm/c2", "v2")
	now := mustUpdate(t, s, "/cm/c2", "v3")

	if err := s.Compact(ctx, now); err != nil {
		t.Fatalf("Compact: %v", err)
	}
	// Compacting again to the same or an older revision is not an error.
	if err := s.Compact(ctx, page.Revision); err != nil {
		t.Fatalf("second Compact: %v", err)
	}

	tests := []struct {
		name    string
		opts    ListOptions
		wantErr error
	}{
		{name: "old revision", opts: ListOptions{Revision: page.Revision}, wantErr: ErrGone},
		{name: "continue token from before compaction", opts: ListOptions{Limit: 1, Continue: page.Continue}, wantErr: ErrGone},
		{name: "compacted revision itself", opts: ListOptions{Revision: now}},
		{name: "latest", opts: ListOptions{}},
		{name: "future revision", opts: ListOptions{Revision: now + 1000}, wantErr: ErrFutureRevision},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := s.List(ctx, "/cm/", tt.opts)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil && len(res.Items) != 3 {
				t.Fatalf("%d items, want 3", len(res.Items))
			}
		})
	}
}
