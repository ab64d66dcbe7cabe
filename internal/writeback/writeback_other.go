//go:build !linux

package writeback

import "os"

// Start is a no-op where sync_file_range(2) does not exist; the final
// fsync does all the work.
func Start(*os.File, int64, int64) {}
