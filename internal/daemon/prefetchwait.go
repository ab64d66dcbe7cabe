package daemon

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// prefetchReporter is what a mirror handler implements when it prefetches
// blobs into the store (mirror.Mirror): the done channel of a
// running prefetch, nil if dgst is not being prefetched.
type prefetchReporter interface {
	Prefetching(dgst digest.Digest) <-chan struct{}
}

// infoPrefetchWait bounds how long Info waits for a running prefetch.
// containerd calls Info (and Writer) inside a write transaction of its
// metadata database, so the wait holds that lock: it is kept short, and
// a longer prefetch makes containerd come back (see Writer).
const infoPrefetchWait = time.Second

// prefetchAwareStore is the store as containerd sees it through the
// content API, so that a blob the mirror is prefetching crosses the bridge
// and the disk once. containerd's fetch opens a writer, and its metadata
// store first asks Info whether the blob is already there; if so it only
// records it ("shared" content policy) and skips the download.
//   - Info of a blob being prefetched waits (bounded) for the prefetch.
//   - Writer for a blob still being prefetched is refused as Unavailable,
//     what a locked ingest answers: content.OpenWriter retries it with
//     backoff, and the retry's Info finds the committed blob.
//
// If the prefetch fails, the blob is not in the store and containerd's
// retry downloads it through the mirror as usual.
type prefetchAwareStore struct {
	content.Store
	reporter atomic.Pointer[prefetchReporter]
}

func (s *prefetchAwareStore) prefetching(d digest.Digest) <-chan struct{} {
	if r := s.reporter.Load(); r != nil {
		return (*r).Prefetching(d)
	}
	return nil
}

func (s *prefetchAwareStore) Info(ctx context.Context, d digest.Digest) (content.Info, error) {
	if done := s.prefetching(d); done != nil {
		t := time.NewTimer(infoPrefetchWait)
		select {
		case <-done:
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
	return s.Store.Info(ctx, d)
}

func (s *prefetchAwareStore) Writer(ctx context.Context, opts ...content.WriterOpt) (content.Writer, error) {
	var wo content.WriterOpts
	for _, o := range opts {
		if err := o(&wo); err != nil {
			return nil, err
		}
	}
	if d, ok := refDigest(wo.Ref); ok && s.prefetching(d) != nil {
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
