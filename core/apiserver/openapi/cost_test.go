package openapi

import (
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"berth.dev/berth/core/registry"
)

// TestCost logs what building and serving the documents costs; the bounds only catch a
// regression by a large factor (figures for docs/benchmarks.md come from this log). It lives in
// the file that sorts first so that it runs before other tests leave garbage on the heap.
func TestCost(t *testing.T) {
	var before, built, served runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	start := time.Now()
	s, err := New(registry.All())
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	took := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&built)

	mux := http.NewServeMux()
	s.Register(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	fetchStart := time.Now()
	var bytes int
	for _, accept := range []string{"application/json", acceptV2Proto} {
		_, body := get(t, srv.URL+"/openapi/v2", accept)
		bytes += len(body)
	}
	for name := range s.v3Names {
		for _, accept := range []string{"application/json", acceptV3Proto} {
			_, body := get(t, srv.URL+"/openapi/v3/"+name, accept)
			bytes += len(body)
		}
	}
	fetchTook := time.Since(fetchStart)
	runtime.GC()
	runtime.ReadMemStats(&served)
	runtime.KeepAlive(s)

	mb := func(b uint64) float64 { return float64(b) / (1 << 20) }
	retained := int64(built.HeapAlloc) - int64(before.HeapAlloc)
	retainedServed := int64(served.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("New over %d resources: %v; heap retained %.1f MiB; allocated in passing %.1f MiB",
		len(registry.All()), took, float64(retained)/(1<<20), mb(built.TotalAlloc-before.TotalAlloc))
	t.Logf("first fetch of every document in JSON and protobuf (%.1f MiB, %d documents): %v; heap retained afterwards %.1f MiB",
		float64(bytes)/(1<<20), 2+2*len(s.v3Names), fetchTook, float64(retainedServed)/(1<<20))
	if retained > 32<<20 {
		t.Errorf("built documents hold %.1f MiB, want under 32 MiB", float64(retained)/(1<<20))
	}
	if retainedServed > 64<<20 {
		t.Errorf("served documents hold %.1f MiB, want under 64 MiB", float64(retainedServed)/(1<<20))
	}
}
