package pki

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

func mustEnsure(t *testing.T, dir string, extra []string) *Bundle {
	t.Helper()
	b, err := Ensure(dir, extra)
	if err != nil {
		t.Fatalf("Ensure(%s, %v): %v", dir, extra, err)
	}
	return b
}

func mustReadCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	c, err := readCert(path)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestEnsureCreatesThenReuses(t *testing.T) {
	dir := t.TempDir()
	first := mustEnsure(t, dir, []string{"berth.example", "10.1.2.3"})
	firstServing := mustReadCert(t, first.ServingCertFile)

	for path, want := range map[string]os.FileMode{
		filepath.Join(dir, "pki", caKeyName):      0o600,
		filepath.Join(dir, "pki", servingKeyName): 0o600,
		first.CAFile:          0o644,
		first.ServingCertFile: 0o644,
	} {
		if got := fileMode(t, path); got != want {
			t.Errorf("mode of %s = %v, want %v", path, got, want)
		}
	}
	if err := firstServing.CheckSignatureFrom(first.CACert); err != nil {
		t.Errorf("serving certificate not signed by the CA: %v", err)
	}
	wantDNS := []string{"localhost", "berth.example"}
	for _, name := range wantDNS {
		if !slices.Contains(firstServing.DNSNames, name) {
			t.Errorf("serving DNS SANs %v lack %q", firstServing.DNSNames, name)
		}
	}
	for _, ip := range []string{"127.0.0.1", "::1", "10.1.2.3"} {
		if !slices.ContainsFunc(firstServing.IPAddresses, net.ParseIP(ip).Equal) {
			t.Errorf("serving IP SANs %v lack %s", firstServing.IPAddresses, ip)
		}
	}
	if d := time.Until(first.CACert.NotAfter); d < caValidity-time.Hour {
		t.Errorf("CA valid for %v, want about %v", d, caValidity)
	}

	// Same request again, and a subset of it: everything on disk is kept.
	for _, extra := range [][]string{{"berth.example", "10.1.2.3"}, {"BERTH.example"}, nil} {
		again := mustEnsure(t, dir, extra)
		if again.CACert.SerialNumber.Cmp(first.CACert.SerialNumber) != 0 {
			t.Errorf("extra %v: CA re-created: serial %v, was %v", extra, again.CACert.SerialNumber, first.CACert.SerialNumber)
		}
		if !bytes.Equal(again.CAPEM, first.CAPEM) {
			t.Errorf("extra %v: CAPEM changed", extra)
		}
		s := mustReadCert(t, again.ServingCertFile)
		if s.SerialNumber.Cmp(firstServing.SerialNumber) != 0 {
			t.Errorf("extra %v: serving certificate re-issued: serial %v, was %v", extra, s.SerialNumber, firstServing.SerialNumber)
		}
	}
}

