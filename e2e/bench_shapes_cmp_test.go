//go:build linux

package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCompareLayerFindsDifferences: the comparison TestPullShapesTreesMatch
// relies on reports each kind of difference it claims to check, and
// passes over only directories with pull-time mtimes.
func TestCompareLayerFindsDifferences(t *testing.T) {
	layerTime := time.Unix(1700000000, 0)
	build := func(t *testing.T, dir string) {
		t.Helper()
		must := func(err error) {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
		}
		must(os.MkdirAll(filepath.Join(dir, "d"), 0o755))
		must(os.WriteFile(filepath.Join(dir, "d", "f"), []byte("content"), 0o644))
		must(os.WriteFile(filepath.Join(dir, "d", "h1"), []byte("linked"), 0o600))
		must(os.Link(filepath.Join(dir, "d", "h1"), filepath.Join(dir, "d", "h2")))
		must(os.Symlink("f", filepath.Join(dir, "d", "l")))
		for _, p := range []string{"d/f", "d/h1"} {
			must(os.Chtimes(filepath.Join(dir, p), layerTime, layerTime))
		}
		must(lchtimes(filepath.Join(dir, "d", "l"), layerTime))
		must(os.Chtimes(filepath.Join(dir, "d"), layerTime, layerTime))
	}
	cases := []struct {
		name   string
		change func(dir string) error
		want   string // in the differences; "" for none
	}{
		{"same", func(string) error { return nil }, ""},
		{"content", func(d string) error {
			if err := os.WriteFile(filepath.Join(d, "d", "f"), []byte("CONTENT"), 0o644); err != nil {
				return err
			}
			return os.Chtimes(filepath.Join(d, "d", "f"), layerTime, layerTime)
		}, "d/f:"},
		{"mode", func(d string) error { return os.Chmod(filepath.Join(d, "d", "f"), 0o600) }, "d/f:"},
		{"file mtime", func(d string) error {
			return os.Chtimes(filepath.Join(d, "d", "f"), layerTime, layerTime.Add(time.Second))
		}, "d/f:"},
		{"symlink target", func(d string) error {
			if err := os.Remove(filepath.Join(d, "d", "l")); err != nil {
				return err
			}
			if err := os.Symlink("g", filepath.Join(d, "d", "l")); err != nil {
				return err
			}
			return lchtimes(filepath.Join(d, "d", "l"), layerTime)
		}, "d/l:"},
		{"hard link copied", func(d string) error {
			h2 := filepath.Join(d, "d", "h2")
			if err := os.Remove(h2); err != nil {
				return err
			}
			return os.WriteFile(h2, []byte("linked"), 0o600)
		}, "link count"},
		{"directory mtime", func(d string) error {
			return os.Chtimes(filepath.Join(d, "d"), layerTime, layerTime.Add(time.Second))
		}, "d:"},
		{"missing", func(d string) error { return os.Remove(filepath.Join(d, "d", "f")) }, "d/f: missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want, got := t.TempDir(), t.TempDir()
			build(t, want)
			build(t, got)
			if err := c.change(got); err != nil {
				t.Fatal(err)
			}
			// Directory mtimes move when entries change: set them back.
			if c.name != "directory mtime" {
				if err := os.Chtimes(filepath.Join(got, "d"), layerTime, layerTime); err != nil {
					t.Fatal(err)
				}
			}
			_, diffs, skipped := compareLayer(t, want, got)
			if len(skipped) != 0 {
				t.Errorf("skipped %v; every directory has a layer mtime", skipped)
			}
			all := strings.Join(diffs, "\n")
			switch {
			case c.want == "" && len(diffs) > 0:
				t.Errorf("differences in identical trees:\n%s", all)
			case c.want != "" && !strings.Contains(all, c.want):
				t.Errorf("differences %q lack %q", all, c.want)
			}
		})
	}

	t.Run("pull-time directory mtime", func(t *testing.T) {
		want, got := t.TempDir(), t.TempDir()
		build(t, want)
		build(t, got)
		now := time.Unix(1700000000, 123456789)
		if err := os.Chtimes(filepath.Join(want, "d"), now, now); err != nil {
			t.Fatal(err)
		}
		_, diffs, skipped := compareLayer(t, want, got)
		if len(diffs) > 0 || len(skipped) != 1 || skipped[0] != "d" {
			t.Errorf("differences %q, skipped %v; want none and [d]", diffs, skipped)
		}
	})
}

// lchtimes sets a symlink's own atime and mtime.
func lchtimes(p string, ts time.Time) error {
	tv := unix.NsecToTimespec(ts.UnixNano())
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{tv, tv}, unix.AT_SYMLINK_NOFOLLOW)
}
