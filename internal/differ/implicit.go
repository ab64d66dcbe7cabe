package differ

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/containerd/continuity/fs"
	"github.com/containerd/continuity/sysx"
	"golang.org/x/sys/unix"
)

// fixImplicit gives the implicit parent directories of a staged tree
// (made by archive.Apply for entries whose parent is not in the layer)
// what containerd's mkparent gives them when it applies onto a snapshot
// whose lower directories are parents (the overlay's lowerdir, nearest
// first): the owner, mode and access time of the first lower with
// something at that path, if that is a directory; the defaults it already
// has otherwise. The modification time stays: on both ways it is when the
// last entry was made in the directory, after mkparent.
//
// It returns errNotStageable where that would not be the same tree: a
// lower directory with extended attributes (mkparent copies them up, and
// a default ACL would have been inherited by the entries made in it) or
// with the set-group-ID bit (directories mkparent makes in it would
// inherit its group).
func fixImplicit(root string, implicit, parents []string) error {
	for _, dir := range implicit {
		if err := fixImplicitDir(root, dir, parents); err != nil {
			return err
		}
	}
	return nil
}

func fixImplicitDir(root, dir string, parents []string) error {
	for _, p := range parents {
		// As mkparent looks it up: the path resolved inside the lower.
		lp, err := fs.RootPath(p, "/"+dir)
		if err != nil {
			return fmt.Errorf("resolve %q in lower %s: %w", dir, p, err)
		}
		fi, err := os.Lstat(lp)
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("implicit parent %q: %w", dir, err)
		}
		if !fi.IsDir() {
			return nil // mkparent keeps the defaults
		}
		if fi.Mode()&os.ModeSetgid != 0 {
			return fmt.Errorf("%w: lower directory %s is set-group-ID", errNotStageable, lp)
		}
		if err := noCopiedXattrs(lp); err != nil {
			return err
		}
		return copyDirInfo(fi, filepath.Join(root, dir))
	}
	return nil
}

// noCopiedXattrs: the lower directory has no extended attributes that
// mkparent would copy up (it skips trusted.*).
func noCopiedXattrs(p string) error {
	keys, err := sysx.LListxattr(p)
	if err != nil {
		if err == unix.ENOTSUP || err == sysx.ENODATA {
			return nil
		}
		return fmt.Errorf("list xattrs of %s: %w", p, err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "trusted.") {
			return fmt.Errorf("%w: lower directory %s has xattr %s", errNotStageable, p, k)
		}
	}
	return nil
}

// copyDirInfo is archive's copyDirInfo (owner, mode, times of the lower
// directory), but keeps the staged directory's modification time (see
// fixImplicit).
func copyDirInfo(lower os.FileInfo, dst string) error {
	st := lower.Sys().(*syscall.Stat_t)
	var cur unix.Stat_t
	if err := unix.Lstat(dst, &cur); err != nil {
		return fmt.Errorf("stat %s: %w", dst, err)
	}
	if err := os.Lchown(dst, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown %s: %w", dst, err)
	}
	if err := os.Chmod(dst, lower.Mode()); err != nil {
		return fmt.Errorf("chmod %s: %w", dst, err)
	}
	ts := []unix.Timespec{unix.Timespec(st.Atim), cur.Mtim}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, dst, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("utime %s: %w", dst, err)
	}
	return nil
}
