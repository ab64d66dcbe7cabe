package dsclient

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containerd/errdefs"
)

// fileServer is a loopback HTTP server for one file that counts what it
// sends and can misbehave on demand.
type fileServer struct {
	mu          sync.Mutex
	content     []byte
	etag        string
	ignoreRange bool      // answer 200 with the whole file to a Range request
	cutAfter    int64     // abort the connection after this many body bytes (per request); 0: never
	cutTimes    int       // how many requests are cut (then cutAfter stops applying); <0: all
	status      int       // answer every request with this status
	modTime     time.Time // Last-Modified, if not zero
	stallAfter  int64     // send this many bytes, then nothing until the client gives up
	stallTimes  int

	sent     int64 // body bytes sent, all requests
	requests int
	ranges   []string
	auths    []string

	srv *httptest.Server
}

func newFileServer(t *testing.T, content []byte) *fileServer {
	fs := &fileServer{content: content, etag: etagOf(content)}
	fs.srv = httptest.NewServer(fs)
	t.Cleanup(fs.srv.Close)
	return fs
}

func etagOf(b []byte) string {
	s := sha256.Sum256(b)
	return `"` + hex.EncodeToString(s[:8]) + `"`
}

func (fs *fileServer) set(fn func(fs *fileServer)) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	fn(fs)
}

func (fs *fileServer) stats() (sent int64, requests int) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.sent, fs.requests
}

func (fs *fileServer) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	fs.mu.Lock()
	fs.requests++
	fs.ranges = append(fs.ranges, req.Header.Get("Range"))
	fs.auths = append(fs.auths, req.Header.Get("Authorization"))
	content, etag, status, modTime := fs.content, fs.etag, fs.status, fs.modTime
	if fs.ignoreRange {
		req.Header.Del("Range")
	}
	cw := &countingWriter{ResponseWriter: w, fs: fs, budget: -1, ctx: req.Context()}
	if fs.cutAfter > 0 && fs.cutTimes != 0 {
		cw.budget = fs.cutAfter
		fs.cutTimes--
	}
	if fs.stallAfter > 0 && fs.stallTimes != 0 {
		cw.budget, cw.stall = fs.stallAfter, true
		fs.stallTimes--
	}
	fs.mu.Unlock()
	if status != 0 {
		http.Error(w, http.StatusText(status), status)
		return
	}
	if etag != "" {
		w.Header().Set("ETag", etag)
	}
	http.ServeContent(cw, req, "f", modTime, bytes.NewReader(content))
}

// countingWriter counts body bytes and aborts (or stalls) the response
// once its budget is spent.
type countingWriter struct {
	http.ResponseWriter
	fs     *fileServer
	budget int64 // -1: unlimited
	stall  bool
	ctx    context.Context
}

func (cw *countingWriter) Write(p []byte) (int, error) {
	if cw.budget >= 0 && int64(len(p)) > cw.budget {
		p = p[:cw.budget]
	}
	n, err := cw.ResponseWriter.Write(p)
	cw.fs.mu.Lock()
	cw.fs.sent += int64(n)
	cw.fs.mu.Unlock()
	if cw.budget >= 0 {
		cw.budget -= int64(n)
		if cw.budget == 0 {
			cw.ResponseWriter.(http.Flusher).Flush()
			if cw.stall {
				select { // until the client gives up on us (bounded all the same)
				case <-cw.ctx.Done():
				case <-time.After(time.Minute):
				}
			}
			panic(http.ErrAbortHandler)
		}
	}
	return n, err
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1, 2, 3})
	r.Read(b)
	return b
}

func hexOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func newDownloader(t *testing.T, root string, opts Options) *Downloader {
	t.Helper()
	opts.Root = root
	if opts.Backoff == 0 {
		opts.Backoff = time.Millisecond
	}
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// checkDownload asserts dl is content, verified and inside the area.
func checkDownload(t *testing.T, d *Downloader, dl *Download, want []byte) {
	t.Helper()
	got, err := os.ReadFile(dl.Path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("downloaded %d bytes differ from the %d served", len(got), len(want))
	}
	if dl.Digest.Encoded() != hexOf(want) || dl.Size != int64(len(want)) {
		t.Fatalf("Download = %s/%d, want sha256:%s/%d", dl.Digest, dl.Size, hexOf(want), len(want))
	}
	if filepath.Dir(dl.Path) != d.Dir() {
		t.Fatalf("download %s is outside the area %s", dl.Path, d.Dir())
	}
}

// areaFiles lists what is left in the area.
func areaFiles(t *testing.T, d *Downloader) []string {
	t.Helper()
	ents, err := os.ReadDir(d.Dir())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func TestFetch(t *testing.T) {
	content := randomBytes(3<<20 + 17)
	fs := newFileServer(t, content)
	root := t.TempDir()
	var phases []Phase
	var last Progress
	d := newDownloader(t, root, Options{Progress: func(p Progress) {
		if len(phases) == 0 || phases[len(phases)-1] != p.Phase {
			phases = append(phases, p.Phase)
		}
		last = p
	}})
	st, err := os.Stat(filepath.Join(root, "vault", "downloader"))
	if err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("area: %v, mode %v; want 0700", err, st.Mode())
	}
	dl, err := d.Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content)})
	if err != nil {
		t.Fatal(err)
	}
	checkDownload(t, d, dl, content)
	if want := []Phase{PhaseResolve, PhaseDownload, PhaseVerify}; !slicesEqual(phases, want) {
		t.Errorf("phases %v, want %v", phases, want)
	}
	if last.Done != int64(len(content)) || last.Total != int64(len(content)) {
		t.Errorf("last progress %+v", last)
	}
	if files := areaFiles(t, d); len(files) != 1 || files[0] != hexOf(content)+verifiedSuffix {
		t.Errorf("area holds %v, want only the verified file", files)
	}
	// A second fetch re-verifies the file on disk and sends no request.
	_, reqs := fs.stats()
	dl2, err := d.Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content)})
	if err != nil {
		t.Fatal(err)
	}
	checkDownload(t, d, dl2, content)
	if _, reqs2 := fs.stats(); reqs2 != reqs {
		t.Errorf("fetching a verified file again sent %d requests", reqs2-reqs)
	}
	// Both hold it: the first Remove leaves it, the second removes it.
	if err := dl.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dl.Path); err != nil {
		t.Errorf("Remove took the file from under a second holder: %v", err)
	}
	if err := dl2.Remove(); err != nil {
		t.Fatal(err)
	}
	if files := areaFiles(t, d); len(files) != 0 {
		t.Errorf("after Remove the area holds %v", files)
	}
}

