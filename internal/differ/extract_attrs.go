package differ

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
	"unsafe"

	"github.com/containerd/log"
	"golang.org/x/sys/unix"
)

// tarMode is the mode archive.Apply gives an entry (hdr.FileInfo().Mode()
// through os.Chmod): permissions and the set-user-ID, set-group-ID and
// sticky bits.
func tarMode(hdr *tar.Header) uint32 {
	m := hdr.FileInfo().Mode()
	mode := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		mode |= unix.S_ISUID
	}
	if m&os.ModeSetgid != 0 {
		mode |= unix.S_ISGID
	}
	if m&os.ModeSticky != 0 {
		mode |= unix.S_ISVTX
	}
	return mode
}

// As archive's boundTime: times out of what utimensat takes become the
// epoch.
var (
	minTime = time.Unix(0, 0)
	maxTime = time.Unix(0, 1<<63-1)
)

func boundTime(t time.Time) time.Time {
	if t.Before(minTime) || t.After(maxTime) {
		return minTime
	}
	return t
}

// tarTimes are the access and modification times archive.Apply gives an
// entry: the later of the access and modification time, and the
// modification time, at the header's precision.
func tarTimes(hdr *tar.Header) [2]unix.Timespec {
	atime := hdr.AccessTime
	if atime.Before(hdr.ModTime) {
		atime = hdr.ModTime
	}
	return [2]unix.Timespec{
		unix.NsecToTimespec(boundTime(atime).UnixNano()),
		unix.NsecToTimespec(boundTime(hdr.ModTime).UnixNano()),
	}
}

// futimens sets the times of an open file (utimensat with a NULL path;
// x/sys has no futimens).
func futimens(fd int, ts *[2]unix.Timespec) error {
	_, _, errno := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}

const (
	paxSchilyXattr = "SCHILY.xattr."
	aclDefault     = "system.posix_acl_default"
)

func hasXattrs(hdr *tar.Header) bool {
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, paxSchilyXattr) {
			return true
		}
	}
	return false
}

// setXattrs sets the header's SCHILY.xattr.* records with set, ignoring
// what archive.Apply ignores: trusted.* (it refuses them as not
// supported), user.* where the kernel does not allow them (not a regular
// file or directory), and attributes the file system does not support.
func setXattrs(ctx context.Context, hdr *tar.Header, regularOrDir bool, set func(k string, v []byte) error) error {
	for key, value := range hdr.PAXRecords {
		k, ok := strings.CutPrefix(key, paxSchilyXattr)
		if !ok {
			continue
		}
		var err error
		if strings.HasPrefix(k, "trusted.") {
			err = unix.ENOTSUP
		} else {
			err = set(k, []byte(value))
		}
		if err == nil {
			continue
		}
		if (errors.Is(err, unix.EPERM) && strings.HasPrefix(k, "user.") && !regularOrDir) || errors.Is(err, unix.ENOTSUP) {
			log.G(ctx).WithError(err).Warnf("ignored xattr %s in archive", k)
			continue
		}
		return fmt.Errorf("failed to setxattr %q for key %q: %w", hdr.Name, k, err)
	}
	return nil
}
