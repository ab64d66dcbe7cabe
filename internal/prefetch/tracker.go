// Package prefetch is the contract between the registry mirror, which
// fetches an image's config and layers into the content store in the
// background as soon as it serves the manifest, and everything that would
// otherwise fetch or extract the same blob a second time:
//
//   - the content store containerd sees (Store): Info of a blob being
//     prefetched waits for it (at most a second, see Store) and containerd's
//     writer for it is refused as Unavailable, so containerd's retry finds
//     the committed blob instead of downloading it;
//   - the mirror's own blob requests, which wait (Tracker.Wait) and are
//     then answered from the store;
//   - the layer staging (Stager), which extracts a layer while it is
//     prefetched for the diff service to take at Apply.
//
// One Tracker is built by the daemon and handed to the store wrapper and
// the mirror; it only records which blobs are in flight. How many run at
// once and for how long is the mirror's business (it does the fetching),
// how much is staged and for how long is the Stager's.
package prefetch

import (
	"context"
	"sync"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Tracker records the blobs being prefetched into the content store and
// offers each one to the Stager. It is safe for concurrent use.
type Tracker struct {
	stager Stager // nil: nothing is staged

	mu       sync.Mutex
	inFlight map[digest.Digest]chan struct{} // closed when the prefetch ends
}

// NewTracker returns a Tracker offering prefetched blobs to stager (nil
// for none).
func NewTracker(stager Stager) *Tracker {
	return &Tracker{stager: stager, inFlight: map[digest.Digest]chan struct{}{}}
}

// Begin records that dgst is being prefetched. It returns false if it
// already is (the caller then leaves it to that prefetch); otherwise end
// must be called exactly once when the prefetch is over, whether the blob
// was committed or not, which releases everybody waiting for it.
func (t *Tracker) Begin(dgst digest.Digest) (end func(), ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, running := t.inFlight[dgst]; running {
		return nil, false
	}
	done := make(chan struct{})
	t.inFlight[dgst] = done
	return func() {
		t.mu.Lock()
		delete(t.inFlight, dgst)
		t.mu.Unlock()
		close(done)
	}, true
}

// Running returns a channel that is closed when the prefetch of dgst
// ends, or nil if dgst is not being prefetched.
func (t *Tracker) Running(dgst digest.Digest) <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if done, ok := t.inFlight[dgst]; ok {
		return done
	}
	return nil
}

// Wait blocks while dgst is being prefetched, or until ctx ends; the
// caller then looks in the store, where a successful prefetch has
// committed the blob.
func (t *Tracker) Wait(ctx context.Context, dgst digest.Digest) {
	done := t.Running(dgst)
	if done == nil {
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// StageLayer offers the blob desc, about to be prefetched, to the
// Stager: nil means the prefetch copies it into the store itself.
func (t *Tracker) StageLayer(ctx context.Context, desc ocispec.Descriptor) LayerStage {
	if t.stager == nil {
		return nil
	}
	return t.stager.StageLayer(ctx, desc)
}
