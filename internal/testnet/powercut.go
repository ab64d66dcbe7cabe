//go:build linux

package testnet

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// SlowCommits remounts the file system so that ext4 commits its journal
// only when something fsyncs (every 600 s otherwise) and syncs what is
// there now. Until the next PowerCut the disk then changes only where a
// program asked for durability: the kernel's flusher writes back nothing
// younger than its 30 s dirty expiry either, so a fault injected within
// that time and followed by PowerCut finds exactly what was fsynced.
func (l *LoopFS) SlowCommits(t testing.TB) {
	t.Helper()
	if _, err := run("mount", "-o", "remount,commit=600", l.Dir); err != nil {
		t.Fatalf("testnet: %v", err)
	}
	unix.Sync()
}

// PowerCut makes the file system what a power cut now would leave: the
// blocks the loop device has written to its image, without what only the
// page cache holds. Every process using Dir must have been killed first,
// as a power cut ends them all. It copies the image as the disk holds it,
// drops the old mount (its dirty pages go with it, never to the copy) and
// mounts the copy at Dir, where ext4 replays its journal as at boot.
func (l *LoopFS) PowerCut(t testing.TB) {
	t.Helper()
	if err := l.powerCut(); err != nil {
		t.Fatalf("testnet: power cut of %s: %v", l.Dir, err)
	}
}

func (l *LoopFS) powerCut() error {
	cut := l.image + ".cut"
	// The loop device writes its image with direct I/O (or through the
	// image's page cache, which a read sees as well): a copy now holds
	// every block the file system sent to its disk, and nothing else.
	if _, err := run("cp", "--sparse=always", "--reflink=never", l.image, cut); err != nil {
		return err
	}
	// Detached, then unmounted for good: a just-killed process may hold
	// the mount for a moment. Its writeback goes to the old image.
	if err := unix.Unmount(l.Dir, unix.MNT_DETACH); err != nil {
		return fmt.Errorf("umount -l: %w", err)
	}
	// On a device still in use, losetup -d marks it to detach when the
	// last user goes (autoclear); the old image is freed with it.
	if _, err := run("losetup", "-d", l.Device); err != nil {
		return err
	}
	if err := os.Rename(cut, l.image); err != nil {
		return err
	}
	dev, err := run("losetup", "--find", "--show", l.image)
	if err != nil {
		return err
	}
	l.Device = strings.TrimSpace(dev)
	if _, err := run("mount", "-t", "ext4", l.Device, l.Dir); err != nil {
		return err
	}
	return nil
}
