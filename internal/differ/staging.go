package differ

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/images"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/log"
	"github.com/moby/sys/userns"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/localds/localds/internal/prefetch"
)

// Staging is where layers are extracted while the mirror prefetches them
// (<root>/vault/staging, mode 0700; the daemon's prefetch.Stager), so
// that Apply only has to move the finished tree onto the snapshot instead
// of extracting after the download: containerd applies layers one after another, after each one's
// fetch, so extraction after a parallel prefetch is serial time on top of
// the download, while extraction during it overlaps.
//
// A staged tree is published (made takeable) only after the prefetch has
// verified the blob's length and digest and committed it to the CAS; until
// then it is just a private directory nothing reads. Apply takes a tree at
// most once; trees nobody takes are removed after StagingTTL, and at most
// StagingMaxBytes are staged at a time, counted in what the extraction
// writes (a layer reserves its blob size to start and more as it
// extracts; past the bound its stage is abandoned), so staging can never
// hold more than that beyond the CAS, whatever a layer decompresses to.
type Staging struct {
	dir      string
	maxBytes int64
	ttl      time.Duration

	mu       sync.Mutex
	reserved int64 // sizes of running and published stages
	ready    map[digest.Digest]*stagedTree
	closed   bool
}

// stagedTree is one published extraction.
type stagedTree struct {
	dir  string // its root, inside Staging.dir
	size int64  // the blob's size
	// reserved is what the stage held of Staging's bound (the blob's
	// size, or the extracted bytes if more), released at discard.
	reserved int64
	// decoded: the blob went through containerd's DecompressStream (see
	// layerDecoding); Apply takes the tree only for a layer it decodes
	// the same way.
	decoded bool
	// diffID and diffSize describe the uncompressed tar, as Apply answers.
	diffID   digest.Digest
	diffSize int64
	// whiteouts: the layer has whiteouts or opaque markers, extracted the
	// overlay way (char device 0/0, trusted.overlay.opaque), so only an
	// overlay upperdir may take the tree.
	whiteouts bool
	// implicit are the parent directories archive.Apply made, for
	// fixImplicit.
	implicit []string
	// usage is what fs.DiskUsage would report for the tree (bytes in
	// blocks and inodes, each inode once), counted while extracting so
	// the snapshot's Commit need not walk it; zero when unknown.
	usage  snapshots.Usage
	expiry *time.Timer
}

const (
	// DefaultStagingMaxBytes bounds the bytes staged at a time: the
	// extracted trees' (file contents plus a cost per entry), or a
	// running stage's blob size if that is more.
	DefaultStagingMaxBytes = 4 << 30
	// DefaultStagingTTL is how long a staged tree waits for its Apply.
	DefaultStagingTTL = 10 * time.Minute
	stagingDirName    = "staging"
)

// StagingOption configures a Staging.
type StagingOption func(*Staging)

// WithStagingLimits sets the byte bound and the time-to-live of staged
// trees (zero keeps a default).
func WithStagingLimits(maxBytes int64, ttl time.Duration) StagingOption {
	return func(s *Staging) {
		if maxBytes > 0 {
			s.maxBytes = maxBytes
		}
		if ttl > 0 {
			s.ttl = ttl
		}
	}
}

// NewStaging sweeps and (re)creates <root>/vault/staging: trees of an
// earlier run were never published to this one and are removed.
func NewStaging(ctx context.Context, root string, opts ...StagingOption) (*Staging, error) {
	s := &Staging{
		dir:      filepath.Join(root, "vault", stagingDirName),
		maxBytes: DefaultStagingMaxBytes,
		ttl:      DefaultStagingTTL,
		ready:    map[digest.Digest]*stagedTree{},
	}
	for _, o := range opts {
		o(s)
	}
	if err := os.RemoveAll(s.dir); err != nil {
		return nil, fmt.Errorf("sweep layer staging %s: %w", s.dir, err)
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("create layer staging %s: %w", s.dir, err)
	}
	// MkdirAll leaves an existing parent's mode alone, but this one is new.
	if err := os.Chmod(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("layer staging %s: %w", s.dir, err)
	}
	log.G(ctx).WithField("dir", s.dir).Debug("layer staging ready")
	return s, nil
}

// Dir is the staging directory.
func (s *Staging) Dir() string { return s.dir }

