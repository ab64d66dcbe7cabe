package mirror

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/prefetch"
)

func newStore(t *testing.T) content.Store {
	t.Helper()
	store, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// waitFor polls cond (bounded) and fails the test with what if it never holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func blobGets(reg *fakeRegistry, d digest.Digest) int {
	n := 0
	for _, r := range reg.seen() {
		if r.Method == http.MethodGet && strings.HasSuffix(r.URL.Path, "/blobs/"+d.String()) {
			n++
		}
	}
	return n
}

func TestPrefetch(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	reg := newFakeRegistry(t)
	_, blobs := testImage(t, reg)
	env := newTestEnv(t, reg, Options{Store: store, Prefetch: true})
	defer env.mirror.Close()

	resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/1"), nil)
	io.Copy(io.Discard, resp.Body)
	waitFor(t, "3 prefetched blobs", func() bool { return env.mirror.Stats().Prefetched == 3 })
	for _, b := range blobs {
		if info, err := store.Info(ctx, b.Digest); err != nil || info.Size != b.Size {
			t.Fatalf("store lacks %s after prefetch: %v", b.Digest, err)
		}
		resp := env.do(t, http.MethodGet, env.url("/v2/app/blobs/"+b.Digest.String()), nil)
		if got, _ := io.ReadAll(resp.Body); digest.FromBytes(got) != b.Digest {
			t.Fatalf("blob %s: %s", b.Digest, resp.Status)
		}
		if n := blobGets(reg, b.Digest); n != 1 {
			t.Errorf("blob %s crossed the bridge %d times", b.Digest, n)
		}
	}
	if s := env.stats(); s.StoreHits != 3 || s.PrefetchFailed != 0 {
		t.Errorf("stats %+v", s)
	}
	// Serving the manifest again prefetches nothing new.
	resp = env.do(t, http.MethodGet, env.url("/v2/app/manifests/1"), nil)
	io.Copy(io.Discard, resp.Body)
	if s := env.stats(); s.Prefetched != 3 {
		t.Errorf("stats %+v", s)
	}
}

func TestPrefetchCorruptBlob(t *testing.T) {
	ctx := context.Background()
	store := newStore(t)
	reg := newFakeRegistry(t)
	_, blobs := testImage(t, reg)
	bad := blobs[1]
	reg.blobs[bad.Digest][10] ^= 1
	env := newTestEnv(t, reg, Options{Store: store, Prefetch: true})
	defer env.mirror.Close()

	resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/1"), nil)
	io.Copy(io.Discard, resp.Body)
	waitFor(t, "all prefetches to end", func() bool {
		s := env.mirror.Stats()
		return s.Prefetched+s.PrefetchFailed == 3
	})
	if s := env.mirror.Stats(); s.PrefetchFailed != 1 || s.VerifyFailures != 1 {
		t.Fatalf("stats %+v", s)
	}
	if _, err := store.Info(ctx, bad.Digest); err == nil {
		t.Fatal("a corrupt blob was committed to the store")
	}
	var ingests []content.Status
	ingests, _ = store.ListStatuses(ctx)
	if len(ingests) != 0 {
		t.Errorf("ingests left behind: %+v", ingests)
	}
	// containerd's request is refused with the prefetch's finding, without
	// downloading the bad blob again.
	before := len(reg.seen())
	resp = env.do(t, http.MethodGet, env.url("/v2/app/blobs/"+bad.Digest.String()), nil)
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusBadGateway || !strings.Contains(string(body), "digest mismatch") || len(reg.seen()) != before {
		t.Errorf("blob request after a failed prefetch: %s %s (datastore requests %d -> %d)", resp.Status, body, before, len(reg.seen()))
	}
	if s := env.mirror.Stats(); s.KnownBad != 1 {
		t.Errorf("stats %+v, want one refusal from memory", s)
	}
}

