package mirror

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

const testKey = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

// TestClientKey: with a client key, the mirror serves .local requests
// (and its token endpoint) only to clients that send it; the version
// check and the 404 for other hosts stay open.
func TestClientKey(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(1000)
	env := newTestEnv(t, reg, Options{ClientKey: testKey})
	blobURL := env.url("/v2/app/blobs/" + d.String())

	for _, hdr := range []http.Header{nil, {KeyHeader: {"wrong"}}, {KeyHeader: {testKey[:63] + "0"}}} {
		resp := env.do(t, http.MethodGet, blobURL, hdr)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(string(body), "localds hosts") {
			t.Errorf("key %q: %s %s", hdr.Get(KeyHeader), resp.Status, body)
		}
	}
	resp := env.do(t, http.MethodGet, env.srv.URL+tokenPath+"?realm=http://"+dsHost+"/token", nil)
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("token endpoint without the key: %s", resp.Status)
	}
	if n := len(reg.seen()); n != 0 {
		t.Errorf("the datastore was asked %d times for clients without the key", n)
	}
	resp = env.do(t, http.MethodGet, blobURL, http.Header{KeyHeader: {testKey}})
	if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) {
		t.Fatalf("with the key: %s", resp.Status)
	}
	if resp := env.do(t, http.MethodGet, env.srv.URL+"/v2/", nil); resp.StatusCode != http.StatusOK {
		t.Errorf("/v2/ without the key: %s", resp.Status)
	}
	if resp := env.do(t, http.MethodGet, env.srv.URL+"/v2/library/busybox/manifests/1?ns=docker.io", nil); resp.StatusCode != http.StatusNotFound {
		t.Errorf("another registry without the key: %s", resp.Status)
	}
	if s := env.stats(); s.Unauthorized != 4 {
		t.Errorf("stats %+v, want 4 unauthorized", s)
	}
}

// TestStoreNotServedWithoutKey: a blob in the CAS is not handed to a
// local client without the key, whatever ns it names.
func TestStoreNotServedWithoutKey(t *testing.T) {
	store := newStore(t)
	reg := newFakeRegistry(t)
	_, blobs := testImage(t, reg)
	env := newTestEnv(t, reg, Options{Store: store, Prefetch: true, ClientKey: testKey})
	resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/1"), http.Header{KeyHeader: {testKey}})
	io.Copy(io.Discard, resp.Body)
	waitFor(t, "3 prefetched blobs", func() bool { return env.mirror.Stats().Prefetched == 3 })
	for _, ns := range []string{dsHost, "nonexistent.local"} {
		resp := env.do(t, http.MethodGet, env.srv.URL+"/v2/other/blobs/"+blobs[1].Digest.String()+"?ns="+ns, nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("CAS blob for ns %s without the key: %s", ns, resp.Status)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	root := t.TempDir()
	path := KeyPath(root)
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrCreateKey(path)
	if err != nil || k2 != k1 || checkKey(k1) != nil {
		t.Fatalf("second load: %q %v (first %q)", k2, err, k1)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("vault mode: %v %v", fi.Mode(), err)
	}
	if err := os.WriteFile(path, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "remove it") {
		t.Fatalf("malformed key: %v", err)
	}
	// hosts.toml with the key: private, and only well-formed keys.
	text, err := HostsTOMLWithKey(dsHost, DefaultAddr, "http", k1)
	if err != nil || !strings.Contains(text, KeyHeader+" = \""+k1+"\"") {
		t.Fatalf("HostsTOMLWithKey: %v\n%s", err, text)
	}
	hp, err := WriteHostsFile(t.TempDir(), dsHost, text, false)
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(hp); fi.Mode().Perm() != 0o600 {
		t.Errorf("hosts.toml with a key: mode %v, want 0600", fi.Mode())
	}
	if fi, _ := os.Stat(filepath.Dir(hp)); fi.Mode().Perm() != 0o700 {
		t.Errorf("its directory: mode %v, want 0700", fi.Mode())
	}
	if _, err := HostsTOMLWithKey(dsHost, DefaultAddr, "http", "x\"\n[evil]"); err == nil {
		t.Error("a malformed key was written into hosts.toml")
	}
}

// authSeenOverHTTP counts datastore requests that carried credentials
// over plain HTTP.
func authSeenOverHTTP(reg *fakeRegistry) int {
	n := 0
	for _, r := range reg.seen() {
		if r.TLS == nil && r.Header.Get("Authorization") != "" {
			n++
		}
	}
	return n
}

// TestPlainHTTPCredentialsRefused: by default the mirror forwards no
// credentials over plain HTTP (Basic, Bearer or a token request), and
// says why; the datastore never sees them.
func TestPlainHTTPCredentialsRefused(t *testing.T) {
	reg := newFakeRegistry(t)
	d, _ := reg.addBlob(1000)
	reg.basicAuth = "edge:secret"
	env := newTestEnv(t, reg, Options{})
	url := env.url("/v2/app/blobs/" + d.String())
	if resp := env.do(t, http.MethodGet, url, nil); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("without credentials: %s (the challenge must pass)", resp.Status)
	}
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.SetBasicAuth("edge", "secret")
	for _, method := range []string{http.MethodGet, http.MethodHead} {
		resp := env.do(t, method, url, req.Header)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusBadGateway || (method == http.MethodGet && !strings.Contains(string(body), "allow-plain-http-credentials")) {
			t.Errorf("%s with credentials over http: %s %s", method, resp.Status, body)
		}
	}
	for _, method := range []string{http.MethodGet, http.MethodPost} {
		treq, _ := http.NewRequest(method, env.srv.URL+tokenPath+"?realm=http://"+dsHost+"/token", strings.NewReader("grant_type=password&username=edge&password=secret"))
		if method == http.MethodGet {
			treq.SetBasicAuth("edge", "secret")
		}
		resp, err := http.DefaultClient.Do(treq)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("token %s over http: %s", method, resp.Status)
		}
	}
	if n := authSeenOverHTTP(reg); n != 0 {
		t.Errorf("the datastore received credentials over plain HTTP %d times", n)
	}
}

