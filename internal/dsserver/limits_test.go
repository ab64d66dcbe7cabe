package dsserver

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestReferencedBlobDelete: a blob a stored manifest references is not
// deleted (409, the manifest named); once the manifest is gone it is.
func TestReferencedBlobDelete(t *testing.T) {
	dir := t.TempDir()
	_, ts := startServer(t, dir)
	img, _ := random.Image(1000, 1)
	if err := remote.Write(ref(t, ts, "app:1"), img); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	resp := do(t, "DELETE", ts.URL+"/v2/app/blobs/"+ld.String(), nil, nil)
	if body := readAll(t, resp); resp.StatusCode != http.StatusConflict || !strings.Contains(body, d.String()) {
		t.Fatalf("delete of a referenced layer: %d %s", resp.StatusCode, body)
	}
	checkPull(t, ts, "app:1", d)
	if r := do(t, "DELETE", ts.URL+"/v2/app/manifests/"+d.String(), nil, nil); r.StatusCode != http.StatusAccepted {
		t.Fatalf("delete manifest: %d", r.StatusCode)
	}
	if r := do(t, "DELETE", ts.URL+"/v2/app/blobs/"+ld.String(), nil, nil); r.StatusCode != http.StatusAccepted {
		t.Fatalf("delete of the layer once unreferenced: %d", r.StatusCode)
	}
}

// TestMaxBlobSize: a blob over --max-blob-size is refused (413) whether
// monolithic, in a session, declared or not in Content-Length, and leaves
// nothing behind.
func TestMaxBlobSize(t *testing.T) {
	dir := t.TempDir()
	_, ts := startOperatorServer(t, Config{Dir: dir, Limits: Limits{MaxBlobSize: 64 << 10}})
	big := bytes.Repeat([]byte("z"), 100<<10)
	dg := "sha256:" + digestHex(big)
	check := func(what string, resp *http.Response) {
		t.Helper()
		if body := readAll(t, resp); resp.StatusCode != http.StatusRequestEntityTooLarge || !strings.Contains(body, "max-blob-size") {
			t.Errorf("%s: %d %s", what, resp.StatusCode, body)
		}
		if blobs, temps := blobFiles(t, dir); len(blobs)+len(temps) != 0 {
			t.Errorf("%s left %v %v", what, blobs, temps)
		}
	}
	check("monolithic", do(t, "POST", ts.URL+"/v2/app/blobs/uploads/?digest="+dg, big, nil))
	// Without a Content-Length the bytes are counted as they come.
	req, _ := http.NewRequest("POST", ts.URL+"/v2/app/blobs/uploads/?digest="+dg, io.MultiReader(bytes.NewReader(big)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	check("monolithic, chunked encoding", resp)
	loc := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/", nil, nil).Header.Get("Location")
	if r := do(t, "PATCH", ts.URL+loc, big[:40<<10], nil); r.StatusCode != http.StatusAccepted {
		t.Fatalf("first chunk: %d", r.StatusCode)
	}
	check("second chunk past the limit", do(t, "PATCH", ts.URL+loc, big[40<<10:], nil))
	small := big[:60<<10]
	if r := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/?digest=sha256:"+digestHex(small), small, nil); r.StatusCode != http.StatusCreated {
		t.Fatalf("blob under the limit: %d", r.StatusCode)
	}
}

// TestMaxStoreSize: a push that would take the store past
// --max-store-size gets 507 before a byte past it is written, nothing of
// it stays, and a push that fits still works.
func TestMaxStoreSize(t *testing.T) {
	dir := t.TempDir()
	s, ts := startOperatorServer(t, Config{Dir: dir, Limits: Limits{MaxStoreSize: 256 << 10}})
	a := bytes.Repeat([]byte("a"), 200<<10)
	b := bytes.Repeat([]byte("b"), 100<<10)
	if r := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/?digest=sha256:"+digestHex(a), a, nil); r.StatusCode != http.StatusCreated {
		t.Fatalf("first blob: %d", r.StatusCode)
	}
	for _, mono := range []bool{true, false} {
		var resp *http.Response
		if mono {
			resp = do(t, "POST", ts.URL+"/v2/app/blobs/uploads/?digest=sha256:"+digestHex(b), b, nil)
		} else {
			loc := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/", nil, nil).Header.Get("Location")
			resp = do(t, "PUT", ts.URL+loc+"?digest=sha256:"+digestHex(b), b, nil)
		}
		if body := readAll(t, resp); resp.StatusCode != http.StatusInsufficientStorage || !strings.Contains(body, "max-store-size") {
			t.Errorf("push past the store limit (monolithic %v): %d %s", mono, resp.StatusCode, body)
		}
		if blobs, temps := blobFiles(t, dir); len(blobs) != 1 || len(temps) != 0 {
			t.Errorf("after the refused push: blobs %v, leftovers %v", blobs, temps)
		}
		if used := s.registry.store.quota.Used(); used != int64(len(a)) {
			t.Errorf("store counts %d bytes, want %d", used, len(a))
		}
	}
	c := b[:50<<10]
	if r := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/?digest=sha256:"+digestHex(c), c, nil); r.StatusCode != http.StatusCreated {
		t.Fatalf("blob that fits: %d", r.StatusCode)
	}
	// A restart counts what is on disk.
	s2 := newServer(t, Config{Dir: dir, Limits: Limits{MaxStoreSize: 256 << 10}})
	if used := s2.registry.store.quota.Used(); used != int64(len(a)+len(c)) {
		t.Errorf("after restart the store counts %d bytes, want %d", used, len(a)+len(c))
	}
}