func TestEnsureReissuesServingCert(t *testing.T) {
	tests := []struct {
		name  string
		extra []string // passed to the second Ensure
		// mutate changes the files between the two calls.
		mutate func(t *testing.T, b *Bundle)
	}{
		{
			name:  "new DNS SAN",
			extra: []string{"api.berth.example"},
		},
		{
			name:  "new IP SAN",
			extra: []string{"192.0.2.7"},
		},
		{
			name: "expires within 30 days",
			mutate: func(t *testing.T, b *Bundle) {
				sans, err := requestedSANs(nil)
				if err != nil {
					t.Fatal(err)
				}
				tmpl := servingTemplate(sans, time.Now())
				tmpl.NotAfter = time.Now().Add(10 * 24 * time.Hour)
				certPEM, keyPEM, _, err := b.issue(tmpl)
				if err != nil {
					t.Fatal(err)
				}
				writeTestFile(t, b.ServingCertFile, certPEM)
				writeTestFile(t, b.ServingKeyFile, keyPEM)
			},
		},
		{
			name: "signed by another CA",
			mutate: func(t *testing.T, b *Bundle) {
				other := mustEnsure(t, t.TempDir(), nil)
				copyTestFile(t, other.ServingCertFile, b.ServingCertFile)
				copyTestFile(t, other.ServingKeyFile, b.ServingKeyFile)
			},
		},
		{
			name: "key does not match",
			mutate: func(t *testing.T, b *Bundle) {
				_, keyPEM, err := newKey()
				if err != nil {
					t.Fatal(err)
				}
				writeTestFile(t, b.ServingKeyFile, keyPEM)
			},
		},
		{
			name: "key missing",
			mutate: func(t *testing.T, b *Bundle) {
				if err := os.Remove(b.ServingKeyFile); err != nil {
					t.Fatal(err)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			first := mustEnsure(t, dir, nil)
			before := mustReadCert(t, first.ServingCertFile)
			if tc.mutate != nil {
				tc.mutate(t, first)
			}

			second := mustEnsure(t, dir, tc.extra)
			after := mustReadCert(t, second.ServingCertFile)
			if after.SerialNumber.Cmp(before.SerialNumber) == 0 {
				t.Fatalf("serving certificate kept (serial %v), want re-issued", after.SerialNumber)
			}
			if second.CACert.SerialNumber.Cmp(first.CACert.SerialNumber) != 0 {
				t.Errorf("CA re-created, want kept")
			}
			// The new pair must be usable: right key, right CA, requested names.
			if _, err := tls.LoadX509KeyPair(second.ServingCertFile, second.ServingKeyFile); err != nil {
				t.Errorf("re-issued pair unusable: %v", err)
			}
			if err := after.CheckSignatureFrom(second.CACert); err != nil {
				t.Errorf("re-issued certificate not signed by the CA: %v", err)
			}
			if d := time.Until(after.NotAfter); d < leafValidity-time.Hour {
				t.Errorf("re-issued certificate valid for %v, want about %v", d, leafValidity)
			}
			for _, san := range tc.extra {
				if err := after.VerifyHostname(san); err != nil {
					t.Errorf("re-issued certificate does not cover %s: %v", san, err)
				}
			}
		})
	}
}

func TestEnsureBadFiles(t *testing.T) {
	tests := []struct {
		name     string
		file     string // under pki/
		contents []byte // nil: remove the file
	}{
		{name: "corrupt CA cert", file: caCertName, contents: []byte("not a certificate\n")},
		{name: "corrupt CA key", file: caKeyName, contents: []byte("-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n")},
		{name: "missing CA key", file: caKeyName},
		{name: "corrupt serving cert", file: servingCertName, contents: []byte{}},
		{name: "corrupt serving key", file: servingKeyName, contents: []byte("garbage")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			mustEnsure(t, dir, nil)
			path := filepath.Join(dir, "pki", tc.file)
			if tc.contents == nil {
				if err := os.Remove(path); err != nil {
					t.Fatal(err)
				}
			} else {
				writeTestFile(t, path, tc.contents)
			}

			_, err := Ensure(dir, nil)
			if err == nil {
				t.Fatalf("Ensure succeeded, want an error about %s", path)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name %s", err, path)
			}
		})
	}
}

func TestEnsureRejectsBadSAN(t *testing.T) {
	for _, san := range []string{"https://berth.example", "under_score.example", "a b"} {
		if _, err := Ensure(t.TempDir(), []string{san}); err == nil || !strings.Contains(err.Error(), san) {
			t.Errorf("Ensure with SAN %q: err = %v, want an error naming it", san, err)
		}
	}
}

