package dsclient

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestOutageWaitedOut: the datastore cuts the transfer 1 MiB in and then
// refuses connections for 20 tries, far more than Retries (2). The
// download waits for it by time and continues with Range from the byte it
// reached: the file verifies and no byte is sent twice. Before, it gave
// up after Retries tries without progress.
func TestOutageWaitedOut(t *testing.T) {
	content := randomBytes(3 << 20)
	fs := newFileServer(t, content)
	fs.set(func(fs *fileServer) { fs.cutAfter, fs.cutTimes = 1<<20, 1 })
	addr := fs.srv.Listener.Addr().String()
	var dials atomic.Int64
	const awayDials = 20
	dial := func(ctx context.Context, network, a string) (net.Conn, error) {
		n := dials.Add(1)
		if n > 1 && n <= 1+awayDials {
			return nil, &net.OpError{Op: "dial", Net: network, Err: &net.AddrError{Err: "connection refused (test outage)", Addr: a}}
		}
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	d := newDownloader(t, t.TempDir(), Options{Retries: 2, Dial: dial, OutageBackoff: 5 * time.Millisecond, OutageTimeout: time.Minute})
	dl, err := d.Fetch(context.Background(), Source{URL: mustURL(t, fs.srv.URL+"/x.tar"), SHA256: hexOf(content)})
	if err != nil {
		t.Fatalf("fetch across an outage of %d tries: %v", awayDials, err)
	}
	checkDownload(t, d, dl, content)
	sent, reqs := fs.stats()
	if reqs != 2 || sent != int64(len(content)) {
		t.Errorf("%d requests sent %d bytes; want 2 sending each byte once (%d)", reqs, sent, len(content))
	}
	if got := dials.Load(); got < 1+awayDials {
		t.Errorf("%d dials: the outage was not waited out", got)
	}
}

// TestOutageGivesUp: past OutageTimeout the download fails, saying how
// long the datastore was away; an outage before any byte arrived is
// bounded by Retries as before (TestBoundedRetries).
func TestOutageGivesUp(t *testing.T) {
	content := randomBytes(2 << 20)
	var served atomic.Bool
	fs := newFileServer(t, content)
	fs.set(func(fs *fileServer) { fs.cutAfter, fs.cutTimes = 1<<20, 1 })
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if served.Swap(true) {
			http.Error(w, "restarting", http.StatusServiceUnavailable)
			return
		}
		fs.ServeHTTP(w, r)
	}))
	defer srv.Close()
	d := newDownloader(t, t.TempDir(), Options{Retries: 1, OutageBackoff: 5 * time.Millisecond, OutageTimeout: 200 * time.Millisecond})
	_, err := d.Fetch(context.Background(), Source{URL: mustURL(t, srv.URL+"/x.tar"), SHA256: hexOf(content)})
	if err == nil || !strings.Contains(err.Error(), "did not answer for") || !strings.Contains(err.Error(), "503") {
		t.Fatalf("fetch across an endless outage: %v", err)
	}
}
