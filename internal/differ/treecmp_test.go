package differ_test

import (
	"archive/tar"
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/localds/localds/internal/fstree"
)

// tarEntry is one entry of a test layer: a header and, for files, a body.
type tarEntry struct {
	hdr  tar.Header
	body string
}

var epoch = time.Unix(1600000000, 123456789)

func dirE(name string, mode int64, uid, gid int) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, Uid: uid, Gid: gid, ModTime: epoch.Add(time.Hour), Format: tar.FormatPAX}}
}

func fileE(name, body string, mode int64, uid, gid int) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Uid: uid, Gid: gid, Size: int64(len(body)), ModTime: epoch.Add(2 * time.Hour), Format: tar.FormatPAX}, body: body}
}

func linkE(typ byte, name, target string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: target, Mode: 0o777, ModTime: epoch, Format: tar.FormatPAX}}
}

func devE(typ byte, name string, major, minor int64) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: typ, Name: name, Mode: 0o660, Devmajor: major, Devminor: minor, Uid: 3, Gid: 4, ModTime: epoch, Format: tar.FormatPAX}}
}

func whiteoutE(name string) tarEntry {
	return tarEntry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o600, Uid: 7, Gid: 8, ModTime: epoch, Format: tar.FormatPAX}}
}

func withXattr(e tarEntry, k, v string) tarEntry {
	if e.hdr.PAXRecords == nil {
		e.hdr.PAXRecords = map[string]string{}
	}
	e.hdr.PAXRecords["SCHILY.xattr."+k] = v
	return e
}

func buildTar(t *testing.T, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("tar header %q: %v", h.Name, err)
		}
		if _, err := io.WriteString(tw, e.body); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// snapshotTree records a tree (fstree.Snapshot).
func snapshotTree(t *testing.T, root string) map[string]fstree.Node {
	t.Helper()
	n, err := fstree.Snapshot(root)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// nowTimes: see fstree.NowTimes.
type nowTimes = fstree.NowTimes

// compareTrees fails unless got is want, times apart where now says so.
func compareTrees(t *testing.T, want, got map[string]fstree.Node, now nowTimes) {
	t.Helper()
	if diffs := fstree.Diff(want, got, now); len(diffs) > 0 {
		t.Fatalf("trees differ:\n%s", strings.Join(diffs, "\n"))
	}
}
