//go:build linux

package snapshot

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// requireRoot skips tests that mount file systems.
func requireRoot(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("snapshot: mounts overlayfs; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("snapshot: mounts overlayfs and needs root; run as root (CI does)")
	}
}

// suiteName is what containerd's suite calls the snapshotter. "overlayfs"
// tells its Rename check that renaming a directory of a lower layer is not
// expected to work (no redirect_dir), true of every overlay snapshotter.
const suiteName = "overlayfs"

// TestConformance runs containerd's snapshotter conformance suite on the
// snapshotter directly.
func TestConformance(t *testing.T) {
	requireRoot(t)
	testsuite.SnapshotterSuite(t, suiteName, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sn, err := New(root)
		if err != nil {
			return nil, nil, err
		}
		return sn, sn.Close, nil
	})
}

// TestConformanceGRPC runs the same suite through containerd's snapshots
// gRPC API, the way containerd reaches the daemon: the server side is
// snapshotservice.FromSnapshotter on a unix socket, the client containerd's
// own proxy snapshotter.
func TestConformanceGRPC(t *testing.T) {
	requireRoot(t)
	sockDir := t.TempDir()
	var seq atomic.Int64
	testsuite.SnapshotterSuite(t, suiteName, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		sock := filepath.Join(sockDir, fmt.Sprintf("%d.sock", seq.Add(1)))
		return serveGRPC(root, sock)
	})
}

// serveGRPC serves a new snapshotter at root on sock and returns a proxy
// client for it and a function that tears both down.
func serveGRPC(root, sock string) (snapshots.Snapshotter, func() error, error) {
	sn, err := New(root)
	if err != nil {
		return nil, nil, err
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		sn.Close()
		return nil, nil, err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		srv.Stop()
		sn.Close()
		return nil, nil, err
	}
	client := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "localds")
	return client, func() error {
		// The suite calls Close on the client itself (CloseTwice); this
		// tears down the connection, the server and the snapshotter.
		conn.Close()
		srv.Stop()
		if err := <-served; err != nil {
			return err
		}
		return sn.Close()
	}, nil
}
