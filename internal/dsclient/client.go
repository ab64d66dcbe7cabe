package dsclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/containerd/errdefs"

	"github.com/localds/localds/internal/httpclient"
)

const (
	// responseHeaderTimeout bounds the wait for a status line: a datastore
	// on a bridge answers in milliseconds, one that went away never does.
	responseHeaderTimeout = 30 * time.Second
)

// newClient builds the HTTP client for one source: dials through dial
// (the .local resolver), verifies TLS against the URL's host name with
// the datastore's chain, follows redirects by httpclient's policy, and adds
// credentials only to requests for the datastore's own host:port.
//
// dialed is told the remote address of every new connection, so errors
// can name the address tried even when TLS fails before any request.
func newClient(src Source, dial func(ctx context.Context, network, addr string) (net.Conn, error), dialed func(addr string)) (*http.Client, *http.Transport, error) {
	tlsCfg, _ := httpclient.ClientTLS("") // the system roots: cannot fail
	if src.Datastore != nil {
		var err error
		if tlsCfg, err = src.Datastore.TLSConfig(); err != nil {
			return nil, nil, err
		}
	}
	if dial == nil {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		dial = d.DialContext
	}
	base := dial
	dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := base(ctx, network, addr)
		if err == nil {
			dialed(conn.RemoteAddr().String())
		}
		return conn, err
	}
	tr := &http.Transport{
		// No proxy from the environment: a .local datastore is on the
		// node's own bridge, and a proxy would both miss it and see
		// credentials.
		Proxy:       nil,
		DialContext: dial,
		// ServerName stays empty: net/http sets it from the URL host, so
		// the certificate is checked against the .local name (or the IP
		// when the URL has one) whatever address the dialer picked.
		TLSClientConfig:       tlsCfg,
		TLSHandshakeTimeout:   15 * time.Second,
		ResponseHeaderTimeout: responseHeaderTimeout,
		// Compression would make byte offsets meaningless for Range.
		DisableCompression: true,
		// HTTP/1.1 only: one stream per download, no HTTP/2 flow-control
		// window to throttle a fast bridge.
		TLSNextProto:        map[string]func(string, *tls.Conn) http.RoundTripper{},
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     30 * time.Second,
		ReadBufferSize:      256 << 10,
	}
	var rt http.RoundTripper = tr
	if src.Datastore != nil && src.Datastore.HasCredentials() {
		rt = &authTransport{ds: *src.Datastore, next: tr}
	}
	client := &http.Client{
		Transport:     rt,
		CheckRedirect: checkRedirect,
	}
	return client, tr, nil
}

// checkRedirect is httpclient's redirect policy; a refused redirect is
// final, another try would be refused the same way.
func checkRedirect(req *http.Request, via []*http.Request) error {
	return permanent(httpclient.CheckRedirect(req, via))
}

// authTransport adds the datastore's credentials to requests for its own
// scheme host and port, and refuses to send them over plain http unless
// the config allows it. Any other request (a redirect that somehow got
// here, an ad-hoc URL) goes out without them.
type authTransport struct {
	ds   Datastore
	next http.RoundTripper
}

func (a *authTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if !a.ownHost(req) {
		return a.next.RoundTrip(req)
	}
	if req.URL.Scheme != "https" && !a.ds.AllowPlainHTTPCredentials {
		return nil, permanent(fmt.Errorf("%s: refusing to send credentials over plain http to %s (set allow_plain_http_credentials = true to allow it): %w",
			a.ds, req.URL.Host, errdefs.ErrPermissionDenied))
	}
	req = req.Clone(req.Context())
	if a.ds.Token != "" {
		req.Header.Set("Authorization", "Bearer "+a.ds.Token)
	} else {
		req.SetBasicAuth(a.ds.Username, a.ds.Password)
	}
	return a.next.RoundTrip(req)
}

// ownHost: same host name (case-insensitive) and same effective port as
// the configured fqdn, the port defaulting by the request's scheme.
func (a *authTransport) ownHost(req *http.Request) bool {
	host, port, err := net.SplitHostPort(a.ds.FQDN)
	if err != nil {
		host, port = a.ds.FQDN, ""
	}
	host = strings.TrimSuffix(host, ".")
	if !strings.EqualFold(host, strings.TrimSuffix(req.URL.Hostname(), ".")) {
		return false
	}
	return httpclient.EffectivePort(req.URL.Scheme, port) == httpclient.EffectivePort(req.URL.Scheme, req.URL.Port())
}

// permanentError marks an error that a retry cannot fix (a refused
// redirect, a bad certificate, a 404, a local disk error).
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(err error) error {
	if err == nil || isPermanent(err) {
		return err
	}
	return &permanentError{err}
}

func isPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// classify decides whether a failed round trip is worth another try:
// TLS verification failures and refusals are final; resets, EOFs,
// timeouts and refused connects are not (the datastore may be restarting
// or have moved, and the dialer re-resolves).
func classify(err error) error {
	// net/http's *url.Error repeats the method and URL the caller already
	// names; keep what went wrong.
	var uerr *url.Error
	if errors.As(err, &uerr) && uerr.Err != nil {
		err = uerr.Err
	}
	var certErr *tls.CertificateVerificationError
	var recErr tls.RecordHeaderError
	var alert tls.AlertError
	switch {
	case isPermanent(err):
		return err
	case errors.As(err, &certErr), errors.As(err, &recErr), errors.As(err, &alert):
		return permanent(err)
	}
	return err
}

// statusError turns an unexpected status into an error; 5xx, 408 and 429
// are retried, the rest are final.
func statusError(resp *http.Response) error {
	err := fmt.Errorf("%s", resp.Status)
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return permanent(fmt.Errorf("%w: %w", err, errdefs.ErrNotFound))
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return permanent(fmt.Errorf("%w: %w", err, errdefs.ErrPermissionDenied))
	case resp.StatusCode >= 500, resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests:
		return fmt.Errorf("%w: %w", err, errdefs.ErrUnavailable)
	default:
		return permanent(fmt.Errorf("%w: %w", err, errdefs.ErrFailedPrecondition))
	}
}
