package dsserver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// testPushToken is the push token of the test datastores.
const testPushToken = "test-push-token-0123456789abcdef"

// startServer serves a datastore on dir over httptest on 127.0.0.1
// (loopback only, as the network rules allow outside test namespaces).
// Its clients act as the datastore's operator: a request without
// credentials gets the push token (anonymous clients are tested with
// startServerWith and auth_test.go's requests).
func startServer(t *testing.T, dir string) (*Server, *httptest.Server) {
	t.Helper()
	return startOperatorServer(t, Config{Dir: dir})
}

// startOperatorServer serves a datastore with cfg to the operator.
func startOperatorServer(t *testing.T, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	s := newServer(t, cfg)
	ts := httptest.NewServer(withOperatorToken(s.Handler()))
	t.Cleanup(ts.Close)
	return s, ts
}

// startServerWith serves a datastore with cfg, clients as they come.
func startServerWith(t *testing.T, cfg Config) (*Server, *httptest.Server) {
	t.Helper()
	s := newServer(t, cfg)
	ts := httptest.NewServer(s.Handler())
	t.Cleanup(ts.Close)
	return s, ts
}

// newServer opens a datastore with cfg on loopback, without mDNS; a push
// token file is written for it unless cfg names one.
func newServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	cfg.NoMDNS, cfg.Listen = true, "127.0.0.1:0"
	if cfg.PushTokenFile == "" {
		cfg.PushTokenFile = filepath.Join(t.TempDir(), "push-token")
		if err := os.WriteFile(cfg.PushTokenFile, []byte(testPushToken+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(t.Context(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

func withOperatorToken(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Header.Get("Authorization") == "" {
			req.Header.Set("Authorization", "Bearer "+testPushToken)
		}
		h.ServeHTTP(w, req)
	})
}

func hostOf(ts *httptest.Server) string { return strings.TrimPrefix(ts.URL, "http://") }

func ref(t *testing.T, ts *httptest.Server, r string) name.Reference {
	t.Helper()
	n, err := name.ParseReference(hostOf(ts)+"/"+r, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func digestHex(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// blobFiles lists what the store holds: committed blobs and leftovers.
func blobFiles(t *testing.T, dir string) (blobs, temps []string) {
	t.Helper()
	root := filepath.Join(dir, RegistryDir)
	for _, sub := range []string{"blobs/sha256", "tmp", "uploads"} {
		es, err := os.ReadDir(filepath.Join(root, sub))
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			if sub == "blobs/sha256" {
				blobs = append(blobs, e.Name())
			} else {
				temps = append(temps, sub+"/"+e.Name())
			}
		}
	}
	return blobs, temps
}

func TestRegistryRoundTripAndRestart(t *testing.T) {
	dir := t.TempDir()
	_, ts := startServer(t, dir)

	img, err := random.Image(3<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	img = mutate.MediaType(img, types.OCIManifestSchema1)
	if err := remote.Write(ref(t, ts, "app:1"), img); err != nil {
		t.Fatalf("push: %v", err)
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(emptyIndex(), types.OCIImageIndex), mutate.IndexAddendum{Add: img})
	if err := remote.WriteIndex(ref(t, ts, "team/app:multi"), idx); err != nil {
		t.Fatalf("push index: %v", err)
	}
	want, _ := img.Digest()
	checkPull(t, ts, "app:1", want)

	// Restart: a new server on the same directory has everything.
	ts.Close()
	_, ts2 := startServer(t, dir)
	checkPull(t, ts2, "app:1", want)
	checkPull(t, ts2, "app@"+want.String(), want)
	wantIdx, _ := idx.Digest()
	got, err := remote.Index(ref(t, ts2, "team/app:multi"))
	if err != nil {
		t.Fatalf("pull index after restart: %v", err)
	}
	if d, _ := got.Digest(); d != wantIdx {
		t.Fatalf("index digest %s, want %s", d, wantIdx)
	}
	tags, err := remote.List(ref(t, ts2, "app:1").Context())
	if err != nil || len(tags) != 1 || tags[0] != "1" {
		t.Fatalf("tags after restart: %v %v", tags, err)
	}
	if _, temps := blobFiles(t, dir); len(temps) != 0 {
		t.Fatalf("leftover temporary files: %v", temps)
	}
}

func emptyIndex() v1.ImageIndex {
	idx, _ := random.Index(0, 0, 0)
	return idx
}

func checkPull(t *testing.T, ts *httptest.Server, r string, want v1.Hash) {
	t.Helper()
	img, err := remote.Image(ref(t, ts, r))
	if err != nil {
		t.Fatalf("pull %s: %v", r, err)
	}
	if d, _ := img.Digest(); d != want {
		t.Fatalf("pull %s: digest %s, want %s", r, d, want)
	}
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		rc, err := l.Compressed() // verifies the digest while reading
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("layer of %s: %v", r, err)
		}
		if err := rc.Close(); err != nil {
			t.Fatalf("layer of %s: %v", r, err)
		}
	}
}

func do(t *testing.T, method, url string, body []byte, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestRegistryWrongDigestRefused(t *testing.T) {
	dir := t.TempDir()
	_, ts := startServer(t, dir)
	data := bytes.Repeat([]byte("localds"), 10000)
	wrong := "sha256:" + digestHex([]byte("something else"))

	// Monolithic POST with the wrong digest.
	resp := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/?digest="+wrong, data, nil)
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("monolithic wrong digest: status %d", resp.StatusCode)
	}
	// Session: PATCH then PUT with the wrong digest.
	resp = do(t, "POST", ts.URL+"/v2/app/blobs/uploads/", nil, nil)
	loc := resp.Header.Get("Location")
	if resp.StatusCode != http.StatusAccepted || loc == "" {
		t.Fatalf("start upload: %d %q", resp.StatusCode, loc)
	}
	if r := do(t, "PATCH", ts.URL+loc, data, nil); r.StatusCode != http.StatusAccepted {
		t.Fatalf("patch: %d", r.StatusCode)
	}
	resp = do(t, "PUT", ts.URL+loc+"?digest="+wrong, nil, nil)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "DIGEST_INVALID") {
		t.Fatalf("put wrong digest: %d %s", resp.StatusCode, body)
	}
	// The session is gone, nothing committed, nothing left over.
	if r := do(t, "PUT", ts.URL+loc+"?digest=sha256:"+digestHex(data), nil, nil); r.StatusCode != http.StatusNotFound {
		t.Fatalf("reuse of failed upload: %d", r.StatusCode)
	}
	if r := do(t, "HEAD", ts.URL+"/v2/app/blobs/"+wrong, nil, nil); r.StatusCode != http.StatusNotFound {
		t.Fatalf("wrong-digest blob visible: %d", r.StatusCode)
	}
	// A manifest pushed by a digest that is not its own.
	mf := []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	resp = do(t, "PUT", ts.URL+"/v2/app/manifests/"+wrong, mf, map[string]string{"Content-Type": string(types.OCIImageIndex)})
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("manifest wrong digest: %d", resp.StatusCode)
	}
	if r := do(t, "GET", ts.URL+"/v2/app/manifests/"+wrong, nil, nil); r.StatusCode != http.StatusNotFound {
		t.Fatalf("wrong-digest manifest visible: %d", r.StatusCode)
	}
	// A manifest naming blobs that were never pushed.
	img, _ := random.Image(100, 1)
	raw, _ := img.RawManifest()
	resp = do(t, "PUT", ts.URL+"/v2/app/manifests/v1", raw, map[string]string{"Content-Type": string(types.DockerManifestSchema2)})
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("manifest with missing blobs: %d", resp.StatusCode)
	}
	blobs, temps := blobFiles(t, dir)
	if len(blobs) != 0 || len(temps) != 0 {
		t.Fatalf("after refused pushes: blobs %v, leftovers %v", blobs, temps)
	}
	// The server still works.
	resp = do(t, "POST", ts.URL+"/v2/app/blobs/uploads/?digest=sha256:"+digestHex(data), data, nil)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("good push after bad ones: %d", resp.StatusCode)
	}
}

