package ingress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"time"
)

// listenRetry is how long the controller waits before trying again to bind an address
// that was in use.
const listenRetry = 5 * time.Second

// dialTimeout bounds a connection attempt to an endpoint; an endpoint that does not answer
// in time (a pod just gone) is skipped for the next one.
const dialTimeout = 2 * time.Second

// maxAttempts is how many endpoints a request without a body tries when connecting fails.
const maxAttempts = 3

// ServeHTTP routes a request by its Host header and path: to an endpoint of the matching
// backend, 503 when that backend has no ready endpoint, 404 when nothing matches.
func (c *Controller) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b := c.table.Load().Route(r.Host, r.URL.Path)
	switch {
	case b == nil:
		http.Error(w, "404 not found: no Ingress rule matches this host and path", http.StatusNotFound)
	case len(b.Endpoints) == 0:
		http.Error(w, "503 service unavailable: "+b.Why, http.StatusServiceUnavailable)
	default:
		c.proxy.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), backendKey{}, b)))
	}
}

// backendKey carries the chosen *Backend from ServeHTTP to the transport.
type backendKey struct{}

// newReverseProxy proxies to the endpoint the transport picks, keeping the client's Host
// header (backends see the name the client asked for, as with ingress-nginx) and adding
// X-Forwarded-For, -Host and -Proto.
func newReverseProxy(log *slog.Logger) http.Handler {
	base := &http.Transport{
		Proxy:                 nil, // never an HTTP proxy from the environment: endpoints are pod IPs
		DialContext:           (&net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          256,
		MaxIdleConnsPerHost:   32,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "endpoint" // the transport puts the endpoint here
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport: &endpointTransport{base: base},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if r.Context().Err() != nil {
				return // the client went away
			}
			b, _ := r.Context().Value(backendKey{}).(*Backend)
			log.Debug("ingress: backend failed", "backend", b, "err", err)
			http.Error(w, fmt.Sprintf("502 bad gateway: backend %v: %v", b, err), http.StatusBadGateway)
		},
	}
}

// endpointTransport sends a request to the next endpoint of its backend, round robin. A
// request without a body whose connection fails (a pod gone before the table knew) is
// sent to the next endpoint, up to maxAttempts in all: nothing of it reached a server.
type endpointTransport struct{ base http.RoundTripper }

func (t *endpointTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	b, _ := r.Context().Value(backendKey{}).(*Backend)
	if b == nil {
		return nil, errors.New("ingress: no backend for the request")
	}
	attempts := min(maxAttempts, len(b.Endpoints))
	var err error
	for i := range attempts {
		ep := b.pick()
		out := r
		if i > 0 {
			out = r.Clone(r.Context())
		}
		out.URL.Host = ep
		var resp *http.Response
		resp, err = t.base.RoundTrip(out)
		if err == nil {
			return resp, nil
		}
		var op *net.OpError
		if !errors.As(err, &op) || op.Op != "dial" || (r.Body != nil && r.Body != http.NoBody) || r.Context().Err() != nil {
			break
		}
	}
	return nil, err
}

// serve binds addr and serves srv on it until ctx ends, retrying the bind while the
// address is in use; each distinct failure is logged once.
func (c *Controller) serve(ctx context.Context, srv *http.Server, addr string, useTLS bool) {
	log := c.cfg.Log.With("addr", addr, "tls", useTLS)
	var lastErr string
	for {
		ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
		if err == nil {
			log.Info("ingress listening")
			shutDown := make(chan struct{})
			stop := context.AfterFunc(ctx, func() {
				defer close(shutDown)
				sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				defer cancel()
				_ = srv.Shutdown(sctx)
			})
			if useTLS {
				err = srv.ServeTLS(ln, "", "")
			} else {
				err = srv.Serve(ln)
			}
			if !stop() {
				<-shutDown // ctx ended: Shutdown closes the connections
				return
			}
			err = fmt.Errorf("serving stopped: %w", err)
		}
		if ctx.Err() != nil {
			return
		}
		if err.Error() != lastErr {
			log.Error("ingress cannot listen; retrying", "err", err, "every", listenRetry)
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(listenRetry):
		}
	}
}
