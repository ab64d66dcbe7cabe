//go:build linux

package e2e

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/localds/localds/internal/cas"
	"github.com/localds/localds/internal/testnet"
)

// TestFsckRemoveHeals: a layer rots on disk after `ctr image pull`;
// `localds fsck --remove` (containerd reachable at --address) finds the
// mismatch, makes containerd's metadata forget the blob in every
// namespace and removes it. The next `ctr image pull` that needs it (an
// unpack into another snapshotter) fetches it again; before, containerd
// still recorded it, skipped the fetch and failed with "blob not found".
func TestFsckRemoveHeals(t *testing.T) {
	s := mirrorSite(t)
	if s == nil {
		return // the push child
	}
	img := s.push(t, pushJob{Ref: dsLocal + ":5000/heal:1", Layers: []int64{1 << 20, 2 << 20, 1 << 20}})[0]
	s.mustPull(t, img.Ref)
	s.checkBlobs(t, img)

	// Bit rot: one byte flipped in the middle layer, same size.
	layer := img.Layers[1]
	p, err := cas.BlobPath(s.root, layer.Digest)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o444); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), e2eWait)
	defer cancel()
	out, err := exec.CommandContext(ctx, testnet.Binary(t, "localds"), "fsck", "--root", s.root, "--address", s.ctrd.Address, "--remove").CombinedOutput()
	t.Logf("localds fsck --remove: %v\n%s", err, out)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Fatalf("fsck --remove of a rotten blob: %v, want exit 1", err)
	}
	for _, want := range []string{layer.Digest.String(), "digest mismatch", "forgot it in namespace default", "next pull"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("fsck output does not say %q", want)
		}
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("the rotten blob is still at %s: %v", p, err)
	}
	if ls := s.ctrd.Ctr(t, "content", "ls", "-q"); strings.Contains(ls, layer.Digest.String()) {
		t.Fatalf("containerd still lists the removed blob:\n%s", ls)
	}

	// The next pull that needs the layer: into another snapshotter, which
	// has none of the layers, so containerd reads every blob. (A pull into
	// overlayfs again needs no blob: containerd skips layers whose
	// snapshots exist.)
	ctx2, cancel2 := context.WithTimeout(context.Background(), pullTimeout)
	defer cancel2()
	if out, err := s.ctrd.CtrCmd(ctx2, "image", "pull", "--hosts-dir", s.hostsDir, "--snapshotter", "localds", img.Ref).CombinedOutput(); err != nil {
		t.Fatalf("pull + unpack into the localds snapshotter after the heal: %v\n%s\nlocalds log:\n%s", err, tail(string(out), 3000), tail(s.daemon.Log(), 6000))
	}
	s.checkBlobs(t, img)
	if ls := s.ctrd.Ctr(t, "content", "ls", "-q"); !strings.Contains(ls, layer.Digest.String()) {
		t.Fatalf("containerd does not list the fetched blob again:\n%s", ls)
	}
	if out := s.fsck(t); !strings.Contains(out, " 0 bad") {
		t.Fatalf("fsck after the heal: %s", out)
	}
}