func slicesEqual[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// interrupted leaves a partial download of cut bytes behind, as a process
// killed mid-transfer would.
func interrupted(t *testing.T, fs *fileServer, root string, src Source, cut int64) {
	t.Helper()
	fs.set(func(fs *fileServer) { fs.cutAfter, fs.cutTimes = cut, 1 })
	d := newDownloader(t, root, Options{Retries: -1})
	if dl, err := d.Fetch(context.Background(), src); err == nil {
		t.Fatalf("cut download succeeded: %+v", dl)
	}
	if files := areaFiles(t, d); len(files) != 2 {
		t.Fatalf("after a cut download the area holds %v, want a partial and its state", files)
	}
}

func TestResume(t *testing.T) {
	content := randomBytes(4 << 20)
	for _, withHash := range []bool{true, false} {
		t.Run(map[bool]string{true: "sha256", false: "etag-only"}[withHash], func(t *testing.T) {
			fs := newFileServer(t, content)
			root := t.TempDir()
			src := Source{URL: mustURL(t, fs.srv.URL+"/x.tar")}
			if withHash {
				src.SHA256 = hexOf(content)
			}
			const cut = 1<<20 + 5
			interrupted(t, fs, root, src, cut)
			sent0, _ := fs.stats()
			d := newDownloader(t, root, Options{})
			dl, err := d.Fetch(context.Background(), src)
			if err != nil {
				t.Fatal(err)
			}
			checkDownload(t, d, dl, content)
			sent, _ := fs.stats()
			if got, want := sent-sent0, int64(len(content))-cut; got != want {
				t.Errorf("resume fetched %d bytes, want only the missing %d", got, want)
			}
			if r := fs.ranges[len(fs.ranges)-1]; r != "bytes=1048581-" {
				t.Errorf("resume asked Range %q", r)
			}
		})
	}
}

// TestResumeLastModified: without an ETag, If-Range carries
// Last-Modified; unchanged, the resume continues, changed, it restarts.
func TestResumeLastModified(t *testing.T) {
	content := randomBytes(2 << 20)
	mtime := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, changed := range []bool{false, true} {
		fs := newFileServer(t, content)
		fs.set(func(fs *fileServer) { fs.etag, fs.modTime = "", mtime })
		root := t.TempDir()
		src := Source{URL: mustURL(t, fs.srv.URL+"/x.tar")}
		interrupted(t, fs, root, src, 1<<20)
		if changed {
			fs.set(func(fs *fileServer) { fs.modTime = mtime.Add(time.Hour) })
		}
		sent0, _ := fs.stats()
		d := newDownloader(t, root, Options{})
		dl, err := d.Fetch(context.Background(), src)
		if err != nil {
			t.Fatal(err)
		}
		checkDownload(t, d, dl, content)
		want := int64(len(content)) - 1<<20
		if changed {
			want = int64(len(content))
		}
		if sent, _ := fs.stats(); sent-sent0 != want {
			t.Errorf("changed=%v: fetched %d bytes, want %d", changed, sent-sent0, want)
		}
		if ir := fs.ranges[len(fs.ranges)-1]; ir != "bytes=1048576-" {
			t.Errorf("changed=%v: Range %q", changed, ir)
		}
	}
}

// TestResumeOtherURL: a partial of the same sha256 fetched from another
// URL is not continued (its validators belong to another server).
func TestResumeOtherURL(t *testing.T) {
	content := randomBytes(2 << 20)
	fs := newFileServer(t, content)
	root := t.TempDir()
	interrupted(t, fs, root, Source{URL: mustURL(t, fs.srv.URL+"/a.tar"), SHA256: hexOf(content)}, 1<<20)
	sent0, _ := fs.stats()
	d := newDownloader(t, root, Options{})
	dl, err := d.Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/b.tar"), SHA256: hexOf(content)})
	if err != nil {
		t.Fatal(err)
	}
	checkDownload(t, d, dl, content)
	if sent, _ := fs.stats(); sent-sent0 != int64(len(content)) {
		t.Errorf("fetched %d bytes, want the whole %d", sent-sent0, len(content))
	}
	if r := fs.ranges[len(fs.ranges)-1]; r != "" {
		t.Errorf("asked Range %q of another URL", r)
	}
}

func TestResumeServerIgnoresRange(t *testing.T) {
	content := randomBytes(2 << 20)
	fs := newFileServer(t, content)
	root := t.TempDir()
	src := Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content)}
	interrupted(t, fs, root, src, 1<<20)
	fs.set(func(fs *fileServer) { fs.ignoreRange = true })
	sent0, _ := fs.stats()
	d := newDownloader(t, root, Options{})
	dl, err := d.Fetch(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	checkDownload(t, d, dl, content)
	if sent, _ := fs.stats(); sent-sent0 != int64(len(content)) {
		t.Errorf("fetched %d bytes after a 200, want the whole %d", sent-sent0, len(content))
	}
}

func TestResumeETagChanged(t *testing.T) {
	old := randomBytes(2 << 20)
	fs := newFileServer(t, old)
	root := t.TempDir()
	src := Source{URL: mustURL(t, fs.srv.URL+"/x.tar")} // no hash: only the ETag protects the resume
	interrupted(t, fs, root, src, 1<<20)
	newer := append([]byte("changed"), old[7:]...)
	fs.set(func(fs *fileServer) { fs.content, fs.etag = newer, etagOf(newer) })
	sent0, _ := fs.stats()
	d := newDownloader(t, root, Options{})
	dl, err := d.Fetch(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	checkDownload(t, d, dl, newer)
	if sent, _ := fs.stats(); sent-sent0 != int64(len(newer)) {
		t.Errorf("fetched %d bytes after the ETag changed, want the whole %d", sent-sent0, len(newer))
	}
}

// TestResumeComplete: a run that got every byte but stopped before
// verifying leaves a full partial; the next run's Range gets a 416 and
// verifies without fetching anything.
func TestResumeComplete(t *testing.T) {
	content := randomBytes(1 << 20)
	fs := newFileServer(t, content)
	root := t.TempDir()
	d := newDownloader(t, root, Options{})
	u := fs.srv.URL + "/x.tar"
	key := downloadKey(u, hexOf(content))
	if err := os.WriteFile(filepath.Join(d.Dir(), key+partialSuffix), content, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := writeState(filepath.Join(d.Dir(), key+stateSuffix), state{URL: u, SHA256: hexOf(content), ETag: fs.etag, Size: int64(len(content))}); err != nil {
		t.Fatal(err)
	}
	dl, err := d.Fetch(context.Background(), Source{URL: mustURL(t, u), SHA256: hexOf(content)})
	if err != nil {
		t.Fatal(err)
	}
	checkDownload(t, d, dl, content)
	// The 416's own short message body is all that may be sent.
	if sent, reqs := fs.stats(); sent > 100 || reqs != 1 || fs.ranges[0] != "bytes=1048576-" {
		t.Errorf("sent %d bytes in %d requests (Range %q), want no file bytes in 1", sent, reqs, fs.ranges)
	}
}

func TestWrongHash(t *testing.T) {
	content := randomBytes(1 << 20)
	fs := newFileServer(t, content)
	d := newDownloader(t, t.TempDir(), Options{})
	wrong := hexOf([]byte("something else"))
	_, err := d.Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: wrong})
	if err == nil {
		t.Fatal("a file with the wrong sha256 was accepted")
	}
	for _, want := range []string{"expected " + wrong, "got " + hexOf(content), "/x.tar", "ad-hoc URL"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if !errdefs.IsDataLoss(err) {
		t.Errorf("error %v is not data-loss", err)
	}
	if files := areaFiles(t, d); len(files) != 0 {
		t.Errorf("a refused download left %v", files)
	}
}

func TestTruncatedBodyRetried(t *testing.T) {
	content := randomBytes(3 << 20)
	fs := newFileServer(t, content)
	fs.set(func(fs *fileServer) { fs.cutAfter, fs.cutTimes = 1<<20, 2 })
	d := newDownloader(t, t.TempDir(), Options{})
	dl, err := d.Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content)})
	if err != nil {
		t.Fatal(err)
	}
	checkDownload(t, d, dl, content)
	sent, reqs := fs.stats()
	if reqs != 3 || sent != int64(len(content)) {
		t.Errorf("%d requests sent %d bytes; want 3 sending each byte once (%d)", reqs, sent, len(content))
	}
}

