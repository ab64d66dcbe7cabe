//go:build linux

package testnet

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLoopFS: the file system is a journaled ext4 of the asked size,
// mounted at Dir and writable; after the subtest ends (its cleanup) it is
// unmounted, the loop device detached and the image gone, and that also
// after a failed subtest.
func TestLoopFS(t *testing.T) {
	RequireRoot(t)
	var l *LoopFS
	t.Run("use", func(t *testing.T) {
		l = NewLoopFS(t, 1)
		var st unix.Statfs_t
		if err := unix.Statfs(l.Dir, &st); err != nil {
			t.Fatal(err)
		}
		if st.Type != unix.EXT4_SUPER_MAGIC {
			t.Fatalf("%s: file system type %#x, want ext4", l.Dir, st.Type)
		}
		if size := int64(st.Blocks) * st.Bsize; size < 900<<20 || size > 1<<30 {
			t.Fatalf("%s: %d bytes, want about 1 GiB", l.Dir, size)
		}
		out, err := run("dumpe2fs", "-h", l.Device)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out, "has_journal") {
			t.Fatalf("%s has no journal:\n%s", l.Device, out)
		}
		if !mounted(l.Dir) {
			t.Fatalf("%s not in mountinfo", l.Dir)
		}
		if err := os.WriteFile(filepath.Join(l.Dir, "f"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	checkGone(t, l)

	// A test that fails after making one: its cleanup still unmounts,
	// detaches and removes (the failing test runs in a child process of
	// this test binary, which reports where its file system was).
	out := filepath.Join(t.TempDir(), "loopfs")
	cmd := exec.Command(os.Args[0], "-test.run", "^TestLoopFSFailing$", "-test.v")
	cmd.Env = append(os.Environ(), "LOCALDS_LOOPFS_OUT="+out)
	b, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(b), "failing on purpose") {
		t.Fatalf("the failing child passed or failed otherwise: %v\n%s", err, b)
	}
	dirs, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("child wrote nothing: %v\n%s", err, b)
	}
	f := strings.Fields(string(dirs))
	if len(f) != 3 {
		t.Fatalf("child wrote %q", dirs)
	}
	checkGone(t, &LoopFS{Dir: f[0], Device: f[1], image: f[2]})

	// A test killed before its cleanup: the next NewLoopFS (of any
	// process) removes what it left, since its owner is gone.
	cmd = exec.Command(os.Args[0], "-test.run", "^TestLoopFSFailing$", "-test.v")
	cmd.Env = append(os.Environ(), "LOCALDS_LOOPFS_OUT="+out, "LOCALDS_LOOPFS_EXIT=1")
	if b, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("the exiting child exited 0:\n%s", b)
	}
	if dirs, err = os.ReadFile(out); err != nil {
		t.Fatal(err)
	}
	f = strings.Fields(string(dirs))
	if len(f) != 3 || !mounted(f[0]) {
		t.Fatalf("child wrote %q; want its file system left mounted", dirs)
	}
	NewLoopFS(t, 1)
	checkGone(t, &LoopFS{Dir: f[0], Device: f[1], image: f[2]})
}

// TestLoopFSFailing is TestLoopFS's child: it makes a file system, says
// where, and fails. It does nothing unless TestLoopFS runs it.
func TestLoopFSFailing(t *testing.T) {
	out := os.Getenv("LOCALDS_LOOPFS_OUT")
	if out == "" {
		t.Skip("run by TestLoopFS only")
	}
	l := NewLoopFS(t, 1)
	if err := os.WriteFile(out, []byte(l.Dir+" "+l.Device+" "+l.image), 0o644); err != nil {
		t.Fatal(err)
	}
	if os.Getenv("LOCALDS_LOOPFS_EXIT") != "" {
		os.Exit(3) // killed: no cleanup runs
	}
	t.Fatal("failing on purpose")
}

func checkGone(t *testing.T, l *LoopFS) {
	t.Helper()
	if l == nil {
		t.Fatal("no loopfs made")
	}
	if mounted(l.Dir) {
		t.Fatalf("%s still mounted after cleanup", l.Dir)
	}
	if _, err := os.Stat(filepath.Dir(l.image)); !os.IsNotExist(err) {
		t.Fatalf("%s still there after cleanup: %v", filepath.Dir(l.image), err)
	}
	out, err := run("losetup", "--list", "--noheadings", "--output", "NAME,BACK-FILE")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, l.image) {
		t.Fatalf("loop device still attached to %s:\n%s", l.image, out)
	}
}