// startUpload asks s for an upload session as client addr would.
func startUpload(t *testing.T, h http.Handler, addr string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest("POST", "/v2/app/blobs/uploads/", nil)
	req.RemoteAddr = addr
	req.Header.Set("Authorization", "Bearer "+testPushToken)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

// TestUploadSessionsPerClient: one client address gets at most 16 open
// upload sessions; another client is not blocked by them.
func TestUploadSessionsPerClient(t *testing.T) {
	s := newServer(t, Config{Dir: t.TempDir()})
	for i := range maxUploadsPerClient {
		if rec := startUpload(t, s.Handler(), fmt.Sprintf("10.0.0.5:%d", 1000+i)); rec.Code != http.StatusAccepted {
			t.Fatalf("session %d: %d", i, rec.Code)
		}
	}
	if rec := startUpload(t, s.Handler(), "10.0.0.5:2000"); rec.Code != http.StatusTooManyRequests || !strings.Contains(rec.Body.String(), "10.0.0.5") {
		t.Fatalf("session %d of one client: %d %s", maxUploadsPerClient+1, rec.Code, rec.Body)
	}
	if rec := startUpload(t, s.Handler(), "10.0.0.6:1000"); rec.Code != http.StatusAccepted {
		t.Fatalf("another client: %d %s", rec.Code, rec.Body)
	}
}

// TestUploadSessionsExpire: sessions idle past --upload-timeout end and
// their files go, so a client that left 16 idle sessions can push again.
func TestUploadSessionsExpire(t *testing.T) {
	dir := t.TempDir()
	s := newServer(t, Config{Dir: dir, UploadTimeout: 100 * time.Millisecond})
	for i := range maxUploadsPerClient {
		if rec := startUpload(t, s.Handler(), "10.0.0.5:1"); rec.Code != http.StatusAccepted {
			t.Fatalf("session %d: %d", i, rec.Code)
		}
	}
	var code int
	ok := pollUntil(10*time.Second, func() bool {
		code = startUpload(t, s.Handler(), "10.0.0.5:1").Code
		return code == http.StatusAccepted
	})
	if !ok {
		t.Fatalf("a new session after the idle ones expired: %d", code)
	}
	s.registry.uploads.expire() // the periodic sweep, as Run's ticker does
	ok = pollUntil(10*time.Second, func() bool {
		s.registry.uploads.expire()
		es, _ := os.ReadDir(filepath.Join(dir, RegistryDir, "uploads"))
		return len(es) == 0
	})
	if !ok {
		t.Fatal("files of expired sessions left in uploads/")
	}
}

// pollUntil checks cond every 50 ms until it holds or timeout passes.
func pollUntil(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
