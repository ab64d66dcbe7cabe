package mirror

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/localds/localds/internal/httpclient"
)

// The datastore name EVE-OS documents; unit tests reach it on loopback
// through Options.DialContext.
const (
	dsName = "ubuntu-4321-http-server.local"
	dsHost = dsName + ":5000"
)

// fakeRegistry is a datastore for unit tests: blobs and manifests in
// memory, with switches for the ways a datastore can misbehave.
type fakeRegistry struct {
	t testing.TB

	mu        sync.Mutex
	blobs     map[digest.Digest][]byte // what is served for a digest
	manifests map[string]fakeManifest  // by tag and by digest
	requests  []*http.Request          // copies of every request seen

	// Misbehaviour, applied to blob GETs.
	cutAfter   int64         // > 0: abort the connection after this many body bytes
	stallAfter int64         // > 0: send this many bytes, then nothing
	chunked    bool          // send blobs without Content-Length
	basicAuth  string        // "user:pass" required, with a Basic challenge
	bearer     bool          // require a bearer token, with a Bearer challenge
	tokenAuth  string        // "user:pass": token auth with the token service on the datastore itself
	release    chan struct{} // closed at cleanup: ends stalled handlers
	onBreak    func()        // called when a response is cut or stalls
}

type fakeManifest struct {
	body      []byte
	mediaType string
}

func newFakeRegistry(t testing.TB) *fakeRegistry {
	f := &fakeRegistry{t: t, blobs: map[digest.Digest][]byte{}, manifests: map[string]fakeManifest{}, release: make(chan struct{})}
	t.Cleanup(func() { close(f.release) })
	return f
}

// addBlob stores random content of size bytes and returns its digest.
func (f *fakeRegistry) addBlob(size int) (digest.Digest, []byte) {
	b := make([]byte, size)
	_, _ = rand.Read(b)
	d := digest.FromBytes(b)
	f.mu.Lock()
	f.blobs[d] = b
	f.mu.Unlock()
	return d, b
}

func (f *fakeRegistry) addManifest(tag string, body []byte, mediaType string) digest.Digest {
	d := digest.FromBytes(body)
	f.mu.Lock()
	f.manifests[tag] = fakeManifest{body, mediaType}
	f.manifests[d.String()] = fakeManifest{body, mediaType}
	f.mu.Unlock()
	return d
}

func (f *fakeRegistry) seen() []*http.Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*http.Request(nil), f.requests...)
}

