// Package mirror is the registry mirror containerd pulls .local images
// through. A hosts.toml entry (see HostsTOML) makes containerd send
//
//	GET|HEAD /v2/<name>/manifests/<ref>?ns=<original host>
//	GET|HEAD /v2/<name>/blobs/<digest>?ns=<original host>
//
// to the mirror on loopback. For a .local ns the mirror finds the
// datastore with mDNS (resolver), fetches from it over the right bridge
// and verifies while streaming; for any other host it answers 404 and
// containerd goes to that registry itself.
//
// Decisions a user can rely on:
//
//   - Clients. With Options.ClientKey set (the daemon always sets it), a
//     request for a .local host is served only if it carries the key in
//     the KeyHeader header, which `localds hosts` writes into hosts.toml
//     for containerd (clientkey.go); anything else gets 401. The API
//     version check (/v2/) and the 404 for other hosts stay open.
//   - Scheme. containerd tells the mirror the host, not the scheme.
//     Options.Scheme picks it. By default a mirror with a configured CA
//     (Options.TLS.RootCAs) speaks only HTTPS and never falls back;
//     without one it tries HTTPS (the certificate is checked against the
//     .local name) and falls back to plain HTTP the way containerd does
//     for localhost. Credentials (Authorization) are never sent over plain
//     HTTP unless Options.AllowPlainHTTPCredentials.
//   - Verification. A whole blob is hashed as it passes; the last chunk is
//     held back until the digest (and length) matched, and on a mismatch
//     the connection is cut (http.ErrAbortHandler), so the client never
//     sees a complete body of wrong content and commits nothing. The
//     failure is remembered per (host, digest) for a minute (badblob.go):
//     containerd's Range retries and later pulls of that blob get 502
//     with a DIGEST_INVALID error naming the mismatch at once, without a
//     new download; a good blob pushed again is served after that minute. A
//     manifest is read whole and answered only if it matches its digest;
//     by tag, Docker-Content-Digest is the digest of the bytes sent.
//   - Range. An open range ("bytes=N-", how containerd resumes, also
//     right after the mirror cut a bad response) is answered from a full
//     fetch whose first N bytes are hashed but not sent, so it is verified
//     like a whole blob and a bad blob fails again instead of being
//     completed by the resume. A bounded range ("bytes=N-M", containerd's
//     parallel chunks) is forwarded; a part cannot be verified on its
//     own, so the mirror checks that the datastore sent exactly the bytes
//     asked for (Content-Range, length), and the content store verifies
//     the whole digest when containerd commits. A bounded range that is
//     the whole blob is verified.
//   - Address change. A datastore transfer that breaks (reset, short body,
//     or no data for Options.StallTimeout, which is what a vanished
//     address looks like) is resumed: the host is forgotten, resolved
//     again, and the rest requested with Range, up to Options.MaxResumes
//     times within Options.ResumeTimeout. The client sees one body.
//   - Auth. Authorization headers go to the datastore and its 401
//     challenges (WWW-Authenticate) come back, so Basic auth works as is.
//     A Bearer challenge whose token realm is a .local URL is rewritten
//     to the mirror's token endpoint, which relays containerd's token
//     requests to that realm (auth.go); other realms are left alone and
//     containerd reaches them itself.
//   - Content store. With Options.Store set, blobs already in the CAS are
//     served from it without asking the datastore; with Options.Prefetch
//     too, serving an image manifest fetches its blobs into the CAS in
//     parallel (prefetch.go).
package mirror

import (
	"context"
	_ "crypto/sha256" // digest algorithms the mirror verifies
	_ "crypto/sha512"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/log"

	"github.com/localds/localds/internal/prefetch"
	"github.com/localds/localds/resolver"
)

// Defaults for Options.
const (
	DefaultMaxResumes            = 5
	DefaultResumeTimeout         = 2 * time.Minute
	DefaultOutageTimeout         = 10 * time.Minute
	DefaultOutageBackoff         = time.Second
	DefaultStallTimeout          = 15 * time.Second
	DefaultResponseHeaderTimeout = 30 * time.Second
	// maxErrorBody bounds the datastore error bodies passed on.
	maxErrorBody = 64 << 10
)

