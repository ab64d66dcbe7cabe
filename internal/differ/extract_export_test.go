package differ

import (
	"context"
	"io"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/opencontainers/go-digest"
)

// ErrNotStageable is errNotStageable, for the tests of the extractor.
var ErrNotStageable = errNotStageable

// ExtractStaged runs a stage's extractor with a stage's entry check on
// the tar read from r, into dir, and returns the usage it counted and the
// implicit parents it made.
func ExtractStaged(ctx context.Context, dir string, r io.Reader) (snapshots.Usage, []string, error) {
	chk := newEntryCheck()
	u, err := extractTar(ctx, dir, r, chk.filter)
	return u, chk.implicit, err
}

// Published describes the published tree of the layer d.
func (s *Staging) Published(d digest.Digest) (dir string, usage snapshots.Usage, diffID digest.Digest, implicit []string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.ready[d]
	if t == nil {
		return "", snapshots.Usage{}, "", nil, false
	}
	return t.dir, t.usage, t.diffID, t.implicit, true
}
