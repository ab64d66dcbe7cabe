package mirror

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestRangePassThrough(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(100 << 10)
	env := newTestEnv(t, reg, Options{})
	url := env.url("/v2/app/blobs/" + d.String())
	n := int64(len(b))

	cases := []struct {
		rng        string
		start, end int64 // expected bytes
	}{
		{"bytes=1000-", 1000, n - 1}, // containerd resuming an ingest: verified
		{"bytes=10-19", 10, 19},      // a chunk (parallel layer fetch): forwarded
		{"bytes=0-", 0, n - 1},       // whole blob as a range: verified
		{fmt.Sprintf("bytes=%d-", n-1), n - 1, n - 1},
		{fmt.Sprintf("bytes=0-%d", n-1), 0, n - 1}, // bounded but whole: forwarded and verified
	}
	for _, c := range cases {
		resp := env.do(t, http.MethodGet, url, http.Header{"Range": {c.rng}})
		got, err := io.ReadAll(resp.Body)
		want := fmt.Sprintf("bytes %d-%d/%d", c.start, c.end, n)
		if err != nil || resp.StatusCode != http.StatusPartialContent || resp.Header.Get("Content-Range") != want ||
			!bytes.Equal(got, b[c.start:c.end+1]) || resp.ContentLength != c.end-c.start+1 {
			t.Errorf("%s: %s %q, %d bytes, err %v", c.rng, resp.Status, resp.Header.Get("Content-Range"), len(got), err)
		}
	}
	var ranges []string
	for _, r := range reg.seen() {
		ranges = append(ranges, r.Header.Get("Range"))
	}
	// Open ranges are fetched whole (to verify the prefix), bounded
	// ones forwarded.
	if want := fmt.Sprintf("%q", []string{"", "bytes=10-19", "", "", fmt.Sprintf("bytes=0-%d", n-1)}); fmt.Sprintf("%q", ranges) != want {
		t.Errorf("ranges forwarded: %q, want %q", ranges, want)
	}
	if s := env.stats(); s.BlobsServed != 4 || s.PartialsServed != 1 {
		t.Errorf("stats %+v: want all but the bounded part verified", s)
	}

	// A range form registry clients never send: served whole.
	resp := env.do(t, http.MethodGet, url, http.Header{"Range": {"bytes=-10"}})
	if got, _ := io.ReadAll(resp.Body); resp.StatusCode != http.StatusOK || !bytes.Equal(got, b) {
		t.Errorf("suffix range: %s, %d bytes", resp.Status, len(got))
	}
	// A range past the end.
	resp = env.do(t, http.MethodGet, url, http.Header{"Range": {fmt.Sprintf("bytes=%d-", n+5)}})
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable || resp.Header.Get("Content-Range") != fmt.Sprintf("bytes */%d", n) {
		t.Errorf("open range past the end: %s %v", resp.Status, resp.Header)
	}
	resp = env.do(t, http.MethodGet, url, http.Header{"Range": {fmt.Sprintf("bytes=%d-%d", n+5, n+10)}})
	if resp.StatusCode != http.StatusRequestedRangeNotSatisfiable {
		t.Errorf("bounded range past the end: the datastore's 416 was not passed on: %s", resp.Status)
	}
}

func TestRangeOfCorruptBlob(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(100 << 10)
	bad := bytes.Clone(b)
	bad[len(bad)-1] ^= 1
	reg.blobs[d] = bad
	env := newTestEnv(t, reg, Options{})
	url := env.url("/v2/app/blobs/" + d.String())
	// A bounded part cannot be verified; the content store catches it at
	// commit.
	resp := env.do(t, http.MethodGet, url, http.Header{"Range": {"bytes=1000-1999"}})
	if got, err := io.ReadAll(resp.Body); err != nil || len(got) != 1000 {
		t.Errorf("part of a corrupt blob: %d bytes, %v", len(got), err)
	}
	// Open ranges are verified (containerd resumes with one after the
	// mirror cut a bad response: it must fail again): the first is cut,
	// and once the mismatch is known every request is refused with it,
	// without asking the datastore.
	for i, rng := range []string{"bytes=1000-", "bytes=0-", fmt.Sprintf("bytes=%d-", len(b)-10), "bytes=0-99"} {
		resp, err := env.try(t, http.MethodGet, url, http.Header{"Range": {rng}})
		if err != nil {
			continue
		}
		got, rerr := io.ReadAll(resp.Body)
		switch {
		case i == 0 && rerr == nil:
			t.Fatalf("%s of a corrupt blob delivered %d bytes without error", rng, len(got))
		case i > 0 && (resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(got), "digest mismatch")):
			t.Errorf("%s of a known corrupt blob: %s %s", rng, resp.Status, got)
		}
	}
	if n := len(reg.seen()); n != 2 {
		t.Errorf("datastore saw %d requests, want the part and one full fetch", n)
	}
}

