// Package durable holds the file operations that must survive a crash
// and never replace anything: a rename that refuses an existing target,
// directory fsyncs, and copies of files and trees that are on disk
// before they are renamed into place (a reflink where the file system
// can share the blocks).
package durable

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// RenameNoReplace renames old to new unless new exists (renameat2
// RENAME_NOREPLACE; a link and an unlink where the file system lacks it,
// which works for files only): os.Rename would silently replace new. An
// existing new answers an error that is fs.ErrExist.
func RenameNoReplace(old, new string) error {
	err := unix.Renameat2(unix.AT_FDCWD, old, unix.AT_FDCWD, new, unix.RENAME_NOREPLACE)
	if err == nil {
		return nil
	}
	if errors.Is(err, unix.EEXIST) {
		return &os.LinkError{Op: "rename", Old: old, New: new, Err: fs.ErrExist}
	}
	if !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOSYS) {
		return &os.LinkError{Op: "rename", Old: old, New: new, Err: err}
	}
	if err := os.Link(old, new); err != nil {
		return err // a *LinkError with EEXIST is fs.ErrExist
	}
	return os.Remove(old)
}

// SyncDir makes the entries of dir (creations, renames, removals)
// durable.
func SyncDir(dir string) error { return SyncPath(dir) }

// SyncPath fsyncs the file or directory at path: a file's bytes, a
// directory's entries.
func SyncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

// SameFS tells whether a and the directory b are on one file system, so
// a rename or a link between them works.
func SameFS(a, b string) (bool, error) {
	var sa, sb unix.Stat_t
	if err := unix.Lstat(a, &sa); err != nil {
		return false, fmt.Errorf("stat %s: %w", a, err)
	}
	if err := unix.Stat(b, &sb); err != nil {
		return false, fmt.Errorf("stat %s: %w", b, err)
	}
	return sa.Dev == sb.Dev, nil
}

// CopyFile copies the regular file src to dst (created, not replaced),
// sharing the blocks with a reflink (FICLONE) where the file system can,
// and fsyncs it. w, if set, sees every byte of the copy as written (a
// hash), read back from dst after a reflink. Mode, owner and times follow
// src. It reports whether the blocks were shared.
func CopyFile(src, dst string, w io.Writer) (cloned bool, err error) {
	in, err := os.Open(src)
	if err != nil {
		return false, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return false, err
	}
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return false, err
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = cerr
		}
		if err != nil {
			os.Remove(dst)
		}
	}()
	if unix.IoctlFileClone(int(out.Fd()), int(in.Fd())) == nil {
		cloned = true
		if w != nil {
			if _, err := io.Copy(w, out); err != nil {
				return false, fmt.Errorf("read back %s: %w", dst, err)
			}
		}
	} else {
		dsts := io.Writer(out)
		if w != nil {
			dsts = io.MultiWriter(out, w)
		}
		if _, err := io.CopyBuffer(dsts, in, make([]byte, 1<<20)); err != nil {
			return false, fmt.Errorf("copy %s: %w", src, err)
		}
	}
	if err := copyMeta(out, st); err != nil {
		return cloned, err
	}
	if err := out.Sync(); err != nil {
		return cloned, fmt.Errorf("sync %s: %w", dst, err)
	}
	return cloned, nil
}

// copyMeta gives f the mode, owner and times of st.
func copyMeta(f *os.File, st fs.FileInfo) error {
	if err := f.Chmod(st.Mode().Perm() | st.Mode()&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)); err != nil {
		return err
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		if err := f.Chown(int(sys.Uid), int(sys.Gid)); err != nil && !errors.Is(err, fs.ErrPermission) {
			return err
		}
	}
	return os.Chtimes(f.Name(), st.ModTime(), st.ModTime())
}

// CopyTree copies the directory src to dst (which must not exist):
// directories, regular files, symlinks, with modes, owners and times;
// every file and directory is fsynced before CopyTree returns. Anything
// else (a device, a socket) is refused, so nothing is silently left out.
// Hard links within src become separate files.
func CopyTree(src, dst string) error {
	type dir struct {
		path string
		info fs.FileInfo
	}
	var dirs []dir
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(target, 0o700); err != nil {
				return err
			}
			dirs = append(dirs, dir{target, info})
		case d.Type().IsRegular():
			if _, err := CopyFile(p, target, nil); err != nil {
				return err
			}
		case d.Type()&fs.ModeSymlink != 0:
			to, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if err := os.Symlink(to, target); err != nil {
				return err
			}
			if sys, ok := info.Sys().(*syscall.Stat_t); ok {
				if err := os.Lchown(target, int(sys.Uid), int(sys.Gid)); err != nil && !errors.Is(err, fs.ErrPermission) {
					return err
				}
			}
		default:
			return fmt.Errorf("%s: cannot copy a %s: %w", p, d.Type(), fs.ErrInvalid)
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Deepest first: a directory's own times and mode are set after its
	// entries were made, and it is synced after them.
	for i := len(dirs) - 1; i >= 0; i-- {
		d, err := os.Open(dirs[i].path)
		if err != nil {
			return err
		}
		err = copyMeta(d, dirs[i].info)
		if err == nil {
			err = d.Sync()
		}
		d.Close()
		if err != nil {
			return fmt.Errorf("copy %s: %w", dirs[i].path, err)
		}
	}
	return nil
}

// Syncer makes a file's data and a directory's entries durable; tests
// stand in for it to see the calls and their order.
type Syncer interface {
	File(f *os.File) error
	Dir(dir string) error
}

// OS is the Syncer of the real file system.
type OS struct{}

// File fsyncs f.
func (OS) File(f *os.File) error { return f.Sync() }

// Dir fsyncs dir.
func (OS) Dir(dir string) error { return SyncDir(dir) }

// WriteFile replaces path with b so that a crash or power cut leaves the
// old or the new content, never half of either: a temporary file beside
// it (mode 0600) written and synced, renamed over path, and the directory
// synced (else the rename may reach the disk before the data, or not at
// all).
func WriteFile(path string, b []byte, sy Syncer) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = sy.File(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := sy.Dir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}
