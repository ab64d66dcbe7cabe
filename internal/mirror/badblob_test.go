package mirror

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/remotes"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/remotes/docker/config"
	"github.com/containerd/containerd/v2/plugins/content/local"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// fakeClock is a settable clock for badBlobs.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestBadBlobsTable(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1e9, 0)}
	b := newBadBlobs(time.Minute, 3)
	b.now = clk.now
	d := func(i int) digest.Digest { return digest.FromString(fmt.Sprint(i)) }
	b.add("a.local", d(0), "r0")
	if r, _, ok := b.get("a.local", d(0)); !ok || r != "r0" {
		t.Fatalf("get: %q %v", r, ok)
	}
	if _, _, ok := b.get("b.local", d(0)); ok {
		t.Fatal("another host's blob is refused too")
	}
	// Bounded: the oldest goes first.
	for i := 1; i <= 3; i++ {
		clk.add(time.Second)
		b.add("a.local", d(i), fmt.Sprint("r", i))
	}
	if n := b.len(); n != 3 {
		t.Fatalf("%d entries, want 3", n)
	}
	if _, _, ok := b.get("a.local", d(0)); ok {
		t.Error("the oldest entry survived a full table")
	}
	// Expiry.
	clk.add(time.Minute - 2*time.Second) // d(1) is now a minute old
	if _, _, ok := b.get("a.local", d(1)); ok {
		t.Error("an entry outlived its TTL")
	}
	if _, age, ok := b.get("a.local", d(3)); !ok || age != time.Minute-2*time.Second {
		t.Errorf("d(3): age %v, %v", age, ok)
	}
}

// TestContainerdPullOfCorruptBlob: containerd's own fetch path
// (remotes.Fetch into a local content store, like ctr image pull) of a
// blob whose bytes the datastore corrupted. The first attempt fails and
// downloads the blob from the datastore once: containerd's Range retry is
// refused from memory. (containerd 2.4.2's httpReadSeeker drops the error
// of a re-open after a broken body and reports a short read, so the
// mirror's words cannot reach this first attempt.) The next attempt,
// whose first open is refused, fails at once with the mirror's digest
// mismatch message. Nothing is committed. After the TTL, the repaired
// blob pulls.
func TestContainerdPullOfCorruptBlob(t *testing.T) {
	reg := newFakeRegistry(t)
	_, blobs := testImage(t, reg)
	layer := blobs[2] // 3 MiB
	good := bytes.Clone(reg.blobs[layer.Digest])
	bad := bytes.Clone(good)
	bad[len(bad)-1] ^= 1
	reg.mu.Lock()
	reg.blobs[layer.Digest] = bad
	reg.mu.Unlock()
	env := newTestEnv(t, reg, Options{})
	clk := &fakeClock{t: time.Now()}
	env.mirror.bad.now = clk.now

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	root := writeHosts(t, dsHost, env.srv.Listener.Addr().String())
	resolver := docker.NewResolver(docker.ResolverOptions{Hosts: config.ConfigureHosts(ctx, config.HostOptions{
		HostDir: config.HostDirFromRoot(root), UpdateClient: loopbackOnly,
	})})
	fetcher, err := resolver.Fetcher(ctx, dsHost+"/app:1")
	if err != nil {
		t.Fatal(err)
	}
	store, err := local.NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	blobGets := func() int {
		n := 0
		for _, r := range reg.seen() {
			if strings.HasSuffix(r.URL.Path, "/blobs/"+layer.Digest.String()) {
				n++
			}
		}
		return n
	}
	pull := func(i int) error {
		start := time.Now()
		err := remotes.Fetch(ctx, store, fetcher, layer)
		t.Logf("pull %d after %v (datastore blob requests so far: %d): %v", i, time.Since(start).Round(time.Millisecond), blobGets(), err)
		return err
	}

	err1 := pull(1)
	if err1 == nil {
		t.Fatal("containerd committed a corrupt blob")
	}
	if n := blobGets(); n != 1 {
		t.Errorf("the datastore was asked %d times for the blob, want once (retries refused from memory)", n)
	}
	err2 := pull(2)
	if err2 == nil || !strings.Contains(err2.Error(), "digest mismatch") || !strings.Contains(err2.Error(), layer.Digest.String()) ||
		!strings.Contains(err2.Error(), dsHost) || !strings.Contains(err2.Error(), "502 Bad Gateway") {
		t.Errorf("second pull: %v; want containerd to show the mirror's digest mismatch", err2)
	}
	if n := blobGets(); n != 1 {
		t.Errorf("the datastore was asked %d times for the blob, want once", n)
	}
	if _, err := store.Info(ctx, layer.Digest); err == nil {
		t.Fatal("the corrupt blob is in the store")
	}
	s := env.stats()
	if s.VerifyFailures != 1 || s.KnownBad < 2 || s.UpstreamErrors != 0 {
		t.Errorf("stats %+v, want one verify failure and the rest refused from memory", s)
	}

	// HEAD and a bounded range are refused too, with the registry error.
	url := env.url("/v2/app/blobs/" + layer.Digest.String())
	if resp := env.do(t, http.MethodHead, url, nil); resp.StatusCode != http.StatusBadGateway {
		t.Errorf("HEAD: %s", resp.Status)
	}
	resp := env.do(t, http.MethodGet, url, http.Header{"Range": {"bytes=0-99"}})
	var body struct{ Errors []registryError }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != http.StatusBadGateway ||
		len(body.Errors) != 1 || body.Errors[0].Code != codeDigestInvalid || resp.Header.Get("Retry-After") == "" {
		t.Errorf("bounded range: %s %+v %v", resp.Status, body, err)
	}

	// The datastore gets the good blob back; within the TTL the mirror
	// still refuses, after it the blob pulls and verifies.
	reg.mu.Lock()
	reg.blobs[layer.Digest] = good
	reg.mu.Unlock()
	clk.add(badBlobTTL - time.Second)
	if err := remotes.Fetch(ctx, store, fetcher, layer); err == nil {
		t.Fatal("refused blob served within the TTL")
	}
	clk.add(time.Second)
	// containerd kept the first attempt's partial ingest; a fresh pull
	// starts over, as after ctr's lease is gone.
	_ = store.Abort(ctx, remotes.MakeRefKey(ctx, layer))
	if err := pull(3); err != nil {
		t.Fatalf("pull of the repaired blob after the TTL: %v", err)
	}
	if info, err := store.Info(ctx, layer.Digest); err != nil || info.Size != layer.Size {
		t.Fatalf("repaired blob not committed: %+v %v", info, err)
	}
	ra, err := store.ReaderAt(ctx, ocispec.Descriptor{Digest: layer.Digest})
	if err == nil {
		got, _ := content.ReadBlob(ctx, store, layer)
		ra.Close()
		if !bytes.Equal(got, good) {
			t.Fatal("store holds other bytes")
		}
	}
}
