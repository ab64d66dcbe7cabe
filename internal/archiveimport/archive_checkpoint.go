package archiveimport

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/localds/localds/internal/durable"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// checkpointVersion changes when the checkpoint's meaning does; an old
// one is then dropped, and its download starts over.
const checkpointVersion = 2

// maxCheckpointSize bounds what Resume reads (the archive's metadata
// files are at most maxArchiveJSON each).
const maxCheckpointSize = 64 << 20

// checkpoint is where a stream import stands: everything a new process
// needs to continue reading the archive at Offset.
type checkpoint struct {
	Version   int    `json:"version"`
	SHA256    string `json:"sha256"`
	RefPrefix string `json:"ref_prefix"`
	// Offset is where the stream continues; Hash the archive hash's
	// state there.
	Offset int64  `json:"offset"`
	Hash   []byte `json:"hash"`
	// Entries is the number of tar entries done; Current, if set, is
	// the next one, written up to Current.Pos (Offset is in its data).
	Entries   int          `json:"entries"`
	Current   *streamEntry `json:"current,omitempty"`
	BlobCount int          `json:"blob_count"`

	OCILayout      []byte                        `json:"oci_layout,omitempty"`
	Index          []byte                        `json:"index,omitempty"`
	DockerManifest []byte                        `json:"docker_manifest,omitempty"`
	Blobs          map[string]ocispec.Descriptor `json:"blobs"`
	Links          map[string]string             `json:"links"`
	Pending        []checkpointBlob              `json:"pending"`
}

// streamEntry is an archive entry being written into an ingest.
type streamEntry struct {
	Name      string             `json:"name"`
	Ref       string             `json:"ref"`
	Desc      ocispec.Descriptor `json:"desc"` // no digest for a docker save file
	DataStart int64              `json:"data_start"`
	Pos       int64              `json:"pos"` // bytes written
	// HashAtStart is the archive hash at DataStart: if the ingest is
	// not exactly Pos long, or its bytes do not have PrefixDigest, when
	// resuming, the entry is written again.
	HashAtStart  []byte        `json:"hash_at_start"`
	PrefixDigest digest.Digest `json:"prefix_digest,omitempty"` // of the ingest's first Pos bytes

	syncErr error // the ingest could not be made durable: no checkpoint in its middle
}

// checkpointBlob is a pending blob: written whole, not committed.
type checkpointBlob struct {
	Ref     string             `json:"ref"`
	Desc    ocispec.Descriptor `json:"desc"`
	Name    string             `json:"name"`
	Off     int64              `json:"off"`
	Unnamed bool               `json:"unnamed,omitempty"`
	Exists  bool               `json:"exists,omitempty"` // the store had it
}

// save writes the checkpoint for where the stream stands: in the middle
// of the current entry, or else at the last point between entries. It is
// replaced atomically.
func (s *StreamImport) save() error {
	a := s.a
	cp := checkpoint{
		Version: checkpointVersion, SHA256: s.sha256, RefPrefix: a.refPrefix,
		Offset: s.last.offset, Hash: s.last.hash, Entries: s.last.entries, BlobCount: a.blobCount,
		OCILayout: a.ociLayout, Index: a.index, DockerManifest: a.dockerManifest, Blobs: a.blobs, Links: a.links,
	}
	if cur := s.current; cur != nil {
		st, err := s.hr.state()
		if err != nil {
			return err
		}
		c := *cur
		cp.Offset, cp.Hash, cp.Entries, cp.Current = cur.DataStart+cur.Pos, st, a.entries, &c
	}
	if cp.Hash == nil {
		return nil // not even at the first entry yet
	}
	if cp.Current != nil && cp.Current.syncErr != nil {
		return fmt.Errorf("entry %s: %w", cp.Current.Name, cp.Current.syncErr)
	}
	// What the checkpoint names is on disk before the checkpoint is.
	if err := s.syncPending(); err != nil {
		return err
	}
	for _, p := range a.pending {
		cp.Pending = append(cp.Pending, checkpointBlob{Ref: p.ref, Desc: p.desc, Name: p.name, Off: p.off, Unnamed: p.unnamed, Exists: p.w == nil})
	}
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	if err := durable.WriteFile(s.checkpoint, b, s.sync); err != nil {
		return err
	}
	s.savedAt, s.saved = cp.Offset, true
	return nil
}

// Resume picks up the checkpoint an earlier import of the same archive
// left (datastore.Sink): it reopens the ingests it names and returns the
// offset where the download continues. Anything that does not add up (no
// checkpoint, another archive, an ingest of the wrong size) makes it start
// over from 0 with nothing kept.
func (s *StreamImport) Resume(ctx context.Context) (int64, error) {
	cp, err := readCheckpoint(s.checkpoint)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err == nil {
		var off int64
		if off, err = s.restore(ctx, cp); err == nil {
			log.G(ctx).WithFields(log.Fields{"offset": off, "blobs": len(cp.Pending)}).Info("import: resuming from checkpoint")
			return off, nil
		}
	}
	log.G(ctx).WithError(err).Info("import: cannot resume from the checkpoint; starting over")
	s.stop(errStreamRestarted)
	s.discard()
	if cp != nil {
		for _, p := range cp.Pending {
			abort(ctx, s.local, p.Ref)
		}
		if cp.Current != nil {
			abort(ctx, s.local, cp.Current.Ref)
		}
		// A killed run also left the entry it was in, which no
		// checkpoint names: every ingest of its prefix goes.
		if prefix := cp.RefPrefix; prefix != "" && importPrefix(prefix) == prefix {
			if _, _, err := sweepPrefix(ctx, s.local, prefix); err != nil {
				log.G(ctx).WithError(err).Warn("import: cannot remove the ingests of the checkpoint's run")
			}
		}
	}
	return 0, s.fresh()
}

