package writeback

import (
	"os"

	"golang.org/x/sys/unix"
)

// Start asks the kernel to begin writing [off, off+n) of f to disk now,
// without waiting (sync_file_range(2), SYNC_FILE_RANGE_WRITE). Measured
// on a 256 MiB download: ~0.10 s after the last byte instead of ~0.16 s.
func Start(f *os.File, off, n int64) {
	_ = unix.SyncFileRange(int(f.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
}

// Drop asks the kernel to drop [off, off+n) of f from the page cache
// where it is already written back (posix_fadvise(2) DONTNEED; dirty pages
// stay), for a file nobody will read back soon.
func Drop(f *os.File, off, n int64) {
	_ = unix.Fadvise(int(f.Fd()), off, n, unix.FADV_DONTNEED)
}
