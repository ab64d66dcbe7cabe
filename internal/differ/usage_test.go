package differ

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
)

// A hint is kept only under an accepted directory, used once, and not
// after hintTTL.
func TestUsageHintsLifetime(t *testing.T) {
	base := t.TempDir()
	accepted, other := filepath.Join(base, "snapshots"), filepath.Join(base, "elsewhere")
	dir, otherDir := filepath.Join(accepted, "1", "fs"), filepath.Join(other, "1", "fs")
	for _, d := range []string{dir, otherDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	h := NewUsageHints()
	h.nowFor = func() time.Time { return now }
	h.Accept(accepted)
	entries := snapshots.Usage{Inodes: 3, Size: 12288}

	h.record(otherDir, entries)
	if _, ok := h.TakeUsage(otherDir); ok {
		t.Error("a hint for a directory no snapshotter accepted was kept")
	}
	h.record(dir, entries)
	u, ok := h.TakeUsage(dir + "/")
	if !ok || u.Inodes != entries.Inodes+1 || u.Size < entries.Size {
		t.Errorf("TakeUsage = %+v, %v; want the entries and the directory", u, ok)
	}
	if _, ok := h.TakeUsage(dir); ok {
		t.Error("a hint was used twice")
	}
	h.record(dir, entries)
	now = now.Add(hintTTL + time.Second)
	if _, ok := h.TakeUsage(dir); ok {
		t.Error("a hint older than hintTTL was used")
	}
	for i := range maxHints + 10 {
		d := filepath.Join(accepted, "many", string(rune('a'+i%26))+string(rune('a'+i/26%26))+string(rune('a'+i/676)))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		h.record(d, entries)
	}
	if n := len(h.byDir); n > maxHints {
		t.Errorf("%d hints kept, more than maxHints %d", n, maxHints)
	}
}
