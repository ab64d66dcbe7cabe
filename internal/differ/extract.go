package differ

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"path"
	"path/filepath"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"golang.org/x/sys/unix"
)

// extractor writes a layer's tar into an empty staging directory, giving
// exactly the tree containerd's
//
//	archive.Apply(ctx, dir, r, archive.WithConvertWhiteout(archive.OverlayConvertWhiteout), archive.WithFilter(filter))
//
// gives, with fewer system calls: it works relative to open directories
// (openat and friends, never following a symlink: O_NOFOLLOW and
// AT_SYMLINK_NOFOLLOW throughout) instead of resolving every path from the
// root (fs.RootPath), changes the attributes of the files it holds open,
// and does not look for what is already there. That is sound only with
// the filter of a stage (entryCheck): it refuses every layer where a path
// goes through something that is not a directory of the layer, where an
// entry replaces another (but a directory merging into one), and where
// anything could be outside the root.
//
// For each entry it makes the system calls archive.Apply makes that
// decide the result, in its order: create, chown, extended attributes,
// chmod (after chown, which clears set-user-ID bits and capabilities),
// times; directories' times once more at the end, after their contents.
// It skips the calls whose effect a later one replaces (the chmod after
// create, which only undoes the umask; a directory's times before its
// entries are made).
//
// It counts on the way what fs.DiskUsage of the finished tree reports
// (usage).
type extractor struct {
	ctx    context.Context
	filter func(*tar.Header) (bool, error)
	dirs   *dirStack
	buf    []byte
	// dirTimes are the times of the layer's directory entries, set at the
	// end in tar order as archive.Apply does (a later entry of the same
	// directory wins).
	dirTimes []dirTime
	// made are the directories created (the layer's and the implicit
	// parents), whose blocks are counted at the end when they have all
	// their entries.
	made  []string
	usage snapshots.Usage
	// acls: a default ACL may be inherited (the root has one, or the
	// layer sets one), so chown and chmod are never skipped.
	acls bool
}

type dirTime struct {
	name string
	ts   [2]unix.Timespec
}

// extractBufSize is the write size of file contents.
const extractBufSize = 128 << 10

// extractTar extracts the tar read from r into dir (empty), with filter
// as archive.Apply's filter, and returns the tree's disk usage.
func extractTar(ctx context.Context, dir string, r io.Reader, filter func(*tar.Header) (bool, error)) (snapshots.Usage, error) {
	root, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return snapshots.Usage{}, fmt.Errorf("open staging directory %s: %w", dir, err)
	}
	x := &extractor{ctx: ctx, filter: filter, buf: make([]byte, extractBufSize)}
	if _, err := unix.Fgetxattr(root, aclDefault, nil); err == nil || !errors.Is(err, unix.ENODATA) {
		x.acls = true
	}
	x.dirs = newDirStack(root, x.madeImplicit)
	defer x.dirs.close()
	if err := x.run(tar.NewReader(r)); err != nil {
		return snapshots.Usage{}, err
	}
	if err := x.finish(); err != nil {
		return snapshots.Usage{}, err
	}
	return x.usage, nil
}

func (x *extractor) run(tr *tar.Reader) error {
	for {
		if err := x.ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		// As archive.Apply: cleaned for the filter and everything after.
		hdr.Name = filepath.Clean(hdr.Name)
		ok, err := x.filter(hdr)
		if err != nil {
			return err
		}
		if _, ok := hdr.PAXRecords[paxSchilyXattr+aclDefault]; ok {
			x.acls = true
		}
		if !ok || hdr.Name == "." {
			continue // "." resolves to the root, which archive.Apply skips
		}
		if err := x.entry(hdr, tr); err != nil {
			return err
		}
	}
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	// The filter refused absolute names and names leaving the root.
	if path.IsAbs(hdr.Name) || hdr.Name == ".." || strings.HasPrefix(hdr.Name, "../") {
		return fmt.Errorf("%w: entry %q outside the layer root", errNotStageable, hdr.Name)
	}
	parent, base := path.Split(hdr.Name)
	parent = strings.TrimSuffix(parent, "/")
	// mkparent: missing parents are made (see madeImplicit).
	pfd, err := x.dirs.open(parent, true)
	if err != nil {
		return err
	}
	// OverlayConvertWhiteout, before anything else is looked at.
	if base == whiteoutOpaque {
		if err := unix.Fsetxattr(pfd, "trusted.overlay.opaque", []byte{'y'}, 0); err != nil {
			return fmt.Errorf("failed to convert whiteout file %q: %w", hdr.Name, err)
		}
		return nil
	}
	if orig, ok := strings.CutPrefix(base, whiteoutPrefix); ok {
		return x.whiteout(pfd, hdr, orig)
	}
	switch hdr.Typeflag {
	case tar.TypeDir:
		return x.dir(pfd, hdr, base)
	case tar.TypeReg, tar.TypeRegA: //nolint:staticcheck // TypeRegA as archive.Apply
		return x.file(pfd, hdr, base, r)
	case tar.TypeBlock, tar.TypeChar, tar.TypeFifo:
		return x.node(pfd, hdr, base)
	case tar.TypeLink:
		return x.hardlink(pfd, hdr, base)
	case tar.TypeSymlink:
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("symlink %q: %w", hdr.Name, err)
		}
		return x.byName(pfd, hdr, base, false)
	case tar.TypeXGlobalHeader:
		return nil // archive.Apply ignores it (the filter refuses it)
	}
	return fmt.Errorf("unhandled tar header type %d", hdr.Typeflag)
}

