package archiveimport

import (
	"fmt"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/localds/localds/internal/durable"
)

// A checkpoint counts only once what it names is on disk: a power cut
// after its rename must not leave a checkpoint that vouches for ingest
// bytes the kernel never wrote (a file of the right length, zeroed). So
// the ingests it names are fsynced first, then the checkpoint's
// temporary file, and after the rename its directory.

// durability is fsync of an ingest, a file and a directory; tests record
// the calls.
type durability interface {
	durable.Syncer
	ingest(w content.Writer) error
}

// ingestSyncer is a store writer that can make its bytes durable
// (internal/cas's writer can).
type ingestSyncer interface {
	Sync() error
}

type fsyncs struct{ durable.OS }

func (fsyncs) ingest(w content.Writer) error {
	s, ok := w.(ingestSyncer)
	if !ok {
		return fmt.Errorf("the local store's writer %T cannot sync an ingest: %w", w, errdefs.ErrNotImplemented)
	}
	return s.Sync()
}

// syncPending makes every pending ingest durable that is not yet.
func (s *StreamImport) syncPending() error {
	for i := range s.a.pending {
		p := &s.a.pending[i]
		if p.w == nil || p.synced {
			continue
		}
		if err := s.sync.ingest(p.w); err != nil {
			return fmt.Errorf("blob of entry %s: %w", p.name, err)
		}
		p.synced = true
	}
	return nil
}
