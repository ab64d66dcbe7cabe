package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// maxSocketPath is the longest unix socket path Linux accepts (sun_path is
// 108 bytes with the terminating NUL).
const maxSocketPath = 107

// listenUnix listens on path with mode SocketMode. It creates the parent
// directory (0750: only root and the group reach the socket) and removes a
// stale socket left by a crashed daemon, but refuses to touch a path that is
// not a socket or a socket another process still answers on.
func listenUnix(path string) (net.Listener, error) { return listenUnixHook(path, nil) }

// listenUnixHook is listenUnix with a hook that sees the socket between
// its creation and its chmod (tests check its mode there).
func listenUnixHook(path string, created func(path string)) (net.Listener, error) {
	if path == "" {
		return nil, fmt.Errorf("socket: empty address")
	}
	if len(path) > maxSocketPath {
		return nil, fmt.Errorf("socket %s: path is %d bytes, Linux allows at most %d", path, len(path), maxSocketPath)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("socket directory: %w", err)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("socket %s: exists and is not a socket (%s); not removing it", path, fi.Mode().Type())
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("socket %s is in use: %w", path, errAlreadyServing)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	// bind creates the socket with the process umask's mode; with 0177 it
	// is 0600 until the chmod below, whatever umask the daemon was started
	// with. The umask is the process's, so the window is kept to the bind.
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if created != nil {
		created(path)
	}
	if err := os.Chmod(path, SocketMode); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	return l, nil
}

// removeSocket removes the socket at shutdown (the listener usually has
// already; this covers a listener that never served).
func removeSocket(path string) error {
	if fi, err := os.Lstat(path); err == nil && fi.Mode().Type() == fs.ModeSocket {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove socket: %w", err)
		}
	}
	return nil
}

// lockRoot takes an exclusive flock on <cas>/daemon.lock: the local store's
// ref locks live in memory, so two daemons writing one CAS could interleave
// one ingest. The kernel drops the lock when the process dies, so a daemon
// killed with -9 never blocks its restart.
func lockRoot(casDir string) (func() error, error) {
	p := filepath.Join(casDir, "daemon.lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("content store %s is locked (%s): %w", casDir, p, errAlreadyServing)
		}
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	return f.Close, nil
}