// Options configure a Mirror.
type Options struct {
	// Discoverer resolves .local hosts; required unless DialContext is
	// set. It is also told to forget a host whose transfer broke.
	Discoverer *resolver.Discoverer
	// DialContext overrides resolver.NewDialer(Discoverer).DialContext;
	// tests use it to reach datastores on loopback.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Store, if set, serves blobs it already holds (see serveFromStore).
	Store content.Store
	// TLS is the client configuration for HTTPS datastores (e.g. a CA).
	TLS *tls.Config
	// Scheme picks HTTP or HTTPS for datastores; default SchemeDefault.
	Scheme Scheme
	// AllowPlainHTTPCredentials lets the mirror forward a client's
	// Authorization (and token requests) to a datastore over plain HTTP,
	// where anyone on the bridge can read them; refused by default.
	AllowPlainHTTPCredentials bool
	// ClientKey, if set, is the secret a request for a .local host must
	// carry in KeyHeader (see clientkey.go); empty serves anyone.
	ClientKey string
	// MaxLayers bounds the layers of a manifest the mirror serves (and
	// prefetches); 0 means DefaultMaxLayers.
	MaxLayers int
	// MaxResumes bounds resumes of one transfer; 0 means
	// DefaultMaxResumes, negative disables resuming.
	MaxResumes int
	// ResumeTimeout bounds the time from a transfer's first failure to
	// its last resume attempt while the datastore answers.
	ResumeTimeout time.Duration
	// OutageTimeout is how long a transfer in flight waits for a
	// datastore that does not answer at all (a restarting container);
	// 0 means DefaultOutageTimeout.
	OutageTimeout time.Duration
	// OutageBackoff caps the wait between tries during an outage, so a
	// returning datastore is found within about that long; 0 means
	// DefaultOutageBackoff.
	OutageBackoff time.Duration
	// StallTimeout is how long a datastore may send nothing before the
	// transfer counts as broken.
	StallTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for a datastore's response.
	ResponseHeaderTimeout time.Duration
	// Prefetch fetches the config and layers of every image manifest the
	// mirror serves into Store in the background (see prefetch.go), so
	// containerd finds them there instead of downloading them one by one.
	// Needs Store.
	Prefetch bool
	// PrefetchConcurrency bounds simultaneous prefetches; 0 means
	// DefaultPrefetchConcurrency.
	PrefetchConcurrency int
	// PrefetchTimeout bounds one prefetched blob; 0 means
	// DefaultPrefetchTimeout.
	PrefetchTimeout time.Duration
	// Prefetches records the blobs being prefetched, and offers each to
	// its Stager (the daemon's extracts layers while they download). The
	// daemon shares it with the store containerd sees (prefetch.Store);
	// nil with Prefetch means a Tracker of the mirror's own, without a
	// Stager.
	Prefetches *prefetch.Tracker
}

// Mirror is the http.Handler for /v2/. It is safe for concurrent use.
type Mirror struct {
	opts     Options
	up       *upstream
	stats    counters
	prefetch *prefetcher // nil unless Options.Prefetch
	bad      *badBlobs   // recent verification failures (badblob.go)
}

