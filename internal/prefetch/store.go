package prefetch

import (
	"context"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// Store is the content store as containerd sees it through the content
// API, so that a blob the mirror is prefetching crosses the bridge and the
// disk once. containerd's fetch opens a writer; its metadata store first
// asks Info whether the blob is already there (if so it only records it,
// "shared" content policy) and else opens the backend's writer, both
// inside a write transaction of its metadata database: whatever they
// wait for holds containerd's one write lock, and every other fetch,
// commit and label update of the pull queues behind it. So nothing here
// waits there:
//   - Info answers at once from the store;
//   - Writer for a blob being prefetched answers at once with a held
//     writer (heldWriter) whose first Status (the proxy's negotiation,
//     still inside the transaction) answers at once too; the fetch's next
//     Status, outside the transaction, waits for the prefetch (within
//     its hold) and then reports the blob complete if it is in the store,
//     so the fetch commits it without downloading, or else opens the
//     real ingest and the fetch downloads as usual.
//
// If the prefetch fails or outlives its hold (DefaultHold), the blob is
// not in the store and containerd downloads it through the mirror.
type Store struct {
	content.Store
	prefetches *Tracker
}

// NewStore wraps store (the CAS the prefetches commit to) for containerd,
// aware of what prefetches records.
func NewStore(store content.Store, prefetches *Tracker) *Store {
	return &Store{Store: store, prefetches: prefetches}
}

// Writer hands out a held writer for a blob being prefetched (see Store),
// unless containerd already has a partial ingest under this ref: that one
// is resumed at once, so the negotiated offset is the real one.
func (s *Store) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wo content.WriterOpts
	for _, o := range opts {
		if err := o(&wo); err != nil {
			return nil, err
		}
	}
	if d, ok := refDigest(wo.Ref); ok && s.prefetches.Running(d) != nil {
		if _, err := s.Store.Status(ctx, wo.Ref); errdefs.IsNotFound(err) {
			return newHeldWriter(ctx, s, wo, d), nil
		}
	}
	return s.Store.Writer(ctx, opts...)
}

// Status of containerd's ingest ref: where containerd's writer for the
// blob is held (it has no ingest of its own yet), the progress of the
// blob's prefetch. containerd lists a pull's ingests by asking Status of
// each, and `ctr image pull` and other clients show their progress from
// that; without it a layer being prefetched would show no progress until
// it is complete.
func (s *Store) Status(ctx context.Context, ref string) (content.Status, error) {
	st, err := s.Store.Status(ctx, ref)
	if !errdefs.IsNotFound(err) {
		return st, err
	}
	d, ok := refDigest(ref)
	if !ok {
		return st, err
	}
	for _, source := range s.prefetches.Sources(d) {
		if pst, perr := s.Store.Status(ctx, IngestRef(source, d)); perr == nil {
			pst.Ref = ref
			return pst, nil
		}
	}
	return st, err
}

// refDigest is the digest an ingest ref ends with. containerd's metadata
// store hands the backend its own ref ("<ns>/<seq>/<key>", no descriptor
// digest); the key is remotes.MakeRefKey's, which ends with the blob's
// digest ("layer-sha256:<hex>").
func refDigest(ref string) (digest.Digest, bool) {
	i := strings.LastIndex(ref, string(digest.SHA256)+":")
	if i < 0 {
		return "", false
	}
	d, err := digest.Parse(ref[i:])
	if err != nil {
		return "", false
	}
	return d, true
}
