package differ

import (
	"context"
	"fmt"

	diffapi "github.com/containerd/containerd/api/services/diff/v1"
	"github.com/containerd/containerd/v2/contrib/diffservice"
	"github.com/containerd/containerd/v2/core/diff"
	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/errdefs"
	"github.com/containerd/errdefs/pkg/errgrpc"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Server is containerd's diff API (contrib/diffservice) over a, with Diff
// left to containerd's walking differ (NoDiff).
func Server(a diff.Applier) diffapi.DiffServer {
	return requireLayer{DiffServer: diffservice.FromApplierAndComparer(a, NoDiff{})}
}

// requireLayer refuses an Apply without a layer descriptor, which
// diffservice would dereference (a panic ends the daemon).
type requireLayer struct {
	diffapi.DiffServer
}

func (s requireLayer) Apply(ctx context.Context, req *diffapi.ApplyRequest) (*diffapi.ApplyResponse, error) {
	if req.Diff == nil {
		return nil, errgrpc.ToGRPC(fmt.Errorf("apply: no layer descriptor: %w", errdefs.ErrInvalidArgument))
	}
	return s.DiffServer.Apply(ctx, req)
}

// NoDiff is the Comparer of the diff service: making a layer from two
// snapshots must be recorded by containerd's metadata store, which only
// containerd's own walking differ does. It answers NotImplemented, on
// which containerd's diff service moves on to its next differ.
type NoDiff struct{}

// Compare refuses as NotImplemented.
func (NoDiff) Compare(context.Context, []mount.Mount, []mount.Mount, ...diff.Opt) (ocispec.Descriptor, error) {
	return ocispec.Descriptor{}, fmt.Errorf("diff: making layers is left to containerd's walking differ: %w", errdefs.ErrNotImplemented)
}