// TestResumeAfterCut is the address change of the design in miniature:
// the first datastore breaks the connection halfway, the name then
// resolves to a second one, and the mirror continues there with Range.
// The client sees one correct body.
func TestResumeAfterCut(t *testing.T) {
	for _, chunked := range []bool{false, true} {
		t.Run(fmt.Sprintf("chunked=%v", chunked), func(t *testing.T) {
			first := newFakeRegistry(t)
			d, b := first.addBlob(1 << 20)
			first.cutAfter = 300 << 10
			first.chunked = chunked
			second := newFakeRegistry(t)
			second.blobs[d] = b

			env := newTestEnv(t, first, Options{})
			// The datastore moves as the first connection breaks.
			srv2 := env.startUpstream(second)
			first.onBreak = func() { env.switchTo(srv2) }
			resp := env.do(t, http.MethodGet, env.url("/v2/app/blobs/"+d.String()), nil)
			got, err := io.ReadAll(resp.Body)
			if err != nil || !bytes.Equal(got, b) {
				t.Fatalf("got %d of %d bytes, err %v", len(got), len(b), err)
			}
			seen := second.seen()
			wantRange := fmt.Sprintf("bytes=%d-%d", 300<<10, len(b)-1)
			if chunked { // the length is unknown until the resumed answer
				wantRange = fmt.Sprintf("bytes=%d-", 300<<10)
			}
			if len(seen) != 1 || seen[0].Header.Get("Range") != wantRange {
				t.Fatalf("second datastore saw %d requests, first Range %q", len(seen), seen[0].Header.Get("Range"))
			}
			if s := env.stats(); s.Resumes != 1 || s.BlobsServed != 1 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

// TestResumeAfterStall: the first datastore stops sending (its address
// vanished: no reset ever comes); the stall timeout cuts it.
func TestResumeAfterStall(t *testing.T) {
	first := newFakeRegistry(t)
	d, b := first.addBlob(1 << 20)
	first.stallAfter = 200 << 10
	second := newFakeRegistry(t)
	second.blobs[d] = b
	env := newTestEnv(t, first, Options{StallTimeout: 300 * time.Millisecond})
	srv2 := env.startUpstream(second)
	first.onBreak = func() { env.switchTo(srv2) }

	resp := env.do(t, http.MethodGet, env.url("/v2/app/blobs/"+d.String()), nil)
	// A slow client must not count as a stall: the timer only runs while
	// the mirror waits for the datastore.
	head := make([]byte, 100<<10)
	if _, err := io.ReadFull(resp.Body, head); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	start := time.Now()
	rest, err := io.ReadAll(resp.Body)
	if got := append(head, rest...); err != nil || !bytes.Equal(got, b) {
		t.Fatalf("got %d of %d bytes, err %v", len(got), len(b), err)
	}
	if s := env.stats(); s.Resumes != 1 {
		t.Errorf("stats %+v, want one resume", s)
	}
	t.Logf("rest of the body after the stall took %v", time.Since(start).Round(time.Millisecond))
	if len(second.seen()) != 1 {
		t.Errorf("second datastore saw %d requests", len(second.seen()))
	}
}

// TestResumeWithinRange: a ranged request that breaks resumes inside
// its range and ends exactly at its end.
func TestResumeWithinRange(t *testing.T) {
	first := newFakeRegistry(t)
	d, b := first.addBlob(512 << 10)
	first.cutAfter = 1000
	second := newFakeRegistry(t)
	second.blobs[d] = b
	env := newTestEnv(t, first, Options{})
	srv2 := env.startUpstream(second)
	first.onBreak = func() { env.switchTo(srv2) }
	resp := env.do(t, http.MethodGet, env.url("/v2/app/blobs/"+d.String()), http.Header{"Range": {"bytes=5000-99999"}})
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, b[5000:100000]) {
		t.Fatalf("got %d bytes, err %v", len(got), err)
	}
	if r := second.seen()[0].Header.Get("Range"); r != "bytes=6000-99999" {
		t.Errorf("resumed with Range %q", r)
	}
}

// TestResumeOpenRange: an open range is one whole-blob stream, resumed
// like any other.
func TestResumeOpenRange(t *testing.T) {
	first := newFakeRegistry(t)
	d, b := first.addBlob(512 << 10)
	first.cutAfter = 100 << 10
	second := newFakeRegistry(t)
	second.blobs[d] = b
	env := newTestEnv(t, first, Options{})
	srv2 := env.startUpstream(second)
	first.onBreak = func() { env.switchTo(srv2) }
	resp := env.do(t, http.MethodGet, env.url("/v2/app/blobs/"+d.String()), http.Header{"Range": {"bytes=300000-"}})
	got, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusPartialContent || !bytes.Equal(got, b[300000:]) {
		t.Fatalf("%s: got %d bytes, err %v", resp.Status, len(got), err)
	}
	if r := second.seen()[0].Header.Get("Range"); r != fmt.Sprintf("bytes=%d-%d", 100<<10, len(b)-1) {
		t.Errorf("resumed with Range %q", r)
	}
	if s := env.stats(); s.BlobsServed != 1 || s.Resumes != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestResumeDisabled(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(256 << 10)
	reg.cutAfter = 1000
	env := newTestEnv(t, reg, Options{MaxResumes: -1})
	expectBroken(t, env, env.url("/v2/app/blobs/"+d.String()), b)
	if n := len(reg.seen()); n != 1 {
		t.Errorf("datastore saw %d requests with resuming disabled", n)
	}
}
