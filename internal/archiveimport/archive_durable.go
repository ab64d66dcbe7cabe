package archiveimport

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
)

// A checkpoint counts only once what it names is on disk: a power cut
// after its rename must not leave a checkpoint that vouches for ingest
// bytes the kernel never wrote (a file of the right length, zeroed). So
// the ingests it names are fsynced first, then the checkpoint's
// temporary file, and after the rename its directory.

// durability is fsync of an ingest, a file and a directory; tests record
// the calls.
type durability interface {
	ingest(w content.Writer) error
	file(f *os.File) error
	dir(dir string) error
}

// ingestSyncer is a store writer that can make its bytes durable
// (internal/cas's writer can).
type ingestSyncer interface {
	Sync() error
}

type fsyncs struct{}

func (fsyncs) ingest(w content.Writer) error {
	s, ok := w.(ingestSyncer)
	if !ok {
		return fmt.Errorf("the local store's writer %T cannot sync an ingest: %w", w, errdefs.ErrNotImplemented)
	}
	return s.Sync()
}

func (fsyncs) file(f *os.File) error { return f.Sync() }

func (fsyncs) dir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// writeDurably replaces path with b: a temporary file written and
// fsynced, renamed over path, and the directory fsynced.
func writeDurably(path string, b []byte, sy durability) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = sy.file(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := sy.dir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("sync the directory of %s: %w", path, err)
	}
	return nil
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
