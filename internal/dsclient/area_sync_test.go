package dsclient

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/localds/localds/internal/durable"
)

type recordingSyncer struct {
	calls []string
	path  string
}

func (r *recordingSyncer) File(f *os.File) error {
	// The state file must not be in place before its data is synced.
	if _, err := os.Stat(r.path); err == nil {
		r.calls = append(r.calls, "file-after-rename")
	} else {
		r.calls = append(r.calls, "file")
	}
	return f.Sync()
}

func (r *recordingSyncer) Dir(dir string) error {
	r.calls = append(r.calls, "dir:"+dir)
	return durable.SyncDir(dir)
}

// TestWriteStateSyncs: the state file's data is fsynced before its
// rename, and the directory after it, so a power cut keeps the state a
// resumed download relied on.
func TestWriteStateSyncs(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "x.state")
	r := &recordingSyncer{path: path}
	if err := writeStateSynced(path, state{URL: "http://ds.local/x.tar"}, r); err != nil {
		t.Fatal(err)
	}
	if len(r.calls) != 2 || r.calls[0] != "file" || r.calls[1] != "dir:"+dir {
		t.Fatalf("sync calls %q, want the file before the rename, then its directory", r.calls)
	}
	if st, err := readState(path); err != nil || st.URL != "http://ds.local/x.tar" {
		t.Fatalf("state read back: %+v, %v", st, err)
	}
}