func readCheckpoint(path string) (*checkpoint, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) > maxCheckpointSize {
		return nil, fmt.Errorf("checkpoint %s is too big", path)
	}
	var cp checkpoint
	if err := json.Unmarshal(b, &cp); err != nil {
		return nil, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	return &cp, nil
}

// restore sets the import to the checkpoint's state.
func (s *StreamImport) restore(ctx context.Context, cp *checkpoint) (int64, error) {
	switch {
	case cp.Version != checkpointVersion:
		return 0, fmt.Errorf("checkpoint version %d, not %d", cp.Version, checkpointVersion)
	case cp.SHA256 != s.sha256:
		return 0, fmt.Errorf("checkpoint of archive %s, not %s", cp.SHA256, s.sha256)
	case cp.Offset < 0 || cp.Entries < 0 || cp.Entries > maxArchiveEntries:
		return 0, fmt.Errorf("checkpoint offset %d, entries %d", cp.Offset, cp.Entries)
	}
	a := s.a
	a.refPrefix, a.entries, a.blobCount = cp.RefPrefix, cp.Entries, cp.BlobCount
	a.ociLayout, a.index, a.dockerManifest = cp.OCILayout, cp.Index, cp.DockerManifest
	if cp.Blobs != nil {
		a.blobs = cp.Blobs
	}
	if cp.Links != nil {
		a.links = cp.Links
	}
	for _, p := range cp.Pending {
		pb := pendingBlob{ref: p.Ref, desc: p.Desc, name: p.Name, off: p.Off, unnamed: p.Unnamed}
		if !p.Exists {
			// Written whole: its bytes must have its digest (computed
			// while writing for a docker save file). Else the checkpoint
			// is no good: a power cut lost what it vouched for.
			w, err := s.reopen(ctx, p.Ref, p.Desc, p.Desc.Size, p.Desc.Digest)
			if err != nil {
				return 0, fmt.Errorf("blob %s of entry %s: %w", p.Desc.Digest, p.Name, err)
			}
			pb.w, pb.synced = w, true // w nil if the store has the blob by now
		}
		a.pending = append(a.pending, pb)
	}
	off, hash := cp.Offset, cp.Hash
	if cur := cp.Current; cur != nil {
		w, err := s.reopen(ctx, cur.Ref, cur.Desc, cur.Pos, cur.PrefixDigest)
		if errors.Is(err, errIngestLength) || errors.Is(err, errIngestChanged) {
			// Written further (or less) than the checkpoint says, or
			// other bytes: write the entry again from its start.
			log.G(ctx).WithError(err).WithField("entry", cur.Name).Info("import: the entry's ingest is not as checkpointed; writing it again")
			if w, err = s.reopen(ctx, cur.Ref, cur.Desc, -1, ""); err == nil {
				cur.Pos, off, hash = 0, cur.DataStart, cur.HashAtStart
			}
		}
		if err != nil {
			return 0, fmt.Errorf("entry %s: %w", cur.Name, err)
		}
		s.current, s.resumeW = cur, w // w nil: the rest is skipped
	}
	hr, err := newHashReader(nil, off, hash, s.opts.Progress)
	if err != nil {
		return 0, err
	}
	s.hr.close()
	s.hr = hr
	s.last = boundaryState{offset: off, hash: hash, entries: cp.Entries}
	s.savedAt, s.saved = off, true
	return off, nil
}

// errIngestLength is an ingest whose length is not the checkpoint's.
var errIngestLength = errors.New("ingest length does not match the checkpoint")

// errIngestChanged is an ingest whose bytes are not those the checkpoint
// recorded (their digest differs).
var errIngestChanged = errors.New("ingest bytes do not match the checkpoint")

// reopen opens the ingest ref again, which must hold exactly size bytes
// whose digest is want (size < 0: emptied instead). The store hashes what
// is there when it reopens an ingest, so the check reads nothing more. It
// returns nil if the store has the blob by now (another pull committed
// it).
func (s *StreamImport) reopen(ctx context.Context, ref string, desc ocispec.Descriptor, size int64, want digest.Digest) (content.Writer, error) {
	w, err := s.local.Writer(ctx, content.WithRef(ref), content.WithDescriptor(desc))
	if errdefs.IsAlreadyExists(err) && desc.Digest != "" {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	st, err := w.Status()
	if err != nil {
		w.Close()
		return nil, err
	}
	if size < 0 {
		if st.Offset != 0 {
			if err := w.Truncate(0); err != nil {
				w.Close()
				return nil, err
			}
		}
		return w, nil
	}
	if st.Offset != size {
		w.Close()
		return nil, fmt.Errorf("%w: %d bytes, expected %d", errIngestLength, st.Offset, size)
	}
	if size > 0 && w.Digest() != want {
		w.Close()
		return nil, fmt.Errorf("%w: %d bytes of digest %s, expected %s", errIngestChanged, size, w.Digest(), want)
	}
	return w, nil
}
