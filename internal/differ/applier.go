// Package differ applies layers for containerd's diff API next to the CAS:
// containerd loads the daemon's diff service as a proxy plugin of type
// "diff" and names it as the differ of its unpack configuration, so a
// layer is read from <root>/vault/cas by the daemon that owns the file,
// instead of being streamed to containerd through the content proxy in one
// gRPC call per 32 KiB read.
//
// The applier (New) is containerd's own file-system applier over the CAS,
// wrapped: request checks, metrics (WithObserver), and the staging
// shortcut (WithStaging), which moves a layer extracted while it was
// prefetched onto the snapshot instead of extracting it again. Server
// serves it through containerd's contrib/diffservice.
package differ

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/log"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// config is what the Options set.
type config struct {
	observe func(ok bool, d time.Duration)
	staging *Staging
	staged  func(taken bool)
	hints   *UsageHints
}

// Option configures the applier New returns.
type Option func(*config)

// WithObserver calls fn after each Apply with its outcome and duration.
func WithObserver(fn func(ok bool, d time.Duration)) Option {
	return func(c *config) { c.observe = fn }
}

// WithStaging lets Apply move layers staged in st (see Staging) onto the
// snapshot instead of extracting them; fn, if set, is told after each
// Apply of a layer of a staged type whether it took a staged tree. A nil
// st stages nothing.
func WithStaging(st *Staging, fn func(taken bool)) Option {
	return func(c *config) { c.staging, c.staged = st, fn }
}

// WithUsageHints records in h the disk usage of each staged tree Apply
// moves onto a snapshot, for the snapshotter's Commit (see UsageHints).
func WithUsageHints(h *UsageHints) Option {
	return func(c *config) { c.hints = h }
}

// New returns the layer applier of the diff service: containerd's
// file-system applier reading layers from store (the CAS). It answers the
// descriptor of the uncompressed layer (its diff ID), as containerd's own
// walking differ does.
func New(store content.Provider, opts ...Option) diff.Applier {
	var c config
	for _, o := range opts {
		o(&c)
	}
	a := apply.NewFileSystemApplier(store)
	if c.staging != nil {
		a = &stagedApplier{next: a, staging: c.staging, staged: c.staged, hints: c.hints}
	}
	if c.observe != nil {
		a = observedApplier{next: a, observe: c.observe}
	}
	return checkedApplier{next: a}
}

// checkedApplier refuses what the CAS cannot hold or nothing can be
// applied onto, with containerd's error kinds, before anything is
// touched; it wraps errors with the layer and logs the outcome.
type checkedApplier struct {
	next diff.Applier
}

func (a checkedApplier) Apply(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount, opts ...diff.ApplyOpt) (ocispec.Descriptor, error) {
	if err := desc.Digest.Validate(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("apply: layer digest %q: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument)
	}
	if desc.Digest.Algorithm() != digest.SHA256 {
		return ocispec.Descriptor{}, fmt.Errorf("apply: layer %s: only sha256 layers are stored: %w", desc.Digest, errdefs.ErrNotImplemented)
	}
	if len(mounts) == 0 {
		return ocispec.Descriptor{}, fmt.Errorf("apply %s: no mounts to apply onto: %w", desc.Digest, errdefs.ErrInvalidArgument)
	}
	start := time.Now()
	applied, err := a.next.Apply(ctx, desc, mounts, opts...)
	if err != nil {
		log.G(ctx).WithError(err).WithField("digest", desc.Digest).Warn("layer apply failed")
		return ocispec.Descriptor{}, fmt.Errorf("apply layer %s: %w", desc.Digest, err)
	}
	log.G(ctx).WithFields(log.Fields{"digest": desc.Digest, "diffID": applied.Digest, "size": desc.Size, "took": time.Since(start)}).Debug("layer applied")
	return applied, nil
}

// observedApplier tells observe the outcome and duration of every Apply.
type observedApplier struct {
	next    diff.Applier
	observe func(ok bool, d time.Duration)
}

func (a observedApplier) Apply(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount, opts ...diff.ApplyOpt) (ocispec.Descriptor, error) {
	start := time.Now()
	applied, err := a.next.Apply(ctx, desc, mounts, opts...)
	a.observe(err == nil, time.Since(start))
	return applied, err
}

// stagedApplier takes a layer's staged tree where that gives exactly what
// next (containerd's applier) would, and leaves everything else to next.
type stagedApplier struct {
	next    diff.Applier
	staging *Staging
	staged  func(taken bool) // may be nil
	hints   *UsageHints      // may be nil
	otherFS sync.Once        // warned that snapshots are on another file system
}

func (a *stagedApplier) Apply(ctx context.Context, desc ocispec.Descriptor, mounts []mount.Mount, opts ...diff.ApplyOpt) (ocispec.Descriptor, error) {
	var cfg diff.ApplyConfig
	for _, o := range opts {
		if err := o(ctx, desc, &cfg); err != nil {
			return ocispec.Descriptor{}, err
		}
	}
	applied, taken, err := a.applyStaged(ctx, desc, mounts, len(cfg.ProcessorPayloads), cfg.SyncFs)
	if !taken && err == nil {
		applied, err = a.next.Apply(ctx, desc, mounts, opts...)
	}
	if a.staged != nil && stageableMediaType(desc.MediaType) {
		a.staged(taken)
	}
	if taken {
		log.G(ctx).WithField("digest", desc.Digest).Debug("staged layer moved onto the snapshot")
	}
	return applied, err
}
