//go:build linux

package snapshot

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/localds/localds/internal/durable"
	"github.com/localds/localds/internal/testnet"
)

// BenchmarkLayerChain: what the snapshotter costs containerd's unpack
// per layer, on a fresh journaled ext4 (as the pull benchmarks): Prepare
// of the extract snapshot on the previous layer, one small file written
// into it (the apply), Commit. containerd calls Prepare and Commit inside
// its metadata write transaction, so their latency holds its lock.
// Reported per layer: Prepare and Commit milliseconds, and the fsyncs the
// snapshotter asked for (its bolt commits' fdatasyncs not counted).
func BenchmarkLayerChain(b *testing.B) {
	requireRoot(b)
	fsys := testnet.NewLoopFS(b, 1)
	var fsyncs atomic.Int64
	count := func(path string) error {
		fsyncs.Add(1)
		return durable.SyncPath(path)
	}
	sn, err := newSnapshotter(context.Background(), filepath.Join(fsys.Dir, "root"), withFsync(count))
	if err != nil {
		b.Fatal(err)
	}
	defer sn.Close()
	ctx := context.Background()
	var prepare, commit time.Duration
	fsyncs.Store(0)
	b.ResetTimer()
	parent := ""
	for i := range b.N {
		key, name := fmt.Sprintf("extract-%d", i), fmt.Sprintf("layer-%d", i)
		start := time.Now()
		mounts, err := sn.Prepare(ctx, key, parent)
		if err != nil {
			b.Fatal(err)
		}
		prepare += time.Since(start)
		if err := os.WriteFile(filepath.Join(mountUpper(b, mounts), "f"), []byte(name), 0o644); err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		if err := sn.Commit(ctx, name, key); err != nil {
			b.Fatal(err)
		}
		commit += time.Since(start)
		parent = name
	}
	n := float64(b.N)
	b.ReportMetric(float64(prepare.Microseconds())/1000/n, "prepare-ms")
	b.ReportMetric(float64(commit.Microseconds())/1000/n, "commit-ms")
	b.ReportMetric(float64(fsyncs.Load())/n, "fsyncs/layer")
}