// whiteout is OverlayConvertWhiteout's: a character device 0/0 owned as
// the header says, nothing else of the header applied.
func (x *extractor) whiteout(pfd int, hdr *tar.Header, orig string) error {
	if orig == "" || orig == "." || orig == ".." {
		return fmt.Errorf("%w: whiteout %q", errNotStageable, hdr.Name)
	}
	if err := unix.Mknodat(pfd, orig, unix.S_IFCHR, 0); err != nil {
		return fmt.Errorf("failed to convert whiteout file %q: %w", hdr.Name, err)
	}
	if err := unix.Fchownat(pfd, orig, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("failed to convert whiteout file %q: %w", hdr.Name, err)
	}
	return x.countAt(pfd, orig)
}

// dir makes the directory (or merges into it if the layer named it
// before) and leaves it open for its entries.
func (x *extractor) dir(pfd int, hdr *tar.Header, base string) error {
	mode := tarMode(hdr)
	made := true
	if err := unix.Mkdirat(pfd, base, mode); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mkdir %q: %w", hdr.Name, err)
		}
		made = false // the filter let only a directory of the layer be named again
	}
	fd, err := x.dirs.push(hdr.Name, base)
	if err != nil {
		return err
	}
	if made {
		x.made = append(x.made, hdr.Name)
	}
	if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
		return chownErr(hdr, err)
	}
	if err := setXattrs(x.ctx, hdr, true, func(k string, v []byte) error { return unix.Fsetxattr(fd, k, v, 0) }); err != nil {
		return err
	}
	if err := unix.Fchmod(fd, mode); err != nil {
		return fmt.Errorf("chmod %q: %w", hdr.Name, err)
	}
	x.dirTimes = append(x.dirTimes, dirTime{name: hdr.Name, ts: tarTimes(hdr)})
	return nil
}

