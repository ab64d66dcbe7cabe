//go:build !linux

package writeback

import "os"

// Start is a no-op where sync_file_range(2) does not exist; the final
// fsync does all the work.
func Start(*os.File, int64, int64) {}

// Drop is a no-op where posix_fadvise(2) is not at hand.
func Drop(*os.File, int64, int64) {}