// fullDisk fails every write after limit bytes with ENOSPC.
type fullDisk struct {
	*os.File
	left int
}

func (f *fullDisk) Write(p []byte) (int, error) {
	if len(p) > f.left {
		n, _ := f.File.Write(p[:f.left])
		f.left = 0
		return n, &os.PathError{Op: "write", Path: f.Name(), Err: syscall.ENOSPC}
	}
	f.left -= len(p)
	return f.File.Write(p)
}

func TestRegistryDiskFull(t *testing.T) {
	dir := t.TempDir()
	s, ts := startServer(t, dir)
	s.registry.store.createTemp = func(d, pattern string) (tempFile, error) {
		f, err := os.CreateTemp(d, pattern)
		if err != nil {
			return nil, err
		}
		return &fullDisk{File: f, left: 1000}, nil
	}
	data := bytes.Repeat([]byte("x"), 5000)
	dg := "sha256:" + digestHex(data)
	for _, chunked := range []bool{false, true} {
		var resp *http.Response
		if chunked {
			loc := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/", nil, nil).Header.Get("Location")
			resp = do(t, "PATCH", ts.URL+loc, data, nil)
		} else {
			resp = do(t, "POST", ts.URL+"/v2/app/blobs/uploads/?digest="+dg, data, nil)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusInsufficientStorage || !strings.Contains(string(body), "disk full") {
			t.Fatalf("chunked=%v: want 507 disk full, got %d %s", chunked, resp.StatusCode, body)
		}
	}
	blobs, temps := blobFiles(t, dir)
	if len(blobs) != 0 || len(temps) != 0 {
		t.Fatalf("after disk full: blobs %v, leftovers %v", blobs, temps)
	}
	if r := do(t, "GET", ts.URL+"/v2/", nil, nil); r.StatusCode != http.StatusOK {
		t.Fatalf("server after disk full: %d", r.StatusCode)
	}
}

func TestRegistryBlobRange(t *testing.T) {
	dir := t.TempDir()
	_, ts := startServer(t, dir)
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	dg := "sha256:" + digestHex(data)
	if r := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/?digest="+dg, data, nil); r.StatusCode != http.StatusCreated {
		t.Fatalf("push: %d", r.StatusCode)
	}
	for _, tc := range []struct {
		rng        string
		start, end int
	}{{"bytes=100-199", 100, 200}, {"bytes=1000000-", 1000000, len(data)}, {"bytes=-10", len(data) - 10, len(data)}} {
		resp := do(t, "GET", ts.URL+"/v2/app/blobs/"+dg, nil, map[string]string{"Range": tc.rng})
		got, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, data[tc.start:tc.end]) {
			t.Fatalf("%s: status %d, %d bytes", tc.rng, resp.StatusCode, len(got))
		}
	}
	resp := do(t, "HEAD", ts.URL+"/v2/app/blobs/"+dg, nil, nil)
	if resp.ContentLength != int64(len(data)) || resp.Header.Get("Docker-Content-Digest") != dg {
		t.Fatalf("HEAD: length %d digest %q", resp.ContentLength, resp.Header.Get("Docker-Content-Digest"))
	}
}