// New returns a Mirror with opts, defaults filled in.
func New(opts Options) (*Mirror, error) {
	if opts.DialContext == nil {
		if opts.Discoverer == nil {
			return nil, errors.New("mirror: Options.Discoverer is required (or DialContext)")
		}
		opts.DialContext = resolver.NewDialer(opts.Discoverer).DialContext
	}
	switch opts.Scheme {
	case SchemeDefault:
		opts.Scheme = SchemeAuto
		if opts.TLS != nil && opts.TLS.RootCAs != nil {
			opts.Scheme = SchemeHTTPS // a configured CA means TLS, always
		}
	case SchemeAuto, SchemeHTTP, SchemeHTTPS:
	default:
		return nil, fmt.Errorf("mirror: scheme %q: want %q, %q, %q or empty for the default", opts.Scheme, SchemeHTTPS, SchemeAuto, SchemeHTTP)
	}
	if opts.ClientKey != "" {
		if err := checkKey(opts.ClientKey); err != nil {
			return nil, fmt.Errorf("mirror: client key: %w", err)
		}
	}
	if opts.MaxLayers <= 0 {
		opts.MaxLayers = DefaultMaxLayers
	}
	switch {
	case opts.MaxResumes == 0:
		opts.MaxResumes = DefaultMaxResumes
	case opts.MaxResumes < 0:
		opts.MaxResumes = 0
	}
	if opts.ResumeTimeout <= 0 {
		opts.ResumeTimeout = DefaultResumeTimeout
	}
	if opts.OutageTimeout <= 0 {
		opts.OutageTimeout = DefaultOutageTimeout
	}
	if opts.OutageBackoff <= 0 {
		opts.OutageBackoff = DefaultOutageBackoff
	}
	if opts.StallTimeout <= 0 {
		opts.StallTimeout = DefaultStallTimeout
	}
	if opts.ResponseHeaderTimeout <= 0 {
		opts.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if opts.Prefetch && opts.Store == nil {
		return nil, errNoStore
	}
	if opts.PrefetchConcurrency <= 0 {
		opts.PrefetchConcurrency = DefaultPrefetchConcurrency
	}
	if opts.PrefetchTimeout <= 0 {
		opts.PrefetchTimeout = DefaultPrefetchTimeout
	}
	var forget func(string)
	if opts.Discoverer != nil {
		forget = opts.Discoverer.Forget
	}
	m := &Mirror{opts: opts, up: newUpstream(opts, forget), bad: newBadBlobs(badBlobTTL, badBlobMax)}
	if opts.Prefetch {
		if opts.Prefetches == nil {
			opts.Prefetches = prefetch.NewTracker(nil)
			m.opts.Prefetches = opts.Prefetches
		}
		m.prefetch = newPrefetcher(m, opts.Prefetches, opts.PrefetchConcurrency)
	}
	return m, nil
}

// Close stops prefetches (waiting a bounded time for them) and drops
// pooled datastore connections.
func (m *Mirror) Close() error {
	if m.prefetch != nil {
		m.prefetch.close()
	}
	m.up.transport.CloseIdleConnections()
	return nil
}

// ServeHTTP serves the registry API subset containerd pulls with.
func (m *Mirror) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	m.stats.requests.Add(1)
	ctx := log.WithLogger(r.Context(), log.G(r.Context()).WithFields(log.Fields{
		"method": r.Method, "path": r.URL.EscapedPath(), "ns": r.URL.Query().Get("ns"),
	}))
	if r.URL.EscapedPath() == tokenPath {
		if m.opts.ClientKey != "" && !keyMatches(r, m.opts.ClientKey) {
			m.refuseClient(w, r)
			return
		}
		m.serveToken(ctx, w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		m.stats.rejected.Add(1)
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, r, http.StatusMethodNotAllowed, codeUnsupported, fmt.Sprintf("method %s: the mirror only pulls (GET, HEAD)", r.Method))
		return
	}
	if p := r.URL.EscapedPath(); p == "/v2/" || p == "/v2" {
		// The API version check clients make before anything else.
		h := w.Header()
		h.Set("Docker-Distribution-API-Version", "registry/2.0")
		h.Set("Content-Type", "application/json")
		h.Set("Content-Length", "3")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodGet {
			_, _ = io.WriteString(w, "{}\n")
		}
		return
	}
	t, ok, err := parseTarget(r)
	if err != nil {
		m.stats.rejected.Add(1)
		var re *requestError
		if !errors.As(err, &re) {
			re = &requestError{status: http.StatusBadRequest, code: codeUnsupported, message: err.Error()}
		}
		log.G(ctx).WithError(err).Info("mirror request refused")
		writeError(w, r, re.status, re.code, re.message)
		return
	}
	if !ok {
		m.stats.notLocal.Add(1)
		msg := "no ns parameter: the mirror serves hosts.toml mirror requests for .local registries only"
		if t.host != "" {
			msg = fmt.Sprintf("%s is not a .local host; fetch it from the registry itself", t.host)
		}
		writeError(w, r, http.StatusNotFound, codeNameUnknown, msg)
		return
	}
	if m.opts.ClientKey != "" && !keyMatches(r, m.opts.ClientKey) {
		log.G(ctx).Info("mirror request without the client key refused")
		m.refuseClient(w, r)
		return
	}
	ctx = log.WithLogger(ctx, log.G(ctx).WithField("ref", t.ref))
	if t.kind == kindManifest {
		m.serveManifest(ctx, w, r, t)
		return
	}
	if t.kind == kindReferrers {
		m.serveReferrers(ctx, w, r, t) // referrers.go
		return
	}
	m.serveBlob(ctx, w, r, t)
}

