//go:build linux

package testnet

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// loopTimeout bounds each command LoopFS runs (mkfs, losetup, mount).
const loopTimeout = 2 * time.Minute

// Each LoopFS lives in loopBase/loopPrefix*: owner (the pid), ext4.img,
// mnt/.
const (
	loopBase   = "/var/tmp"
	loopPrefix = "localds-loopfs-"
)

// LoopFS is a freshly made, journaled ext4 on a loop device, mounted at
// Dir. Benchmarks give each side its own: this VM's root file system is
// ext4 without a journal that skips recently deleted inodes, so a side
// running right after another side's `rm -rf` of a large tree pays seconds
// for it; a new file system per side starts every side alike.
type LoopFS struct {
	// Dir is the mount point (empty, owned by root).
	Dir string
	// Device is the loop device, e.g. /dev/loop3.
	Device string
	image  string
	once   sync.Once
	err    error
}

// NewLoopFS makes a sparse file of sizeGiB GiB under a new directory in
// /var/tmp, formats it ext4 with a journal (inode tables and journal
// written now, so no ext4lazyinit thread writes behind a measurement),
// attaches it to a loop device with direct I/O where the kernel allows it
// (the backing file's page cache would otherwise hold every byte twice)
// and mounts it. Close, also run at t.Cleanup, undoes all of it.
func NewLoopFS(t testing.TB, sizeGiB int) *LoopFS {
	t.Helper()
	RequireRoot(t)
	for _, err := range sweepStaleLoopFS() {
		t.Logf("testnet: stale loopfs: %v", err)
	}
	base, err := os.MkdirTemp(loopBase, loopPrefix)
	if err != nil {
		t.Fatalf("testnet: loopfs dir: %v", err)
	}
	// The owner's pid lets a later run remove what a killed test left.
	if err := os.WriteFile(filepath.Join(base, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		t.Fatalf("testnet: loopfs owner: %v", err)
	}
	l := &LoopFS{Dir: filepath.Join(base, "mnt"), image: filepath.Join(base, "ext4.img")}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("testnet: %v", err)
		}
	})
	if err := l.setup(int64(sizeGiB) << 30); err != nil {
		t.Fatalf("testnet: loopfs: %v", err)
	}
	return l
}

func (l *LoopFS) setup(size int64) error {
	if err := os.Mkdir(l.Dir, 0o755); err != nil {
		return err
	}
	f, err := os.Create(l.image)
	if err != nil {
		return err
	}
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sparse file %s: %w", l.image, err)
	}
	if _, err := run("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", l.image); err != nil {
		return err
	}
	dev, err := run("losetup", "--find", "--show", "--direct-io=on", l.image)
	if err != nil {
		// Direct I/O needs the backing file system's block size to
		// match; the plain loop device still works.
		if dev, err = run("losetup", "--find", "--show", l.image); err != nil {
			return err
		}
	}
	l.Device = strings.TrimSpace(dev)
	if _, err := run("mount", "-t", "ext4", l.Device, l.Dir); err != nil {
		return err
	}
	return nil
}

// Close unmounts the file system, detaches the loop device and removes
// the image file. It may be called more than once (the first result is
// kept); processes using Dir must have ended.
func (l *LoopFS) Close() error {
	l.once.Do(func() { l.err = l.teardown() })
	return l.err
}

func (l *LoopFS) teardown() error {
	var errs []error
	if mounted(l.Dir) {
		// A daemon just killed may hold the file system for a moment
		// while the kernel reaps it: a few bounded retries.
		var err error
		for i := 0; i < 20; i++ {
			if err = unix.Unmount(l.Dir, 0); err == nil || errors.Is(err, unix.EINVAL) {
				err = nil
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			// Detach it so the loop device and file can still go.
			errs = append(errs, fmt.Errorf("umount %s: %w", l.Dir, err))
			if err := unix.Unmount(l.Dir, unix.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("umount -l %s: %w", l.Dir, err))
			}
		}
	}
	if l.Device != "" {
		if _, err := run("losetup", "-d", l.Device); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.RemoveAll(filepath.Dir(l.image)); err != nil {
		errs = append(errs, fmt.Errorf("remove loopfs: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("loopfs %s: %w", l.Dir, err)
	}
	return nil
}

// mounted reports whether dir is a mount point in /proc/self/mountinfo.
func mounted(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		// id parent maj:min root mountpoint ...
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// run runs a command (bounded) and returns its stdout.
func run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), loopTimeout)
	defer cancel()
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// sweepStaleLoopFS unmounts, detaches and removes the file systems whose
// owner process is gone (a test killed before its cleanup), and leaves
// every other alone (another test process may be using it).
func sweepStaleLoopFS() []error {
	dirs, _ := filepath.Glob(filepath.Join(loopBase, loopPrefix+"*"))
	var errs []error
	for _, base := range dirs {
		b, err := os.ReadFile(filepath.Join(base, "owner"))
		if err != nil {
			continue // being made, or not ours
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || pidAlive(pid) {
			continue
		}
		l := &LoopFS{Dir: filepath.Join(base, "mnt"), image: filepath.Join(base, "ext4.img")}
		if mounted(l.Dir) {
			if err := unix.Unmount(l.Dir, unix.MNT_DETACH); err != nil {
				errs = append(errs, fmt.Errorf("umount -l %s: %w", l.Dir, err))
			}
		}
		if out, err := run("losetup", "--noheadings", "--output", "NAME", "--associated", l.image); err == nil {
			for _, dev := range strings.Fields(out) {
				if _, err := run("losetup", "-d", dev); err != nil {
					errs = append(errs, err)
				}
			}
		}
		if err := os.RemoveAll(base); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", base, err))
		} else {
			errs = append(errs, fmt.Errorf("removed %s (its owner, pid %d, is gone)", base, pid))
		}
	}
	return errs
}
