//go:build !linux

package cas

import "os"

// dropCache is a no-op where posix_fadvise is not at hand.
var dropCache = func(*os.File, int64, int64) {}
