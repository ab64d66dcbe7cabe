//go:build linux

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/localds/localds/internal/testnet"
)

// TestDiskVolumeFromServe: `localds volume create --disk URL --sha256`
// with the URL on `localds serve`, found by its .local name over mDNS on
// br0, puts the qcow2 image at <root>/novault/volumes/KEY.qcow2 byte for
// byte; volume ls lists it as a disk; a second create of the key is
// refused and the image untouched; a wrong sha256 is refused naming both
// digests and leaves nothing; volume rm removes it.
func TestDiskVolumeFromServe(t *testing.T) {
	requireE2E(t)
	s := newBareSite(t)
	dir := t.TempDir()
	img := make([]byte, 3<<20+17)
	if _, err := rand.Read(img); err != nil {
		t.Fatal(err)
	}
	copy(img, "QFI\xfb\x00\x00\x00\x03")
	if err := os.MkdirAll(filepath.Join(dir, "disks"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "disks", "vm.qcow2"), img)
	startServe(t, s, dir)
	url := "http://" + dsLocal + "/disks/vm.qcow2"
	const key = "0b7e6a43-56a2-4a0e-8d7c-1f2e3d4c5b6a#1"
	want := filepath.Join(s.root, "novault", "volumes", key+".qcow2")

	out, err := s.localdsVolume(t, "create", "--disk", url, "--sha256", sha256Hex(img), "--novault", "--interface", "br0", key)
	if err != nil {
		t.Fatalf("volume create --disk: %v\n%s", err, out)
	}
	if !strings.Contains(out, "resolved "+dsLocal) || !strings.Contains(out, "qcow2 disk image") {
		t.Errorf("output does not say where it resolved and what it made:\n%s", out)
	}
	got, err := os.ReadFile(want)
	if err != nil || !bytes.Equal(got, img) {
		t.Fatalf("%s: %v (%d bytes, want the served %d)", want, err, len(got), len(img))
	}
	if ds := downloaderFiles(t, s.root); len(ds) != 0 {
		t.Errorf("downloader area not empty: %v", ds)
	}

	// volume ls lists container volumes from containerd and disk volumes
	// from --root, with their kind.
	s.startDaemon(t)
	s.startContainerd(t)
	out, err = s.localdsVolume(t, "ls", "--address", s.ctrd.Address)
	if err != nil || !strings.Contains(out, "KIND") || !regexp.MustCompile(regexp.QuoteMeta(key)+`\s+disk/qcow2\s+-\s+3\.0 MiB\s+novault`).MatchString(out) {
		t.Fatalf("volume ls: want %s as a novault disk/qcow2 of 3.0 MiB, got %v\n%s", key, err, out)
	}

	out, err = s.localdsVolume(t, "create", "--disk", url, "--sha256", sha256Hex(img), "--interface", "br0", key)
	if err == nil || !strings.Contains(out, "exists") {
		t.Fatalf("second create of %s: want refused as existing, got %v\n%s", key, err, out)
	}
	if got, _ := os.ReadFile(want); !bytes.Equal(got, img) {
		t.Fatal("the existing volume changed")
	}

	const key2 = "0b7e6a43-56a2-4a0e-8d7c-1f2e3d4c5b6a#2"
	wrong := sha256Hex([]byte("not the image"))
	out, err = s.localdsVolume(t, "create", "--disk", url, "--sha256", wrong, "--interface", "br0", key2)
	if err == nil || !strings.Contains(out, wrong) || !strings.Contains(out, sha256Hex(img)) {
		t.Fatalf("wrong sha256: want refused naming %s and %s, got %v\n%s", wrong, sha256Hex(img), err, out)
	}
	for _, nv := range []string{"vault", "novault"} {
		des, _ := os.ReadDir(filepath.Join(s.root, nv, "volumes"))
		for _, d := range des {
			if strings.Contains(d.Name(), "#2") {
				t.Errorf("left after the wrong sha256: %s/%s", nv, d.Name())
			}
		}
	}
	if ds := downloaderFiles(t, s.root); len(ds) != 0 {
		t.Errorf("downloader area after the wrong sha256: %v", ds)
	}

	if out, err = s.localdsVolume(t, "rm", key); err != nil || !strings.Contains(out, "removed") {
		t.Fatalf("volume rm: %v\n%s", err, out)
	}
	if _, err := os.Stat(want); !os.IsNotExist(err) {
		t.Fatalf("%s after rm: %v", want, err)
	}
}

// localdsVolume runs `localds volume ARGS` in the node namespace under the
// site's root, stdout and stderr together.
func (s *site) localdsVolume(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), localdsPullTimeout)
	defer cancel()
	full := append([]string{testnet.Binary(t, "localds"), "volume", "--root", s.root}, args...)
	out, err := s.node.Command(ctx, full...).CombinedOutput()
	t.Logf("localds volume %s: %v\n%s", strings.Join(args, " "), err, out)
	return string(out), err
}
