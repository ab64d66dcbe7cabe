package prefetch

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/errdefs"
	"github.com/opencontainers/go-digest"
)

// heldWriter is containerd's writer for a blob being prefetched. It makes
// no ingest until it must, and waits for the prefetch only where
// containerd holds no lock:
//
//  1. The first Status is the content proxy's negotiation, which runs
//     inside containerd's metadata write transaction: it answers at once
//     (nothing written yet).
//  2. A later Status (remotes.Fetch asks right after opening the writer,
//     outside the transaction) waits while the prefetch holds the blob
//     (Tracker.WaitHeld), then decides: the blob is in the store, so the
//     writer reports it complete and its digest (remotes.Fetch then
//     commits without fetching; the content service finds the blob,
//     aborts the ref, a no-op, and answers the commit AlreadyExists,
//     which containerd's metadata store records as committed); or it is
//     not, and the real ingest is opened
//     and containerd downloads as usual.
//
// A Write, Truncate or Commit before any decision opens the real ingest
// without waiting: a client that writes has already fetched.
type heldWriter struct {
	ctx     context.Context // the write stream's: ends if containerd goes away
	s       *Store
	opts    content.WriterOpts
	dgst    digest.Digest // the blob the ref names
	started time.Time

	mu       sync.Mutex
	statuses int
	have     int64          // > 0: the blob is in the store, this size
	w        content.Writer // the real ingest, once opened
}

func newHeldWriter(ctx context.Context, s *Store, opts content.WriterOpts, d digest.Digest) *heldWriter {
	return &heldWriter{ctx: ctx, s: s, opts: opts, dgst: d, started: time.Now()}
}

func (h *heldWriter) Status() (content.Status, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.statuses++
	if h.w == nil && h.have == 0 {
		if h.statuses == 1 {
			return h.status(0), nil
		}
		h.s.prefetches.WaitHeld(h.ctx, h.dgst)
		if err := h.decide(true); err != nil {
			return content.Status{}, err
		}
	}
	if h.w != nil {
		return h.w.Status()
	}
	return h.status(h.have), nil
}

func (h *heldWriter) status(offset int64) content.Status {
	return content.Status{
		Ref:       h.opts.Ref,
		Offset:    offset,
		Total:     max(h.opts.Desc.Size, offset),
		StartedAt: h.started,
		UpdatedAt: time.Now(),
	}
}

// decide finds the blob in the store (if lookup) or else opens the real
// ingest. Called with h.mu held.
func (h *heldWriter) decide(lookup bool) error {
	if lookup {
		info, err := h.s.Store.Info(h.ctx, h.dgst)
		if err == nil && info.Size > 0 && (h.opts.Desc.Size <= 0 || info.Size == h.opts.Desc.Size) {
			h.have = info.Size
			return nil
		}
	}
	h.have = 0
	w, err := h.s.Store.Writer(h.ctx, content.WithRef(h.opts.Ref), content.WithDescriptor(h.opts.Desc))
	if err != nil {
		return fmt.Errorf("open ingest %s after the prefetch of %s: %w", h.opts.Ref, h.dgst, err)
	}
	// The client negotiated offset 0 (the first Status) and sends its
	// writes from there: an ingest another writer left under this ref
	// meanwhile starts over, or the content service would truncate it
	// only at the first write and commit what follows as the whole blob.
	if st, err := w.Status(); err != nil || st.Offset != 0 {
		if err == nil {
			err = w.Truncate(0)
		}
		if err != nil {
			w.Close()
			return fmt.Errorf("reset ingest %s after the prefetch of %s: %w", h.opts.Ref, h.dgst, err)
		}
	}
	h.w = w
	return nil
}

// real returns the real ingest, opening it if need be (a client that
// writes or truncates does not want the prefetched blob).
func (h *heldWriter) real() (content.Writer, error) {
	if h.w == nil {
		if err := h.decide(false); err != nil {
			return nil, err
		}
	}
	return h.w, nil
}

func (h *heldWriter) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w, err := h.real()
	if err != nil {
		return 0, err
	}
	return w.Write(p)
}

func (h *heldWriter) Truncate(size int64) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	w, err := h.real()
	if err != nil {
		return err
	}
	return w.Truncate(size)
}

func (h *heldWriter) Digest() digest.Digest {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.w != nil {
		return h.w.Digest()
	}
	if h.have > 0 {
		return h.dgst
	}
	return ""
}

// Commit of a blob found in the store is AlreadyExists, as the content
// service answers before calling Commit when the client names the
// digest; a commit of other content than the blob is refused.
func (h *heldWriter) Commit(ctx context.Context, size int64, expected digest.Digest, opts ...content.Opt) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.w == nil && h.have > 0 {
		if (expected != "" && expected != h.dgst) || (size > 0 && size != h.have) {
			return fmt.Errorf("commit of %s (%d bytes) to ref %s, which holds %s (%d bytes): %w",
				expected, size, h.opts.Ref, h.dgst, h.have, errdefs.ErrFailedPrecondition)
		}
		return fmt.Errorf("content %s: %w", h.dgst, errdefs.ErrAlreadyExists)
	}
	w, err := h.real()
	if err != nil {
		return err
	}
	return w.Commit(ctx, size, expected, opts...)
}

func (h *heldWriter) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.w != nil {
		return h.w.Close()
	}
	return nil
}