func TestWriteKubeconfig(t *testing.T) {
	const url = "https://127.0.0.1:6443"
	tests := []struct {
		name      string
		serverURL string // for the second write
		newCA     bool   // second write uses a bundle with a different CA
		mutate    func(t *testing.T, b *Bundle, path string)
		wantKept  bool
	}{
		{name: "same server and CA", serverURL: url, wantKept: true},
		{name: "other server URL", serverURL: "https://10.0.0.1:6443"},
		{name: "other CA", serverURL: url, newCA: true},
		{
			name:      "admin cert expires within 30 days",
			serverURL: url,
			mutate: func(t *testing.T, b *Bundle, path string) {
				tmpl := clientTemplate(kubeconfigUser, []string{groupMasters}, time.Now())
				tmpl.NotAfter = time.Now().Add(10 * 24 * time.Hour)
				certPEM, keyPEM, _, err := b.issue(tmpl)
				if err != nil {
					t.Fatal(err)
				}
				cfg, err := clientcmd.LoadFromFile(path)
				if err != nil {
					t.Fatal(err)
				}
				cfg.AuthInfos[kubeconfigUser].ClientCertificateData = certPEM
				cfg.AuthInfos[kubeconfigUser].ClientKeyData = keyPEM
				if err := clientcmd.WriteToFile(*cfg, path); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			// The admin certificate is fine but the cluster's CA data is not ours.
			name:      "CA data replaced",
			serverURL: url,
			mutate: func(t *testing.T, _ *Bundle, path string) {
				other := mustEnsure(t, t.TempDir(), nil)
				cfg, err := clientcmd.LoadFromFile(path)
				if err != nil {
					t.Fatal(err)
				}
				cfg.Clusters[kubeconfigCluster].CertificateAuthorityData = other.CAPEM
				if err := clientcmd.WriteToFile(*cfg, path); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name:      "corrupt file",
			serverURL: url,
			mutate: func(t *testing.T, _ *Bundle, path string) {
				writeTestFile(t, path, []byte("{not yaml"))
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := mustEnsure(t, t.TempDir(), nil)
			// A missing parent directory is created.
			path := filepath.Join(t.TempDir(), "dot-kube", "config")
			if err := b.WriteKubeconfig(path, url); err != nil {
				t.Fatal(err)
			}
			if tc.mutate != nil {
				tc.mutate(t, b, path)
			}
			before := readTestFile(t, path)

			writer := b
			if tc.newCA {
				writer = mustEnsure(t, t.TempDir(), nil)
			}
			if err := writer.WriteKubeconfig(path, tc.serverURL); err != nil {
				t.Fatal(err)
			}
			after := readTestFile(t, path)

			if kept := bytes.Equal(before, after); kept != tc.wantKept {
				t.Errorf("file kept = %v, want %v", kept, tc.wantKept)
			}
			if got := fileMode(t, path); got != 0o600 {
				t.Errorf("mode = %v, want 0600", got)
			}
			if !writer.kubeconfigCurrent(path, tc.serverURL, time.Now()) {
				t.Errorf("kubeconfig after write is not current for %s and the writer's CA:\n%s", tc.serverURL, after)
			}
		})
	}
}

// whoami is what the test handler reports back.
type whoami struct {
	OK     bool
	Name   string
	Groups []string
	Proto  int
}

func TestTLSRoundTrip(t *testing.T) {
	b := mustEnsure(t, t.TempDir(), nil)
	tlsConfig, err := b.TLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	auth := NewAuthenticator(b.CACert)
	var calls atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		user, ok := auth.Authenticate(r)
		if !ok {
			w.WriteHeader(http.StatusUnauthorized)
		}
		_ = json.NewEncoder(w).Encode(whoami{OK: ok, Name: user.Name, Groups: user.Groups, Proto: r.ProtoMajor})
	}))
	srv.TLS = tlsConfig
	// The server log is where a refused handshake shows; the client's error text
	// depends on HTTP/2 timing.
	var serverLog syncBuffer
	srv.Config.ErrorLog = log.New(&serverLog, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)

	// get sends one request with cfg and decodes the handler's answer.
	get := func(t *testing.T, cfg *rest.Config) (int, whoami, error) {
		t.Helper()
		hc, err := rest.HTTPClientFor(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(hc.CloseIdleConnections)
		resp, err := hc.Get(srv.URL + "/whoami")
		if err != nil {
			return 0, whoami{}, err
		}
		defer resp.Body.Close()
		var got whoami
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil {
			t.Fatalf("decode answer: %v", err)
		}
		return resp.StatusCode, got, nil
	}

	t.Run("admin kubeconfig", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "kubeconfig")
		if err := b.WriteKubeconfig(path, srv.URL); err != nil {
			t.Fatal(err)
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			t.Fatal(err)
		}
		status, got, err := get(t, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusOK || !got.OK || got.Name != "admin" {
			t.Fatalf("status %d, answer %+v; want 200 for admin", status, got)
		}
		for _, g := range []string{groupMasters, groupAuthenticated} {
			if !slices.Contains(got.Groups, g) {
				t.Errorf("groups %v lack %s", got.Groups, g)
			}
		}
		if got.Proto != 2 {
			t.Errorf("request used HTTP/%d, want HTTP/2", got.Proto)
		}
	})

	t.Run("no client certificate reaches the handler", func(t *testing.T) {
		before := calls.Load()
		status, got, err := get(t, &rest.Config{
			Host:            srv.URL,
			TLSClientConfig: rest.TLSClientConfig{CAData: b.CAPEM},
		})
		if err != nil {
			t.Fatal(err)
		}
		if calls.Load() != before+1 {
			t.Errorf("handler calls went from %d to %d, want one more", before, calls.Load())
		}
		if status != http.StatusUnauthorized || got.OK {
			t.Errorf("status %d, answer %+v; want 401 and ok=false", status, got)
		}
	})

	t.Run("client certificate from another CA gets 401", func(t *testing.T) {
		other := mustEnsure(t, t.TempDir(), nil)
		certPEM, keyPEM, err := other.IssueClientCert("admin", []string{groupMasters})
		if err != nil {
			t.Fatal(err)
		}
		status, got, err := get(t, &rest.Config{
			Host: srv.URL,
			TLSClientConfig: rest.TLSClientConfig{
				CAData:   b.CAPEM,
				CertData: certPEM,
				KeyData:  keyPEM,
			},
		})
		if err != nil {
			t.Fatalf("request failed (%v), want it to reach the handler and get 401", err)
		}
		if status != http.StatusUnauthorized || got.OK {
			t.Errorf("status %d, answer %+v; want 401 and ok=false for a foreign certificate", status, got)
		}
	})
}

