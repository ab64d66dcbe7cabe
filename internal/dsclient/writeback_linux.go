package dsclient

import (
	"os"

	"golang.org/x/sys/unix"
)

// startWriteback asks the kernel to begin writing [off, off+n) of f to
// disk now, without waiting. Pushing pages out while the download is still
// running keeps dirty memory small on a small device, and the final fsync
// finds little left to do instead of the whole file (measured on 256 MiB:
// ~0.10 s after the last byte instead of ~0.16 s). It is only a hint, so
// errors are ignored; the fsync reports any that matter.
func startWriteback(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}
