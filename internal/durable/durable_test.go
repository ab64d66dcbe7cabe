package durable

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// orderSyncer records the calls and whether the target was already in
// place when the file's data was synced.
type orderSyncer struct {
	path    string
	calls   []string
	failDir bool
}

func (o *orderSyncer) File(f *os.File) error {
	if _, err := os.Stat(o.path); err == nil {
		if b, _ := os.ReadFile(o.path); string(b) != "old" {
			o.calls = append(o.calls, "file-after-rename")
			return f.Sync()
		}
	}
	o.calls = append(o.calls, "file")
	return f.Sync()
}

func (o *orderSyncer) Dir(dir string) error {
	o.calls = append(o.calls, "dir:"+dir)
	if o.failDir {
		return errors.New("injected")
	}
	return SyncDir(dir)
}

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	sy := &orderSyncer{path: path}
	if err := WriteFile(path, []byte("new"), sy); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(path); string(b) != "new" {
		t.Fatalf("content %q, want new", b)
	}
	if len(sy.calls) != 2 || sy.calls[0] != "file" || sy.calls[1] != "dir:"+dir {
		t.Fatalf("calls %q: want the data synced before the rename, the directory after", sy.calls)
	}
	if _, err := os.Stat(path + ".tmp"); !os.IsNotExist(err) {
		t.Errorf("temporary file left: %v", err)
	}
	// A failing directory sync is reported: the caller must not rely on
	// the new content surviving a power cut.
	if err := WriteFile(path, []byte("newer"), &orderSyncer{path: path, failDir: true}); err == nil {
		t.Fatal("a failed directory sync was not reported")
	}
	// A file that cannot be written leaves the old content and no
	// temporary file.
	if err := WriteFile(filepath.Join(dir, "no", "such"), []byte("x"), OS{}); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}
