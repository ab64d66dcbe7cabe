// Package differ serves containerd's diff API (Apply) next to the CAS:
// containerd loads it as a proxy plugin of type "diff" and names it as the
// differ of its unpack configuration, so a layer is read from
// <root>/vault/cas by the daemon that owns the file, instead of being
// streamed to containerd through the content proxy in one gRPC call per
// 32 KiB read.
//
// Only Apply is served. Diff (making a layer from two snapshots) answers
// Unimplemented: a new layer must be recorded by containerd's metadata
// store, which only containerd's own walking differ does, and containerd's
// diff service moves on to the next differ on Unimplemented.
package differ

import (
	"context"
	"fmt"
	"sync"
	"time"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/core/content"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/diff/apply"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"github.com/containerd/typeurl/v2"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
)

// Service is containerd's diff API over a local content provider.
type Service struct {
	diffapi.UnimplementedDiffServer
	applier diff.Applier
	// observe, if set, is told about every Apply (for metrics).
	observe func(ok bool, d time.Duration)
	// staging, if set, holds layers extracted while they were prefetched;
	// staged is told whether an Apply took one.
	staging *Staging
	staged  func(taken bool)
	otherFS sync.Once // warned that snapshots are on another file system
}

// Option configures a Service.
type Option func(*Service)

// WithObserver calls fn after each Apply with its outcome and duration.
func WithObserver(fn func(ok bool, d time.Duration)) Option {
	return func(s *Service) { s.observe = fn }
}

// WithStaging lets Apply move layers staged in st (see Staging) onto
// the snapshot instead of extracting them; fn, if set, is told after each
// Apply of an uncompressed layer whether it took a staged tree.
func WithStaging(st *Staging, fn func(taken bool)) Option {
	return func(s *Service) { s.staging, s.staged = st, fn }
}

// New returns the diff service applying layers read from store (the CAS).
func New(store content.Provider, opts ...Option) *Service {
	s := &Service{applier: apply.NewFileSystemApplier(store)}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Register adds the service to a gRPC server.
func (s *Service) Register(g *grpc.Server) error {
	diffapi.RegisterDiffServer(g, s)
	return nil
}

// Apply extracts the layer req.Diff onto req.Mounts and returns the
// descriptor of the uncompressed layer (its diff ID), as containerd's own
// walking differ does; it is that differ's applier, fed from the CAS.
func (s *Service) Apply(ctx context.Context, req *diffapi.ApplyRequest) (*diffapi.ApplyResponse, error) {
	if req.Diff == nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("apply: no layer descriptor: %w", errdefs.ErrInvalidArgument))
	}
	desc := oci.DescriptorFromProto(req.Diff)
	if err := desc.Digest.Validate(); err != nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("apply: layer digest %q: %v: %w", desc.Digest, err, errdefs.ErrInvalidArgument))
	}
	if desc.Digest.Algorithm() != digest.SHA256 {
		return nil, errgrpc.ToGRPC(fmt.Errorf("apply: layer %s: only sha256 layers are stored: %w", desc.Digest, errdefs.ErrNotImplemented))
	}
	mounts := mount.FromProto(req.Mounts)
	if len(mounts) == 0 {
		return nil, errgrpc.ToGRPC(fmt.Errorf("apply %s: no mounts to apply onto: %w", desc.Digest, errdefs.ErrInvalidArgument))
	}
	opts := []diff.ApplyOpt{diff.WithSyncFs(req.SyncFs)}
	if len(req.Payloads) > 0 {
		payloads := make(map[string]typeurl.Any, len(req.Payloads))
		for k, v := range req.Payloads {
			payloads[k] = v
		}
		opts = append(opts, diff.WithPayloads(payloads))
	}

	start := time.Now()
	applied, taken, err := s.applyStaged(ctx, desc, mounts, len(req.Payloads), req.SyncFs)
	if !taken && err == nil {
		applied, err = s.applier.Apply(ctx, desc, mounts, opts...)
	}
	took := time.Since(start)
	if s.staged != nil && s.staging != nil && stageableMediaType(desc.MediaType) {
		s.staged(taken)
	}
	if s.observe != nil {
		s.observe(err == nil, took)
	}
	if err != nil {
		log.G(ctx).WithError(err).WithField("digest", desc.Digest).Warn("layer apply failed")
		return nil, errgrpc.ToGRPC(fmt.Errorf("apply layer %s: %w", desc.Digest, err))
	}
	log.G(ctx).WithFields(log.Fields{"digest": desc.Digest, "diffID": applied.Digest, "size": desc.Size, "took": took, "staged": taken}).Debug("layer applied")
	return &diffapi.ApplyResponse{Applied: oci.DescriptorToProto(applied)}, nil
}

// Diff is not served (see the package comment): containerd's diff
// service then uses its next differ.
func (s *Service) Diff(ctx context.Context, req *diffapi.DiffRequest) (*diffapi.DiffResponse, error) {
	return nil, errgrpc.ToGRPC(fmt.Errorf("diff: making layers is left to containerd's walking differ: %w", errdefs.ErrNotImplemented))
}
