package daemon

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocketCreatedPrivate: between its bind and its chmod the socket is
// never open to group or others, even when the daemon runs with umask 0.
func TestSocketCreatedPrivate(t *testing.T) {
	old := unix.Umask(0)
	defer unix.Umask(old)
	path := filepath.Join(t.TempDir(), "s", "l.sock")
	var mode os.FileMode
	l, err := listenUnixHook(path, func(p string) {
		if st, err := os.Stat(p); err == nil {
			mode = st.Mode().Perm()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if mode&0o077 != 0 {
		t.Fatalf("socket created with mode %v before its chmod, want no group or other bits", mode)
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != SocketMode {
		t.Fatalf("socket mode after listen: %v, %v; want %v", st.Mode().Perm(), err, SocketMode)
	}
}
