package testimage

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestWriteLayer: a layer holds the given paths under names relative to
// /, each parent directory once and before its children, hard links as
// links to the first name, symlinks with their targets, whole-second
// mtimes, no owner names; the stats count what was written.
func TestWriteLayer(t *testing.T) {
	src := t.TempDir()
	mt := time.Unix(1700000000, 987654321)
	if err := os.MkdirAll(filepath.Join(src, "a", "b"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "a", "b", "f"), []byte("hello"), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(src, "a", "b", "f"), filepath.Join(src, "a", "g")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("b/f", filepath.Join(src, "a", "l")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(src, "a", "b", "f"), mt, mt); err != nil {
		t.Fatal(err)
	}
	paths, err := Walk(filepath.Join(src, "a", "b"), filepath.Join(src, "a", "g"), filepath.Join(src, "a", "l"))
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(t.TempDir(), "layer.tar.gz")
	st, err := WriteLayer(dst, paths)
	if err != nil {
		t.Fatal(err)
	}

	f, err := os.Open(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	prefix := strings.TrimPrefix(src, "/") + "/"
	var names []string
	hdrs := map[string]*tar.Header{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		hdrs[h.Name] = h
	}
	// The temp dir's own parents come first, each once.
	if strings.Count(strings.Join(names, " "), "tmp/ ") != 1 || !slices.IsSorted(names[:strings.Count(prefix, "/")]) {
		t.Errorf("parents: %q", names)
	}
	var own []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) && n != prefix {
			own = append(own, strings.TrimPrefix(n, prefix))
		}
	}
	if want := []string{"a/", "a/b/", "a/b/f", "a/g", "a/l"}; !slices.Equal(own, want) {
		t.Fatalf("entries %q, want %q", own, want)
	}
	if h := hdrs[prefix+"a/b/f"]; h.Typeflag != tar.TypeReg || h.Size != 5 || h.Mode&0o777 != 0o640 || !h.ModTime.Equal(mt.Truncate(time.Second)) || h.Uname != "" {
		t.Errorf("a/b/f: %+v", h)
	}
	if h := hdrs[prefix+"a/g"]; h.Typeflag != tar.TypeLink || h.Linkname != prefix+"a/b/f" || h.Size != 0 {
		t.Errorf("a/g: %+v, want a hard link to a/b/f", h)
	}
	if h := hdrs[prefix+"a/l"]; h.Typeflag != tar.TypeSymlink || h.Linkname != "b/f" {
		t.Errorf("a/l: %+v", h)
	}
	if h := hdrs[prefix+"a/"]; h.Typeflag != tar.TypeDir || h.Mode&0o777 != 0o750 {
		t.Errorf("a/: %+v", h)
	}
	if st.Entries != len(names) || st.TarBytes <= 0 || st.GzipBytes <= 0 {
		t.Errorf("stats %+v for %d entries", st, len(names))
	}
}

// TestSplit: every path lands in exactly one run, in order.
func TestSplit(t *testing.T) {
	paths := []string{"a", "b", "c", "d", "e", "f", "g"}
	runs := Split(paths, 3)
	if len(runs) != 3 || !slices.Equal(slices.Concat(runs...), paths) {
		t.Fatalf("Split = %q", runs)
	}
}
