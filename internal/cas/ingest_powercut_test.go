//go:build linux

package cas_test

import (
	"bytes"
	"context"
	"runtime"
	"testing"

	"github.com/containerd/containerd/v2/core/content"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testnet"
)

// TestIngestSyncSurvivesPowerCut: what a writer's Sync made durable is
// there after a power cut (the file system taken back to what its disk
// holds), and the local store resumes the ingest at that offset instead
// of starting it again: the stream import's checkpoint relies on it.
func TestIngestSyncSurvivesPowerCut(t *testing.T) {
	if testing.Short() {
		t.Skip("a loop-mounted ext4 (skipped by -short)")
	}
	disk := testnet.NewLoopFS(t, 1)
	// Run before the unmount: containerd's fsverity probe at every store
	// open leaves its file open where verity is unsupported (closed by
	// the finalizer), which keeps the file system busy.
	t.Cleanup(runtime.GC)
	ctx := context.Background()
	root := disk.Dir + "/persist"
	cs, err := cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	disk.SlowCommits(t)
	data := bytes.Repeat([]byte("checkpointed "), 100000)
	w, err := cs.Writer(ctx, content.WithRef("import-1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	s, ok := w.(interface{ Sync() error })
	if !ok {
		t.Fatalf("the CAS writer %T has no Sync", w)
	}
	if err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("after the sync, lost")); err != nil {
		t.Fatal(err)
	}
	// The power cut: the writer's process is gone with it (closed
	// after, its close syncs only the old, detached file system).
	disk.PowerCut(t)
	w.Close()

	cs, err = cas.Open(ctx, root)
	if err != nil {
		t.Fatal(err)
	}
	w, err = cs.Writer(ctx, content.WithRef("import-1"))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	st, err := w.Status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Offset < int64(len(data)) {
		t.Fatalf("after the power cut the ingest resumes at %d bytes; %d were synced", st.Offset, len(data))
	}
}
