// Package prefetch is the contract between the registry mirror, which
// fetches an image's config and layers into the content store in the
// background as soon as it serves the manifest, and everything that would
// otherwise fetch or extract the same blob a second time:
//
//   - the content store containerd sees (Store): containerd's writer for
//     a blob being prefetched waits for it once containerd holds no lock,
//     then reports the committed blob complete, so containerd records it
//     instead of downloading it;
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
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// DefaultHold bounds how long a prefetch holds others back: while it is
// younger, containerd's writer for its blob waits for it (Store). A
// datastore that trickles (or a neighbour posing as one) can keep a
// prefetch running for its whole timeout; past the hold, containerd
// fetches the blob itself, and a content-addressed blob is the same
// whichever fetch commits it first.
const DefaultHold = 30 * time.Second

// Tracker records the blobs being prefetched into the content store and
// offers each one to the Stager. A prefetch is one blob from one source
// (the mirror's datastore host): the same digest may be in flight from
// two sources, and a source's waiters wait only for their own
// (WaitFrom). The content store, which knows only digests, is held back
// by any young prefetch of the digest (Running). It is safe for
// concurrent use.
type Tracker struct {
	stager Stager // nil: nothing is staged
	hold   time.Duration

	mu       sync.Mutex
	inFlight map[digest.Digest]map[string]*trackedJob // digest -> source
	fresh    map[digest.Digest]time.Time              // committed, not yet recorded (fresh.go)

	waits atomic.Int64 // WaitHeld calls so far, for tests to see a waiter
}

type trackedJob struct {
	done  chan struct{} // closed when the prefetch ends
	began time.Time
}

// TrackerOption configures a Tracker.
type TrackerOption func(*Tracker)

// WithHold sets how long a prefetch holds others back (DefaultHold).
func WithHold(d time.Duration) TrackerOption {
	return func(t *Tracker) {
		if d > 0 {
			t.hold = d
		}
	}
}

// NewTracker returns a Tracker offering prefetched blobs to stager (nil
// for none).
func NewTracker(stager Stager, opts ...TrackerOption) *Tracker {
	t := &Tracker{stager: stager, hold: DefaultHold, inFlight: map[digest.Digest]map[string]*trackedJob{}, fresh: map[digest.Digest]time.Time{}}
	for _, o := range opts {
		o(t)
	}
	return t
}

// Begin is BeginFrom with the empty source.
func (t *Tracker) Begin(dgst digest.Digest) (end func(), ok bool) {
	return t.BeginFrom("", dgst)
}

// BeginFrom records that dgst is being prefetched from source. It returns
// false if it already is (the caller then leaves it to that prefetch);
// otherwise end must be called exactly once when the prefetch is over,
// whether the blob was committed or not, which releases everybody waiting
// for it.
func (t *Tracker) BeginFrom(source string, dgst digest.Digest) (end func(), ok bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, running := t.inFlight[dgst][source]; running {
		return nil, false
	}
	j := &trackedJob{done: make(chan struct{}), began: time.Now()}
	if t.inFlight[dgst] == nil {
		t.inFlight[dgst] = map[string]*trackedJob{}
	}
	t.inFlight[dgst][source] = j
	return func() {
		t.mu.Lock()
		delete(t.inFlight[dgst], source)
		if len(t.inFlight[dgst]) == 0 {
			delete(t.inFlight, dgst)
		}
		t.mu.Unlock()
		close(j.done)
	}, true
}

// Running returns a channel that is closed when a prefetch of dgst
// (from any source) ends, or nil if none is in flight that began within
// the hold: an older one no longer holds the store's callers back.
func (t *Tracker) Running(dgst digest.Digest) <-chan struct{} {
	done, _ := t.held(dgst)
	return done
}

// Sources returns the sources dgst is being prefetched from.
func (t *Tracker) Sources(dgst digest.Digest) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var sources []string
	for source := range t.inFlight[dgst] {
		sources = append(sources, source)
	}
	return sources
}

// WaitHeld blocks while a prefetch of dgst holds the store's callers
// back: until every such prefetch has ended or outlived the hold, or ctx
// ends.
func (t *Tracker) WaitHeld(ctx context.Context, dgst digest.Digest) {
	t.waits.Add(1)
	// Each round outlasts one prefetch (ended or past its hold); a new
	// one may begin meanwhile, so the rounds are bounded.
	for range 16 {
		done, until := t.held(dgst)
		if done == nil {
			return
		}
		timer := time.NewTimer(time.Until(until))
		select {
		case <-done:
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
		if ctx.Err() != nil {
			return
		}
	}
}

// held is Running with the end of the prefetch's hold.
func (t *Tracker) held(dgst digest.Digest) (<-chan struct{}, time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, j := range t.inFlight[dgst] {
		if until := j.began.Add(t.hold); time.Now().Before(until) {
			return j.done, until
		}
	}
	return nil, time.Time{}
}

// Wait blocks while a prefetch of dgst that Running reports is in
// flight, or until ctx ends; the caller then looks in the store, where a
// successful prefetch has committed the blob.
func (t *Tracker) Wait(ctx context.Context, dgst digest.Digest) {
	wait(ctx, t.Running(dgst))
}

// WaitFrom blocks while dgst is being prefetched from source, or until
// ctx ends. Another source's prefetch of the same digest is not waited
// for: that source may be slow or hostile.
func (t *Tracker) WaitFrom(ctx context.Context, source string, dgst digest.Digest) {
	t.mu.Lock()
	var done chan struct{}
	if j := t.inFlight[dgst][source]; j != nil {
		done = j.done
	}
	t.mu.Unlock()
	wait(ctx, done)
}

func wait(ctx context.Context, done <-chan struct{}) {
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