func TestStalledBodyRetried(t *testing.T) {
	content := randomBytes(2 << 20)
	fs := newFileServer(t, content)
	fs.set(func(fs *fileServer) { fs.stallAfter, fs.stallTimes = 1<<20, 1 })
	d := newDownloader(t, t.TempDir(), Options{StallTimeout: 300 * time.Millisecond})
	dl, err := d.Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content)})
	if err != nil {
		t.Fatal(err)
	}
	checkDownload(t, d, dl, content)
	if _, reqs := fs.stats(); reqs != 2 {
		t.Errorf("%d requests, want 2 (the stalled one and the resume)", reqs)
	}
}

func TestBoundedRetries(t *testing.T) {
	fs := newFileServer(t, randomBytes(1000))
	fs.set(func(fs *fileServer) { fs.status = http.StatusServiceUnavailable })
	d := newDownloader(t, t.TempDir(), Options{Retries: 3})
	ds := &Datastore{Name: "store", Type: "http", FQDN: strings.TrimPrefix(fs.srv.URL, "http://")}
	_, err := d.Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf([]byte("x")), Datastore: ds})
	if err == nil {
		t.Fatal("fetch from a failing server succeeded")
	}
	for _, want := range []string{`datastore "store"`, "giving up after 4 tries", "503", "/x.tar", "via 127.0.0.1:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if _, reqs := fs.stats(); reqs != 4 {
		t.Errorf("%d requests, want 4 (1 + 3 retries)", reqs)
	}
	if files := areaFiles(t, d); len(files) != 0 {
		t.Errorf("a failed download with no bytes left %v", files)
	}

	// Nobody listening: dial errors are retried the same bounded way.
	fs.srv.Close()
	_, err = d.Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/x.tar")})
	if err == nil || !strings.Contains(err.Error(), "giving up after 4 tries") || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("closed server: %v", err)
	}
}

// TestMaxSize: a file over the limit is refused whether the server says
// so up front (Content-Length) or just keeps sending (chunked), and
// nothing of it is kept.
func TestMaxSize(t *testing.T) {
	content := randomBytes(3 << 20)
	fs := newFileServer(t, content)
	chunked := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		for i := 0; i < 3; i++ { // no Content-Length: chunked, size unknown
			w.Write(content[i<<20 : (i+1)<<20])
			w.(http.Flusher).Flush()
		}
	}))
	defer chunked.Close()
	d := newDownloader(t, t.TempDir(), Options{MaxSize: 2 << 20})
	for _, u := range []string{fs.srv.URL + "/x.tar", chunked.URL + "/x.tar"} {
		_, err := d.Fetch(context.Background(), Source{URL: mustURL(t, u), SHA256: hexOf(content)})
		if !errdefs.IsFailedPrecondition(err) || !strings.Contains(err.Error(), "more than the limit of 2097152") {
			t.Errorf("%s: %v, want a clear too-big error", u, err)
		}
		if files := areaFiles(t, d); len(files) != 0 {
			t.Errorf("%s: a refused download left %v", u, files)
		}
	}
	// Within the limit it is fine.
	d = newDownloader(t, t.TempDir(), Options{MaxSize: 3 << 20})
	if _, err := d.Fetch(context.Background(), Source{URL: mustURL(t, chunked.URL+"/x.tar"), SHA256: hexOf(content)}); err != nil {
		t.Fatal(err)
	}
}

