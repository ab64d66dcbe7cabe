package mirror

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestBlobOutageWaitedOut: the datastore breaks a blob 1000 bytes in and
// then refuses every connection for far more tries than MaxResumes (a
// container restarting). The mirror keeps the response open, tries again
// with a capped backoff, and when the datastore is back continues with
// exactly the next byte: the client gets the whole blob, no byte is asked
// for twice. Before, the transfer gave up after MaxResumes tries.
func TestBlobOutageWaitedOut(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(256 << 10)
	reg.cutAfter = 1000
	dead := refusedAddr(t)

	// The first response breaks and takes the datastore away with it,
	// until the mirror has dialed it 20 more times (MaxResumes is 2).
	var env *testEnv
	var served atomic.Bool
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !served.Swap(true) {
			env.current.Store(&dead)
		}
		reg.ServeHTTP(w, r)
	}))
	defer up.Close()
	env = newTestEnv(t, nil, Options{MaxResumes: 2, OutageBackoff: 5 * time.Millisecond, OutageTimeout: time.Minute})
	env.switchTo(up)
	const awayDials = 20
	back := make(chan struct{})
	go func() {
		defer close(back)
		deadline := time.Now().Add(20 * time.Second)
		for env.current.Load() == nil || *env.current.Load() != dead {
			if time.Now().After(deadline) {
				return
			}
			time.Sleep(time.Millisecond)
		}
		start := env.dials.Load()
		for env.dials.Load() < start+awayDials && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		reg.mu.Lock()
		reg.cutAfter = 0
		reg.mu.Unlock()
		env.switchTo(up)
	}()

	resp := env.do(t, "GET", env.url("/v2/app/blobs/"+d.String()), nil)
	got, err := io.ReadAll(resp.Body)
	<-back
	if err != nil || !bytes.Equal(got, b) {
		t.Fatalf("body: %d of %d bytes, %v", len(got), len(b), err)
	}
	seen := reg.seen()
	if len(seen) != 2 || seen[0].Header.Get("Range") != "" || !strings.HasPrefix(seen[1].Header.Get("Range"), "bytes=1000-") {
		var ranges []string
		for _, r := range seen {
			ranges = append(ranges, r.Header.Get("Range"))
		}
		t.Fatalf("datastore saw ranges %q, want the whole blob, then bytes=1000-", ranges)
	}
	if n := env.dials.Load(); n < awayDials {
		t.Fatalf("only %d dials: the outage was not waited out by retrying", n)
	}
}

// TestBlobOutageGivesUp: an outage longer than OutageTimeout fails the
// transfer (bounded), naming how long the datastore was away.
func TestBlobOutageGivesUp(t *testing.T) {
	reg := newFakeRegistry(t)
	d, b := reg.addBlob(256 << 10)
	reg.cutAfter = 1000
	dead := refusedAddr(t)
	var env *testEnv
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		env.current.Store(&dead)
		reg.ServeHTTP(w, r)
	}))
	defer up.Close()
	env = newTestEnv(t, nil, Options{OutageBackoff: 5 * time.Millisecond, OutageTimeout: 200 * time.Millisecond})
	env.switchTo(up)
	expectBroken(t, env, env.url("/v2/app/blobs/"+d.String()), b)
}

// refusedAddr is a loopback address where nothing listens: connections
// to it are refused.
func refusedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}