// TestTLSRequired: with a CA configured, a datastore address that speaks
// plain HTTP or refuses TLS is refused with the reason, nothing is sent
// over plain HTTP (credentials least of all), and the CA's own datastore
// works. An explicit auto with a CA may fall back, credentials still not.
func TestTLSRequired(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(1000)
	cert, pool := selfSigned(t, dsName)
	creds := http.Header{"Authorization": {"Basic ZWRnZTpzZWNyZXQ="}}
	env := newTestEnvScheme(t, reg, Options{TLS: &tls.Config{RootCAs: pool}})
	url := env.url("/v2/app/blobs/" + d.String())
	for _, hdr := range []http.Header{nil, creds} {
		resp := env.do(t, http.MethodGet, url, hdr)
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "TLS is required") {
			t.Errorf("plain-HTTP answer with a CA configured: %s %s", resp.Status, body)
		}
	}
	// A closed TLS port: refused, nothing tried in clear either.
	closed := httptest.NewServer(reg)
	closed.Close()
	env.switchTo(closed)
	if resp := env.do(t, http.MethodGet, url, creds); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("closed port: %s", resp.Status)
	}
	if n := len(reg.seen()); n != 0 {
		t.Errorf("the datastore got %d plain-HTTP requests from a mirror with a CA", n)
	}
	env.switchTo(startTLS(t, reg, cert))
	resp := env.do(t, http.MethodGet, url, nil)
	if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) {
		t.Fatalf("the CA's datastore: %s", resp.Status)
	}

	// auto chosen explicitly: falls back without credentials only.
	auto := newTestEnvScheme(t, reg, Options{Scheme: SchemeAuto, TLS: &tls.Config{RootCAs: pool}})
	autoURL := auto.url("/v2/app/blobs/" + d.String())
	if resp := auto.do(t, http.MethodGet, autoURL, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("auto without credentials: %s", resp.Status)
	}
	if resp := auto.do(t, http.MethodGet, autoURL, creds); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("auto with credentials over the fallback: %s", resp.Status)
	}
	if n := authSeenOverHTTP(reg); n != 0 {
		t.Errorf("credentials went over plain HTTP %d times", n)
	}
}

// manyLayers is an image manifest listing n layers that no datastore has.
func manyLayers(t testing.TB, n int) []byte {
	t.Helper()
	mf := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromString("config"), Size: 6}}
	mf.SchemaVersion = 2
	for i := range n {
		mf.Layers = append(mf.Layers, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayerGzip, Digest: digest.FromString(fmt.Sprint(i)), Size: 100})
	}
	b, err := json.Marshal(mf)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestManifestLayerCap: a manifest with more layers than MaxLayers is
