package snapshot

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/localds/localds/internal/durable"
)

// TestRenamesSynced: the instance file is fsynced before its rename and
// its directory after it; a volume's owner file and directory are fsynced
// before the volume directory is renamed into place, and the parent after
// it. A layer's Prepare and Commit fsync nothing (they run inside
// containerd's metadata lock; see createSnapshot).
func TestRenamesSynced(t *testing.T) {
	var calls []string
	rec := func(path string) error {
		calls = append(calls, path)
		return durable.SyncPath(path)
	}
	sn, root, ctx := newTestSnapshotter(t, withFsync(rec))
	inst := sn.l.instanceFile()
	if i := slices.Index(calls, inst+".tmp"); i < 0 || i+1 >= len(calls) || calls[i+1] != filepath.Dir(inst) {
		t.Errorf("instance file: syncs %q, want %s.tmp then its directory", calls, inst)
	}

	calls = nil
	commitLayer(t, ctx, sn, "layer1", "", map[string]string{"hello": "from the image\n"})
	if len(calls) != 0 {
		t.Errorf("layer: syncs %q, want none", calls)
	}

	calls = nil
	key := testUUID + "#1"
	if _, err := sn.Prepare(ctx, key, "layer1"); err != nil {
		t.Fatal(err)
	}
	volumes := filepath.Join(root, "vault/volumes")
	n := len(calls)
	if n < 3 || calls[n-1] != volumes || filepath.Base(calls[n-3]) != ownerFile || calls[n-2] != filepath.Dir(calls[n-3]) {
		t.Errorf("volume: syncs %q, want its owner file, its directory, then %s", calls, volumes)
	}
}
