//go:build linux

package daemon

import (
	"context"
	"fmt"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"google.golang.org/grpc"

	"github.com/localds/localds/internal/snapshot"
)

// SnapshotterName is the name containerd users type (--snapshotter
// localds); contrib's config.toml loads the socket under it.
const SnapshotterName = "localds"

// SnapshotService serves the localds volume snapshotter, rooted at the
// daemon's root, on the daemon's socket (containerd's snapshots API via
// snapshotservice.FromSnapshotter). Add it to Config.Services. Its Commit
// takes the usage of a tree the diff service moved in from the staging
// (Deps.UsageHints) instead of walking it.
func SnapshotService(opts ...snapshot.Opt) ServiceFunc {
	return func(ctx context.Context, d Deps) (Service, error) {
		all := opts
		if d.UsageHints != nil {
			all = append(opts[:len(opts):len(opts)], snapshot.WithUsageHints(d.UsageHints))
		}
		sn, err := snapshot.New(d.Root, all...)
		if err != nil {
			return nil, fmt.Errorf("snapshotter: %w", err)
		}
		return &snapshotService{sn: sn}, nil
	}
}

// snapshotService registers the snapshotter and closes it (its bolt
// database) once the gRPC server has stopped.
type snapshotService struct {
	sn snapshots.Snapshotter
}

func (s *snapshotService) Register(g *grpc.Server) error {
	snapshotsapi.RegisterSnapshotsServer(g, snapshotservice.FromSnapshotter(s.sn))
	return nil
}

func (s *snapshotService) Close() error {
	return s.sn.Close()
}
