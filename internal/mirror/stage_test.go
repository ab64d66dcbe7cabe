package mirror

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/prefetch"
)

// stagerFunc is a prefetch.Stager.
type stagerFunc func(ctx context.Context, desc ocispec.Descriptor) prefetch.LayerStage

func (f stagerFunc) StageLayer(ctx context.Context, desc ocispec.Descriptor) prefetch.LayerStage {
	return f(ctx, desc)
}

// recordingStage is a prefetch.LayerStage that copies like the daemon's and
// records what it saw and how it ended.
type recordingStage struct {
	mu       sync.Mutex
	seen     bytes.Buffer
	verified digest.Digest
	aborted  bool
}

func (r *recordingStage) Copy(dst io.Writer, src io.Reader) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return io.Copy(io.MultiWriter(dst, &r.seen), src)
}

func (r *recordingStage) Commit(d digest.Digest) { r.mu.Lock(); r.verified = d; r.mu.Unlock() }
func (r *recordingStage) Abort()                 { r.mu.Lock(); r.aborted = true; r.mu.Unlock() }

// Every prefetched blob goes through its stage; a verified one is
// committed as its digest, the corrupt one aborted (never committed).
func TestPrefetchStagesBlobs(t *testing.T) {
	reg := newFakeRegistry(t)
	_, blobs := testImage(t, reg)
	bad := blobs[1]
	reg.blobs[bad.Digest][10] ^= 1
	var mu sync.Mutex
	stages := map[digest.Digest]*recordingStage{}
	stager := stagerFunc(func(ctx context.Context, desc ocispec.Descriptor) prefetch.LayerStage {
		mu.Lock()
		defer mu.Unlock()
		st := &recordingStage{}
		stages[desc.Digest] = st
		return st
	})
	env := newTestEnv(t, reg, Options{Store: newStore(t), Prefetch: true, Prefetches: prefetch.NewTracker(stager)})
	defer env.mirror.Close()

	resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/1"), nil)
	io.Copy(io.Discard, resp.Body)
	waitFor(t, "all prefetches to end", func() bool {
		s := env.mirror.Stats()
		return s.Prefetched+s.PrefetchFailed == 3
	})
	mu.Lock()
	defer mu.Unlock()
	for _, b := range blobs {
		st := stages[b.Digest]
		if st == nil {
			t.Fatalf("blob %s not offered to the stage", b.Digest)
		}
		st.mu.Lock()
		if b.Digest == bad.Digest {
			if !st.aborted || st.verified != "" {
				t.Errorf("corrupt blob: aborted %v, committed as %q", st.aborted, st.verified)
			}
		} else if st.aborted || st.verified != b.Digest || digest.FromBytes(st.seen.Bytes()) != b.Digest {
			t.Errorf("blob %s: aborted %v, committed as %q, saw %d bytes", b.Digest, st.aborted, st.verified, st.seen.Len())
		}
		st.mu.Unlock()
	}
}

// dropStore records which ingests were told to drop their cache
// (cas.DropCache).
type dropStore struct {
	content.Store
	mu      sync.Mutex
	dropped []string // refs
}

func (s *dropStore) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	w, err := s.Store.Writer(ctx, opts...)
	if err != nil {
		return nil, err
	}
	var wo content.WriterOpts
	for _, o := range opts {
		if err := o(&wo); err != nil {
			return nil, err
		}
	}
	return &dropWriter{Writer: w, s: s, ref: wo.Ref}, nil
}

type dropWriter struct {
	content.Writer
	s   *dropStore
	ref string
}

func (w *dropWriter) DropCache() {
	w.s.mu.Lock()
	w.s.dropped = append(w.s.dropped, w.ref)
	w.s.mu.Unlock()
}

// A blob extracted while it downloads is not read back, so its ingest
// may drop its page cache; a blob that is not staged (read back at
// Apply, or a config) keeps it.
func TestPrefetchDropsCacheOfStagedOnly(t *testing.T) {
	reg := newFakeRegistry(t)
	_, blobs := testImage(t, reg)
	staged := blobs[2]
	stager := stagerFunc(func(ctx context.Context, desc ocispec.Descriptor) prefetch.LayerStage {
		if desc.Digest != staged.Digest {
			return nil
		}
		return &recordingStage{}
	})
	store := &dropStore{Store: newStore(t)}
	env := newTestEnv(t, reg, Options{Store: store, Prefetch: true, Prefetches: prefetch.NewTracker(stager)})
	defer env.mirror.Close()

	resp := env.do(t, http.MethodGet, env.url("/v2/app/manifests/1"), nil)
	io.Copy(io.Discard, resp.Body)
	waitFor(t, "3 prefetched blobs", func() bool { return env.mirror.Stats().Prefetched == 3 })
	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.dropped) != 1 || !strings.HasSuffix(store.dropped[0], "-"+staged.Digest.String()) {
		t.Errorf("ingests told to drop their cache: %q, want only the staged %s", store.dropped, staged.Digest)
	}
}
