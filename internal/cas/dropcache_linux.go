package cas

import (
	"os"

	"golang.org/x/sys/unix"
)

// dropCache drops [off, off+n) of f from the page cache where it is
// written back (posix_fadvise(2) DONTNEED; dirty pages stay). A hint: the
// error is ignored. A variable so that tests can see the ranges.
var dropCache = func(f *os.File, off, n int64) {
	_ = unix.Fadvise(int(f.Fd()), off, n, unix.FADV_DONTNEED)
}
