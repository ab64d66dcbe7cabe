package dsserver

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// flipByte changes one byte of a stored blob in place (same size): bit
// rot, as the disk would do it.
func flipByte(t *testing.T, dir string, h v1.Hash, off int64) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, RegistryDir, "blobs", h.Algorithm, h.Hex), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x40
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// corruptCount reads localds_serve_corrupt_blobs_total from the metrics.
func corruptCount(t *testing.T, url string) string {
	t.Helper()
	body := readAll(t, do(t, "GET", url+"/.localds/metrics", nil, nil))
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, "localds_serve_corrupt_blobs_total "); ok {
			return v
		}
	}
	t.Fatalf("no localds_serve_corrupt_blobs_total in the metrics:\n%s", body)
	return ""
}

// TestCorruptBlobCut: a blob rotten on the datastore's disk is cut off
// mid-response (the client never gets the whole body), quarantined (the
// next request gets 404), counted in the metrics, reported by Fsck; a
// push of the same content heals it. Range requests are verified too.
func TestCorruptBlobCut(t *testing.T) {
	dir := t.TempDir()
	_, ts := startServer(t, dir)
	// A layer of exactly 1 MiB: its last chunk is a whole 32 KiB write,
	// which no server buffer would keep from the client; only the hold
	// back does.
	data := make([]byte, 1<<20)
	for i := range data {
		data[i] = byte(i*7 + i>>9)
	}
	img, err := mutate.AppendLayers(empty.Image, static.NewLayer(data, types.OCIUncompressedLayer))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref(t, ts, "app:1"), img); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	l := layers[0]
	ld, _ := l.Digest()
	size, _ := l.Size()
	url := ts.URL + "/v2/app/blobs/" + ld.String()
	if corruptCount(t, ts.URL) != "0" {
		t.Fatal("corrupt blobs counted before any")
	}

	flipByte(t, dir, ld, size/2)
	rep, err := Fsck(t.Context(), dir)
	if err != nil || len(rep.Corrupt) != 1 || !strings.Contains(rep.Corrupt[0], ld.String()) {
		t.Fatalf("Fsck: %+v %v", rep, err)
	}
	// A resuming Range request past the flipped byte: it was never sent,
	// the blob is still found out.
	for _, rng := range []string{"", "bytes=" + itoa(size-100) + "-"} {
		if rng != "" {
			flipByte(t, dir, ld, size/2) // healed below; rot it again
		}
		req, _ := http.NewRequest("GET", url, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		// Cut: either before the response (a body of one chunk is held
		// back whole) or in the middle of the body.
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Logf("GET %q: cut before the response: %v", rng, err)
		} else {
			got, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil || !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("GET %q of a corrupt blob: status %d, %d bytes of %d, read error %v; want the response cut", rng, resp.StatusCode, len(got), resp.ContentLength, err)
			}
			t.Logf("GET %q: status %d, cut after %d of %d bytes", rng, resp.StatusCode, len(got), resp.ContentLength)
		}
		if r := do(t, "GET", url, nil, nil); r.StatusCode != http.StatusNotFound {
			t.Fatalf("corrupt blob still served after the cut: %d", r.StatusCode)
		}
		q, _ := os.ReadDir(filepath.Join(dir, RegistryDir, quarantineDir))
		if len(q) == 0 {
			t.Fatal("nothing in quarantine")
		}
		rep, err = Fsck(t.Context(), dir)
		if err != nil || len(rep.Missing) != 1 || !strings.Contains(rep.Missing[0], ld.String()) {
			t.Fatalf("Fsck after the quarantine: %+v %v", rep, err)
		}
		// Healing: the same image pushed again.
		if err := remote.Write(ref(t, ts, "app:1"), img); err != nil {
			t.Fatal(err)
		}
		d, _ := img.Digest()
		checkPull(t, ts, "app:1", d)
	}
	if n := corruptCount(t, ts.URL); n != "2" {
		t.Fatalf("localds_serve_corrupt_blobs_total %s, want 2", n)
	}
	if rep, err := Fsck(t.Context(), dir); err != nil || !rep.OK() {
		t.Fatalf("Fsck after healing: %+v %v", rep, err)
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

// TestScrubAtStart: Run re-hashes the store in the background and
// quarantines a rotten blob nobody asked for; unreferenced blobs older
// than the grace are collected at start, recent ones kept.
func TestScrubAndCollectAtStart(t *testing.T) {
	dir := t.TempDir()
	_, ts := startServer(t, dir)
	img, _ := random.Image(1<<16, 2)
	if err := remote.Write(ref(t, ts, "app:1"), img); err != nil {
		t.Fatal(err)
	}
	orphan := []byte(strings.Repeat("orphan", 1000))
	recent := []byte(strings.Repeat("recent", 1000))
	for _, b := range [][]byte{orphan, recent} {
		if r := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/?digest=sha256:"+digestHex(b), b, nil); r.StatusCode != http.StatusCreated {
			t.Fatalf("push orphan: %d", r.StatusCode)
		}
	}
	old := time.Now().Add(-2 * gcGrace)
	if err := os.Chtimes(filepath.Join(dir, RegistryDir, "blobs/sha256", digestHex(orphan)), old, old); err != nil {
		t.Fatal(err)
	}
	layers, _ := img.Layers()
	ld, _ := layers[1].Digest()
	flipByte(t, dir, ld, 10)
	ts.Close()

	s2 := newServer(t, Config{Dir: dir})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- s2.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	blobPath := func(b []byte) string { return filepath.Join(dir, RegistryDir, "blobs/sha256", digestHex(b)) }
	ok := pollUntil(20*time.Second, func() bool {
		_, errCorrupt := os.Stat(filepath.Join(dir, RegistryDir, "blobs", ld.Algorithm, ld.Hex))
		_, errOrphan := os.Stat(blobPath(orphan))
		return errors.Is(errCorrupt, os.ErrNotExist) && errors.Is(errOrphan, os.ErrNotExist)
	})
	if !ok {
		t.Fatal("the corrupt blob was not quarantined, or the old orphan not collected, at start")
	}
	if _, err := os.Stat(blobPath(recent)); err != nil {
		t.Fatalf("a recent unreferenced blob was collected: %v", err)
	}
	ts2 := httptestServer(t, s2.Handler())
	if n := corruptCount(t, ts2.URL); n != "1" {
		t.Fatalf("localds_serve_corrupt_blobs_total %s after the background check, want 1", n)
	}
}

