package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"berth.dev/berth/core/pki"
)

// TestStreamingServerAuth: the streaming server answers 401 without a certificate of the
// cluster CA and 403 to one outside system:masters; the API server's identity gets through.
func TestStreamingServerAuth(t *testing.T) {
	bundle, err := pki.Ensure(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{
		cfg:    Config{NodeName: "n1", ClientCA: bundle.CAPEM, StreamingAddr: "127.0.0.1:0"},
		log:    slog.New(slog.DiscardHandler),
		hostIP: "127.0.0.1",
		pods:   corelisters.NewPodLister(cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})),
		now:    time.Now,
	}
	s, err := a.listenStreaming()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	url := fmt.Sprintf("https://127.0.0.1:%d/containerLogs/default/missing/c", s.port())

	client := func(cert *tls.Certificate) *http.Client {
		cfg := &tls.Config{InsecureSkipVerify: true}
		if cert != nil {
			cfg.Certificates = []tls.Certificate{*cert}
		}
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	}
	issued := func(user string, groups ...string) *tls.Certificate {
		certPEM, keyPEM, err := bundle.IssueClientCert(user, groups)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &pair
	}
	apiserverTLS, err := bundle.NodeClientTLS()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cert *tls.Certificate
		code int
		body string
	}{
		{"no certificate", nil, http.StatusUnauthorized, "Unauthorized\n"},
		{"not in system:masters", issued("jane", "dev"), http.StatusForbidden, "Forbidden (user=jane, verb=get, resource=nodes, subresource=proxy)\n"},
		{"the API server", &apiserverTLS.Certificates[0], http.StatusNotFound, "pod \"default/missing\" does not exist\n"},
	} {
		resp, err := client(tc.cert).Get(url)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code || string(body) != tc.body {
			t.Errorf("%s: %d %q, want %d %q", tc.name, resp.StatusCode, body, tc.code, tc.body)
		}
	}
}