// layerDecoding is how containerd's apply reads a layer of media type mt
// (core/diff's processors): an OCI tar as it is, the docker tar and the
// gzip and zstd types through compression.DecompressStream, which goes by
// the bytes' magic, not the type. ok is false for types not staged
// (encrypted, foreign, anything else), which are applied the normal way.
func layerDecoding(mt string) (decoded, ok bool) {
	switch mt {
	case ocispec.MediaTypeImageLayer:
		return false, true
	case images.MediaTypeDockerSchema2Layer, images.MediaTypeDockerSchema2LayerGzip, images.MediaTypeDockerSchema2LayerZstd,
		ocispec.MediaTypeImageLayerGzip, ocispec.MediaTypeImageLayerZstd:
		return true, true
	}
	return false, false
}

func stageableMediaType(mt string) bool {
	_, ok := layerDecoding(mt)
	return ok
}

// Begin starts staging the layer desc, whose bytes the caller then copies
// through the returned Stage as it fetches them. It returns nil when desc
// is not staged: not a layer type containerd applies as a plain,
// gzip or zstd tar, already staged, over the byte bound, in a user
// namespace (no mknod of whiteouts, as for containerd), or the staging
// directory failing.
func (s *Staging) Begin(ctx context.Context, desc ocispec.Descriptor) *Stage {
	if s == nil || !stageableMediaType(desc.MediaType) || desc.Size <= 0 || desc.Digest.Validate() != nil ||
		desc.Digest.Algorithm() != digest.SHA256 || userns.RunningInUserNS() {
		return nil
	}
	s.mu.Lock()
	if s.closed || s.ready[desc.Digest] != nil || s.reserved+desc.Size > s.maxBytes {
		s.mu.Unlock()
		return nil
	}
	s.reserved += desc.Size
	s.mu.Unlock()

	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	dir := filepath.Join(s.dir, desc.Digest.Encoded()+"-"+hex.EncodeToString(rnd[:]))
	if err := os.Mkdir(dir, 0o700); err != nil {
		log.G(ctx).WithError(err).WithField("digest", desc.Digest).Warn("layer staging unavailable; the layer will be extracted at apply")
		s.release(desc.Size)
		return nil
	}
	return startStage(ctx, s, desc, dir)
}

var _ prefetch.Stager = (*Staging)(nil)

// StageLayer is Begin as the prefetch asks for it (prefetch.Stager): nil
// stays an untyped nil when desc is not staged.
func (s *Staging) StageLayer(ctx context.Context, desc ocispec.Descriptor) prefetch.LayerStage {
	if st := s.Begin(ctx, desc); st != nil {
		return st
	}
	return nil
}

// publish makes a verified, completely extracted tree takeable.
func (s *Staging) publish(ctx context.Context, desc ocispec.Descriptor, t *stagedTree) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.ready[desc.Digest] != nil {
		go s.discard(ctx, t)
		return
	}
	s.ready[desc.Digest] = t
	t.expiry = time.AfterFunc(s.ttl, func() {
		s.mu.Lock()
		cur := s.ready[desc.Digest]
		if cur == t {
			delete(s.ready, desc.Digest)
		}
		s.mu.Unlock()
		if cur == t {
			log.G(ctx).WithField("digest", desc.Digest).Debug("staged layer not applied in time; removed")
			s.discard(ctx, t)
		}
	})
}

// take removes and returns the published tree of dgst, nil if none.
// The caller owns it and must give it back to discard.
func (s *Staging) take(dgst digest.Digest) *stagedTree {
	s.mu.Lock()
	defer s.mu.Unlock()
	t := s.ready[dgst]
	if t != nil {
		delete(s.ready, dgst)
		t.expiry.Stop()
	}
	return t
}

// discard removes what is left of a tree and releases its reservation.
func (s *Staging) discard(ctx context.Context, t *stagedTree) {
	if err := os.RemoveAll(t.dir); err != nil {
		log.G(ctx).WithError(err).WithField("dir", t.dir).Warn("removing a staged layer")
	}
	s.release(t.reserved)
}

// reserve takes n more bytes of the bound for a running stage; false
// when they do not fit.
func (s *Staging) reserve(n int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reserved+n > s.maxBytes {
		return false
	}
	s.reserved += n
	return true
}

func (s *Staging) release(n int64) {
	s.mu.Lock()
	s.reserved -= n
	s.mu.Unlock()
}

// Close removes every published tree; running stages are removed when
// they end (their Commit finds the Staging closed).
func (s *Staging) Close() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	s.closed = true
	trees := s.ready
	s.ready = map[digest.Digest]*stagedTree{}
	s.mu.Unlock()
	for _, t := range trees {
		t.expiry.Stop()
		s.discard(context.Background(), t)
	}
	return nil
}