// TestPrefetchWait: a blob request during its prefetch waits for it and
// is answered from the store; the blob crosses the bridge once.
func TestPrefetchWait(t *testing.T) {
	store := newStore(t)
	reg := newFakeRegistry(t)
	_, blobs := testImage(t, reg)
	layer := blobs[2]
	gate := make(chan struct{})
	gated := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			select {
			case <-gate:
			case <-time.After(10 * time.Second):
			}
		}
		reg.ServeHTTP(w, r)
	})
	env := newTestEnv(t, gated, Options{Store: store, Prefetch: true})
	defer env.mirror.Close()

	resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/1"), nil)
	io.Copy(io.Discard, resp.Body)
	type result struct {
		body []byte
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := env.try(t, http.MethodGet, env.url("/v2/app/blobs/"+layer.Digest.String()), nil)
		if err != nil {
			done <- result{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		done <- result{b, err}
	}()
	select {
	case r := <-done:
		t.Fatalf("blob request did not wait for its prefetch: %d bytes, %v", len(r.body), r.err)
	case <-time.After(200 * time.Millisecond):
	}
	close(gate)
	r := <-done
	if r.err != nil || !bytes.Equal(r.body, reg.blobs[layer.Digest]) {
		t.Fatalf("blob after prefetch: %d bytes, %v", len(r.body), r.err)
	}
	if n := blobGets(reg, layer.Digest); n != 1 {
		t.Errorf("blob crossed the bridge %d times", n)
	}
	if s := env.stats(); s.StoreHits != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestPrefetchNeedsStore(t *testing.T) {
	if _, err := New(Options{DialContext: nil, Discoverer: nil, Prefetch: true}); err == nil {
		t.Error("New without dialer accepted")
	}
	env := newTestEnv(t, newFakeRegistry(t), Options{})
	if _, err := New(Options{DialContext: env.mirror.opts.DialContext, Prefetch: true}); err != errNoStore {
		t.Errorf("Prefetch without Store: %v", err)
	}
}

// TestPrefetchSharedTracker: the mirror records its prefetches in the
// Tracker it is given (the daemon's store consults the same one) while
// they run, and not after.
func TestPrefetchSharedTracker(t *testing.T) {
	reg := newFakeRegistry(t)
	_, blobs := testImage(t, reg)
	gate := make(chan struct{})
	gated := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			select {
			case <-gate:
			case <-time.After(10 * time.Second):
			}
		}
		reg.ServeHTTP(w, r)
	})
	inFlight := prefetch.NewTracker(nil)
	store := &freshAtCommit{Store: newStore(t), tracker: inFlight, fresh: map[digest.Digest]bool{}}
	env := newTestEnv(t, gated, Options{Store: store, Prefetch: true, Prefetches: inFlight})
	defer env.mirror.Close()

	resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/1"), nil)
	io.Copy(io.Discard, resp.Body)
	for _, b := range blobs {
		if inFlight.Running(b.Digest) == nil {
			t.Errorf("blob %s not recorded as prefetching", b.Digest)
		}
	}
	close(gate)
	for _, b := range blobs {
		waitFor(t, "the prefetch of "+b.Digest.String()+" to end", func() bool { return inFlight.Running(b.Digest) == nil })
	}
	if s := env.mirror.Stats(); s.Prefetched != 3 {
		t.Errorf("stats after the prefetches ended: %+v", s)
	}
	for _, b := range blobs {
		if !inFlight.Fresh(b.Digest) {
			t.Errorf("prefetched blob %s is not kept from containerd's collection until containerd records it", b.Digest)
		}
		if !store.wasFresh(b.Digest) {
			t.Errorf("prefetched blob %s was visible in the store before it was kept from containerd's collection (containerd's lookup in between would leave it kept)", b.Digest)
		}
	}
}

// freshAtCommit records, at each commit to the store, whether the
// tracker already keeps the blob from containerd's collection.
type freshAtCommit struct {
	content.Store
	tracker *prefetch.Tracker
	mu      sync.Mutex
	fresh   map[digest.Digest]bool
}

func (s *freshAtCommit) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	w, err := s.Store.Writer(ctx, opts...)
	if err != nil {
		return nil, err
	}
	return &freshAtCommitWriter{Writer: w, s: s}, nil
}

func (s *freshAtCommit) wasFresh(d digest.Digest) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fresh[d]
}

type freshAtCommitWriter struct {
	content.Writer
	s *freshAtCommit
}

func (w *freshAtCommitWriter) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	w.s.mu.Lock()
	w.s.fresh[expected] = w.s.tracker.Fresh(expected)
	w.s.mu.Unlock()
	return w.Writer.Commit(ctx, size, expected, opts...)
}

// TestPrefetchSmallFirst: queued configs (small blobs) go ahead of the
// layers queued before them, so one pull's config does not wait behind
// another pull's layers; each kind keeps its order.
func TestPrefetchSmallFirst(t *testing.T) {
	p := newPrefetcher(nil, prefetch.NewTracker(nil), 0) // no workers: everything stays queued
	sizes := []int64{64 << 20, 2 << 20, 1234, 64 << 20, smallBlob, smallBlob + 1, 1}
	for i, size := range sizes {
		d := digest.FromString(strconv.Itoa(i))
		p.start(context.Background(), target{host: "ds.local", dgst: d}, http.Header{}, ocispec.Descriptor{Digest: d, Size: size})
	}
	var got []int64
	for j := p.next(); j != nil; j = p.next() {
		got = append(got, j.desc.Size)
		j.end()
	}
	want := []int64{1234, smallBlob, 1, 64 << 20, 2 << 20, 64 << 20, smallBlob + 1}
	if !slices.Equal(got, want) {
		t.Fatalf("jobs ran in the order of sizes %v, want %v", got, want)
	}
}