// TestCollectOnDemand: POST /.localds/gc collects unreferenced blobs
// (with ?grace=0s, the recent ones too) and never a referenced one; it
// needs the token or a loopback client.
func TestCollectOnDemand(t *testing.T) {
	dir := t.TempDir()
	_, ts := startServer(t, dir)
	img, _ := random.Image(1<<10, 2)
	if err := remote.Write(ref(t, ts, "app:1"), img); err != nil {
		t.Fatal(err)
	}
	orphan := []byte("an orphan blob")
	if r := do(t, "POST", ts.URL+"/v2/app/blobs/uploads/?digest=sha256:"+digestHex(orphan), orphan, nil); r.StatusCode != http.StatusCreated {
		t.Fatalf("push orphan: %d", r.StatusCode)
	}
	before, _ := blobFiles(t, dir)
	resp := do(t, "POST", ts.URL+"/.localds/gc?grace=0s", nil, nil)
	var res gcResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil || resp.StatusCode != http.StatusOK || res.Blobs != 1 {
		t.Fatalf("gc: %d %+v %v", resp.StatusCode, res, err)
	}
	after, _ := blobFiles(t, dir)
	if len(after) != len(before)-1 {
		t.Fatalf("gc removed %d blobs, want 1", len(before)-len(after))
	}
	d, _ := img.Digest()
	checkPull(t, ts, "app:1", d)
}