// file writes a regular file through a plain blocking descriptor (no
// runtime poller).
func (x *extractor) file(pfd int, hdr *tar.Header, base string, r io.Reader) error {
	mode := tarMode(hdr)
	fd, err := unix.Openat(pfd, base, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
	if err != nil {
		return fmt.Errorf("create %q: %w", hdr.Name, err)
	}
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	if err := x.copyTo(fd, r); err != nil {
		return fmt.Errorf("write %q: %w", hdr.Name, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("stat %q: %w", hdr.Name, err)
	}
	// A chown or chmod to what the new file has already changes nothing
	// but its ctime: no set-ID bit or capability for chown to clear that
	// the chmod after it would not set again. Not skipped where ACLs are
	// in play (they tie the mode to an xattr) or after xattrs.
	xattrs := hasXattrs(hdr)
	chown := x.acls || st.Uid != uint32(hdr.Uid) || st.Gid != uint32(hdr.Gid)
	if chown {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil {
			return chownErr(hdr, err)
		}
	}
	if err := setXattrs(x.ctx, hdr, true, func(k string, v []byte) error { return unix.Fsetxattr(fd, k, v, 0) }); err != nil {
		return err
	}
	if chown || xattrs || st.Mode&0o7777 != mode {
		if err := unix.Fchmod(fd, mode); err != nil {
			return fmt.Errorf("chmod %q: %w", hdr.Name, err)
		}
	}
	ts := tarTimes(hdr)
	if err := futimens(fd, &ts); err != nil {
		return fmt.Errorf("utimes %q: %w", hdr.Name, err)
	}
	if xattrs {
		// One may need a block of its own.
		if err := unix.Fstat(fd, &st); err != nil {
			return fmt.Errorf("stat %q: %w", hdr.Name, err)
		}
	}
	x.count(&st)
	err = unix.Close(fd)
	fd = -1
	if err != nil {
		return fmt.Errorf("close %q: %w", hdr.Name, err)
	}
	return nil
}

// copyTo writes all of r (the tar entry: holes of a sparse entry come as
// zeros and are written, as archive.Apply writes them) to fd.
func (x *extractor) copyTo(fd int, r io.Reader) error {
	for {
		n, rerr := r.Read(x.buf)
		for b := x.buf[:n]; len(b) > 0; {
			w, err := unix.Write(fd, b)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				return err
			}
			if w == 0 {
				return io.ErrShortWrite
			}
			b = b[w:]
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// node makes a device or fifo as handleTarTypeBlockCharFifo does.
func (x *extractor) node(pfd int, hdr *tar.Header, base string) error {
	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeBlock:
		mode |= unix.S_IFBLK
	case tar.TypeChar:
		mode |= unix.S_IFCHR
	case tar.TypeFifo:
		mode |= unix.S_IFIFO
	}
	if hdr.Devmajor < 0 || hdr.Devmajor > math.MaxUint32 || hdr.Devminor < 0 || hdr.Devminor > math.MaxUint32 {
		return fmt.Errorf("device number %d:%d for %q out of range", hdr.Devmajor, hdr.Devminor, hdr.Name)
	}
	if err := unix.Mknodat(pfd, base, mode, int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))); err != nil {
		return fmt.Errorf("mknod %q: %w", hdr.Name, err)
	}
	return x.byName(pfd, hdr, base, true)
}

// hardlink links to a file extracted before (the filter checked that
// Linkname, cleaned, is one), then applies the header to the shared
// inode as archive.Apply does. Its usage is counted once: only a change
// of the inode's blocks (an extended attribute block) is added.
func (x *extractor) hardlink(pfd int, hdr *tar.Header, base string) error {
	target := path.Clean(hdr.Linkname)
	if path.IsAbs(target) || target == ".." || strings.HasPrefix(target, "../") || target == "." {
		return fmt.Errorf("%w: hard link %q to %q", errNotStageable, hdr.Name, hdr.Linkname)
	}
	tdir, tbase := path.Split(target)
	tfd, err := openBeneath(x.dirs.root(), strings.TrimSuffix(tdir, "/"))
	if err != nil {
		return fmt.Errorf("hard link %q: %w", hdr.Name, err)
	}
	var before unix.Stat_t
	err = unix.Fstatat(tfd, tbase, &before, unix.AT_SYMLINK_NOFOLLOW)
	if err == nil {
		err = unix.Linkat(tfd, tbase, pfd, base, 0)
	}
	if tfd != x.dirs.root() {
		unix.Close(tfd)
	}
	if err != nil {
		return fmt.Errorf("hard link %q to %q: %w", hdr.Name, hdr.Linkname, err)
	}
	if err := x.attrsAt(pfd, hdr, base, true); err != nil {
		return err
	}
	var after unix.Stat_t
	if err := unix.Fstatat(pfd, base, &after, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat %q: %w", hdr.Name, err)
	}
	x.usage.Size += (after.Blocks - before.Blocks) * 512
	return nil
}

// byName applies the header to an entry made by name (symlink, device,
// fifo) and counts it.
func (x *extractor) byName(pfd int, hdr *tar.Header, base string, chmod bool) error {
	if err := x.attrsAt(pfd, hdr, base, chmod); err != nil {
		return err
	}
	return x.countAt(pfd, base)
}

// attrsAt is createTarFile's tail for an entry not held open: lchown,
// extended attributes, chmod (not of a symlink), times.
func (x *extractor) attrsAt(pfd int, hdr *tar.Header, base string, chmod bool) error {
	if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return chownErr(hdr, err)
	}
	regular := hdr.Typeflag == tar.TypeLink // the filter: only to files
	if err := setXattrs(x.ctx, hdr, regular, func(k string, v []byte) error {
		// No lsetxattrat: the entry through the directory's descriptor.
		return unix.Lsetxattr(fmt.Sprintf("/proc/self/fd/%d/%s", pfd, base), k, v, 0)
	}); err != nil {
		return err
	}
	if chmod {
		// Not a symlink (made just now, or a link to a file): fchmodat
		// cannot follow one.
		if err := unix.Fchmodat(pfd, base, tarMode(hdr), 0); err != nil {
			return fmt.Errorf("chmod %q: %w", hdr.Name, err)
		}
	}
	ts := tarTimes(hdr)
	if err := unix.UtimesNanoAt(pfd, base, ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("utimes %q: %w", hdr.Name, err)
	}
	return nil
}

func chownErr(hdr *tar.Header, err error) error {
	return fmt.Errorf("failed to Lchown %q for UID %d, GID %d: %w", hdr.Name, hdr.Uid, hdr.Gid, err)
}

// madeImplicit is told of each parent directory mkparent would make.
func (x *extractor) madeImplicit(name string) {
	x.made = append(x.made, name)
}

// finish sets the directories' times, then counts their blocks (a
// directory grows with its entries) and the root's.
func (x *extractor) finish() error {
	for _, d := range x.dirTimes {
		parent, base := path.Split(d.name)
		pfd, err := x.dirs.open(strings.TrimSuffix(parent, "/"), false)
		if err != nil {
			return err
		}
		if err := unix.UtimesNanoAt(pfd, base, d.ts[:], unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("utimes %q: %w", d.name, err)
		}
	}
	for _, name := range x.made {
		parent, base := path.Split(name)
		pfd, err := x.dirs.open(strings.TrimSuffix(parent, "/"), false)
		if err != nil {
			return err
		}
		if err := x.countAt(pfd, base); err != nil {
			return err
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(x.dirs.root(), &st); err != nil {
		return fmt.Errorf("stat staging directory: %w", err)
	}
	x.count(&st)
	return nil
}

// count adds one inode as fs.DiskUsage counts it.
func (x *extractor) count(st *unix.Stat_t) {
	x.usage.Inodes++
	x.usage.Size += st.Blocks * 512
}

func (x *extractor) countAt(pfd int, base string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("stat %q: %w", base, err)
	}
	x.count(&st)
	return nil
}