func TestNotFoundIsFinal(t *testing.T) {
	fs := newFileServer(t, nil)
	fs.set(func(fs *fileServer) { fs.status = http.StatusNotFound })
	d := newDownloader(t, t.TempDir(), Options{})
	_, err := d.Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/x.tar")})
	if !errdefs.IsNotFound(err) || !strings.Contains(err.Error(), "404") {
		t.Errorf("404: %v", err)
	}
	if _, reqs := fs.stats(); reqs != 1 {
		t.Errorf("a 404 was tried %d times", reqs)
	}
}

func TestRedirects(t *testing.T) {
	content := randomBytes(1000)
	target := newFileServer(t, content)
	mux := http.NewServeMux()
	mux.Handle("/file", target)
	mux.Handle("/same", http.RedirectHandler("/file", http.StatusMovedPermanently))
	// Same port, other name: 127.0.0.1 and localhost are different hosts.
	redir := httptest.NewServer(mux)
	defer redir.Close()
	mux.Handle("/other", http.RedirectHandler(strings.Replace(redir.URL, "127.0.0.1", "localhost", 1)+"/file", http.StatusMovedPermanently))
	d := newDownloader(t, t.TempDir(), Options{})

	dl, err := d.Fetch(context.Background(), Source{URL: mustURL(t, redir.URL+"/same"), SHA256: hexOf(content)})
	if err != nil {
		t.Fatalf("redirect on the same host: %v", err)
	}
	checkDownload(t, d, dl, content)
	dl.Remove()

	_, reqs0 := target.stats()
	_, err = d.Fetch(context.Background(), Source{URL: mustURL(t, redir.URL+"/other"), SHA256: hexOf(content)})
	if err == nil {
		t.Fatal("redirect to another host was followed")
	}
	host := strings.TrimPrefix(redir.URL, "http://")
	for _, want := range []string{"301", "from host " + host, "to another host localhost:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if !errdefs.IsPermissionDenied(err) {
		t.Errorf("error %v is not permission-denied", err)
	}
	if _, reqs := target.stats(); reqs != reqs0 {
		t.Error("the other host was contacted")
	}
}

func TestHTTPSDowngradeRefused(t *testing.T) {
	srv := httptest.NewTLSServer(http.RedirectHandler("http://127.0.0.1/x", http.StatusFound))
	defer srv.Close()
	ds := &Datastore{Name: "tls", Type: "https", FQDN: strings.TrimPrefix(srv.URL, "https://"), CertChain: certPEM(srv)}
	d := newDownloader(t, t.TempDir(), Options{})
	_, err := d.Fetch(context.Background(), Source{URL: mustURL(t, srv.URL+"/x"), Datastore: ds})
	if err == nil || !errdefs.IsPermissionDenied(err) {
		t.Errorf("https->http redirect: %v", err)
	}
}

func certPEM(srv *httptest.Server) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}))
}

func TestHTTPS(t *testing.T) {
	content := randomBytes(1 << 20)
	fs := &fileServer{content: content, etag: etagOf(content)}
	fs.srv = httptest.NewTLSServer(fs)
	defer fs.srv.Close()
	hostPort := strings.TrimPrefix(fs.srv.URL, "https://")
	src := Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content)}

	// httptest's certificate has an IP SAN 127.0.0.1: the URL's IP verifies.
	src.Datastore = &Datastore{Name: "tls", Type: "https", FQDN: hostPort, CertChain: certPEM(fs.srv)}
	d := newDownloader(t, t.TempDir(), Options{})
	dl, err := d.Fetch(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	checkDownload(t, d, dl, content)
	dl.Remove()

	// Without the chain the certificate is unknown: one try, a clear error.
	src.Datastore = &Datastore{Name: "tls", Type: "https", FQDN: hostPort}
	_, reqs0 := fs.stats()
	_, err = d.Fetch(context.Background(), src)
	if err == nil || !strings.Contains(err.Error(), "certificate") || strings.Contains(err.Error(), "giving up") {
		t.Errorf("unknown CA: %v, want a final certificate error", err)
	}
	if _, reqs := fs.stats(); reqs != reqs0 {
		t.Error("a request went out over an unverified connection")
	}
}

