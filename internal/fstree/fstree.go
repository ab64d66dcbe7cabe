// Package fstree records a directory tree's metadata and contents and
// compares two of them, for tests that a layer applied one way is the
// same tree as applied another way (differ's staging against containerd's
// own apply).
package fstree

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containerd/continuity/sysx"
	"golang.org/x/sys/unix"
)

// Node is what is compared about one path: type and mode bits, owner,
// size, device number, access and modification times (ns), symlink
// target, content digest, extended attributes, and which earlier path
// (in walk order) it is a hard link of.
type Node struct {
	Mode, UID, GID  uint32
	Size            int64
	Rdev            uint64
	Atime, Mtime    int64
	Link, Content   string
	Xattrs          string
	HardlinkOfFirst string
}

// Snapshot records the tree at root, keyed by path relative to root
// ("." for root). Everything is stat'ed before any file is read, so the
// reads do not move access times.
func Snapshot(root string) (map[string]Node, error) {
	out := map[string]Node{}
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
		n := Node{Mode: st.Mode, UID: st.Uid, GID: st.Gid, Rdev: st.Rdev, Atime: st.Atim.Nano(), Mtime: st.Mtim.Nano()}
		typ := st.Mode & unix.S_IFMT
		if typ != unix.S_IFDIR {
			n.Size = st.Size
			if first, ok := inodes[st.Ino]; ok {
				n.HardlinkOfFirst = first
			} else {
				inodes[st.Ino] = rel
			}
		}
		if typ == unix.S_IFLNK {
			if n.Link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		if n.Xattrs, err = xattrs(p); err != nil {
			return err
		}
		if typ == unix.S_IFREG {
			files = append(files, rel)
		}
		out[rel] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("walk %s: %w", root, err)
	}
	for _, rel := range files {
		b, err := os.ReadFile(filepath.Join(root, rel))
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(b)
		n := out[rel]
		n.Content = hex.EncodeToString(sum[:])
		out[rel] = n
	}
	return out, nil
}

func xattrs(p string) (string, error) {
	keys, err := sysx.LListxattr(p)
	if err != nil {
		return "", fmt.Errorf("xattrs of %s: %w", p, err)
	}
	slices.Sort(keys)
	var xs []string
	for _, k := range keys {
		v, err := sysx.LGetxattr(p, k)
		if err != nil {
			return "", fmt.Errorf("xattr %s of %s: %w", k, p, err)
		}
		xs = append(xs, k+"="+string(v))
	}
	return strings.Join(xs, ","), nil
}

// NowTimes names the paths whose times an apply does not take from the
// layer but are when it ran: Mtime for directories it made (implicit
// parents: when the last entry was made in them), Both for paths whose
// access time is "now" too (made without a lower directory to copy,
// whiteout devices, symlinks resolved through). The root's times are
// never compared.
type NowTimes struct {
	Mtime, Both []string
	// DirAtimes: no directory's atime is compared (containerd's snapshot
	// commit walks the tree for its disk usage, which sets them to then).
	DirAtimes bool
}

// Diff lists how got differs from want (empty if not at all).
func Diff(want, got map[string]Node, now NowTimes) []string {
	var diffs []string
	for p, w := range want {
		g, ok := got[p]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("%s: missing", p))
			continue
		}
		if p == "." || slices.Contains(now.Both, p) {
			w.Atime, w.Mtime, g.Atime, g.Mtime = 0, 0, 0, 0
		}
		if now.DirAtimes && w.Mode&unix.S_IFMT == unix.S_IFDIR {
			w.Atime, g.Atime = 0, 0
		}
		if slices.Contains(now.Mtime, p) {
			w.Mtime, g.Mtime = 0, 0
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
	return diffs
}
