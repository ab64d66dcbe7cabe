//go:build linux

// Package vaulttest makes real fscrypt-encrypted vaults for tests: an ext4
// made with -O encrypt on a loop device, mounted in the test's temporary
// directory, with a v2 policy set through the kernel's ioctls and a random
// key added to the file system's keyring. Everything is undone at
// t.Cleanup. Tests that need it skip unless run as root on a kernel with
// fscrypt and loop devices.
package vaulttest

import (
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FS is a mounted ext4 with encryption enabled.
type FS struct {
	Mount string
	key   [unix.FSCRYPT_KEY_IDENTIFIER_SIZE]byte
	dirs  []string
}

// New makes and mounts a 64 MiB ext4 -O encrypt on a loop device, or skips
// t saying why it cannot.
func New(t testing.TB) *FS {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("vaulttest: needs root (losetup, mount, fscrypt ioctls)")
	}
	if _, err := os.Stat("/sys/fs/ext4/features/encryption"); err != nil {
		t.Skip("vaulttest: the kernel's ext4 has no encryption (no /sys/fs/ext4/features/encryption)")
	}
	for _, prog := range []string{"mkfs.ext4", "losetup"} {
		if _, err := exec.LookPath(prog); err != nil {
			t.Skipf("vaulttest: %s not installed", prog)
		}
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "fs.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 64<<20); err != nil {
		t.Fatal(err)
	}
	run(t, "mkfs.ext4", "-q", "-O", "encrypt", img)
	out, err := exec.Command("losetup", "-f", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("vaulttest: no loop device: losetup: %v: %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "-d", loop).Run() })
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(loop, mnt, "ext4", 0, ""); err != nil {
		t.Fatalf("mount %s: %v", loop, err)
	}
	fs := &FS{Mount: mnt}
	// Cleanups run last-in first-out: unmount (lazily, should a test
	// leave a file open) before the loop device goes.
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
	})
	fs.addKey(t)
	return fs
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
}

// addKey adds a random 64-byte key to the file system's keyring
// (FS_IOC_ADD_ENCRYPTION_KEY), remembering its identifier.
func (fs *FS) addKey(t testing.TB) {
	t.Helper()
	var arg struct {
		unix.FscryptAddKeyArg
		raw [unix.FSCRYPT_MAX_KEY_SIZE]byte
	}
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	arg.Raw_size = unix.FSCRYPT_MAX_KEY_SIZE
	if _, err := rand.Read(arg.raw[:]); err != nil {
		t.Fatal(err)
	}
	if err := fs.ioctl(unix.FS_IOC_ADD_ENCRYPTION_KEY, unsafe.Pointer(&arg)); err != nil {
		t.Skipf("vaulttest: FS_IOC_ADD_ENCRYPTION_KEY: %v (kernel without fscrypt v2?)", err)
	}
	copy(fs.key[:], arg.Key_spec.U[:])
}

// EncryptedRoot makes an empty localds root on fs whose vault has a v2
// policy with fs's key.
func (fs *FS) EncryptedRoot(t testing.TB, name string) string {
	t.Helper()
	root := filepath.Join(fs.Mount, name)
	vault := filepath.Join(root, "vault")
	if err := os.MkdirAll(vault, 0o755); err != nil {
		t.Fatal(err)
	}
	pol := unix.FscryptPolicyV2{
		Version:                   unix.FSCRYPT_POLICY_V2,
		Contents_encryption_mode:  unix.FSCRYPT_MODE_AES_256_XTS,
		Filenames_encryption_mode: unix.FSCRYPT_MODE_AES_256_CTS,
		Flags:                     unix.FSCRYPT_POLICY_FLAGS_PAD_32,
		Master_key_identifier:     fs.key,
	}
	f, err := os.Open(vault)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := ioctl(int(f.Fd()), unix.FS_IOC_SET_ENCRYPTION_POLICY, unsafe.Pointer(&pol)); err != nil {
		t.Fatalf("FS_IOC_SET_ENCRYPTION_POLICY on %s: %v", vault, err)
	}
	fs.dirs = append(fs.dirs, vault)
	return root
}

// PlainRoot makes an empty localds root on fs whose vault has no policy.
func (fs *FS) PlainRoot(t testing.TB, name string) string {
	t.Helper()
	root := filepath.Join(fs.Mount, name)
	if err := os.MkdirAll(filepath.Join(root, "vault"), 0o755); err != nil {
		t.Fatal(err)
	}
	return root
}

// RemoveKey removes fs's key (FS_IOC_REMOVE_ENCRYPTION_KEY), locking every
// encrypted vault on it; files still open keep it "incompletely removed".
func (fs *FS) RemoveKey(t testing.TB) {
	t.Helper()
	var arg unix.FscryptRemoveKeyArg
	arg.Key_spec.Type = unix.FSCRYPT_KEY_SPEC_TYPE_IDENTIFIER
	copy(arg.Key_spec.U[:], fs.key[:])
	if err := fs.ioctl(unix.FS_IOC_REMOVE_ENCRYPTION_KEY, unsafe.Pointer(&arg)); err != nil {
		t.Fatalf("FS_IOC_REMOVE_ENCRYPTION_KEY: %v", err)
	}
}

func (fs *FS) ioctl(req uint, arg unsafe.Pointer) error {
	f, err := os.Open(fs.Mount)
	if err != nil {
		return err
	}
	defer f.Close()
	return ioctl(int(f.Fd()), req, arg)
}

func ioctl(fd int, req uint, arg unsafe.Pointer) error {
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg)); e != 0 {
		return e
	}
	return nil
}