// refused with the count, and nothing is prefetched.
func TestManifestLayerCap(t *testing.T) {
	reg := newFakeRegistry(t)
	reg.addManifest("big", manyLayers(t, DefaultMaxLayers+1), ocispec.MediaTypeImageManifest)
	reg.addManifest("ok", manyLayers(t, 3), ocispec.MediaTypeImageManifest)
	env := newTestEnv(t, reg, Options{Store: newStore(t), Prefetch: true})
	resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/big"), nil)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), fmt.Sprintf("lists %d layers, more than the %d", DefaultMaxLayers+1, DefaultMaxLayers)) {
		t.Fatalf("%d-layer manifest: %s %s", DefaultMaxLayers+1, resp.Status, body)
	}
	if n := len(reg.seen()); n != 1 {
		t.Errorf("%d datastore requests, want the manifest's only (no prefetch)", n)
	}
	if resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/ok"), nil); resp.StatusCode != http.StatusOK {
		t.Errorf("3-layer manifest: %s", resp.Status)
	}
}

// TestPrefetchPoolBounded: 20,000 layers (the cap raised to let them
// through) are queued, not given a goroutine each: with the datastore
// stalling every blob, the goroutines stay within the pool's size.
func TestPrefetchPoolBounded(t *testing.T) {
	const layers = 20000
	release := make(chan struct{})
	reg := newFakeRegistry(t)
	reg.addManifest("huge", manyLayers(t, layers), ocispec.MediaTypeImageManifest)
	var blobRequests atomic.Int64
	stalling := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			blobRequests.Add(1)
			select {
			case <-release:
			case <-r.Context().Done():
			}
			http.NotFound(w, r)
			return
		}
		reg.ServeHTTP(w, r)
	})
	env := newTestEnv(t, stalling, Options{Store: newStore(t), Prefetch: true, MaxLayers: layers})
	t.Cleanup(func() { close(release) })
	runtime.GC()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	before := runtime.NumGoroutine()
	resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/huge"), nil)
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("manifest: %s", resp.Status)
	}
	waitFor(t, "the pool's workers to reach the datastore", func() bool { return blobRequests.Load() >= DefaultPrefetchConcurrency })
	// Workers, their datastore connections (client and server side) and
	// slack for the test's own HTTP plumbing; one per layer would be
	// thousands.
	n := runtime.NumGoroutine()
	runtime.ReadMemStats(&ms1)
	t.Logf("goroutines: %d before the manifest, %d with %d layers queued; heap+stacks in use %.1f -> %.1f MiB", before, n, layers,
		float64(ms0.HeapInuse+ms0.StackInuse)/(1<<20), float64(ms1.HeapInuse+ms1.StackInuse)/(1<<20))
	if n > before+6*DefaultPrefetchConcurrency+20 {
		t.Errorf("%d goroutines with %d layers queued (%d before the manifest)", n, layers, before)
	}
	env.mirror.prefetch.mu.Lock()
	queued, running := len(env.mirror.prefetch.queue), env.mirror.prefetch.running
	env.mirror.prefetch.mu.Unlock()
	if running != DefaultPrefetchConcurrency || queued > maxQueuedPrefetches {
		t.Errorf("%d workers, %d queued", running, queued)
	}
}

// TestPrefetchOtherHostNotBlocked: a blob whose prefetch from one host
// stalls is served at once from another host that has it: prefetch jobs
// are keyed by (host, digest), and a request waits only for its own
// host's prefetch.
func TestPrefetchOtherHostNotBlocked(t *testing.T) {
	const slowHost, fastHost = "slow.local:5000", "fast.local:5000"
	reg := newFakeRegistry(t)
	_, blobs := testImage(t, reg)
	layer := blobs[2]
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			select { // a neighbour that never sends the blob
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		reg.ServeHTTP(w, r)
	}))
	t.Cleanup(slow.Close)
	fast := httptest.NewServer(reg)
	t.Cleanup(fast.Close)
	addrs := map[string]string{slowHost: slow.Listener.Addr().String(), fastHost: fast.Listener.Addr().String()}
	m, err := New(Options{Scheme: SchemeHTTP, Store: newStore(t), Prefetch: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			a, ok := addrs[addr]
			if !ok {
				return nil, fmt.Errorf("test dialer: refusing %s", addr)
			}
			var d net.Dialer
			return d.DialContext(ctx, network, a)
		}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(m)
	t.Cleanup(func() { srv.Close(); m.Close() })
	get := func(ctx context.Context, path, host string) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL+path+"?ns="+host, nil)
		return http.DefaultClient.Do(req)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := get(ctx, "/v2/app/manifests/1", slowHost)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	waitFor(t, "the slow host's prefetch to start", func() bool { return m.opts.Prefetches.Running(layer.Digest) != nil })
	resp, err = get(ctx, "/v2/app/blobs/"+layer.Digest.String(), fastHost)
	if err != nil {
		t.Fatalf("blob from the other host, while the slow host's prefetch of it stalls: %v", err)
	}
	got, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || digest.FromBytes(got) != layer.Digest {
		t.Fatalf("blob from the other host: %s %v", resp.Status, err)
	}
}