func TestRegistryBadNames(t *testing.T) {
	_, ts := startServer(t, t.TempDir())
	for _, p := range []string{
		"/v2/../x/blobs/uploads/", "/v2/App/manifests/1", "/v2/a/manifests/..%2f..%2fx",
		"/v2/a//b/tags/list", "/v2/a/blobs/sha256:../../etc",
	} {
		req, _ := http.NewRequest("PUT", ts.URL+"/", strings.NewReader("{}"))
		req.URL.Opaque = p // sent as is, not cleaned by the client
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode < 400 || resp.StatusCode >= 500 {
			t.Errorf("%s: status %d, want a 4xx refusal", p, resp.StatusCode)
		}
	}
}

func TestParseRoute(t *testing.T) {
	for p, want := range map[string]route{
		"/v2/":                            {kind: "base"},
		"/v2/_catalog":                    {kind: "catalog"},
		"/v2/a/b/tags/list":               {kind: "tags", repo: "a/b"},
		"/v2/a/blobs/uploads/":            {kind: "upload", repo: "a"},
		"/v2/a/blobs/uploads/abc":         {kind: "upload", repo: "a", ref: "abc"},
		"/v2/a/blobs/sha256:00":           {kind: "blob", repo: "a", ref: "sha256:00"},
		"/v2/a/blobs/uploads/manifests/1": {kind: "manifest", repo: "a/blobs/uploads", ref: "1"},
		"/v2/x/referrers/sha256:00":       {kind: "referrers", repo: "x", ref: "sha256:00"},
	} {
		got, ok := parseRoute(p)
		if !ok || got != want {
			t.Errorf("parseRoute(%q) = %+v %v, want %+v", p, got, ok, want)
		}
	}
}

func TestContextReaderStops(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := (contextReader{ctx, strings.NewReader("x")}).Read(make([]byte, 1)); err == nil {
		t.Fatal("read after cancel succeeded")
	}
}

func remoteImage(t *testing.T, ts *httptest.Server, r string) (v1.Image, error) {
	t.Helper()
	return remote.Image(ref(t, ts, r))
}

func TestRegistryDeleteSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	_, ts := startServer(t, dir)
	img, _ := random.Image(1000, 1)
	for _, tag := range []string{"1", "latest"} {
		if err := remote.Write(ref(t, ts, "app:"+tag), img); err != nil {
			t.Fatal(err)
		}
	}
	other, _ := random.Image(1000, 1)
	if err := remote.Write(ref(t, ts, "app:2"), other); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	if r := do(t, "DELETE", ts.URL+"/v2/app/manifests/"+d.String(), nil, nil); r.StatusCode != http.StatusAccepted {
		t.Fatalf("delete: %d", r.StatusCode)
	}
	ts.Close()
	_, ts2 := startServer(t, dir)
	for _, tag := range []string{"1", "latest", d.String()} {
		if r := do(t, "GET", ts2.URL+"/v2/app/manifests/"+tag, nil, nil); r.StatusCode != http.StatusNotFound {
			t.Errorf("%s after delete and restart: %d", tag, r.StatusCode)
		}
	}
	od, _ := other.Digest()
	checkPull(t, ts2, "app:2", od)
}

func httptestServer(t *testing.T, h http.Handler) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(h)
	t.Cleanup(ts.Close)
	return ts
}

func readAll(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func writeTemp(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
