package writeback

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestStart: the hints (Start, Drop) leave the file's contents alone,
// also for a range past its end and for pages still dirty.
func TestStart(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "data"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	want := bytes.Repeat([]byte("localds "), 4096)
	if _, err := f.Write(want); err != nil {
		t.Fatal(err)
	}
	Start(f, 0, int64(len(want)))
	Start(f, int64(len(want)), Chunk)
	Drop(f, 0, int64(len(want))+Chunk)
	got, err := os.ReadFile(f.Name())
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("file changed: %d bytes, %v", len(got), err)
	}
}