func (f *fakeRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.requests = append(f.requests, r.Clone(context.Background()))
	f.mu.Unlock()
	if f.basicAuth != "" {
		u, p, ok := r.BasicAuth()
		if !ok || u+":"+p != f.basicAuth {
			w.Header().Set("WWW-Authenticate", `Basic realm="datastore"`)
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprintln(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
			return
		}
	}
	if f.bearer && r.Header.Get("Authorization") != "Bearer good-token" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://127.0.0.1:1/token",service="datastore",scope="repository:app:pull"`)
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if f.tokenAuth != "" {
		if r.URL.Path == "/token" {
			f.serveToken(w, r)
			return
		}
		if r.Header.Get("Authorization") != "Bearer good-token" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="http://`+r.Host+`/token",service="datastore",scope="repository:app:pull"`)
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
	}
	parts := strings.Split(strings.TrimPrefix(r.URL.Path, "/v2/"), "/")
	if len(parts) < 3 {
		http.NotFound(w, r)
		return
	}
	kind, ref := parts[len(parts)-2], parts[len(parts)-1]
	switch kind {
	case "manifests":
		f.mu.Lock()
		m, ok := f.manifests[ref]
		f.mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintln(w, `{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}`)
			return
		}
		w.Header().Set("Content-Type", m.mediaType)
		w.Header().Set("Docker-Content-Digest", digest.FromBytes(m.body).String())
		w.Header().Set("X-Secret", "stays-upstream")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(m.body))
	case "blobs":
		f.mu.Lock()
		b, ok := f.blobs[digest.Digest(ref)]
		f.mu.Unlock()
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintln(w, `{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown"}]}`)
			return
		}
		f.serveBlob(w, r, b)
	default:
		http.NotFound(w, r)
	}
}

func (f *fakeRegistry) serveBlob(w http.ResponseWriter, r *http.Request, b []byte) {
	w.Header().Set("Content-Type", "application/octet-stream")
	if r.Method == http.MethodHead || (f.cutAfter == 0 && f.stallAfter == 0 && !f.chunked) {
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(b))
		return
	}
	status, body := http.StatusOK, b
	if rng, ok := httpclient.ParseRange(r.Header.Get("Range")); ok {
		end := int64(len(b)) - 1
		if rng.End >= 0 && rng.End < end {
			end = rng.End
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", rng.Start, end, len(b)))
		status, body = http.StatusPartialContent, b[rng.Start:end+1]
	}
	if !f.chunked {
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	}
	w.WriteHeader(status)
	limit := int64(len(body))
	if f.cutAfter > 0 {
		limit = min(limit, f.cutAfter)
	}
	if f.stallAfter > 0 {
		limit = min(limit, f.stallAfter)
	}
	_, _ = w.Write(body[:limit])
	w.(http.Flusher).Flush()
	if limit < int64(len(body)) && f.onBreak != nil {
		f.onBreak()
	}
	switch {
	case f.stallAfter > 0 && limit < int64(len(body)):
		select {
		case <-f.release:
		case <-r.Context().Done():
		}
		panic(http.ErrAbortHandler)
	case f.cutAfter > 0 && limit < int64(len(body)):
		panic(http.ErrAbortHandler) // the connection breaks mid-body
	}
}

// testEnv is a mirror in front of datastores on loopback: dials of the
// .local name go to whichever server is current, as if mDNS answered
// with its address.
type testEnv struct {
	t        testing.TB
	mirror   *Mirror
	srv      *httptest.Server // the mirror
	current  atomic.Pointer[string]
	dials    atomic.Int64
	inflight atomic.Int64 // mirror handlers running
}

// handler is the mirror, counted in flight.
func (e *testEnv) handler(w http.ResponseWriter, r *http.Request) {
	e.inflight.Add(1)
	defer e.inflight.Add(-1)
	e.mirror.ServeHTTP(w, r)
}

// stats returns the mirror's counters once every handler has finished:
// a client can have its whole body before the handler counts it.
func (e *testEnv) stats() Stats {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for e.inflight.Load() != 0 {
		if time.Now().After(deadline) {
			e.t.Fatalf("mirror handlers still running after 5s")
		}
		time.Sleep(time.Millisecond)
	}
	return e.mirror.Stats()
}

// newTestEnv makes a mirror with opts in front of upstream (nil: no
// datastore). The scheme is plain HTTP unless opts says otherwise.
func newTestEnv(t testing.TB, upstream http.Handler, opts Options) *testEnv {
	t.Helper()
	if opts.Scheme == SchemeAuto {
		opts.Scheme = SchemeHTTP
	}
	return newTestEnvScheme(t, upstream, opts)
}

// newTestEnvScheme is newTestEnv with opts.Scheme as given.
func newTestEnvScheme(t testing.TB, upstream http.Handler, opts Options) *testEnv {
	t.Helper()
	env := &testEnv{t: t}
	if upstream != nil {
		env.setUpstream(upstream)
	}
	opts.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, err := net.SplitHostPort(addr)
		if err != nil || !strings.HasSuffix(host, ".local") {
			return nil, fmt.Errorf("test dialer: refusing %s: only .local names are dialed in unit tests", addr)
		}
		env.dials.Add(1)
		cur := env.current.Load()
		if cur == nil {
			return nil, fmt.Errorf("test dialer: no datastore for %s", addr)
		}
		var d net.Dialer
		return d.DialContext(ctx, "tcp", *cur)
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	env.mirror = m
	env.srv = httptest.NewServer(http.HandlerFunc(env.handler))
	t.Cleanup(func() {
		env.srv.Close()
		_ = m.Close()
	})
	return env
}

// setUpstream starts a loopback server for h and makes it the datastore.
func (e *testEnv) setUpstream(h http.Handler) *httptest.Server {
	srv := e.startUpstream(h)
	e.switchTo(srv)
	return srv
}

// startUpstream starts a loopback server for h without using it yet.
func (e *testEnv) startUpstream(h http.Handler) *httptest.Server {
	srv := httptest.NewServer(h)
	e.t.Cleanup(srv.Close)
	return srv
}

// switchTo makes srv the datastore's address, as a new mDNS answer would.
func (e *testEnv) switchTo(srv *httptest.Server) {
	addr := srv.Listener.Addr().String()
	e.current.Store(&addr)
}

// url is the mirror URL of a registry path for the .local datastore.
func (e *testEnv) url(path string) string {
	return e.srv.URL + path + "?ns=" + dsHost
}

func (e *testEnv) do(t *testing.T, method, url string, hdr http.Header) *http.Response {
	t.Helper()
	resp, err := e.try(t, method, url, hdr)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// try is do for requests that may fail before a response arrives.
func (e *testEnv) try(t *testing.T, method, url string, hdr http.Header) (*http.Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	req, err := http.NewRequestWithContext(ctx, method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp, nil
}

// serveToken is a token service: GET with Basic credentials, or the
// OAuth password grant containerd POSTs when it has credentials.
func (f *fakeRegistry) serveToken(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	if r.Method == http.MethodPost {
		_ = r.ParseForm()
		user, pass, ok = r.PostForm.Get("username"), r.PostForm.Get("password"), r.PostForm.Get("grant_type") == "password"
	}
	if !ok || user+":"+pass != f.tokenAuth || r.URL.Query().Get("service") != "datastore" && r.PostForm.Get("service") != "datastore" {
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintln(w, `{"token":"good-token","access_token":"good-token","expires_in":300}`)
}
