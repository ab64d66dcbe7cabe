package differ_test

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/continuity/sysx"
	"golang.org/x/sys/unix"
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

// nodeInfo is everything compared about one path of a tree. Times are
// compared where an apply sets them (not for the root or directories the
// apply made itself: their mtime is when the last entry was made in
// them, on both ways, so "now").
type nodeInfo struct {
	mode, uid, gid  uint32
	size            int64
	rdev            uint64
	atime, mtime    int64
	link, content   string
	xattrs          string
	hardlinkedFirst string // first path (in walk order) with the same inode
}

// snapshotTree records a tree (stat before reading, so reads do not move
// access times).
func snapshotTree(t *testing.T, root string) map[string]nodeInfo {
	t.Helper()
	out := map[string]nodeInfo{}
	inodes := map[uint64]string{}
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		n := nodeInfo{mode: st.Mode, uid: st.Uid, gid: st.Gid, rdev: st.Rdev, atime: st.Atim.Nano(), mtime: st.Mtim.Nano()}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			n.size = st.Size
			if first, ok := inodes[st.Ino]; ok {
				n.hardlinkedFirst = first
			} else {
				inodes[st.Ino] = rel
			}
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			if n.link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		keys, err := sysx.LListxattr(p)
		if err != nil {
			return err
		}
		slices.Sort(keys)
		var xs []string
		for _, k := range keys {
			v, err := sysx.LGetxattr(p, k)
			if err != nil {
				return err
			}
			xs = append(xs, k+"="+string(v))
		}
		n.xattrs = strings.Join(xs, ",")
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			files = append(files, rel)
		}
		out[rel] = n
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	for _, rel := range files {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(b)
		n := out[rel]
		n.content = hex.EncodeToString(sum[:])
		out[rel] = n
	}
	return out
}

// nowTimes are the paths of a tree whose times an apply does not set
// from the layer but are when it made them: the mtime of directories it
// made (implicit parents: when the last entry was made in them), both
// times of whiteout devices (mknod).
type nowTimes struct {
	mtime, both []string
}

// compareTrees fails unless want and got hold the same paths with the
// same metadata and contents, times apart where now says so.
func compareTrees(t *testing.T, want, got map[string]nodeInfo, now nowTimes) {
	t.Helper()
	var diffs []string
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("%s: missing", p))
			continue
		}
		if p == "." || slices.Contains(now.both, p) {
			w.atime, w.mtime, g.atime, g.mtime = 0, 0, 0, 0
		}
		if slices.Contains(now.mtime, p) {
			w.mtime, g.mtime = 0, 0
		}
		if w != g {
			diffs = append(diffs, fmt.Sprintf("%s:\n\twant %+v\n\tgot  %+v", p, w, g))
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: not in the reference tree", p))
		}
	}
	slices.Sort(diffs)
	if len(diffs) > 0 {
		t.Fatalf("trees differ:\n%s", strings.Join(diffs, "\n"))
	}
}
