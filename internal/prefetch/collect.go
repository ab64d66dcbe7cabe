package prefetch

import (
	"context"
	"strings"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/opencontainers/go-digest"
)

// containerd's garbage collection (run whenever a client removed
// something: an image, a lease, a blob) walks its content backend, this
// Store, and deletes every blob that none of its namespaces records and
// aborts every ingest that none of them knows. A pull's prefetches are
// both until the pull's fetch records the blob: without the methods below
// another client's `ctr image rm` during a pull would abort the
// prefetches in flight and delete the blobs prefetched but not yet
// recorded, and the pull would download them again.

// ListStatuses leaves out the prefetches' own ingests: they are the
// daemon's, not containerd's.
func (s *Store) ListStatuses(ctx context.Context, filters ...string) ([]content.Status, error) {
	sts, err := s.Store.ListStatuses(ctx, filters...)
	if err != nil {
		return nil, err
	}
	kept := sts[:0]
	for _, st := range sts {
		if !strings.HasPrefix(st.Ref, RefPrefix) {
			kept = append(kept, st)
		}
	}
	return kept, nil
}

// Walk leaves out the blobs prefetches committed that containerd has not
// recorded yet (Tracker.Committed), for at most FreshFor.
func (s *Store) Walk(ctx context.Context, fn content.WalkFunc, filters ...string) error {
	return s.Store.Walk(ctx, func(info content.Info) error {
		if s.prefetches.Fresh(info.Digest) {
			return nil
		}
		return fn(info)
	}, filters...)
}

// Info is containerd's lookup of a blob it is about to record: its
// metadata store asks when it opens a writer for the blob ("shared"
// content policy: found, the commit only records it), and the content
// service asks before it commits a writer that names the digest (a held
// writer's). A prefetched blob found is adopted, no longer kept from the
// collection. containerd records it right after; only a collection in
// between could delete it.
func (s *Store) Info(ctx context.Context, dgst digest.Digest) (content.Info, error) {
	info, err := s.Store.Info(ctx, dgst)
	if err == nil {
		s.prefetches.Adopted(dgst)
	}
	return info, err
}