// unavailable answers 502 when the datastore could not be reached or
// misbehaved before the response started.
func (m *Mirror) unavailable(ctx context.Context, w http.ResponseWriter, r *http.Request, t target, err error) {
	m.badGateway(ctx, w, r, t, codeUnavailable, err)
}

func (m *Mirror) badGateway(ctx context.Context, w http.ResponseWriter, r *http.Request, t target, code string, err error) {
	m.stats.upstreamErrors.Add(1)
	if ctx.Err() != nil {
		return // the client is gone; nobody reads the answer
	}
	log.G(ctx).WithError(err).WithField("host", t.host).Error("datastore request failed")
	writeError(w, r, http.StatusBadGateway, code, fmt.Sprintf("datastore %s: %v", t.host, err))
}

// passError relays a datastore's error response: status, challenge and
// (bounded) body, so the client sees the registry's own words.
func (m *Mirror) passError(ctx context.Context, w http.ResponseWriter, r *http.Request, resp *http.Response) {
	status := resp.StatusCode
	if status < 400 || status > 599 {
		m.badGateway(ctx, w, r, target{host: resp.Request.URL.Host}, codeUnavailable, fmt.Errorf("unexpected answer %s", resp.Status))
		return
	}
	if status >= 500 {
		m.stats.upstreamErrors.Add(1)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	h := w.Header()
	copyResponseHeaders(h, resp.Header)
	if status == http.StatusUnauthorized {
		rewriteChallenges(h, r)
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	if r.Method != http.MethodHead {
		_, _ = w.Write(body)
	}
	log.G(ctx).WithField("status", resp.Status).Debug("datastore error passed on")
}

// Stats are the mirror's counters since New, for metrics.
type Stats struct {
	Requests        uint64 // every request
	NotLocal        uint64 // answered 404 because ns was not .local
	Unauthorized    uint64 // answered 401: no valid client key
	Rejected        uint64 // refused as malformed (4xx before any upstream request)
	ManifestsServed uint64 // manifests answered (verified by digest, digested by tag)
	BlobsServed     uint64 // whole blobs streamed and verified
	PartialsServed  uint64 // blob ranges streamed (length-checked)
	StoreHits       uint64 // blobs answered from the content store
	BytesServed     uint64 // body bytes sent to clients
	Resumes         uint64 // datastore transfers resumed or retried after a break
	VerifyFailures  uint64 // digest or length mismatches (response aborted or refused)
	KnownBad        uint64 // blob requests refused at once: it failed verification within the last minute
	UpstreamErrors  uint64 // datastore unreachable, 5xx, or transfer lost
	Prefetched      uint64 // blobs prefetched into the store
	PrefetchFailed  uint64 // prefetches that failed (the blob is fetched on request)
}

type counters struct {
	requests, notLocal, unauthorized, rejected, manifestsServed, blobsServed, partialsServed,
	storeHits, bytesServed, resumes, verifyFailures, knownBad, upstreamErrors,
	prefetched, prefetchFailures atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (m *Mirror) Stats() Stats {
	c := &m.stats
	return Stats{
		Requests: c.requests.Load(), NotLocal: c.notLocal.Load(), Unauthorized: c.unauthorized.Load(), Rejected: c.rejected.Load(),
		ManifestsServed: c.manifestsServed.Load(), BlobsServed: c.blobsServed.Load(),
		PartialsServed: c.partialsServed.Load(), StoreHits: c.storeHits.Load(),
		BytesServed: c.bytesServed.Load(), Resumes: c.resumes.Load(),
		VerifyFailures: c.verifyFailures.Load(), KnownBad: c.knownBad.Load(), UpstreamErrors: c.upstreamErrors.Load(),
		Prefetched: c.prefetched.Load(), PrefetchFailed: c.prefetchFailures.Load(),
	}
}
