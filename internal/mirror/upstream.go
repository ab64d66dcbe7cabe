package mirror

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/localds/localds/internal/httpclient"
)

// Scheme says how the mirror talks to a datastore. containerd tells the
// mirror only the host (ns), never the scheme, so the mirror decides.
type Scheme string

const (
	// SchemeDefault is SchemeHTTPS when a CA is configured
	// (Options.TLS.RootCAs set: daemon datastore-ca), else SchemeAuto. A
	// datastore that has a CA speaks TLS; whoever answers in plain HTTP
	// on its address is not it.
	SchemeDefault Scheme = ""
	// SchemeAuto tries HTTPS first and falls back to plain HTTP when the
	// datastore answers TLS with HTTP (or, for a host without a port, when
	// nothing listens on 443), the way containerd treats localhost and
	// resolver.New treats .local hosts. The fallback is remembered per
	// host for plainMemory, so it costs one extra round trip, not one per
	// request. Content is digest-verified either way; only tag lookups
	// trust the transport.
	SchemeAuto Scheme = "auto"
	// SchemeHTTPS only speaks TLS, verifying the certificate against the
	// .local name, and never falls back.
	SchemeHTTPS Scheme = "https"
	// SchemeHTTP only speaks plain HTTP.
	SchemeHTTP Scheme = "http"
)

// errPlainCredentials: a request with credentials would go over plain
// HTTP, where anyone on the bridge reads them.
var errPlainCredentials = errors.New("refusing to send credentials (Authorization) over plain HTTP, where anyone on the bridge can read them; serve the datastore over HTTPS, or allow it with allow-plain-http-credentials")

const (
	// connectAttempts bounds how often one upstream request is sent when
	// the connection fails before a response arrives.
	connectAttempts = 3
	// plainMemory is how long SchemeAuto remembers that a host speaks
	// plain HTTP.
	plainMemory = 10 * time.Minute
	userAgent   = "localds-mirror"
)

// forwardedRequestHeaders are the client headers the datastore needs: the
// media types containerd accepts and its credentials. Accept-Encoding is
// deliberately absent: the mirror verifies the bytes of the blob, so the
// datastore must send them unencoded.
var forwardedRequestHeaders = []string{"Accept", "Authorization"}

// passedResponseHeaders are the datastore's headers a registry client
// uses. Everything else (cookies, Location, hop-by-hop headers) stays
// between the mirror and the datastore.
var passedResponseHeaders = []string{
	"Content-Type", "Docker-Content-Digest", "Docker-Distribution-Api-Version",
	"Www-Authenticate", "Etag", "Last-Modified", "Warning", "Accept-Ranges", "Oci-Subject",
}

// upstream sends requests to .local datastores.
type upstream struct {
	transport  *http.Transport
	client     *http.Client
	scheme     Scheme
	plainCreds bool // Options.AllowPlainHTTPCredentials
	forget     func(host string)

	mu    sync.Mutex
	plain map[string]time.Time // SchemeAuto: host -> until when it speaks plain HTTP
}

func newUpstream(opts Options, forget func(host string)) *upstream {
	tlsConf := opts.TLS
	if tlsConf == nil {
		tlsConf, _ = httpclient.ClientTLS("") // the system roots: cannot fail
	}
	tr := &http.Transport{
		// No proxy: datastores sit on internal bridges that no proxy reaches.
		Proxy:                 nil,
		DialContext:           opts.DialContext,
		TLSClientConfig:       tlsConf.Clone(),
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: opts.ResponseHeaderTimeout,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       30 * time.Second,
		// The mirror hashes the bytes as stored; a transparently
		// decompressed body would never match its digest.
		DisableCompression: true,
	}
	u := &upstream{transport: tr, scheme: opts.Scheme, plainCreds: opts.AllowPlainHTTPCredentials, forget: forget, plain: map[string]time.Time{}}
	u.client = &http.Client{
		Transport: tr,
		// The mirror is a door to datastores on internal bridges, not an
		// open proxy a datastore could point at any address.
		CheckRedirect: httpclient.CheckRedirect,
	}
	return u
}

