package archiveimport

import (
	"context"
	"fmt"

	"github.com/containerd/containerd/v2/core/content"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// pendingBlob is a blob written and hashed into an ingest of the local
// store whose commit waits until the whole archive is verified (a stream
// import). Its writer stays open: reopening an ingest makes the store
// hash it all again. w is nil for a blob the store already had.
type pendingBlob struct {
	w       content.Writer
	ref     string
	desc    ocispec.Descriptor
	name    string // archive entry, for errors
	off     int64  // where its data starts in the archive (see register)
	unnamed bool   // digest computed while writing, not named by the path
	synced  bool   // fsynced for a checkpoint (see syncPending)
}

// commitPending commits and registers every pending blob. If one fails,
// the ingests left are dropped and nothing more is committed.
func (a *archive) commitPending(ctx context.Context) error {
	for len(a.pending) > 0 {
		p := a.pending[0]
		a.pending = a.pending[1:]
		if err := a.commitLocal(ctx, p); err != nil {
			a.abortPending(ctx)
			if p.unnamed {
				return fmt.Errorf("import: archive entry %q: %w", p.name, err)
			}
			return fmt.Errorf("import: archive entry %s does not hold blob %s: %w", p.name, p.desc.Digest, err)
		}
	}
	return nil
}

// abortPending drops every ingest still waiting for its commit.
func (a *archive) abortPending(ctx context.Context) {
	for _, p := range a.pending {
		if p.w != nil {
			p.w.Close()
			abort(ctx, a.local, p.ref)
		}
	}
	a.pending = nil
}

// closePending closes the pending writers and keeps their ingests, for a
// resume.
func (a *archive) closePending() {
	for _, p := range a.pending {
		if p.w != nil {
			p.w.Close()
		}
	}
	a.pending = nil
}
