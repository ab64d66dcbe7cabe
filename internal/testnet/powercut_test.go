//go:build linux

package testnet

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/localds/localds/internal/durable"
)

// TestPowerCut: after SlowCommits, what was fsynced (file and directory)
// survives PowerCut and what was only written does not, as after a real
// power cut; the file system is mounted again at Dir and writable.
func TestPowerCut(t *testing.T) {
	RequireRoot(t)
	l := NewLoopFS(t, 1)
	kept := filepath.Join(l.Dir, "kept")
	if err := durable.WriteFile(kept, []byte("fsynced"), durable.OS{}); err != nil {
		t.Fatal(err)
	}
	l.SlowCommits(t)
	lost := filepath.Join(l.Dir, "lost")
	if err := os.WriteFile(lost, []byte("only in the page cache"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(kept+".tmp", []byte("replaced, not synced"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(kept+".tmp", kept); err != nil {
		t.Fatal(err)
	}
	l.PowerCut(t)
	if b, err := os.ReadFile(kept); err != nil || string(b) != "fsynced" {
		t.Fatalf("fsynced file after the cut: %q, %v", b, err)
	}
	if b, err := os.ReadFile(lost); !errors.Is(err, fs.ErrNotExist) && len(b) != 0 {
		t.Fatalf("a file never synced survived the cut: %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(l.Dir, "after"), []byte("x"), 0o644); err != nil {
		t.Fatalf("file system after the cut: %v", err)
	}
}