func TestIssueClientCert(t *testing.T) {
	b := mustEnsure(t, t.TempDir(), nil)
	certPEM, keyPEM, err := b.IssueClientCert("alice", []string{"dev", "ops"})
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("certificate and key do not form a pair: %v", err)
	}
	leaf := pair.Leaf
	if leaf.Subject.CommonName != "alice" || !slices.Equal(leaf.Subject.Organization, []string{"dev", "ops"}) {
		t.Errorf("subject = %v, want CN=alice O=dev,ops", leaf.Subject)
	}
	roots := x509.NewCertPool()
	roots.AddCert(b.CACert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify for client auth: %v", err)
	}
	if d := time.Until(leaf.NotAfter); d < leafValidity-time.Hour || d > leafValidity {
		t.Errorf("valid for %v, want about %v", d, leafValidity)
	}

	if _, _, err := b.IssueClientCert("", nil); err == nil {
		t.Errorf("IssueClientCert with empty user succeeded, want an error")
	}
}

func TestAuthenticate(t *testing.T) {
	b := mustEnsure(t, t.TempDir(), nil)
	other := mustEnsure(t, t.TempDir(), nil)
	// issued returns the parsed client certificate a bundle issues for cn and orgs.
	issued := func(t *testing.T, from *Bundle, cn string, orgs ...string) *x509.Certificate {
		t.Helper()
		tmpl := clientTemplate(cn, orgs, time.Now())
		_, _, leaf, err := from.issue(tmpl)
		if err != nil {
			t.Fatal(err)
		}
		return leaf
	}
	state := func(c *x509.Certificate) *tls.ConnectionState {
		return &tls.ConnectionState{PeerCertificates: []*x509.Certificate{c}}
	}
	serving, err := tls.LoadX509KeyPair(b.ServingCertFile, b.ServingKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		state  *tls.ConnectionState
		want   User
		wantOK bool
	}{
		{name: "plain HTTP"},
		{name: "TLS without certificate", state: &tls.ConnectionState{}},
		{name: "certificate of another CA", state: state(issued(t, other, "admin", groupMasters))},
		{name: "serving certificate is not for client auth", state: state(serving.Leaf)},
		{name: "empty common name", state: state(issued(t, b, "", "dev"))},
		{
			name:   "user with groups",
			state:  state(issued(t, b, "alice", "dev", "ops")),
			want:   User{Name: "alice", Groups: []string{"dev", "ops", groupAuthenticated}},
			wantOK: true,
		},
		{
			name:   "already authenticated group is not repeated",
			state:  state(issued(t, b, "bob", groupAuthenticated)),
			want:   User{Name: "bob", Groups: []string{groupAuthenticated}},
			wantOK: true,
		},
	}
	auth := NewAuthenticator(b.CACert)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/", nil)
			r.TLS = tc.state
			got, ok := auth.Authenticate(r)
			if ok != tc.wantOK || got.Name != tc.want.Name || !slices.Equal(got.Groups, tc.want.Groups) {
				t.Errorf("Authenticate = %+v, %v; want %+v, %v", got, ok, tc.want, tc.wantOK)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for the server's goroutines and the test.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func writeTestFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func readTestFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func copyTestFile(t *testing.T, from, to string) {
	t.Helper()
	writeTestFile(t, to, readTestFile(t, from))
}