func TestCredentials(t *testing.T) {
	content := randomBytes(1000)
	fs := newFileServer(t, content)
	hostPort := strings.TrimPrefix(fs.srv.URL, "http://")
	u := mustURL(t, fs.srv.URL+"/x.tar")
	d := newDownloader(t, t.TempDir(), Options{})
	fetch := func(ds *Datastore) error {
		dl, err := d.Fetch(context.Background(), Source{URL: u, SHA256: hexOf(content), Datastore: ds})
		if err == nil {
			dl.Remove()
		}
		return err
	}
	lastAuth := func() string {
		fs.mu.Lock()
		defer fs.mu.Unlock()
		return fs.auths[len(fs.auths)-1]
	}

	// Plain http with credentials: refused before anything is sent.
	err := fetch(&Datastore{Name: "p", Type: "http", FQDN: hostPort, Username: "u", Password: "pw-secret"})
	if err == nil || !errdefs.IsPermissionDenied(err) || !strings.Contains(err.Error(), "allow_plain_http_credentials") {
		t.Errorf("credentials over http: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "pw-secret") {
		t.Errorf("error shows the password: %v", err)
	}
	if _, reqs := fs.stats(); reqs != 0 {
		t.Errorf("%d requests went out", reqs)
	}

	// Allowed by config: basic auth reaches the datastore's host.
	if err := fetch(&Datastore{Name: "p", Type: "http", FQDN: hostPort, Username: "u", Password: "pw-secret", AllowPlainHTTPCredentials: true}); err != nil {
		t.Fatal(err)
	}
	if a := lastAuth(); !strings.HasPrefix(a, "Basic ") {
		t.Errorf("Authorization %q, want basic auth", a)
	}
	if err := fetch(&Datastore{Name: "p", Type: "http", FQDN: hostPort, Token: "tok-secret", AllowPlainHTTPCredentials: true}); err != nil {
		t.Fatal(err)
	}
	if a := lastAuth(); a != "Bearer tok-secret" {
		t.Errorf("Authorization %q, want the bearer token", a)
	}

	// A URL on another host (or port) than the datastore's gets nothing.
	for _, fqdn := range []string{"localhost" + hostPort[strings.LastIndex(hostPort, ":"):], "127.0.0.1:1"} {
		if err := fetch(&Datastore{Name: "p", Type: "http", FQDN: fqdn, Token: "tok-secret", AllowPlainHTTPCredentials: true}); err != nil {
			t.Fatal(err)
		}
		if a := lastAuth(); a != "" {
			t.Errorf("datastore %s: credentials %q sent to %s", fqdn, a, hostPort)
		}
	}
}

func TestBadSource(t *testing.T) {
	d := newDownloader(t, t.TempDir(), Options{})
	for _, tc := range []struct {
		src  Source
		want string
	}{
		{Source{}, "no URL"},
		{Source{URL: mustURL(t, "ftp://h/x")}, "scheme"},
		{Source{URL: mustURL(t, "http:///x")}, "no host"},
		{Source{URL: mustURL(t, "http://u:pw-secret@h/x")}, "carries credentials"},
		{Source{URL: mustURL(t, "http://h/x"), SHA256: "abc"}, "64 hex"},
	} {
		_, err := d.Fetch(context.Background(), tc.src)
		if !errdefs.IsInvalidArgument(err) || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "pw-secret") {
			t.Errorf("%v: %v, want invalid argument saying %q", tc.src.URL, err, tc.want)
		}
	}
}

func TestConcurrentFetchRefused(t *testing.T) {
	content := randomBytes(1000)
	fs := newFileServer(t, content)
	d := newDownloader(t, t.TempDir(), Options{})
	src := Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content)}
	held, err := openLocked(filepath.Join(d.Dir(), hexOf(content)+partialSuffix), os.O_RDWR|os.O_CREATE, syscall.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	_, err = d.Fetch(context.Background(), src)
	if !errdefs.IsUnavailable(err) || !strings.Contains(err.Error(), "in use by another download") {
		t.Errorf("second fetch of the same file: %v", err)
	}
	held.Close()
	dl, err := d.Fetch(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	checkDownload(t, d, dl, content)
}
