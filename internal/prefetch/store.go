package prefetch

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// infoWait bounds how long Info waits for a running prefetch. containerd
// calls Info (and Writer) inside a write transaction of its metadata
// database, so the wait holds that lock: it is kept short, and a longer
// prefetch makes containerd come back (see Store.Writer).
const infoWait = time.Second

// Store is the content store as containerd sees it through the content
// API, so that a blob the mirror is prefetching crosses the bridge and the
// disk once. containerd's fetch opens a writer, and its metadata store
// first asks Info whether the blob is already there; if so it only
// records it ("shared" content policy) and skips the download.
//   - Info of a blob being prefetched waits (bounded) for the prefetch.
//   - Writer for a blob still being prefetched is refused as Unavailable,
//     what a locked ingest answers: content.OpenWriter retries it with
//     backoff, and the retry's Info finds the committed blob.
//
// If the prefetch fails, the blob is not in the store and containerd's
// retry downloads it through the mirror as usual.
type Store struct {
	content.Store
	prefetches *Tracker
}

// NewStore wraps store (the CAS the prefetches commit to) for containerd,
// aware of what prefetches records.
func NewStore(store content.Store, prefetches *Tracker) *Store {
	return &Store{Store: store, prefetches: prefetches}
}

// Info waits up to a second for a running prefetch of d, then answers
// from the store.
func (s *Store) Info(ctx context.Context, d digest.Digest) (content.Info, error) {
	if done := s.prefetches.Running(d); done != nil {
		t := time.NewTimer(infoWait)
		select {
		case <-done:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	return s.Store.Info(ctx, d)
}

// Writer refuses, as Unavailable, an ingest of a blob being prefetched.
func (s *Store) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wo content.WriterOpts
	for _, o := range opts {
		if err := o(&wo); err != nil {
			return nil, err
		}
	}
	if d, ok := refDigest(wo.Ref); ok && s.prefetches.Running(d) != nil {
		return nil, fmt.Errorf("blob %s is being prefetched into the store: %w", d, errdefs.ErrUnavailable)
	}
	return s.Store.Writer(ctx, opts...)
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