// do sends method host+path with hdr to the datastore, choosing the
// scheme, and retries (bounded) when no response arrives: the dialer
// already re-resolved once, but a connection can also break before the
// response, e.g. an idle pooled connection to the old address.
func (u *upstream) do(ctx context.Context, method, host, path string, hdr http.Header) (*http.Response, error) {
	var lastErr error
	for attempt := range connectAttempts {
		if attempt > 0 {
			u.reset(host)
			if err := httpclient.Wait(ctx, time.Duration(attempt)*100*time.Millisecond); err != nil {
				return nil, fmt.Errorf("%s %s%s: %w (after: %w)", method, host, path, err, lastErr)
			}
		}
		resp, err := u.send(ctx, method, host, path, hdr)
		if err == nil {
			return resp, nil
		}
		lastErr = err
		var certErr *tls.CertificateVerificationError
		if ctx.Err() != nil || errors.As(err, &certErr) || errors.Is(err, errPlainCredentials) || errors.Is(err, errTLSRequired) || errdefs.IsConflict(err) {
			break // a wrong certificate stays wrong, and so does a refusal or a name two addresses claim
		}
		log.G(ctx).WithError(err).WithFields(log.Fields{"host": host, "attempt": attempt + 1}).
			Info("request to datastore failed")
	}
	return nil, lastErr
}

// reset drops what the mirror knows about host's address: the
// discoverer's cache entry and pooled connections (which may lead to
// the old address).
func (u *upstream) reset(host string) {
	if u.forget != nil {
		u.forget(host)
	}
	u.transport.CloseIdleConnections()
}

func (u *upstream) send(ctx context.Context, method, host, path string, hdr http.Header) (*http.Response, error) {
	scheme := u.schemeFor(host)
	resp, err := u.sendScheme(ctx, scheme, method, host, path, hdr)
	if err != nil && u.scheme == SchemeHTTPS && shouldFallBack(err, host) {
		// What would make SchemeAuto fall back: say why it does not.
		return nil, fmt.Errorf("%w: %w", errTLSRequired, err)
	}
	if err != nil && u.scheme == SchemeAuto && scheme == "https" && shouldFallBack(err, host) {
		log.G(ctx).WithError(err).WithField("host", host).Debug("datastore does not speak TLS; using plain HTTP")
		u.mu.Lock()
		u.plain[host] = time.Now().Add(plainMemory)
		u.mu.Unlock()
		return u.sendScheme(ctx, "http", method, host, path, hdr)
	}
	return resp, err
}

func (u *upstream) sendScheme(ctx context.Context, scheme, method, host, path string, hdr http.Header) (*http.Response, error) {
	url := scheme + "://" + host + path
	if scheme == "http" && !u.plainCreds && hdr.Get("Authorization") != "" {
		return nil, fmt.Errorf("%s %s: %w", method, url, errPlainCredentials)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	req.Header = hdr.Clone()
	req.Header.Set("User-Agent", userAgent)
	resp, err := u.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	return resp, nil
}

func (u *upstream) schemeFor(host string) string {
	switch u.scheme {
	case SchemeHTTP:
		return "http"
	case SchemeHTTPS:
		return "https"
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if until, ok := u.plain[host]; ok {
		if time.Now().Before(until) {
			return "http"
		}
		delete(u.plain, host)
	}
	return "https"
}

// errTLSRequired: the datastore does not speak TLS where it must.
var errTLSRequired = errors.New("TLS is required for this datastore (a datastore CA is configured, or datastore-tls = \"required\") and the answer was not TLS: the mirror never falls back to plain HTTP for it")

// shouldFallBack mirrors containerd's httpFallback: a plain-HTTP answer
// to the TLS hello, a handshake timeout, or, when no port was given (so
// https meant 443 and http means 80), nothing listening on 443.
func shouldFallBack(err error, host string) bool {
	var rh tls.RecordHeaderError
	if errors.Is(err, http.ErrSchemeMismatch) || (errors.As(err, &rh) && string(rh.RecordHeader[:]) == "HTTP/") {
		return true
	}
	if strings.Contains(err.Error(), "TLS handshake timeout") {
		return true
	}
	if _, _, serr := net.SplitHostPort(host); serr != nil {
		return errors.Is(err, syscall.ECONNREFUSED)
	}
	return false
}

// upstreamHeaders is what the mirror sends the datastore for r.
func upstreamHeaders(r *http.Request) http.Header {
	h := http.Header{}
	for _, k := range forwardedRequestHeaders {
		if v := r.Header.Values(k); len(v) > 0 {
			h[http.CanonicalHeaderKey(k)] = append([]string(nil), v...)
		}
	}
	return h
}

// copyResponseHeaders passes the datastore's client-relevant headers on.
func copyResponseHeaders(dst, src http.Header) {
	for _, k := range passedResponseHeaders {
		if v := src.Values(k); len(v) > 0 {
			dst[http.CanonicalHeaderKey(k)] = append([]string(nil), v...)
		}
	}
}
